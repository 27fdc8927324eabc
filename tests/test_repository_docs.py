"""The citation file and the instructor guide agree with the package and the repository."""

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
