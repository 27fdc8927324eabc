"""The verdict rows: recorded by the notebooks, merged into the committed file, shown in the
README by ``scripts/show_results.py``."""

import subprocess
import sys

from course_utils import config, results

ROW = results.VerdictRow("test accuracy", "78 %", "79 %", "+1 pp", "no detectable difference", "04")


def test_record_replaces_a_row_and_keeps_the_others(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(config.ARTIFACTS_DIR_ENV, str(tmp_path))
    smoke, cpu = config.get_profile("smoke"), config.get_profile("cpu")
    results.record(smoke, "04 accuracy", ROW)
    results.record(cpu, "04 accuracy", ROW)
    results.record(smoke, "04 accuracy", results.VerdictRow("a", "b", "c", "d", "e", "04"))
    rows = results.read(results.run_file())
    assert rows["smoke"]["04 accuracy"]["aspect"] == "a"
    assert rows["cpu"]["04 accuracy"]["aspect"] == "test accuracy"


def test_merge_copies_one_profile_only(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(config.ARTIFACTS_DIR_ENV, str(tmp_path))
    results.record(config.get_profile("smoke"), "04 accuracy", ROW)
    target = tmp_path / "committed.json"
    results.write(target, {"cpu": {"06 localisation": {"aspect": "kept"}}})
    assert results.merge(results.run_file(), target, "cpu") == 0  # no cpu rows in this run
    assert results.merge(results.run_file(), target, "smoke") == 1
    merged = results.read(target)
    assert merged["cpu"]["06 localisation"]["aspect"] == "kept" and "04 accuracy" in merged["smoke"]


def test_the_readme_shows_the_committed_verdict() -> None:
    """The README's verdict block is generated from results/verdict.json (cpu rows)."""
    script = config.repo_root() / "scripts" / "show_results.py"
    check = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
