"""The citation file and the instructor guide agree with the package and the repository; the
committed notebooks carry nothing of an earlier run."""

import json
import re

import yaml

from course_utils import config

REPO = config.repo_root()


def test_citation_file_is_valid_and_matches_the_package() -> None:
    """CITATION.cff has the keys CFF 1.2 requires, and the package's version and licence."""
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    assert {"message", "title", "authors"} <= citation.keys() and citation["authors"]
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert version and citation["version"] == version.group(1)
    assert citation["license"] == "MIT" and (REPO / "LICENSE").read_text().startswith("MIT")


def test_instructor_guide_names_only_existing_files() -> None:
    """Every repository path the guide names in backticks exists."""
    guide = (REPO / "docs" / "INSTRUCTORS.md").read_text()
    folders = "scripts|course_utils|results|docs|tests|solutions"
    paths = set(re.findall(rf"`((?:{folders})/[\w./-]+)`", guide))
    assert paths
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, missing


def test_committed_notebooks_carry_no_progress_bar_widgets() -> None:
    """No widget state or widget view: offline (GitHub, the website) a saved tqdm widget shows its
    text form, a bar at 0 %, and a stale state is an earlier run's, not the outputs' own."""
    for path in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        notebook = json.loads(path.read_text())
        assert "widgets" not in notebook["metadata"], path.name
        views = [
            output
            for cell in notebook["cells"]
            for output in cell.get("outputs", [])
            if "application/vnd.jupyter.widget-view+json" in output.get("data", {})
        ]
        assert not views, path.name
