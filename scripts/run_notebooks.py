"""Execute the course notebooks in order and say what is happening (used by run_course.sh).

Before each notebook: its title and the time it took at the active profile when it was last
measured (``results/timings.json``; a run on this machine also lands in
``<artifacts>/timings.json``), and how many networks that run trained (a notebook whose networks
are cached takes minutes less). While it runs, the package's progress lines ("load_or_train: ...",
one per training epoch) reach the terminal. A failing cell is named (notebook, cell number, first
line) and the exit code is 1. ``--in-place`` overwrites ``notebooks/`` (maintainers refreshing
the committed outputs) and updates ``results/timings.json`` and ``results/verdict.json`` (the
verdict rows the notebooks recorded, see ``course_utils.results``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from course_utils import config, results

REPO = config.repo_root()
COMMITTED_TIMINGS = REPO / "results" / "timings.json"
COMMITTED_VERDICT = REPO / "results" / results.VERDICT_FILE
ECHOED_PREFIXES = ("load_or_train:", "epoch ", "data:", "Full Oxford-IIIT Pet")
TRAINED_PREFIX = "load_or_train: no cached run"  # zoo.load_or_train, before it trains
LOADED_PREFIX = "load_or_train: loaded"  # ... and when it loads a cached run


class EchoingClient(NotebookClient):
    """A NotebookClient that also prints the package's progress lines to this terminal and
    counts the networks the notebook trains and the cached ones it loads."""

    networks_trained = 0
    networks_loaded = 0

    def output(self, outs: list, msg: dict, display_id: str | None, cell_index: int) -> Any:
        content = msg.get("content", {})
        if msg.get("msg_type") == "stream" and content.get("name") == "stdout":
            for line in content.get("text", "").splitlines():
                if line.startswith(ECHOED_PREFIXES):
                    print(f"   | {line}", flush=True)
                self.networks_trained += line.startswith(TRAINED_PREFIX)
                self.networks_loaded += line.startswith(LOADED_PREFIX)
        return super().output(outs, msg, display_id, cell_index)


def read_timings(path: Path) -> dict[str, Any]:
    """``{profile: {notebook: {"seconds": ..., "machine": ..., "date": ...}}}``, or empty."""
    return json.loads(path.read_text()) if path.is_file() else {}


def write_timing(path: Path, profile: str, notebook: str, seconds: float, networks: dict) -> None:
    """Record one notebook's run time at ``profile`` and ``networks``, the counts of networks
    it trained and loaded (read, update, write back)."""
    timings = read_timings(path)
    timings.setdefault(profile, {})[notebook] = {
        "seconds": round(seconds),
        "networks": networks,
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(timings, indent=2, sort_keys=True) + "\n")


def machine_description() -> str:
    """E.g. ``"2 CPU threads, no GPU, Linux x86_64"`` or ``"NVIDIA T4, Linux x86_64"``."""
    import torch

    system = f"{platform.system()} {platform.machine()}"
    if config.get_device().type == "cuda":
        return f"{torch.cuda.get_device_name(config.get_device())}, {system}"
    return f"{torch.get_num_threads()} CPU threads, no GPU, {system}"


def expected_time(profile: str, notebook: str) -> str:
    """The last measured time of ``notebook`` at ``profile``, and where it was measured."""
    for label, path in (
        ("on this machine", config.artifacts_dir() / "timings.json"),
        ("measured on", COMMITTED_TIMINGS),
    ):
        entry = read_timings(path).get(profile, {}).get(notebook)
        if entry:
            where = label if label == "on this machine" else f"measured on {entry['machine']}"
            seconds = format_seconds(entry["seconds"])
            return f"about {seconds}{networks_note(entry)} ({where}, {entry['date']})"
    return "not measured yet"


def networks_note(entry: dict[str, Any]) -> str:
    """``", training 3 networks"``, ``", its networks cached: a first run trains them"``, or
    nothing for a notebook without networks or an entry older than the ``networks`` field."""
    networks = entry.get("networks", {})
    trained, loaded = networks.get("trained", 0), networks.get("loaded", 0)
    if trained:
        return f", training {trained} network{'s' if trained > 1 else ''}"
    return ", its networks cached: a first run trains them" if loaded else ""


def format_seconds(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def title(notebook: nbformat.NotebookNode) -> str:
    """The notebook's first heading, e.g. ``"04 · Training ResNet-50 and ResNet-101 ..."``."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return "(untitled)"


def failed_cell(notebook: nbformat.NotebookNode) -> str:
    """Which code cell failed: its number among the code cells and its first line."""
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for number, cell in enumerate(code_cells, start=1):
        if any(output.get("output_type") == "error" for output in cell.get("outputs", [])):
            first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
            return f"code cell {number} of {len(code_cells)} ({first!r})"
    return "a cell"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-place", action="store_true", help="overwrite notebooks/")
    parser.add_argument("--only", nargs="+", metavar="NN", help="run these, e.g. --only 04 05")
    args = parser.parse_args(argv)

    os.environ[config.QUIET_PROGRESS_ENV] = "1"  # kernels inherit it: no bars frozen at 0 %
    profile = config.get_profile().name
    notebooks = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        unknown = set(args.only) - {path.name[:2] for path in notebooks}
        if unknown:
            parser.error(f"no notebook numbered {', '.join(sorted(unknown))}")
        notebooks = [path for path in notebooks if path.name[:2] in args.only]
    out_dir = REPO / "notebooks" if args.in_place else config.artifacts_dir() / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)

    for path in notebooks:
        notebook = nbformat.read(path, as_version=4)
        notebook.metadata.pop("widgets", None)  # an earlier run's progress bars, not this one's
        print(f"== {path.name}: {title(notebook)}", flush=True)
        print(f"   expected: {expected_time(profile, path.stem)} at profile {profile}", flush=True)
        start = time.perf_counter()
        client = EchoingClient(notebook, timeout=-1, resources={"metadata": {"path": path.parent}})
        try:
            client.execute()
        except CellExecutionError as error:
            target = out_dir / path.name
            nbformat.write(notebook, target)
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else "error"
            print(
                f"FAILED: {path.name}, {failed_cell(notebook)}: {reason}\n"
                f"The executed notebook, with the error in its cell: {config.display_path(target)}",
                file=sys.stderr,
            )
            return 1
        seconds = time.perf_counter() - start
        nbformat.write(notebook, out_dir / path.name)
        networks = {"trained": client.networks_trained, "loaded": client.networks_loaded}
        write_timing(config.artifacts_dir() / "timings.json", profile, path.stem, seconds, networks)
        if args.in_place:
            write_timing(COMMITTED_TIMINGS, profile, path.stem, seconds, networks)
            results.merge(results.run_file(), COMMITTED_VERDICT, profile)  # the verdict rows
        print(f"   done in {format_seconds(seconds)}", flush=True)

    print(f"\nExecuted notebooks: {config.display_path(out_dir)}")
    print(f"Figures:            {config.display_path(config.artifacts_dir() / 'figures')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
