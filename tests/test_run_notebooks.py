"""``scripts/run_notebooks.py``: the expected time it announces says whether the measured run
trained its networks, from the counts it records."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from course_utils import config

sys.path.insert(0, str(config.repo_root() / "scripts"))
from run_notebooks import expected_time, networks_note, read_timings, write_timing  # noqa: E402


@pytest.mark.parametrize(
    ("networks", "note"),
    [
        ({"trained": 3, "loaded": 2}, ", training 3 networks"),
        ({"trained": 1, "loaded": 0}, ", training 1 network"),
        ({"trained": 0, "loaded": 2}, ", its networks cached: a first run trains them"),
        ({"trained": 0, "loaded": 0}, ""),
    ],
)
def test_the_networks_note_follows_the_counts(networks: dict, note: str) -> None:
    assert networks_note({"seconds": 60, "networks": networks}) == note


def test_an_entry_older_than_the_counts_gets_no_note() -> None:
    assert networks_note({"seconds": 60, "machine": "m", "date": "2026-12-01"}) == ""


def test_a_recorded_run_is_announced_with_its_networks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COURSE_ARTIFACTS_DIR", str(tmp_path))
    timings = config.artifacts_dir() / "timings.json"
    write_timing(timings, "cpu", "05_demo", 4500, {"trained": 3, "loaded": 2})
    write_timing(timings, "cpu", "04_demo", 65, {"trained": 0, "loaded": 3})

    assert read_timings(timings)["cpu"]["05_demo"]["networks"] == {"trained": 3, "loaded": 2}
    assert expected_time("cpu", "05_demo").startswith("about 75 min, training 3 networks (on")
    assert expected_time("cpu", "04_demo").startswith(
        "about 65 s, its networks cached: a first run trains them (on this machine"
    )
