"""Data-parallel training for real: torchrun, gloo on the CPU, two processes.

Each torchrun launch costs seconds of interpreter start-up, so there are few of them, on tiny
runs: ``distributed_fit.py`` (a BatchNorm-free net on 26 fixed images, 6 steps) and the
command line on the smoke profile at 32 px (2 epochs of 2 steps). Weights are compared with a
tolerance of ``ATOL`` (float rounding of the gradient all-reduce; measured: about 2e-8).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_fit import train
from torch.utils.data import TensorDataset

from course_utils import config, distributed
from course_utils.checkpoints import load_checkpoint, save_checkpoint
from course_utils.cli import main
from course_utils.data import make_loader
from course_utils.errors import CourseError
from course_utils.runs import model_from_checkpoint
from course_utils.train import epoch_seed, set_loader_epoch

ATOL = 1e-6
TESTS = Path(__file__).resolve().parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
FIT = str(TESTS / "distributed_fit.py")
# The command line's smoke run: 64 training images in global batches of 32, 2 epochs.
TINY = ["--arch", "resnet18", "--profile", "smoke", "--epochs", "2", "--batch-size", "32"]
TINY += ["--image-size", "32"]
RUN_FILES = {"last.pt", "best.pt", "history.json", "history.csv"}


def torchrun(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``torchrun ARGS`` on the CPU (checked: exit code 0), with stdout and stderr captured."""
    done = subprocess.run(
        [*TORCHRUN, *args],
        env=environment(env),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=TESTS.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test process's environment on the CPU, one thread per process, no progress bars."""
    return {
        **os.environ,
        config.DEVICE_ENV: "cpu",
        "OMP_NUM_THREADS": "1",
        "CI": "1",
        **(extra or {}),
    }


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(folder / "last.pt")["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert torch.allclose(tensor.float(), b[name].float(), rtol=0, atol=ATOL), name


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """The run folder of ``distributed_fit.py`` in 2 processes on one machine."""
    folder = tmp_path_factory.mktemp("ddp") / "run"
    torchrun("--standalone", "--nproc-per-node=2", FIT, str(folder))
    return folder


def test_the_shards_of_a_global_batch_are_the_single_process_batch():
    """Rank r's batch i holds every other image of a single process's batch i, every epoch."""
    data = TensorDataset(torch.arange(26))
    single = make_loader(data, 8, train=True, num_workers=0)
    shards = [
        distributed.shard_loader(single, distributed.Launch(rank, rank, 2, 0, ""), epoch_seed(0, 0))
        for rank in (0, 1)
    ]
    orders = []
    for epoch in (0, 1):
        set_loader_epoch(single, seed=0, epoch=epoch)
        for rank, shard in enumerate(shards):
            distributed.seed_epoch(shard, seed=0, epoch=epoch, rank=rank)
        batches = [batch.tolist() for (batch,) in single]
        sharded = [[batch.tolist() for (batch,) in shard] for shard in shards]
        assert len(batches) == len(sharded[0]) == len(sharded[1]) == 3
        for i, batch in enumerate(batches):
            assert sharded[0][i] == batch[0::2] and sharded[1][i] == batch[1::2]
        orders.append(batches)
    assert orders[0] != orders[1]


def test_weighted_sampling_under_torchrun_is_a_clear_error():
    data = TensorDataset(torch.arange(8))
    weighted = make_loader(data, 4, train=True, num_workers=0, weights=[1.0] * 8)
    with pytest.raises(CourseError, match="one process, without torchrun"):
        distributed.shard_loader(weighted, distributed.Launch(0, 0, 2, 0, ""), epoch_seed(0, 0))


def test_the_global_batch_must_divide_among_the_processes():
    assert distributed.local_batch_size(32, 4) == 8
    with pytest.raises(CourseError, match="batch size 30 is the global batch.*multiple of 4"):
        distributed.local_batch_size(30, 4)


def test_sync_batchnorm_on_the_cpu_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(config.DEVICE_ENV, "cpu")
    code = main(["train", *TINY, "--output", str(tmp_path / "run"), "--sync-bn"])
    err = capsys.readouterr().err
    assert code == 2 and "SyncBatchNorm needs CUDA" in err and "Leave out --sync-bn" in err
    assert not (tmp_path / "run").exists()


def test_a_restart_resumes_only_a_run_of_its_own_launch(tmp_path):
    last = tmp_path / "last.pt"
    save_checkpoint(last, {"arch": "resnet18", "num_classes": 2, "model": {}, "meta": {}})
    ours = distributed.Launch(rank=0, local_rank=0, world_size=2, restart_count=1, run_id="a")
    assert not distributed.resumes_after_restart(last, ours)  # the user's run
    meta = {distributed.META_KEY: {"torchrun_run_id": "a"}}
    save_checkpoint(last, {"arch": "resnet18", "num_classes": 2, "model": {}, "meta": meta})
    assert distributed.resumes_after_restart(last, ours)
    first_attempt = distributed.Launch(0, 0, 2, restart_count=0, run_id="a")
    other_launch = distributed.Launch(0, 0, 2, restart_count=1, run_id="b")
    assert not distributed.resumes_after_restart(last, first_attempt)
    assert not distributed.resumes_after_restart(last, other_launch)


def test_two_processes_reach_the_weights_of_one(two_processes, tmp_path):
    """Same global batch of 8 (2 x 4 images), same data order: the same weights and history."""
    train(tmp_path / "single")
    single = load_checkpoint(tmp_path / "single" / "last.pt")
    ddp = load_checkpoint(two_processes / "last.pt")
    assert_same_weights(single["model"], ddp["model"])  # also: no "module." prefix
    for one, two in zip(single["history"], ddp["history"], strict=True):
        assert two["train_loss"] == pytest.approx(one["train_loss"], abs=ATOL)
        assert two["val_loss"] == pytest.approx(one["val_loss"], abs=ATOL)
        assert (two["train_acc"], two["val_acc"]) == pytest.approx(
            (one["train_acc"], one["val_acc"])
        )
    assert ddp["meta"][distributed.META_KEY]["world_size"] == 2
    assert {p.name for p in two_processes.iterdir()} == RUN_FILES


def test_two_machines_give_the_result_of_two_processes_on_one(two_processes, tmp_path):
    """Two torchrun agents ("nodes") meeting on 127.0.0.1, one process each."""
    folder = tmp_path / "run"
    port = str(free_port())
    nodes = [
        subprocess.Popen(
            [*TORCHRUN, "--nnodes=2", f"--node-rank={rank}", "--nproc-per-node=1"]
            + ["--master-addr=127.0.0.1", f"--master-port={port}", FIT, str(folder)],
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=TESTS.parent,
        )
        for rank in (0, 1)
    ]
    for node in nodes:
        _, err = node.communicate(timeout=240)
        assert node.returncode == 0, err[-3000:]
    assert_same_weights(weights(two_processes), weights(folder))


def test_a_killed_worker_is_restarted_and_the_run_resumes(tmp_path):
    """``COURSE_FAIL_AT_STEP=3`` kills rank 1 in epoch 2; torchrun restarts the group, which
    resumes from epoch 1's ``last.pt`` and ends at the uninterrupted run's weights. ``--force``
    moved the user's old run aside once, and the restart leaves it alone."""
    command = ["--standalone", "--nproc-per-node=2", "-m", "course_utils", "train", *TINY]
    straight = torchrun(*command, "--output", str(tmp_path / "straight"))
    assert straight.stdout.splitlines()[-1] == str(tmp_path / "straight" / "last.pt")

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "last.pt").write_bytes(b"an old run")
    (folder / "notes.txt").write_text("mine")
    faulted = torchrun(
        "--max-restarts=1",
        *command,
        "--output",
        str(folder),
        "--force",
        env={distributed.FAIL_AT_STEP_ENV: "3"},
    )
    out = faulted.stdout
    assert f"{distributed.FAIL_AT_STEP_ENV}=3: rank 1 exits with code 3" in out
    assert "restarted by torchrun: resuming this launch's run" in out
    assert out.count("profile: smoke") == 2 and out.count("done: epoch 2/2") == 1  # rank 0 only
    assert out.count("epoch   1/2") == out.count("epoch   2/2") == 1  # epoch 1 not redone
    assert out.splitlines()[-1] == str(folder / "last.pt")

    (backup,) = tmp_path.glob("run.bak-*")
    assert (backup / "last.pt").read_bytes() == b"an old run"
    assert (backup / "notes.txt").read_text() == "mine"
    assert {p.name for p in folder.iterdir()} == RUN_FILES
    assert not list(tmp_path.rglob("*.tmp"))
    assert_same_weights(weights(tmp_path / "straight"), weights(folder))
    model, info = model_from_checkpoint(folder / "last.pt", expected_arch="resnet18")
    assert [r["epoch"] for r in info["history"]] == [1, 2] and not model.training
