"""Render what was measured into the README: the course verdict (``results/verdict.json``) and
the time per notebook (``results/timings.json``), both for the ``cpu`` profile.

    python scripts/show_results.py          rewrite the README's generated blocks
    python scripts/show_results.py --check  exit 1 if a block differs from the files

Each block sits between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``; nothing else in the
README changes. The verdict rows are written by the notebooks (``course_utils.results.record``),
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
VERDICT = REPO / "results" / results.VERDICT_FILE
TIMINGS = REPO / "results" / "timings.json"
PROFILE = "cpu"  # the committed notebooks' profile


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


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the body of block ``name`` set to ``body``."""
    start_mark, end_mark = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    start, end = text.find(start_mark), text.find(end_mark)
    if start < 0 or end < start:
        raise SystemExit(f"{README.name} has no {start_mark} ... {end_mark} block")
    return text[: start + len(start_mark)] + "\n" + body + "\n" + text[end:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only")
    args = parser.parse_args()
    text = README.read_text()
    timings = json.loads(TIMINGS.read_text()).get(PROFILE, {}) if TIMINGS.exists() else {}
    wanted = replace_block(text, "verdict", render_verdict(results.read(VERDICT).get(PROFILE, {})))
    wanted = replace_block(wanted, "timings", render_timings(timings))
    if text == wanted:
        print("README's generated blocks are up to date")
        return 0
    if args.check:
        print("README's generated blocks differ from results/: run scripts/show_results.py")
        return 1
    README.write_text(wanted)
    print("README's generated blocks rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
