"""The notebooks' setup cell: the same in every notebook, and it works in a fresh runtime.

The fresh runtime is a virtual environment in which ``course_utils`` is not installed: it sees
the course's dependencies (a ``.pth`` line pointing at this environment's site-packages, so no
torch is downloaded) but not the editable install. The cell clones a ``file://`` URL of this
repository, standing in for GitHub, in a real Jupyter kernel of that environment.
"""

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from course_utils import config

REPO = config.repo_root()
sys.path.insert(0, str(REPO / "scripts"))
from sync_setup_cell import course_notebooks, first_code_cell, setup_cell_source  # noqa: E402

NOTEBOOKS = course_notebooks()  # the course notebooks and their solutions


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name[:2]}")
def test_every_notebook_starts_with_the_same_setup_cell(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    assert first_code_cell(notebook).source == setup_cell_source(), (
        f"{path.name}: run `python scripts/sync_setup_cell.py`, then re-execute the notebook"
    )


def _fresh_environment(root: Path) -> Path:
    """A venv that sees this environment's packages but has no course_utils; its python."""
    env_dir = root / "fresh-venv"
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # A path line in a .pth file adds the folder without running its .pth files, so the
    # editable install of course_utils in this environment stays invisible there.
    Path(purelib, "course-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _kernel_spec(root: Path, python: Path) -> str:
    spec_dir = root / "jupyter" / "kernels" / "fresh"
    spec_dir.mkdir(parents=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "fresh", "language": "python"})
    )
    return "fresh"


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs a git checkout to clone from")
def test_setup_cell_installs_the_course_in_a_fresh_kernel(tmp_path, monkeypatch) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    workdir = tmp_path / "content"  # Colab's working folder
    workdir.mkdir()
    (workdir / "resnet-course.partial").mkdir()  # an interrupted earlier clone
    (workdir / "resnet-course.partial" / "junk").write_text("half a clone")
    python = _fresh_environment(tmp_path)
    check = subprocess.run(
        [python, "-c", "import importlib.util as u; print(u.find_spec('course_utils'))"],
        capture_output=True,
        text=True,
        cwd=workdir,
        check=True,
    )
    assert check.stdout.strip() == "None", "the fresh environment must not see course_utils"

    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("COURSE_REPO_URL", (REPO).as_uri())
    monkeypatch.delenv("PYTHONPATH", raising=False)
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(setup_cell_source()),
        nbformat.v4.new_code_cell(
            "import course_utils\nfrom course_utils import config\n"
            "print(course_utils.__file__)\nprint(config.get_profile('smoke').name)"
        ),
        nbformat.v4.new_code_cell(setup_cell_source()),  # re-run: nothing changes
        nbformat.v4.new_code_cell("print(sys.path.count(str(clone)))"),
    ]
    client = NotebookClient(
        notebook,
        kernel_name=_kernel_spec(tmp_path, python),
        timeout=300,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()

    def text(cell: int) -> str:
        return "".join(o.get("text", "") for o in notebook.cells[cell].outputs)

    clone = workdir / "resnet-course"
    assert text(1).splitlines() == [str(clone / "course_utils" / "__init__.py"), "smoke"]
    assert text(3).strip() == "1"
    assert (clone / ".git").is_dir() and not (workdir / "resnet-course.partial").exists()
