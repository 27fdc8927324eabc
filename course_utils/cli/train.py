"""``python -m course_utils train``: one training run, in the folder ``load_or_train`` uses.

Launched by ``torchrun``, the same command trains data-parallel (:mod:`course_utils.distributed`):
rank 0 alone prints, and a restarted group resumes its own run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from course_utils import distributed, zoo
from course_utils.cli.common import PROG, add_command, add_profile, positive_int
from course_utils.config import (
    DEFAULT_SEED,
    PROFILES,
    display_path,
    get_device,
    get_profile,
)
from course_utils.models import ARCHITECTURES, PretrainedWeightsUnavailable
from course_utils.recipe import REGIMES, Recipe
from course_utils.runs import LAST, RunExistsError, RunFolder
from course_utils.runtime import Runtime

EPILOG = f"""\
The run folder receives last.pt (written every epoch, resumable), best.pt (the epoch with the
best validation accuracy), history.json and history.csv (per-epoch metrics). The default folder
is load_or_train()'s cache, so a notebook asking for the same network, regime, profile and
settings loads this run instead of training again. Interrupted (Ctrl-C: exit code 130)? The
same command with --resume continues from the last completed epoch.

examples:
  {PROG} train --arch resnet50 --regime scratch --profile cpu
  {PROG} train --arch resnet101 --regime imagenet --profile gpu
  {PROG} train --arch resnet18 --profile smoke --epochs 1 --output runs/try
  {PROG} train --arch resnet50 --profile cpu --resume

Several GPUs or machines: launch the same command with torchrun. It then trains with
DistributedDataParallel, one process per GPU (nccl; CPU processes use gloo). --batch-size stays
the global batch, divided among the processes; rank 0 validates, prints and writes the run folder,
which every machine must be able to read (shared storage). A group that torchrun restarts
(--max-restarts) resumes its run from the last completed epoch by itself. torchrun sets
OMP_NUM_THREADS=1 where it is unset: give CPU processes more threads with OMP_NUM_THREADS=N.

  # one machine, 4 GPUs
  torchrun --standalone --nproc-per-node=4 -m course_utils train --arch resnet50 --profile gpu
  # two machines with 4 GPUs each: the same command on both, --node-rank=1 on the second
  torchrun --nnodes=2 --node-rank=0 --nproc-per-node=4 --master-addr=HOST0 --master-port=29500 \\
      --rdzv-id=r101 --max-restarts=1 -m course_utils train --arch resnet101 --profile gpu \\
      --output /shared/runs/r101"""


def _per_profile(field: str) -> str:
    """``"smoke 1, cpu 24, gpu 30"``: a profile field's value in each profile, for help texts."""
    return ", ".join(f"{name} {getattr(profile, field)}" for name, profile in PROFILES.items())


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``train`` command: its options, help and epilog."""
    parser = add_command(
        subparsers,
        "train",
        "train a network on the profile's cats-vs-dogs data",
        "Train a ResNet on the profile's cats-vs-dogs train split, validating on its val split\n"
        "every epoch, with the course recipe (AdamW + one-cycle; ImageNet regime: the head\n"
        "first, then all layers; the 'recipe:' line of the output lists every setting). The\n"
        "last line of output is the path of the saved checkpoint (last.pt). An existing run is\n"
        "never overwritten without --resume or --force.",
        EPILOG,
    )
    parser.add_argument("--arch", required=True, choices=list(ARCHITECTURES), help="the network")
    parser.add_argument(
        "--regime",
        choices=REGIMES,
        default="scratch",
        help="scratch: random initial weights (works offline); imagenet: fine-tune torchvision's "
        "ImageNet weights, which must be downloadable or already cached (default: scratch)",
    )
    add_profile(parser, "run scale: data set, image size, batch size, epochs")
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="run folder (default: load_or_train's cache folder for these settings, "
        "<artifacts>/checkpoints/ARCH-REGIME-PROFILE-HASH)",
    )
    for flag, field, what in (
        ("--epochs", "epochs", "training epochs"),
        ("--image-size", "image_size", "training resolution in pixels"),
        ("--batch-size", "batch_size", "images per optimiser step, over all processes"),
    ):
        parser.add_argument(
            flag,
            type=positive_int,
            metavar="N",
            help=f"{what} (default: the profile's: {_per_profile(field)})",
        )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        metavar="N",
        help=f"seed of the initial weights, shuffling and augmentation (default: {DEFAULT_SEED})",
    )
    parser.add_argument(
        "--breed-balanced",
        action="store_true",
        help="draw the training images with the same total weight per breed, with replacement "
        "(notebook 04's rare-breed trial); one process only, not under torchrun",
    )
    parser.add_argument(
        "--sync-bn",
        action="store_true",
        help="under torchrun on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm) "
        "instead of each process's share; CUDA only",
    )
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the output folder from its last completed epoch (the settings "
        "must be the same); a finished run is only reported",
    )
    existing.add_argument(
        "--force",
        action="store_true",
        help="move the run in the output folder aside (to FOLDER.bak-TIMESTAMP) and train afresh",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Train ``args.arch`` at ``args.profile``; print the checkpoint's absolute path last.

    Under torchrun the process joins the group for the run and leaves it at the end.
    """
    with distributed.process_group(get_device()) as launch:
        return _train(args, launch)


def _quiet(*args: object, **kwargs: object) -> None:
    """``print`` for the processes other than rank 0."""


def _train(args: argparse.Namespace, launch: distributed.Launch | None) -> int:
    """The command itself; with ``launch``, one process of a data-parallel run."""
    say: Callable[..., None] = print if launch is None or launch.is_main else _quiet
    profile = get_profile(args.profile)
    sizes = {"epochs": args.epochs, "image_size": args.image_size, "batch_size": args.batch_size}
    overrides = {name: value for name, value in sizes.items() if value is not None}
    if args.breed_balanced:
        overrides["breed_balanced"] = True
    recipe = Recipe.from_profile(profile, args.arch, args.regime, seed=args.seed, **overrides)
    device, per_process = get_device(), recipe.batch_size
    if launch is not None:
        device = launch.device(device)
        per_process = distributed.local_batch_size(recipe.batch_size, launch.world_size)
    if args.sync_bn:
        distributed.check_sync_batchnorm(device)  # before the data set is read
    data = zoo.training_data(recipe, profile)  # resolved once: in the gpu profile it may download
    default = zoo.run_dir(zoo.cache_key(recipe, profile, data))
    folder = RunFolder(Path(args.output).expanduser() if args.output else default)
    resume, force = args.resume, args.force
    restarted = distributed.resumes_after_restart(folder.last, launch)
    if restarted:
        resume, force = True, False  # this launch's own run: continue it, never move it aside
    if folder.last.exists() and not (resume or force):
        raise RunExistsError(
            f"{display_path(folder.path)} already holds a training run ({LAST}). Add --resume to "
            f"continue it (same settings), or --force to move it aside to "
            f"{folder.path.name}.bak-<timestamp> and train afresh."
        )
    say(f"profile: {profile.name} ({profile.description}), device: {device}")
    if launch is not None:
        say(f"distributed: {launch.world_size} processes, {per_process} images each per step")
    if restarted:
        say("restarted by torchrun: resuming this launch's run from its last completed epoch")
    say(f"recipe: {recipe.summary()}")
    say(f"run folder: {display_path(folder.path)}")
    try:
        _, history = zoo.train_run(
            recipe,
            profile,
            folder.path,
            data=data,
            runtime=Runtime.resolve(recipe, device),
            resume=resume,
            overwrite=force,
            progress=launch is None or launch.is_main,
            sync_batchnorm=args.sync_bn,
        )
    except KeyboardInterrupt:
        print(
            "Interrupted. Run the same command with --resume to continue from the last "
            "completed epoch.",
            file=sys.stderr,
        )
        return 130
    except PretrainedWeightsUnavailable as error:
        raise PretrainedWeightsUnavailable(
            f"{error}\nOn the command line, --regime scratch trains without them."
        ) from error
    final = history.records[-1]
    say(
        f"done: epoch {final['epoch']}/{recipe.epochs}, val acc {final['val_acc']:.1%}, "
        f"val loss {final['val_loss']:.3f}"
    )
    say(folder.last.resolve())  # absolute, always: scripts read this line
    return 0
