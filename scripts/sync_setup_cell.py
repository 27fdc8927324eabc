"""Copy scripts/colab_setup_cell.py into the first code cell of every notebook and solution.

    python scripts/sync_setup_cell.py          rewrite the notebooks whose setup cell differs
    python scripts/sync_setup_cell.py --check  only list them (exit 1 if any)

Only that cell's source changes (its outputs are cleared: re-execute the notebook afterwards).
"""

import argparse
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
SETUP_CELL = REPO / "scripts" / "colab_setup_cell.py"
FOLDERS = ("notebooks", "solutions")  # the course notebooks and their worked solutions


def setup_cell_source() -> str:
    """The canonical setup cell, without the file's final newline (as a notebook stores it)."""
    return SETUP_CELL.read_text().rstrip("\n")


def course_notebooks() -> list[Path]:
    """``notebooks/NN_*.ipynb`` and ``solutions/NN_*.ipynb``: every notebook with the cell."""
    return [
        path for folder in FOLDERS for path in sorted((REPO / folder).glob("[0-9][0-9]_*.ipynb"))
    ]


def first_code_cell(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return next(cell for cell in notebook.cells if cell.cell_type == "code")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="list differing notebooks only")
    args = parser.parse_args()
    source, differing = setup_cell_source(), []
    for path in course_notebooks():
        notebook = nbformat.read(path, as_version=4)
        cell = first_code_cell(notebook)
        if cell.source == source:
            continue
        differing.append(path.relative_to(REPO).as_posix())
        if not args.check:
            cell.source, cell.outputs, cell.execution_count = source, [], None
            nbformat.write(notebook, path)
    verb = "differs in" if args.check else "rewritten in"
    print(f"setup cell {verb}: {', '.join(differing) or 'none'}")
    return 1 if args.check and differing else 0


if __name__ == "__main__":
    sys.exit(main())
