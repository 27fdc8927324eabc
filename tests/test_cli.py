"""The command line, run in-process through ``cli.main`` (one subprocess proves the entry point).

One ResNet-18 is trained once for the module (smoke profile, one step at 32 px); the other tests
reuse its checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision

from course_utils import config, zoo
from course_utils.checkpoints import load_checkpoint, save_checkpoint
from course_utils.cli import common, main
from course_utils.data import CLASSES, bundled_records
from course_utils.data.folders import FolderLayoutError, folder_records
from course_utils.errors import CourseError
from course_utils.recipe import Recipe

# One optimiser step: the smoke profile's train split has 48 images.
TINY = ["--arch", "resnet18", "--profile", "smoke", "--epochs", "1", "--batch-size", "48"]
TINY += ["--image-size", "32"]
PROBABILITIES = re.compile(r": (cat|dog) \(cat \d+\.\d%, dog \d+\.\d%\)$")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[list[str], Path]:
    """Output lines and checkpoint of one CLI training run into the default (cache) folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(config.ARTIFACTS_DIR_ENV, str(tmp_path_factory.mktemp("artifacts")))
        patch.setenv(config.DEVICE_ENV, "cpu")
        patch.setenv("CI", "1")  # no progress bars
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["train", *TINY]) == 0
        lines = out.getvalue().splitlines()
        yield lines, Path(lines[-1])


@pytest.fixture
def pets(tmp_path) -> Path:
    """A user folder: two bundled test images per class and a file that is not an image."""
    root = tmp_path / "my pets"
    for label, name in enumerate(CLASSES):
        folder = root / f"{name}s"
        folder.mkdir(parents=True)
        for record in [r for r in bundled_records("test") if r.label == label][:2]:
            shutil.copy(record.image_path, folder)
    (root / "dogs" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``python -m course_utils ARGV``."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_ends_with_the_checkpoint_that_load_or_train_reuses(trained, capsys):
    lines, checkpoint = trained
    assert checkpoint.name == "last.pt" and checkpoint.is_file()
    assert lines[-1] == str(checkpoint) and lines[-2].startswith("done: epoch 1/1, val acc")
    profile = config.get_profile("smoke")
    sizes = {"epochs": 1, "batch_size": 48, "image_size": 32}
    recipe = Recipe.from_profile(profile, "resnet18", **sizes)
    data = zoo.training_data(recipe, profile)
    assert checkpoint.parent == zoo.run_dir(zoo.cache_key(recipe, profile, data))
    zoo.load_or_train("resnet18", profile="smoke", progress=False, **sizes)
    assert capsys.readouterr().out.startswith("load_or_train: loaded resnet18-scratch-smoke-")


def test_train_never_overwrites_a_run_without_resume_or_force(trained, capsys):
    folder = trained[1].parent
    code, out, err = run(capsys, "train", *TINY, "--output", str(folder))
    assert code == 2 and out == ""
    assert "already holds a training run" in err and "--resume" in err and "--force" in err
    assert "Traceback" not in err

    code, out, _ = run(capsys, "train", *TINY, "--output", str(folder), "--resume")
    assert code == 0 and out.splitlines()[-1] == str(trained[1])  # finished: nothing to train


def test_force_moves_the_old_run_aside_and_trains_afresh(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"an old run")
    code, out, _ = run(capsys, "train", *TINY, "--output", str(tmp_path / "run"), "--force")
    assert code == 0 and out.splitlines()[-1] == str(tmp_path / "run" / "last.pt")
    (backup,) = tmp_path.glob("run.bak-*")
    assert (backup / "last.pt").read_bytes() == b"an old run"
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1


def test_breed_balanced_training_is_its_own_recipe(tmp_path, capsys):
    code, out, _ = run(capsys, "train", *TINY, "--breed-balanced", "--output", str(tmp_path / "r"))
    recipe_line = next(line for line in out.splitlines() if line.startswith("recipe: "))
    assert code == 0 and "breed-balanced sampling" in recipe_line
    assert load_checkpoint(tmp_path / "r" / "last.pt")["recipe"]["breed_balanced"] is True


def test_an_interrupted_run_says_how_to_resume(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo, "fit", interrupted)
    code, _, err = run(capsys, "train", *TINY, "--output", str(tmp_path / "run"))
    assert code == 130 and "--resume" in err


def test_imagenet_regime_offline_says_so_and_writes_nothing(tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    output = tmp_path / "run"
    code, _, err = run(capsys, "train", *TINY, "--regime", "imagenet", "--output", str(output))
    assert code == 2 and "offline" in err and "--regime scratch" in err
    assert "Traceback" not in err and not output.exists()


def test_evaluate_on_the_bundled_test_split(trained, capsys):
    checkpoint = trained[1]
    code, out, _ = run(capsys, "evaluate", "--checkpoint", str(checkpoint), "--image-size", "32")
    assert code == 0
    test = bundled_records("test")
    assert re.search(rf"accuracy: \d+\.\d% \(95% CI [\d.]+% to [\d.]+%, n={len(test)}\)", out)
    assert "true cat" in out and "predicted dog" in out and "per-breed accuracy" in out
    csv = checkpoint.parent / "predictions-bundled-test.csv"
    assert out.splitlines()[-1].split(": ")[-1] == config.display_path(csv)
    assert out.splitlines()[-1].split(": ")[-1].startswith("$COURSE_ARTIFACTS_DIR/checkpoints/")
    frame = pd.read_csv(csv)
    assert frame.image_path.tolist() == [str(r.image_path) for r in test]
    assert {"breed", "label", "predicted", "correct", "p_cat", "p_dog"} <= set(frame.columns)


def test_evaluate_on_a_folder_lists_skipped_files_and_never_overwrites(trained, pets, capsys):
    argv = ["evaluate", "--checkpoint", str(trained[1]), "--data", str(pets)]
    argv += ["--output", str(pets.parent / "out.csv")]
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "trained at 32 px); running at 32 px" in out
    assert "Skipped 1 file(s)" in out and "broken.jpg: not an image" in out
    assert "per-breed" not in out and len(pd.read_csv(pets.parent / "out.csv")) == 4

    code, out, _ = run(capsys, *argv)
    assert code == 0 and out.splitlines()[-1].endswith("out-1.csv")
    assert (pets.parent / "out-1.csv").is_file()


def test_evaluate_on_a_wrong_layout_shows_the_expected_one(trained, pets, capsys):
    code, out, err = run(
        capsys, "evaluate", "--checkpoint", str(trained[1]), "--data", str(pets / "cats")
    )
    assert code == 2 and "no 'dogs/' folder" in err and "Expected layout" in err
    assert "Traceback" not in err


def test_predict_prints_each_image_and_says_why_one_failed(trained, pets, capsys):
    missing, broken = pets / "missing.jpg", pets / "dogs" / "broken.jpg"
    cat = next(pets.glob("cats/*.jpg"))
    dog = next(p for p in pets.glob("dogs/*.jpg") if p != broken)
    argv = ["predict", "--checkpoint", str(trained[1])]
    code, out, _ = run(capsys, *argv, str(cat), str(missing), str(broken), str(dog))
    lines = out.splitlines()[-5:-1]
    assert code == 0 and out.splitlines()[-1].startswith("classified 2 of 4 files")
    assert lines[0].startswith(str(cat)) and PROBABILITIES.search(lines[0])
    assert lines[1] == f"{missing}: cannot classify: no such file"
    assert lines[2].startswith(f"{broken}: cannot classify: not an image (")
    assert lines[3].startswith(str(dog)) and PROBABILITIES.search(lines[3])

    code, out, err = run(capsys, *argv, str(missing))
    assert code == 2 and "none of the 1 image(s) could be classified" in err


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_missing_or_foreign_checkpoint_is_a_clear_error(command, pets, capsys):
    image = str(next(pets.glob("cats/*.jpg")))
    for checkpoint, message in ((pets / "nope.pt", "No checkpoint at"), (image, "not a")):
        images = [image] if command == "predict" else []
        code, _, err = run(capsys, command, "--checkpoint", str(checkpoint), *images)
        assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "bench"])
def test_every_command_has_complete_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "example" in out and "default" in out


def test_the_entry_point_runs():
    done = subprocess.run(
        [sys.executable, "-m", "course_utils", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert all(command in done.stdout for command in ("train", "evaluate", "predict"))
    assert "usage: python -m course_utils" in done.stdout


def test_bad_numbers_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", *TINY[:-1], "0"])
    assert exit_.value.code == 2 and "expected a number >= 1" in capsys.readouterr().err


def test_a_folder_without_images_is_a_clear_error(trained, tmp_path, capsys):
    for name in ("cats", "dogs"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "broken.jpg").write_bytes(b"not a jpeg")
    code, _, err = run(capsys, "evaluate", "--checkpoint", str(trained[1]), "--data", str(tmp_path))
    assert code == 2 and "error: No usable images under" in err and "broken.jpg" in err


def test_a_wrong_layout_is_a_course_error_and_still_a_value_error(tmp_path):
    (tmp_path / "cats").mkdir()
    with pytest.raises(FolderLayoutError, match="no 'dogs/' folder") as error:
        folder_records(tmp_path)
    assert isinstance(error.value, CourseError) and isinstance(error.value, ValueError)


def test_a_checkpoint_without_its_image_size_asks_for_one(trained, tmp_path, capsys):
    state = load_checkpoint(trained[1])
    del state["recipe"]
    old = save_checkpoint(tmp_path / "old.pt", state)
    image = str(bundled_records("test")[0].image_path)
    code, _, err = run(capsys, "predict", "--checkpoint", str(old), image)
    assert code == 2 and "does not record its training image size: add --image-size" in err
    code, out, _ = run(capsys, "predict", "--checkpoint", str(old), "--image-size", "32", image)
    assert code == 0 and PROBABILITIES.search(out.splitlines()[-1])


def test_a_course_error_is_a_message_and_exit_code_2(pets, capsys, monkeypatch):
    def unusable(*args, **kwargs):
        raise CourseError("fix this (test)")

    monkeypatch.setattr(common, "model_from_checkpoint", unusable)
    image = str(next(pets.glob("cats/*.jpg")))
    code, out, err = run(capsys, "predict", "--checkpoint", image, image)
    assert (code, out) == (2, "")
    assert err == "python -m course_utils predict: error: fix this (test)\n"


def test_a_bug_keeps_its_traceback(pets, capsys, monkeypatch):
    def bug(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(torch, "load", bug)  # deep inside: checkpoints.load_checkpoint calls it
    image = str(next(pets.glob("cats/*.jpg")))
    with pytest.raises(ValueError, match="boom"):
        main(["predict", "--checkpoint", image, image])
    assert "error:" not in capsys.readouterr().err
