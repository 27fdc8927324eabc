"""Workshop archives: the course's run list against the notebooks, pack -> unpack -> load, and
every refusal (each leaving nothing behind).

One ResNet-18 (smoke profile, 32 px, one epoch of one step) is packed once for the module; the
refusal tests rewrite that archive.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import io
import itertools
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from course_utils import config, cost, models, workshop, zoo
from course_utils.checkpoints import load_checkpoint
from course_utils.cli import main
from course_utils.recipe import Recipe
from course_utils.runs import RESUME_KEYS, NotResumable, RunFolder

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SIZES = {"image_size": 32, "epochs": 1, "batch_size": 48}  # one step: 48 smoke train images
TINY_RUN = workshop.CourseRun("resnet18", overrides=SIZES)
Members = list[tuple[tarfile.TarInfo, bytes]]


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> tuple[Path, dict, dict[str, torch.Tensor]]:
    """The archive, its manifest and the instructor's trained weights."""
    root = tmp_path_factory.mktemp("instructor")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(config.ARTIFACTS_DIR_ENV, str(root / "artifacts"))
        patch.setenv(config.DEVICE_ENV, "cpu")
        archive = root / "course-weights-smoke.tar"
        manifest = workshop.pack(archive, config.get_profile("smoke"), [TINY_RUN], progress=False)
        model, _ = zoo.load_or_train("resnet18", profile="smoke", progress=False, **SIZES)
        yield archive, manifest, model.state_dict()


@pytest.fixture
def attendee(tmp_path, monkeypatch) -> Path:
    """A fresh artifacts folder (not created yet) that load_or_train uses."""
    monkeypatch.setenv(config.ARTIFACTS_DIR_ENV, str(tmp_path / "attendee"))
    monkeypatch.setenv(config.DEVICE_ENV, "cpu")
    return tmp_path / "attendee"


def snapshot(root: Path) -> dict[str, str] | None:
    """Every path under ``root`` with its sha256 (folders: ""); None when ``root`` is missing."""
    if not root.exists():
        return None
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        for p in sorted(root.rglob("*"))
    }


def members(archive: Path) -> Members:
    with tarfile.open(archive) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def write_tar(path: Path, entries: Members) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            info = copy.copy(info)
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def with_manifest(entries: Members, change: Callable[[dict], None]) -> Members:
    """``entries`` with ``change`` applied to the manifest."""
    manifest = json.loads(entries[0][1])
    change(manifest)
    return [(entries[0][0], json.dumps(manifest).encode()), *entries[1:]]


def special(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, b""


def plain(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), b"print('hello')\n"


def retrained(entries: Members) -> Members:
    """The run claims another seed: manifest, folder name and member paths all agree with the
    claim, so only the checkpoint inside (trained with seed 0) gives it away."""
    manifest = json.loads(entries[0][1])
    run = manifest["runs"][0]
    old = run["folder"]
    run["recipe"]["seed"] = run["cache_key"]["recipe"]["seed"] = 1
    run["folder"] = zoo.run_dir(run["cache_key"]).name
    renamed = []
    for info, data in entries[1:]:
        info = copy.copy(info)
        info.name = info.name.replace(old, run["folder"])
        renamed.append((info, data))
    return [(entries[0][0], json.dumps(manifest).encode()), *renamed]


def flip_a_weight_byte(archive: Path, out: Path) -> Path:
    with tarfile.open(archive) as tar:
        last = next(m for m in tar.getmembers() if m.name.endswith("last.pt"))
    data = bytearray(archive.read_bytes())
    data[last.offset_data + last.size // 2] ^= 0xFF
    out.write_bytes(data)
    return out


def truncate(archive: Path, out: Path) -> Path:
    out.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    return out


def folder_of(manifest: dict) -> str:
    return f"checkpoints/{manifest['runs'][0]['folder']}"


BAD_ARCHIVES: dict[str, tuple[Callable[[Path, Members, str, Path], Path], str]] = {
    "a flipped byte": (
        lambda a, e, f, out: flip_a_weight_byte(a, out),
        "does not match its sha256",
    ),
    "a truncated file": (lambda a, e, f, out: truncate(a, out), "truncated"),
    "no manifest": (lambda a, e, f, out: write_tar(out, e[1:]), r"not a course workshop archive"),
    "another format version": (
        lambda a, e, f, out: write_tar(
            out, with_manifest(e, lambda m: m.update(format="course_utils.workshop/0"))
        ),
        "another version of course_utils.*Pack it again",
    ),
    "a foreign manifest": (
        lambda a, e, f, out: write_tar(out, with_manifest(e, lambda m: m.update(format="npm"))),
        "not a course workshop archive",
    ),
    "a '../x' member": (lambda a, e, f, out: write_tar(out, [*e, plain("../x")]), "unsafe path"),
    "a '..' inside": (
        lambda a, e, f, out: write_tar(out, [*e, plain(f"{f}/../../../x")]),
        "unsafe path",
    ),
    "an absolute member": (lambda a, e, f, out: write_tar(out, [*e, plain("/x")]), "unsafe path"),
    "a symlink member": (
        lambda a, e, f, out: write_tar(out, [*e, special(f"{f}/x", tarfile.SYMTYPE, "/etc")]),
        "is a symbolic link",
    ),
    "a hardlink member": (
        lambda a, e, f, out: write_tar(out, [*e, special(f"{f}/x", tarfile.LNKTYPE, "/etc")]),
        "is a hard link",
    ),
    "a device member": (
        lambda a, e, f, out: write_tar(out, [*e, special(f"{f}/x", tarfile.CHRTYPE)]),
        "is a character device",
    ),
    "an unlisted member": (
        lambda a, e, f, out: write_tar(out, [*e, plain(f"{f}/extra.py")]),
        "does not list",
    ),
    "a run of another profile": (
        lambda a, e, f, out: write_tar(out, with_manifest(e, lambda m: m.update(profile="cpu"))),
        "of profile 'smoke', not 'cpu'",
    ),
    "a key that names another folder": (
        lambda a, e, f, out: write_tar(
            out, with_manifest(e, lambda m: m["runs"][0]["cache_key"]["recipe"].update(seed=1))
        ),
        "holds another recipe.*names the folder",
    ),
    "a checkpoint of another key": (
        lambda a, e, f, out: write_tar(out, retrained(e)),
        "checkpoint was trained with another recipe",
    ),
}


def test_the_run_list_covers_every_load_or_train_call_of_the_notebooks():
    """Both ways: every notebook call is packed, and nothing the notebooks never ask for."""
    profile = config.get_profile("smoke")
    found = notebook_calls(profile)
    assert len(found) == 9  # the parser found the calls of notebooks 04-07
    listed = {
        (r.arch, r.regime, tuple(sorted(r.resolved(profile).items()))) for r in workshop.COURSE_RUNS
    }
    assert found == listed
    imagenet = {call for call in found if call[1] == "imagenet"}
    assert {call[0] for call in imagenet} == {"resnet50", "resnet101"}  # packed where available


def test_a_run_the_profile_does_not_train_is_listed_as_skipped(tmp_path, monkeypatch):
    """Notebook 04's breed-balanced trial is not trained in cpu: packing for cpu skips it."""
    monkeypatch.setattr(zoo, "load_or_train", lambda *a, **k: pytest.fail("trained it"))
    trial = workshop.BREED_BALANCED_TRIAL
    manifest = workshop.pack(tmp_path / "w.tar", config.get_profile("cpu"), [trial])
    assert manifest["runs"] == [] and manifest["skipped"][0]["run"] == trial.describe()
    assert "not train it in the cpu profile" in manifest["skipped"][0]["reason"]
    assert trial.wanted_in(config.get_profile("smoke")) and trial in workshop.COURSE_RUNS


def test_the_cost_matched_size_is_notebook_05s():
    assert workshop.cost_matched_image_size(config.get_profile("cpu")) == 96


def test_pack_unpack_then_load_or_train_loads_without_training(
    packed, attendee, monkeypatch, caplog
):
    archive, manifest, weights = packed
    assert manifest["format"] == workshop.WORKSHOP_FORMAT and manifest["profile"] == "smoke"
    assert manifest["versions"]["torch"] == torch.__version__ and manifest["skipped"] == []
    run = manifest["runs"][0]
    assert (
        run["recipe"]
        == Recipe.from_profile(config.get_profile("smoke"), "resnet18", **SIZES).to_dict()
    )
    assert run["cache_key"]["recipe"] == run["recipe"] and run["folder"].startswith(
        "resnet18-scratch-smoke-"
    )

    done = workshop.unpack(archive)
    assert done.added == [run["folder"]] and not done.skipped and not done.replaced
    folder = attendee / "checkpoints" / run["folder"]
    assert sorted(p.name for p in folder.iterdir()) == ["history.csv", "history.json", "last.pt"]
    assert sorted(p.name for p in (attendee / "checkpoints").iterdir()) == [run["folder"]]
    for name, file in run["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == file["sha256"]
    assert not RESUME_KEYS & load_checkpoint(folder / "last.pt").keys()  # weights only

    caplog.set_level("INFO", logger="course_utils")

    def no_training(*args, **kwargs):
        raise AssertionError("load_or_train trained instead of loading the unpacked run")

    monkeypatch.setattr(zoo, "train_run", no_training)
    model, history = zoo.load_or_train("resnet18", profile="smoke", progress=False, **SIZES)
    lines = [m for m in caplog.messages if m.startswith("load_or_train:")]
    assert len(lines) == 1 and lines[0].startswith(
        f"load_or_train: loaded {run['folder']} (epoch 1"
    )
    assert len(history.records) == 1 and not model.training
    for name, tensor in weights.items():
        assert torch.equal(model.state_dict()[name], tensor), name

    recipe = Recipe(**run["recipe"])
    with pytest.raises(NotResumable, match="final weights only.*cannot be resumed"):
        RunFolder(folder).load_for_resume(recipe)

    before = snapshot(attendee)
    again = workshop.unpack(archive)
    assert again.skipped == [run["folder"]] and again.added == [] and snapshot(attendee) == before


@pytest.mark.parametrize("case", list(BAD_ARCHIVES))
def test_a_bad_archive_is_refused_and_nothing_is_written(packed, attendee, tmp_path, case):
    archive, manifest, _ = packed
    make, message = BAD_ARCHIVES[case]
    bad = make(archive, members(archive), folder_of(manifest), tmp_path / "bad.tar")
    with pytest.raises(workshop.ArchiveError, match=message):
        workshop.verify(bad)
    with pytest.raises(workshop.ArchiveError, match=message):
        workshop.unpack(bad)
    assert not attendee.exists()
    attendee.mkdir()
    (attendee / "mine.txt").write_text("the user's")
    with pytest.raises(workshop.ArchiveError, match=message):
        workshop.unpack(bad)
    assert snapshot(attendee) == {"mine.txt": hashlib.sha256(b"the user's").hexdigest()}


def test_an_existing_different_run_is_kept_unless_replace(packed, attendee):
    archive, manifest, _ = packed
    name = manifest["runs"][0]["folder"]
    mine = attendee / "checkpoints" / name
    mine.mkdir(parents=True)
    (mine / "last.pt").write_bytes(b"the user's own run")
    before = snapshot(attendee)
    with pytest.raises(workshop.ArchiveError, match=f"already holds other runs.*{name}.*--replace"):
        workshop.unpack(archive)
    assert snapshot(attendee) == before

    done = workshop.unpack(archive, replace=True)
    assert done.added == [name] and done.replaced[name].name.startswith(f"{name}.bak-")
    assert (done.replaced[name] / "last.pt").read_bytes() == b"the user's own run"
    for file, listed in manifest["runs"][0]["files"].items():
        assert hashlib.sha256((mine / file).read_bytes()).hexdigest() == listed["sha256"]
    assert workshop.unpack(archive).skipped == [name]


def test_the_command_line(packed, attendee, tmp_path, capsys):
    archive, manifest, _ = packed
    with pytest.raises(SystemExit) as exit_info:
        main(["workshop", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "pack" in out and "unpack" in out
    for run in workshop.COURSE_RUNS:
        assert run.describe() in out

    assert main(["workshop", "verify", str(archive)]) == 0
    assert "OK, every file matches its sha256" in capsys.readouterr().out
    into = tmp_path / "weights"
    assert main(["workshop", "unpack", str(archive), "--into", str(into)]) == 0
    out = capsys.readouterr().out
    assert manifest["runs"][0]["folder"] in out and "unpacked 1 runs" in out
    assert (into / "checkpoints" / manifest["runs"][0]["folder"] / "last.pt").is_file()

    bad = write_tar(tmp_path / "bad.tar", [*members(archive), plain("../x")])
    assert main(["workshop", "unpack", str(bad)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("python -m course_utils workshop: error: Refusing") and "unsafe path" in err
    )
    assert not attendee.exists()


# ------------------------------------------------------------ the notebooks' load_or_train calls


def notebook_calls(
    profile: config.Profile, folder: Path = NOTEBOOKS
) -> set[tuple[str, str, tuple]]:
    """``(arch, regime, sorted overrides)`` of every ``load_or_train(`` call in the notebooks'
    code cells at ``profile``: loop variables expanded, names resolved through the notebook's own
    assignments (what they need from trained networks, only their MACs, from untrained ones)."""
    stand_ins = {
        "profile": profile,
        "cost": cost,
        "networks": {a: models.build_model(a, num_classes=2) for a in ("resnet50", "resnet101")},
    }
    calls = set()
    for path in sorted(folder.glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        trees = [ast.parse("".join(c["source"])) for c in cells if c["cell_type"] == "code"]
        assigned = {
            node.targets[0].id: node.value
            for tree in trees
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
        }
        for tree in trees:
            for call, loops in _load_or_train_calls(tree):
                names = dict(stand_ins)
                ranges = [_evaluate(iterable, names, assigned) for _, iterable in loops]
                for bound in itertools.product(*ranges):
                    scope = {**names, **{var: v for (var, _), v in zip(loops, bound, strict=True)}}
                    args = [_evaluate(arg, scope, assigned) for arg in call.args]
                    kwargs = {k.arg: _evaluate(k.value, scope, assigned) for k in call.keywords}
                    regime = args[1] if len(args) > 1 else kwargs.pop("regime", "scratch")
                    calls.add((args[0], regime, tuple(sorted(kwargs.items()))))
    return calls


def _load_or_train_calls(tree: ast.Module) -> list[tuple[ast.Call, list[tuple[str, ast.expr]]]]:
    """Each ``load_or_train(...)`` call with the ``(variable, iterable)`` of the for loops and
    comprehensions around it."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        func = getattr(node, "func", None)
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name != "load_or_train":
            continue
        loops, up = [], node
        while (up := parents.get(up)) is not None:
            if isinstance(up, ast.For):
                loops.append((up.target.id, up.iter))
            elif isinstance(up, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                loops += [(g.target.id, g.iter) for g in up.generators]
        found.append((node, loops))
    return found


def _evaluate(node: ast.expr, names: dict, assigned: dict[str, ast.expr]) -> object:
    """The value of ``node``; names it uses that are not in ``names`` first, from ``assigned``."""
    for name in {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} - names.keys():
        if name in assigned:
            names[name] = _evaluate(assigned[name], names, assigned)
    code = compile(ast.Expression(node), "<notebook>", "eval")
    return eval(code, {"__builtins__": {"round": round}, **names})  # noqa: S307


def test_the_notebook_parser_sees_a_new_call(tmp_path):
    """The coverage test can fail: a notebook asking for an unlisted network is noticed."""
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "source": ["SIZE = 160\n", "zoo.load_or_train('resnet50', image_size=SIZE)"],
            }
        ]
    }
    (tmp_path / "99_extra.ipynb").write_text(json.dumps(notebook))
    assert notebook_calls(config.get_profile("smoke"), tmp_path) == {
        ("resnet50", "scratch", (("image_size", 160),))
    }
