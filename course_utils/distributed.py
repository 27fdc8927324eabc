"""Data-parallel training: the same loop in several processes, launched by ``torchrun``.

``torchrun`` starts one process per device and tells each its place through environment
variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``TORCHELASTIC_RESTART_COUNT``,
``TORCHELASTIC_RUN_ID``). :func:`process_group` turns them into a process group (``nccl`` on
CUDA, each process on the GPU of its ``LOCAL_RANK``; ``gloo`` on the CPU) and destroys it at the
end, also on an error. :func:`course_utils.train.fit` sees the group (:func:`current`) and then:

- splits ``recipe.batch_size``, the *global* batch, into ``batch_size / world_size`` per process
  (:func:`local_batch_size`: an error unless it divides);
- loads through a ``DistributedSampler`` seeded like the single process's shuffle
  (:func:`shard_loader`): it draws the same permutation and deals it out interleaved (rank ``r``
  takes positions ``r, r + W, ...``), so global batch ``i`` holds the images of a single
  process's batch ``i``, and DDP's averaged gradient is the global batch's mean gradient. Two
  things differ by design: BatchNorm statistics (each process normalises over its own
  ``batch / W`` images) and random augmentation (each process seeds its RNGs, and its loader
  workers, per ``(seed, epoch, rank)``: :func:`seed_epoch`);
- wraps the network in ``DistributedDataParallel`` for each epoch (:func:`wrap`; anew, because
  the ``imagenet`` regime changes which parameters train), while checkpoints hold the unwrapped
  network's ``state_dict`` (no ``module.`` prefix);
- validates, logs and writes the run folder on rank 0 only, which sends the epoch's record to
  the others (:func:`from_main`); the others wait at a barrier while it writes.

A restart is a resume: ``torchrun --max-restarts=N`` reruns the same command after a worker dies,
and the command line then continues the run from its ``last.pt`` when that file was written by
this launch (its ``TORCHELASTIC_RUN_ID``, stored in the checkpoint's ``meta``; unique per
``--standalone`` launch, give multi-node launches a ``--rdzv-id``): :func:`resumes_after_restart`.
Anything else is treated as on the first attempt, so a restart never overwrites another run.

Fault injection, for tests and demonstrations: ``COURSE_FAIL_AT_STEP=N`` makes the process of
rank ``COURSE_FAIL_RANK`` (default: the last) exit with code :data:`FAULT_EXIT_CODE` right after
global optimiser step ``N``, as a killed worker would (no clean-up), on the first attempt only
(``TORCHELASTIC_RESTART_COUNT`` 0), so that ``--max-restarts=1`` completes the run.

``torchrun`` sets ``OMP_NUM_THREADS=1`` where it is unset; CPU processes that should use more
cores each need it set explicitly.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, WeightedRandomSampler

from course_utils.checkpoints import CheckpointError, load_checkpoint
from course_utils.config import seed_everything
from course_utils.errors import CourseError

log = logging.getLogger(__name__)

FAIL_AT_STEP_ENV = "COURSE_FAIL_AT_STEP"
FAIL_RANK_ENV = "COURSE_FAIL_RANK"
FAULT_EXIT_CODE = 3
META_KEY = "distributed"  # the checkpoint meta entry that describes the launch

T = TypeVar("T")


@dataclass(frozen=True)
class Launch:
    """This process's place in a multi-process run."""

    rank: int
    local_rank: int  # the process's index on its machine: its GPU
    world_size: int
    restart_count: int  # 0 on torchrun's first attempt
    run_id: str  # torchrun's TORCHELASTIC_RUN_ID ("" without torchrun)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that validates, logs and writes."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This process's device: the GPU of its local rank on CUDA, else ``device``."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" else device

    def describe(self) -> dict[str, Any]:
        """Plain values for the checkpoint's meta."""
        return {
            "world_size": self.world_size,
            "backend": str(dist.get_backend()),
            "torchrun_run_id": self.run_id,
        }


def _env_int(name: str, default: int) -> int:
    """An integer environment variable, or ``default`` when unset."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise CourseError(f"${name} must be a whole number; got {text!r}.") from None


def launch_from_env() -> Launch | None:
    """The launch torchrun describes in the environment; ``None`` outside torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return None
    rank = _env_int("RANK", 0)
    return Launch(
        rank=rank,
        local_rank=_env_int("LOCAL_RANK", rank),
        world_size=_env_int("WORLD_SIZE", 1),
        restart_count=_env_int("TORCHELASTIC_RESTART_COUNT", 0),
        run_id=os.environ.get("TORCHELASTIC_RUN_ID", ""),
    )


def current() -> Launch | None:
    """The launch of the initialised process group; ``None`` without one (a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    rank = dist.get_rank()
    return Launch(
        rank=rank,
        local_rank=_env_int("LOCAL_RANK", rank),
        world_size=dist.get_world_size(),
        restart_count=_env_int("TORCHELASTIC_RESTART_COUNT", 0),
        run_id=os.environ.get("TORCHELASTIC_RUN_ID", ""),
    )


@contextmanager
def process_group(device: torch.device) -> Iterator[Launch | None]:
    """Join torchrun's process group for the block (``nccl`` on CUDA, else ``gloo``); yield the
    launch, or ``None`` (and do nothing) outside torchrun. The group is destroyed on exit."""
    launch = launch_from_env()
    if launch is None:
        yield None
        return
    if device.type == "cuda":
        torch.cuda.set_device(launch.local_rank)
    # torchrun's store outlives a restart, and with it the previous attempt's addresses, which
    # the new group would try to connect to (pytorch/pytorch#135712): one key prefix per attempt.
    store, rank, world_size = next(dist.rendezvous("env://"))
    store = dist.PrefixStore(f"course_utils/attempt_{launch.restart_count}", store)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size)
    try:
        yield launch
    finally:
        dist.destroy_process_group()


def local_batch_size(global_batch: int, world_size: int) -> int:
    """Images per process and step; the global batch must divide evenly among the processes."""
    if global_batch % world_size:
        raise CourseError(
            f"The batch size {global_batch} is the global batch: it must divide evenly among "
            f"the {world_size} processes. Use a multiple of {world_size} (--batch-size)."
        )
    return global_batch // world_size


def shard_loader(loader: DataLoader, launch: Launch, seed: int) -> DataLoader:
    """``loader`` as this process's share: ``batch_size / world_size`` images per batch, from a
    ``DistributedSampler`` whose permutation for epoch ``e`` is seeded ``seed + e``.

    Pass the seed the single-process shuffle uses at epoch 0 (``train.epoch_seed(seed, 0)``):
    the shards' batches ``i`` then hold exactly that loader's batch ``i`` (see the module
    docstring). Workers, pinning and ``drop_last`` are the loader's.
    """
    if loader.batch_size is None:
        raise ValueError("shard_loader needs a loader with a batch_size, not a batch_sampler.")
    if isinstance(loader.sampler, WeightedRandomSampler):
        raise CourseError(
            "breed-balanced (weighted) sampling has no DistributedSampler counterpart here: "
            "train that recipe in one process, without torchrun."
        )
    sampler = DistributedSampler(
        loader.dataset,
        num_replicas=launch.world_size,
        rank=launch.rank,
        shuffle=isinstance(loader.sampler, RandomSampler),
        seed=seed,
        drop_last=loader.drop_last,
    )
    return DataLoader(
        loader.dataset,
        batch_size=local_batch_size(loader.batch_size, launch.world_size),
        sampler=sampler,
        drop_last=loader.drop_last,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        worker_init_fn=loader.worker_init_fn,
        generator=torch.Generator(),
        persistent_workers=loader.persistent_workers,
        pin_memory=loader.pin_memory,
    )


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """A seed below 2**32 (numpy's limit) for every ``(seed, epoch, rank)``."""
    digest = hashlib.sha256(f"{seed}/{epoch}/{rank}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def seed_epoch(loader: DataLoader, seed: int, epoch: int, rank: int) -> None:
    """Seed this process's RNGs and its loader workers for ``epoch``; set the sampler's epoch.

    Every epoch starts from the same state whether the run was resumed or not, and each rank
    draws its own augmentations.
    """
    seed_everything(rank_seed(seed, epoch, rank))
    if loader.generator is not None:
        loader.generator.manual_seed(rank_seed(seed, epoch, rank))
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)


def wrap(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """``model`` in ``DistributedDataParallel``, for the parameters that train now; wrapping
    copies rank 0's weights and buffers to every process."""
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def check_sync_batchnorm(device: torch.device) -> None:
    """Raise :class:`CourseError` unless SyncBatchNorm can run on ``device`` (CUDA only)."""
    if device.type != "cuda":
        raise CourseError(
            f"SyncBatchNorm needs CUDA (the nccl backend); this run is on {device}. Leave out "
            "--sync-bn (sync_batchnorm): each process then normalises over its own images."
        )


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm layer a ``SyncBatchNorm`` (same parameters and buffers,
    so checkpoints keep their keys): statistics over the global batch. CUDA only."""
    check_sync_batchnorm(device)
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def barrier() -> None:
    """Wait until every process gets here."""
    dist.barrier()


def from_main(value: T) -> T:
    """Rank 0's ``value`` (plain Python values), on every process."""
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def check_same_everywhere(value: object, what: str) -> None:
    """Raise :class:`CourseError` on every process whose ``value`` differs from rank 0's."""
    main = from_main(value)
    if value != main:
        raise CourseError(
            f"Rank {dist.get_rank()} sees {what} {value!r}, rank 0 sees {main!r}: every process "
            "must read the same run folder (on several machines, put it on shared storage)."
        )


def combine_train_stats(stats: dict[str, float], device: torch.device) -> dict[str, float]:
    """One epoch's training statistics over all processes: loss and accuracy averaged (each
    process sees as many images), throughput summed; times stay this process's."""
    keys = ("train_loss", "train_acc", "images_per_s")
    totals = torch.tensor([stats[key] for key in keys], dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    loss, acc, images_per_s = totals.tolist()
    world = dist.get_world_size()
    return {
        **stats,
        "train_loss": loss / world,
        "train_acc": acc / world,
        "images_per_s": images_per_s,
    }


def fault_injector(launch: Launch) -> Callable[[int], None] | None:
    """The ``after_step`` callback that ``$COURSE_FAIL_AT_STEP`` asks for (module docstring), or
    ``None``: no fault asked, another rank's, or a restarted attempt."""
    fail_at = _env_int(FAIL_AT_STEP_ENV, 0)
    rank = _env_int(FAIL_RANK_ENV, launch.world_size - 1)
    if fail_at < 1 or rank != launch.rank or launch.restart_count > 0:
        return None

    def exit_at(step: int) -> None:
        if step == fail_at:
            log.error(
                "%s=%d: rank %d exits with code %d (injected fault)",
                FAIL_AT_STEP_ENV,
                fail_at,
                rank,
                FAULT_EXIT_CODE,
            )
            os._exit(FAULT_EXIT_CODE)  # no clean-up, as for a killed worker

    return exit_at


def resumes_after_restart(last: Path, launch: Launch | None) -> bool:
    """True on a torchrun restart whose launch wrote ``last`` (``last.pt``): continue it."""
    if launch is None or launch.restart_count == 0 or not last.is_file():
        return False
    try:
        meta = load_checkpoint(last).get("meta", {})
    except CheckpointError:
        return False
    return meta.get(META_KEY, {}).get("torchrun_run_id") == launch.run_id
