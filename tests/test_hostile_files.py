"""Hostile input: crafted checkpoints, image files that are not what they claim, old libraries.

Every bad file is made here, and goes through ``check_image`` and both commands (in-process
through ``cli.main``): each gets a one-line reason naming it, the good images are still used, a
crafted checkpoint runs nothing. Reasons are checked by their stable parts, never Pillow's texts.
The checkpoint is an untrained ResNet-18 at 32 px (no training: only the plumbing matters).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import shlex
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

import course_utils
from course_utils import config, safety
from course_utils.checkpoints import CHECKPOINT_FORMAT, save_checkpoint
from course_utils.cli import main
from course_utils.data import CLASSES, bundled_records, check_image, load_rgb
from course_utils.models import build_model

PROBABILITIES = re.compile(r": (cat|dog) \(cat \d+\.\d%, dog \d+\.\d%\)$")


def _png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header (correct CRCs) declaring ``width x height``, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


def _animated_gif(path: Path) -> Path:
    """Two 40 x 40 frames: red, then blue."""
    red, blue = Image.new("RGB", (40, 40), "red"), Image.new("RGB", (40, 40), "blue")
    red.save(path, save_all=True, append_images=[blue], duration=100, loop=0)
    return path


# name -> (how to make it in a folder, the stable start of its reason)
HOSTILE = {
    "truncated.jpg": (
        lambda p: p.write_bytes(Path(bundled_records("test")[0].image_path).read_bytes()[:3000]),
        "truncated or corrupt (",
    ),
    "empty.jpg": (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    "text.jpg": (lambda p: p.write_text("not a picture"), "not an image (the course reads JPEG"),
    "pcx-named.jpg": (  # a real image in a format the course does not decode
        lambda p: Image.new("RGB", (40, 40), "red").save(p, format="PCX"),
        "not an image (the course reads JPEG",
    ),
    "bomb.png": (
        lambda p: p.write_bytes(_png_declaring(60_000, 60_000)),
        "too large (the header declares more pixels than Pillow's decompression-bomb limit",
    ),
    "huge.png": (lambda p: p.write_bytes(_png_declaring(8000, 6000)), "too large (8000x6000 = "),
    "tiny.png": (lambda p: Image.new("RGB", (1, 1)).save(p), "too small (1x1; "),
    "strip.png": (lambda p: Image.new("RGB", (40, 800)).save(p), "too elongated (40x800; "),
    "dangling.jpg": (
        lambda p: os.symlink(p.parent / "gone.jpg", p),
        "broken symbolic link (its target ",
    ),
    "pipe.jpg": (lambda p: os.mkfifo(p), "not a regular file ("),  # opening it would hang
}


def _make_hostile(folder: Path) -> dict[Path, str]:
    """Every :data:`HOSTILE` file in ``folder``: path -> the stable start of its reason."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for name, (make, reason) in HOSTILE.items():
        make(folder / name)
        made[folder / name] = reason
    return made


def test_each_hostile_file_gets_its_reason(tmp_path):
    for path, reason in _make_hostile(tmp_path).items():
        found = check_image(path)
        assert found is not None and found.startswith(reason), (path.name, found)
        assert "\n" not in found
    assert check_image(tmp_path / "missing.jpg") == "no such file"
    (tmp_path / "x.jpg").mkdir()
    assert check_image(tmp_path / "x.jpg").startswith("a folder")
    assert Image.open(tmp_path / "pcx-named.jpg").format == "PCX"  # Pillow alone would decode it


def test_decompression_bomb_warnings_are_errors(tmp_path, monkeypatch):
    path = tmp_path / "ok.png"
    Image.new("RGB", (40, 40)).save(path)  # 1,600 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1,600: a warning, not yet an error
    with pytest.warns(Image.DecompressionBombWarning):
        Image.open(path).close()  # what plain Pillow does: warn and carry on
    assert check_image(path).startswith("too large (the header declares more pixels than")
    with pytest.raises(Image.DecompressionBombWarning):
        load_rgb(path)


def test_an_animated_gif_gives_its_first_frame(tmp_path):
    path = _animated_gif(tmp_path / "anim.gif")
    assert check_image(path) is None
    assert load_rgb(path).getpixel((20, 20)) == (255, 0, 0)


# --- through the commands -------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained ResNet-18 course checkpoint that records a 32 px training size."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=len(CLASSES))
    path = tmp_path_factory.mktemp("run") / "last.pt"
    state = {"arch": "resnet18", "num_classes": len(CLASSES), "model": model.state_dict()}
    return save_checkpoint(path, {**state, "epoch": 0, "recipe": {"image_size": 32}})


@pytest.fixture(autouse=True)
def _on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv(config.DEVICE_ENV, "cpu")
    monkeypatch.setenv(config.ARTIFACTS_DIR_ENV, str(tmp_path / "artifacts"))


def _good(folder: Path, label: int, n: int = 2) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    records = [r for r in bundled_records("test") if r.label == label][:n]
    return [Path(shutil.copy(r.image_path, folder)) for r in records]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_evaluate_lists_every_hostile_file_and_evaluates_the_rest(checkpoint, tmp_path, capsys):
    root = tmp_path / "pets"
    good = _good(root / "cats", 0) + _good(root / "dogs", 1)
    good.append(_animated_gif(root / "dogs" / "anim.gif"))
    hostile = _make_hostile(root / "cats" / "bad") | _make_hostile(root / "dogs")
    (root / "dogs" / "x.jpg").mkdir()  # a folder named like an image
    hostile[root / "dogs" / "x.jpg"] = "a folder named like an image"
    csv = tmp_path / "out.csv"
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--data", str(root)]
    code, out, err = run(capsys, *argv, "--output", str(csv))

    assert code == 0 and err == ""
    assert f"Skipped {len(hostile)} file(s):" in out
    for path, reason in hostile.items():
        assert f"  {path}: {reason}" in out, path.name
    assert sorted(pd.read_csv(csv).image_path) == sorted(map(str, good))


def test_predict_names_every_hostile_file_and_classifies_the_rest(checkpoint, tmp_path, capsys):
    good = _good(tmp_path / "good", 0, n=1) + [_animated_gif(tmp_path / "anim.gif")]
    hostile = _make_hostile(tmp_path / "bad")
    (tmp_path / "x.jpg").mkdir()
    hostile[tmp_path / "x.jpg"] = "a folder, not an image (for a folder with cats/ and dogs/"
    files = [good[0], *hostile, good[1]]
    code, out, err = run(capsys, "predict", "--checkpoint", str(checkpoint), *map(str, files))

    lines = out.splitlines()[-len(files) - 1 :]
    assert code == 0 and err == ""
    assert lines[0].startswith(str(good[0])) and PROBABILITIES.search(lines[0])
    for line, (path, reason) in zip(lines[1:-2], hostile.items(), strict=True):
        assert line.startswith(f"{path}: cannot classify: {reason}"), line
    assert lines[-2].startswith(str(good[1])) and PROBABILITIES.search(lines[-2])
    assert lines[-1] == f"classified 2 of {len(files)} files; the others are listed above."


def test_no_usable_image_is_a_clear_error_in_both_commands(checkpoint, tmp_path, capsys):
    root = tmp_path / "pets"
    hostile = _make_hostile(root / "cats") | _make_hostile(root / "dogs")
    code, _, err = run(capsys, "evaluate", "--checkpoint", str(checkpoint), "--data", str(root))
    assert code == 2 and "error: No usable images under" in err and "Traceback" not in err
    assert all(str(path) in err for path in hostile)

    files = [str(path) for path in hostile][: len(HOSTILE)]
    code, out, err = run(capsys, "predict", "--checkpoint", str(checkpoint), *files)
    assert code == 2 and f"none of the {len(files)} image(s) could be classified" in err
    assert all(f"{name}: cannot classify: " in out for name in files)


# --- crafted checkpoints ----------------------------------------------------------------------


class _RunsAShellCommand:
    """Unpickling this runs ``command``: what a malicious checkpoint does."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_crafted_checkpoint_runs_nothing_and_is_called_malicious(command, tmp_path, capsys):
    marker = tmp_path / "marker"
    crafted = tmp_path / "last.pt"
    payload = _RunsAShellCommand(f"echo pwned > {shlex.quote(str(marker))}")
    torch.save({"format": CHECKPOINT_FORMAT, "arch": "resnet18", "payload": payload}, crafted)
    image = str(_good(tmp_path / "cats", 0, n=1)[0])
    images = [image] if command == "predict" else ["--data", str(tmp_path)]
    code, out, err = run(capsys, command, "--checkpoint", str(crafted), *images)

    assert code == 2 and out == "" and not marker.exists()
    assert f"holds code objects ({os.system.__module__}.system)" in err
    assert "may be malicious" in err and "weights_only=False" not in err
    assert "truncated or corrupt" not in err and "Traceback" not in err

    torch.load(crafted, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.read_text().strip() == "pwned"


def test_a_truncated_checkpoint_is_still_called_truncated(checkpoint, tmp_path, capsys):
    broken = tmp_path / "last.pt"
    broken.write_bytes(checkpoint.read_bytes()[:100_000])
    image = str(_good(tmp_path / "cats", 0, n=1)[0])
    code, _, err = run(capsys, "predict", "--checkpoint", str(broken), image)
    assert code == 2 and "truncated or corrupt" in err
    assert "malicious" not in err and "weights_only" not in err


# --- library versions with known advisories ---------------------------------------------------


def _versions(**installed: str):
    return lambda package: installed.get(package)


def test_old_torch_and_pillow_warn_naming_the_advisory_and_the_fix():
    with pytest.warns(safety.InsecureVersionWarning) as caught:
        safety.warn_about_vulnerable_versions(_versions(torch="2.8.0+cu126", pillow="11.3.0"))
    torch_warning, pillow_warning = (str(w.message) for w in caught)
    assert "torch 2.8.0+cu126" in torch_warning and "CVE-2026-24747" in torch_warning
    assert "GHSA-63cw-57p8-fm3p" in torch_warning and "torch>=2.10" in torch_warning
    assert "pillow 11.3.0" in pillow_warning and "pillow>=13.0" in pillow_warning


@pytest.mark.parametrize(
    ("torch_version", "pillow_version", "flagged"),
    [
        ("2.9.1", "12.3.0", ["torch", "pillow"]),
        ("2.10.0", "13.0.0", []),
        ("2.14.1+cu130", "13.0.0", []),
        ("2.10.0rc1", "13.1.0.dev0", []),  # a pre-release counts as its release
        ("2.6.0", None, ["torch"]),  # Pillow not installed: nothing to say about it
        ("unknown", "12.0.0", ["pillow"]),  # an unparsable version (a source build): not flagged
    ],
)
def test_which_versions_are_flagged(torch_version, pillow_version, flagged):
    found = safety.vulnerable_versions(_versions(torch=torch_version, pillow=pillow_version))
    assert [advisory.package for advisory, _ in found] == flagged


def test_importing_course_utils_warns_about_an_old_torch(monkeypatch):
    fake = {"torch": "2.9.1", "pillow": "13.0.0"}
    monkeypatch.setattr(importlib.metadata, "version", fake.__getitem__)
    with pytest.warns(safety.InsecureVersionWarning, match=r"torch 2\.9\.1 .*torch>=2\.10"):
        importlib.reload(course_utils)
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error", safety.InsecureVersionWarning)
        importlib.reload(course_utils)  # the versions installed here are safe: no warning
