"""Render what was measured into the README and the instructor guide: the course verdict
(``results/verdict.json``) and the time per notebook (``results/timings.json``) of the ``cpu``
profile in the README; the time per notebook of every profile in ``docs/INSTRUCTORS.md``.

    python scripts/show_results.py          rewrite the generated blocks
    python scripts/show_results.py --check  exit 1 if a block differs from the files

Each block sits between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``; nothing else in the
files changes. The verdict rows are written by the notebooks (``course_utils.results.record``),
the timings by ``scripts/run_notebooks.py``.
"""

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from course_utils import results  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
from run_notebooks import format_seconds  # noqa: E402

README = REPO / "README.md"
INSTRUCTORS = REPO / "docs" / "INSTRUCTORS.md"
VERDICT = REPO / "results" / results.VERDICT_FILE
TIMINGS = REPO / "results" / "timings.json"
PROFILE = "cpu"  # the committed notebooks' profile
PROFILES = ("smoke", "cpu", "gpu")


def render_verdict(rows: dict[str, dict[str, str]]) -> str:
    """The markdown table of ``rows``, ordered by notebook, then as recorded."""
    if not rows:
        return "_No verdict rows recorded yet: run the notebooks (`run_course.sh --in-place`)._"
    lines = [
        "| aspect | ResNet-50 | ResNet-101 | ResNet-101 vs ResNet-50 | verdict | notebook |",
        "|---|---|---|---|---|---|",
    ]
    for row in sorted(rows.values(), key=lambda r: r["notebook"]):
        cells = [row[k] for k in ("aspect", "resnet50", "resnet101", "difference", "verdict")]
        lines.append("| " + " | ".join(cells) + f" | {row['notebook']} |")
    return "\n".join(lines)


def render_timings(timings: dict[str, dict[str, object]]) -> str:
    """One line per notebook: how long its last committed run took, and on what."""
    if not timings:
        return "_No timings recorded yet._"
    lines = ["| notebook | time (`cpu` profile) | measured on |", "|---|---|---|"]
    for notebook, entry in sorted(timings.items()):
        took = format_seconds(float(entry["seconds"]))
        lines.append(f"| {notebook} | {took} | {entry['machine']}, {entry['date']} |")
    return "\n".join(lines)


def render_timings_by_profile(timings: dict[str, dict[str, dict[str, object]]]) -> str:
    """One line per notebook, one column per profile: the last measured time and on what."""
    notebooks = sorted({name for entries in timings.values() for name in entries})
    if not notebooks:
        return "_No timings recorded yet._"
    lines = [
        "| notebook | " + " | ".join(f"`{p}` profile" for p in PROFILES) + " |",
        "|---|" + "---|" * len(PROFILES),
    ]
    for notebook in notebooks:
        cells = []
        for profile in PROFILES:
            entry = timings.get(profile, {}).get(notebook)
            cells.append(
                "not measured yet"
                if entry is None
                else f"{format_seconds(float(entry['seconds']))} ({entry['machine']}, "
                f"{entry['date']})"
            )
        lines.append(f"| {notebook} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the body of block ``name`` set to ``body``."""
    start_mark, end_mark = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    start, end = text.find(start_mark), text.find(end_mark)
    if start < 0 or end < start:
        raise SystemExit(f"no {start_mark} ... {end_mark} block")
    return text[: start + len(start_mark)] + "\n" + body + "\n" + text[end:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only")
    args = parser.parse_args()
    timings = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    verdict = results.read(VERDICT).get(PROFILE, {})
    blocks = {
        README: {
            "verdict": render_verdict(verdict),
            "timings": render_timings(timings.get(PROFILE, {})),
        },
        INSTRUCTORS: {"timings-by-profile": render_timings_by_profile(timings)},
    }
    stale = []
    for path, bodies in blocks.items():
        text = path.read_text()
        wanted = text
        for name, body in bodies.items():
            wanted = replace_block(wanted, name, body)
        if text != wanted:
            stale.append(path.relative_to(REPO))
            if not args.check:
                path.write_text(wanted)
    if not stale:
        print("the generated blocks are up to date")
        return 0
    names = ", ".join(map(str, stale))
    if args.check:
        print(f"generated blocks in {names} differ from results/: run scripts/show_results.py")
        return 1
    print(f"generated blocks rewritten in {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
