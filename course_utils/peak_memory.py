"""How much memory one inference setting needs, measured in a fresh Python process.

:func:`peak_memory` saves the model and the images to a temporary folder and runs
``python -m course_utils.peak_memory`` on them: the child loads the model, notes the memory in
use, prepares the setting (:func:`course_utils.inference_settings.prepare`), runs one forward
pass and prints how far the peak rose, so that nothing the calling process did before counts.
:func:`memory_measure` says in words what is measured on a device.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from course_utils.inference_settings import SettingUnavailable, prepare
from course_utils.runtime import peak_memory_mb

__all__ = ["memory_measure", "peak_memory"]


def memory_measure(device: torch.device | str) -> str:
    """What :func:`peak_memory` measures on ``device``."""
    if torch.device(device).type == "cuda":
        return (
            "rise of torch.cuda.max_memory_allocated (tensors only) over the model's weights, in a "
            "fresh process: preparing the setting plus one forward pass"
        )
    return (
        "rise of the peak resident memory of a fresh process over its size after importing torch "
        "and loading the model: preparing the setting (converted weights, compiler) plus one "
        "forward pass. Linux: the peak (VmHWM) is reset after loading, so it is exact; elsewhere "
        "ru_maxrss, which undercounts when importing peaked higher than the pass"
    )


def _status_mb(field: str) -> float:
    """A ``kB`` field of ``/proc/self/status`` (Linux) in MiB."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(f"{field}:"))
    return int(line.split()[1]) / 1024


def _start_peak(device: torch.device) -> tuple[float | None, Callable[[], float | None]]:
    """The memory in use now (MiB) and a function reading the peak since (MiB)."""
    if device.type == "cpu":
        try:  # Linux >= 4.0: writing 5 resets the peak resident size (VmHWM) to the current
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
            return _status_mb("VmRSS"), lambda: _status_mb("VmHWM")
        except OSError:
            pass
    return peak_memory_mb(device), lambda: peak_memory_mb(device)


def _peak_memory_child(model_file: str, setting: str, images_file: str, device: str) -> None:
    """``python -m course_utils.peak_memory``: in this fresh process, load the model, note the
    memory in use, prepare ``setting``, run one forward pass; print how far the peak rose (MiB)."""
    torch_device = torch.device(device)
    # Files the parent process just wrote into its own temporary folder: trusted pickles.
    model = torch.load(model_file, weights_only=False, map_location=torch_device)
    images = torch.load(images_file, weights_only=True, map_location=torch_device)
    before, peak = _start_peak(torch_device)
    try:
        runner = prepare(
            model, setting, images["example"], calibration=images["calibration"], inplace=True
        )
    except SettingUnavailable as reason:
        print(json.dumps({"skipped": str(reason)}))
        return
    runner.forward(runner.inputs(images["example"]))
    if torch_device.type == "cuda":
        torch.cuda.synchronize(torch_device)
    after = peak()
    rise = None if before is None or after is None else after - before
    print(json.dumps({"peak_memory_mb": rise}))


def peak_memory(
    model: nn.Module,
    setting: str,
    example: torch.Tensor,
    calibration: torch.Tensor | None = None,
) -> float | None:
    """MiB that preparing ``setting`` (see :func:`prepare`) and one forward pass on ``example``
    add (see :func:`memory_measure`), measured in a fresh Python process (``python -m
    course_utils.peak_memory``), so that nothing this process did before counts. ``None`` where
    the peak cannot be read (e.g. a CPU on Windows); :class:`SettingUnavailable` if it cannot
    run. The model's class must be importable (not defined in a notebook's ``__main__``).
    """
    calibration = example if calibration is None else calibration
    with tempfile.TemporaryDirectory() as folder:
        model_file, images_file = Path(folder, "model.pt"), Path(folder, "images.pt")
        torch.save(copy.deepcopy(model).cpu(), model_file)
        torch.save({"example": example.cpu(), "calibration": calibration.cpu()}, images_file)
        command = [sys.executable, "-m", __name__, str(model_file), setting, str(images_file)]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(sys.path),  # the model's class must import there too
            "OMP_NUM_THREADS": str(torch.get_num_threads()),
        }
        done = subprocess.run(
            [*command, str(example.device)], capture_output=True, text=True, env=env
        )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed:\n{done.stderr[-2000:]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    if "skipped" in answer:
        raise SettingUnavailable(answer["skipped"])
    return answer["peak_memory_mb"]


if __name__ == "__main__":
    _peak_memory_child(*sys.argv[1:])
