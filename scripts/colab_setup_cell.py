# Setup, the same in every notebook. Where course_utils is importable (the course's .venv or
# conda environment) it changes nothing. In a fresh runtime (Colab) it clones the course once
# (a finished clone is reused, a half-finished one replaced), installs only the requirements
# the runtime lacks (never its torch), and puts the clone on sys.path. Safe to re-run.
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO_URL = os.environ.get(
    "COURSE_REPO_URL", "https://github.com/resnet-course/resnet50-vs-resnet101.git"
)
KEEP_RUNS_ON_DRIVE = False  # Colab: True keeps trained networks on Google Drive across resets

if importlib.util.find_spec("course_utils") is None:
    clone = Path("resnet-course").resolve()
    if not (clone / "course_utils").is_dir():
        partial = clone.with_name(clone.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(["git", "clone", "--depth=1", REPO_URL, str(partial)], check=True)
        shutil.rmtree(clone, ignore_errors=True)
        partial.rename(clone)
    missing = []
    for line in (clone / "requirements.txt").read_text().splitlines():
        requirement = line.split("#")[0].strip()
        if not requirement:
            continue
        try:
            importlib.metadata.version(re.split(r"[<>=!~;\[ ]", requirement)[0])
        except importlib.metadata.PackageNotFoundError:
            missing.append(requirement)
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
    sys.path.insert(0, str(clone))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(clone), os.environ.get("PYTHONPATH")])
    )
if KEEP_RUNS_ON_DRIVE and "google.colab" in sys.modules:
    from google.colab import drive

    drive.mount("/content/drive")
    os.environ["COURSE_ARTIFACTS_DIR"] = "/content/drive/MyDrive/resnet-course-artifacts"
    print("trained networks are kept in", os.environ["COURSE_ARTIFACTS_DIR"])
elif KEEP_RUNS_ON_DRIVE:
    print("KEEP_RUNS_ON_DRIVE is for Colab; this runtime keeps runs in the course's artifacts/")
