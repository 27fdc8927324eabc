"""How fast a network runs under each inference setting, and whether its predictions stay the same.

Measured the way timm's ``benchmark.py`` does it: each setting is prepared once (converted,
compiled, quantized), then warm-up rounds, then timed rounds with the device synchronised around
each call; all settings of a network are interleaved in the same rounds
(:func:`course_utils.timing.time_interleaved`), so a slow spell of the machine hits every one
alike. A speed-up is the **per-round** ratio fp32 time / setting time, reported as its median and
10th-90th percentiles, so its spread is visible next to it.

The settings (:data:`SETTINGS`), each changing one thing from the baseline:

- ``fp32``: eager, NCHW, ``torch.no_grad()`` (the baseline every ratio is taken against);
- ``inference_mode``: the same under ``torch.inference_mode()`` (no autograd bookkeeping at all);
- ``channels_last``: weights and images in NHWC, which convolution kernels often prefer;
- ``bf16`` / ``fp16``: autocast (mixed precision); fp16 only on CUDA. A CPU without bf16 in
  hardware (AVX-512-BF16, AMX) emulates it and may be *slower*: the table just shows the ratio;
- ``compile``: ``torch.compile`` (inductor; needs a C++ compiler; its cache goes to
  ``<artifacts>/inductor`` unless ``$TORCHINDUCTOR_CACHE_DIR`` is set);
- ``int8``: post-training static quantization on the CPU, calibrated on sample images: torchao's
  PT2E flow when torchao is installed, else FX graph mode (``prepare_fx``/``convert_fx``,
  deprecated in recent PyTorch; its warnings are recorded in the setting's note, not shown).

A setting that cannot run here (fp16 on a CPU, int8 on CUDA, compile without a compiler) is kept
as a row ``skipped: <reason>``. :func:`prediction_agreement` compares a setting's softmax with
fp32's on the same images: when no probability moves by more than ``tolerance``, the top class
can only change where fp32's top-two margin is below ``2 * tolerance``. :func:`recommend` names
the fastest setting that agrees, in a sentence built from the measurements.

For reference (not a measurement of this course): published GPU throughput tables put
ResNet-101 at about 0.61-0.65 of ResNet-50's images/s, for 1.91x its multiply-accumulates
(7.8 vs 4.1 GMACs at 224 px; e.g. NVIDIA's DeepLearningExamples and timm's benchmark results).
:func:`network_ratio_frame` gives the same ratio measured on this machine, per setting.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from course_utils import timing
from course_utils.config import artifacts_dir
from course_utils.runtime import peak_memory_mb

__all__ = [
    "AGREEMENT_TOLERANCE",
    "BASELINE",
    "SETTINGS",
    "TRAIN_SETTINGS",
    "Agreement",
    "Runner",
    "Setting",
    "SettingUnavailable",
    "batch_size_sweep",
    "benchmark_settings",
    "fastest_agreeing",
    "markdown_table",
    "memory_measure",
    "network_ratio_frame",
    "peak_memory",
    "prediction_agreement",
    "prepare",
    "recommend",
    "results_frame",
    "summary_table",
    "training_throughput",
]

SETTINGS: tuple[str, ...] = (
    "fp32",
    "inference_mode",
    "channels_last",
    "bf16",
    "fp16",
    "compile",
    "int8",
)
BASELINE = "fp32"
TRAIN_SETTINGS: tuple[str, ...] = ("fp32", "channels_last", "bf16", "fp16")
# A setting "agrees" with fp32 when no softmax probability of any image moves by more than this.
AGREEMENT_TOLERANCE = 0.05
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


class SettingUnavailable(Exception):
    """A setting cannot run on this machine; ``str(error)`` is the reason shown in the table."""


@dataclass(frozen=True)
class Runner:
    """A prepared setting: ``forward(images)`` returns fp32 logits on ``device``.

    ``inputs(images)`` moves a batch to the device and memory format the setting wants, once,
    outside the timed call; ``note`` says how it was prepared (e.g. which int8 flow).
    """

    name: str
    forward: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    memory_format: torch.memory_format = torch.contiguous_format
    note: str = ""

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device).contiguous(memory_format=self.memory_format)

    def step(self, images: torch.Tensor) -> Callable[[], torch.Tensor]:
        """A zero-argument callable: one forward pass on ``images`` (converted once, here)."""
        batch = self.inputs(images)
        return lambda: self.forward(batch)


def _no_grad_forward(
    model: nn.Module, precision: contextlib.AbstractContextManager | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    context = precision or contextlib.nullcontext()

    def forward(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), context:
            return model(images).float()

    return forward


def _inference_mode_forward(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(images).float()

    return forward


def _has_compiler() -> bool:
    return any(shutil.which(name) for name in (os.environ.get("CXX", "c++"), "g++", "clang++"))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


def _use_artifacts_inductor_cache() -> None:
    """Point inductor's cache at ``<artifacts>/inductor`` unless the user chose a folder.

    Importing parts of torch already sets ``$TORCHINDUCTOR_CACHE_DIR`` to torch's default (a
    temporary folder), so "chosen" means: set to anything else.
    """
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # torch moved it: only an unset variable counts as "not chosen"
        default = None
    else:
        default = os.path.abspath(default_cache_dir())
    current = os.environ.get(INDUCTOR_CACHE_ENV)
    if current is None or os.path.abspath(current) == default:
        os.environ[INDUCTOR_CACHE_ENV] = str(artifacts_dir() / "inductor")


def _compiled(model: nn.Module, example: torch.Tensor) -> Runner:
    """``torch.compile(model)``, compiled now (on ``example``) so that a failure is a skip."""
    if not _has_compiler():
        raise SettingUnavailable("torch.compile needs a C++ compiler (none found on PATH)")
    _use_artifacts_inductor_cache()
    device = example.device
    forward = _no_grad_forward(torch.compile(model))
    try:
        forward(example)
    except Exception as error:  # inductor fails in many ways: missing headers, triton, ...
        raise SettingUnavailable(f"torch.compile failed: {_first_line(error)}") from error
    return Runner(
        "compile", forward, device, note=f"inductor cache: {os.environ[INDUCTOR_CACHE_ENV]}"
    )


def _calibrate(model: nn.Module, calibration: torch.Tensor, batch_size: int = 32) -> None:
    with torch.no_grad():
        for batch in calibration.split(batch_size):
            model(batch)


def _int8_pt2e(model: nn.Module, calibration: torch.Tensor, example: torch.Tensor) -> Runner:
    """torchao's PT2E static quantization for x86, lowered by ``torch.compile``."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    exported = torch.export.export(model, (calibration[:1],)).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    _calibrate(prepared, calibration)
    runner = _compiled(convert_pt2e(prepared), example)
    return Runner("int8", runner.forward, runner.device, note="torchao PT2E + inductor")


def _int8_fx(model: nn.Module, calibration: torch.Tensor) -> Runner:
    """FX graph mode static quantization (x86 backend, else fbgemm); warnings go to the note."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        engines = torch.backends.quantized.supported_engines
        engine = "x86" if "x86" in engines else "fbgemm"
        if engine not in engines:
            raise SettingUnavailable(f"no x86/fbgemm quantized engine (have: {engines})")
        torch.backends.quantized.engine = engine
        prepared = prepare_fx(model, get_default_qconfig_mapping(engine), (calibration[:1],))
        _calibrate(prepared, calibration)
        quantized = convert_fx(prepared)
    deprecated = sorted(
        {str(w.message).split(".")[0] for w in caught if "deprecat" in str(w.message)}
    )
    note = f"FX graph mode, {engine} engine"
    if deprecated:
        note += f"; {len(deprecated)} deprecation warning(s), e.g. {deprecated[0]!r}"
    return Runner("int8", _no_grad_forward(quantized), calibration.device, note=note)


def _int8(model: nn.Module, calibration: torch.Tensor, example: torch.Tensor) -> Runner:
    if calibration.device.type != "cpu":
        raise SettingUnavailable("int8 static quantization runs on the CPU only")
    failures = []
    try:
        import torchao  # noqa: F401
    except ImportError:
        failures.append("torchao PT2E: torchao not installed")
    else:
        try:
            return _int8_pt2e(model, calibration, example)
        except Exception as error:  # fall back to FX graph mode
            failures.append(f"torchao PT2E: {_first_line(error)}")
    try:
        return _int8_fx(model, calibration)
    except (ImportError, RuntimeError, NotImplementedError, AttributeError) as error:
        failures.append(f"FX graph mode: {_first_line(error)}")
        raise SettingUnavailable("; ".join(failures)) from error


def prepare(
    model: nn.Module,
    setting: str,
    example: torch.Tensor,
    *,
    calibration: torch.Tensor | None = None,
    inplace: bool = False,
) -> Runner:
    """Prepare ``model`` (eval mode) for ``setting`` on ``example``'s device.

    ``example`` (a batch of normalised images on the device, shaped like the batches to come)
    is what ``compile`` compiles on now; ``calibration`` (default ``example``) calibrates int8.
    The model must already sit on that device. Settings that convert weights (channels_last,
    int8) work on a copy unless ``inplace``. Raises :class:`SettingUnavailable` with the reason
    when the setting cannot run here.
    """
    if setting not in SETTINGS:
        raise ValueError(f"Unknown setting {setting!r}. Valid settings: {', '.join(SETTINGS)}")
    device = example.device
    model.eval()
    if setting == "fp32":
        return Runner(setting, _no_grad_forward(model), device)
    if setting == "inference_mode":
        return Runner(setting, _inference_mode_forward(model), device)
    if setting == "compile":
        return _compiled(model, example)
    if setting in _AUTOCAST:
        if setting == "fp16" and device.type != "cuda":
            raise SettingUnavailable("fp16 autocast is a CUDA setting (on a CPU, use bf16)")
        precision = torch.autocast(device.type, dtype=_AUTOCAST[setting])
        return Runner(setting, _no_grad_forward(model, precision), device)
    owned = model if inplace else copy.deepcopy(model)
    if setting == "channels_last":
        owned.to(memory_format=torch.channels_last)
        return Runner(setting, _no_grad_forward(owned), device, torch.channels_last)
    return _int8(owned, example if calibration is None else calibration, example)


@dataclass(frozen=True)
class Agreement:
    """How close a setting's predictions are to fp32's on the same ``n`` images."""

    top1: float  # fraction of images with the same top class as fp32
    max_softmax_diff: float  # largest |p_setting - p_fp32| over images and classes
    n: int

    def agrees(self, tolerance: float = AGREEMENT_TOLERANCE) -> bool:
        """No probability moved by more than ``tolerance`` (see the module docstring)."""
        return self.max_softmax_diff <= tolerance


def _agreement(reference: torch.Tensor, logits: torch.Tensor) -> Agreement:
    reference, logits = reference.float().cpu(), logits.float().cpu()
    top1 = (reference.argmax(1) == logits.argmax(1)).float().mean().item()
    diff = (reference.softmax(1) - logits.softmax(1)).abs().max().item()
    return Agreement(top1, diff, len(reference))


def prediction_agreement(
    model: nn.Module,
    images: torch.Tensor,
    setting: str,
    *,
    calibration: torch.Tensor | None = None,
) -> Agreement:
    """``setting``'s predictions on ``images`` against fp32's (same model, same device).

    ``images``: normalised, on the model's device. ``calibration`` (default: ``images``)
    calibrates int8; calibrating on other images than the checked ones is the honest test.
    """
    reference = prepare(model, BASELINE, images).forward(images)
    runner = prepare(model, setting, images, calibration=calibration)
    return _agreement(reference, runner.forward(runner.inputs(images)))


@dataclass(frozen=True)
class Setting:
    """One setting's measurement. ``status`` is ``"ok"`` or ``"skipped: <reason>"``.

    Times are ms per batch (median, p10, p90); ``speedup`` is the median of the per-round
    ratios fp32 time / this setting's time, with their 10th-90th percentiles; the agreement
    fields compare its predictions with fp32's on the benchmark images.
    """

    name: str
    status: str
    batch_size: int
    median_ms: float = math.nan
    p10_ms: float = math.nan
    p90_ms: float = math.nan
    images_per_s: float = math.nan
    speedup: float = math.nan
    speedup_p10: float = math.nan
    speedup_p90: float = math.nan
    top1_agreement: float = math.nan
    max_softmax_diff: float = math.nan
    peak_memory_mb: float = math.nan
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def agrees(self, tolerance: float = AGREEMENT_TOLERANCE) -> bool:
        return self.ok and self.max_softmax_diff <= tolerance


def _runners(
    model: nn.Module,
    settings: Sequence[str],
    example: torch.Tensor,
    calibration: torch.Tensor | None = None,
) -> tuple[dict[str, Runner], dict[str, str]]:
    """The runnable settings (the baseline first) and the reasons of those that are not."""
    names = [BASELINE, *(s for s in settings if s != BASELINE)]
    runners, skipped = {}, {}
    for name in names:
        try:
            runners[name] = prepare(model, name, example, calibration=calibration)
        except SettingUnavailable as reason:
            skipped[name] = str(reason)
    return runners, skipped


def _ratio_stats(baseline: Sequence[float], times: Sequence[float]) -> tuple[float, float, float]:
    ratios = np.asarray(baseline) / np.asarray(times)
    return tuple(float(v) for v in np.percentile(ratios, [50, 10, 90]))


def _timed(
    steps: Mapping[str, Callable[[], object]],
    device: torch.device,
    batch_size: int,
    warmup: int,
    repeats: int,
) -> dict[str, dict[str, float]]:
    """Summaries of interleaved ``steps`` with their per-round speed-up over the baseline."""
    times = timing.time_interleaved(steps, device, warmup=warmup, repeats=repeats)
    summaries = {}
    for name, seconds in times.items():
        summary = timing.summarize_times(seconds, batch_size)
        speedup, p10, p90 = _ratio_stats(times[BASELINE], seconds)
        summaries[name] = {
            "median_ms": summary["median_ms"],
            "p10_ms": summary["p10_ms"],
            "p90_ms": summary["p90_ms"],
            "images_per_s": summary["images_per_s"],
            "speedup": speedup,
            "speedup_p10": p10,
            "speedup_p90": p90,
        }
    return summaries


def benchmark_settings(
    model: nn.Module,
    images: torch.Tensor,
    settings: Sequence[str] = SETTINGS,
    *,
    warmup: int = 3,
    repeats: int = 10,
    calibration: torch.Tensor | None = None,
    memory: bool = False,
) -> list[Setting]:
    """Time ``model`` under each of ``settings`` on the batch ``images``, interleaved.

    ``images`` (normalised, on the model's device) is the timed batch (its length is the batch
    size) and the set on which each setting's predictions are compared with fp32's;
    ``calibration`` (default ``images``) calibrates int8. ``memory`` adds :func:`peak_memory`
    per setting (a fresh process each). Returns one :class:`Setting` per setting,
    fp32 first (always measured: the baseline), then the others in the order given.
    """
    device = images.device
    runners, skipped = _runners(model, settings, images, calibration)
    settings = [BASELINE, *(s for s in settings if s != BASELINE)]
    batch_size = len(images)
    steps = {name: runner.step(images) for name, runner in runners.items()}
    summaries = _timed(steps, device, batch_size, warmup, repeats)
    reference = runners[BASELINE].forward(images)
    results = []
    for name in settings:
        if name in skipped:
            results.append(Setting(name, f"skipped: {skipped[name]}", batch_size))
            continue
        runner = runners[name]
        agreement = _agreement(reference, runner.forward(runner.inputs(images)))
        peak = peak_memory(model, name, images, calibration) if memory else None
        results.append(
            Setting(
                name,
                "ok",
                batch_size,
                **summaries[name],
                top1_agreement=agreement.top1,
                max_softmax_diff=agreement.max_softmax_diff,
                peak_memory_mb=math.nan if peak is None else peak,
                note=runner.note,
            )
        )
    return results


def _repeat_to(images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``batch_size`` images: ``images`` cycled (or cut)."""
    reps = math.ceil(batch_size / len(images))
    return images.repeat(reps, 1, 1, 1)[:batch_size]


def batch_size_sweep(
    model: nn.Module,
    images: torch.Tensor,
    batch_sizes: Sequence[int],
    settings: Sequence[str] = (BASELINE,),
    *,
    warmup: int = 2,
    repeats: int = 5,
) -> pd.DataFrame:
    """Images/s of each setting at each batch size (``images`` cycled to that size).

    Settings are prepared once (int8 calibrated on ``images``) and interleaved at each size.
    Columns: setting, batch_size, images_per_s, median_ms, p10_ms, p90_ms, speedup (vs fp32 at
    the same size), speedup_p10, speedup_p90.
    """
    runners, skipped = _runners(model, settings, images)
    if skipped:
        raise SettingUnavailable("; ".join(f"{k}: {v}" for k, v in skipped.items()))
    rows = []
    for batch_size in batch_sizes:
        batch = _repeat_to(images, batch_size)
        steps = {name: runner.step(batch) for name, runner in runners.items()}
        summaries = _timed(steps, images.device, batch_size, warmup, repeats)
        rows += [
            {"setting": name, "batch_size": batch_size, **summaries[name]} for name in settings
        ]
    return pd.DataFrame(rows)


def training_throughput(
    model: nn.Module,
    image_size: int,
    batch_size: int,
    device: torch.device | str,
    settings: Sequence[str] = TRAIN_SETTINGS,
    *,
    warmup: int = 2,
    repeats: int = 5,
) -> list[Setting]:
    """Training steps (forward, loss, backward, SGD) per setting, interleaved, on copies;
    fp32 first (the baseline), then the others in the order given.

    Uses :func:`course_utils.timing.train_step` with autocast / channels-last; fp16 (CPU) is
    skipped. The agreement fields stay NaN: training changes the weights.
    """
    device = torch.device(device)
    unknown = set(settings) - set(TRAIN_SETTINGS)
    if unknown:
        raise ValueError(f"Training settings are {', '.join(TRAIN_SETTINGS)}; got {unknown}")
    settings = [BASELINE, *(s for s in settings if s != BASELINE)]
    steps, skipped = {}, {}
    for name in settings:
        if name == "fp16" and device.type != "cuda":
            skipped[name] = "fp16 autocast is a CUDA setting (on a CPU, use bf16)"
            continue
        steps[name] = timing.train_step(
            model,
            image_size,
            batch_size,
            device,
            autocast=_AUTOCAST.get(name),
            channels_last=name == "channels_last",
        )
    summaries = _timed(steps, device, batch_size, warmup, repeats)
    return [
        Setting(name, f"skipped: {skipped[name]}", batch_size)
        if name in skipped
        else Setting(name, "ok", batch_size, **summaries[name])
        for name in settings
    ]


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
    """``python -m course_utils.speed``: in this fresh process, load the model, note the memory
    in use, prepare ``setting``, run one forward pass; print how far the peak rose (MiB)."""
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
    course_utils.speed``), so that nothing this process did before counts. ``None`` where the
    peak cannot be read (e.g. a CPU on Windows); :class:`SettingUnavailable` if it cannot run.
    The model's class must be importable (not defined in a notebook's ``__main__``).
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


def results_frame(results: Mapping[str, Sequence[Setting]]) -> pd.DataFrame:
    """One row per (network, setting): ``results`` maps a network's label to its settings."""
    rows = [
        {"network": network, "setting": s.name, **asdict(s)}
        | {"agrees": None if math.isnan(s.max_softmax_diff) else s.agrees()}
        for network, settings in results.items()
        for s in settings
    ]
    return pd.DataFrame(rows).drop(columns="name")


def network_ratio_frame(frame: pd.DataFrame, numerator: str, denominator: str) -> pd.DataFrame:
    """Images/s per setting for two networks and their ratio ``numerator / denominator``.

    A ratio of medians (the networks are timed in separate runs); NaN where a setting was
    skipped. For ResNet-101 / ResNet-50, compare the module docstring's published ~0.61-0.65.
    """
    wide = frame.pivot(index="setting", columns="network", values="images_per_s")
    wide = wide.reindex([s for s in frame.setting.unique()])[[denominator, numerator]]
    wide[f"{numerator} / {denominator}"] = wide[numerator] / wide[denominator]
    return wide.reset_index().rename_axis(columns=None)


def _spread(median: float, low: float, high: float, digits: int) -> str:
    return "" if math.isnan(median) else f"{median:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`results_frame` rows (one network) as display columns: time, images/s, speed-up with
    its p10-p90 spread, agreement with fp32, peak memory where measured; skips with reasons."""
    table = pd.DataFrame(
        {
            "setting": frame.setting,
            "status": frame.status,
            "ms/batch (p10-p90)": [
                _spread(r.median_ms, r.p10_ms, r.p90_ms, 1) for r in frame.itertuples()
            ],
            "images/s": frame.images_per_s.round(1),
            "speed-up vs fp32 (p10-p90)": [
                _spread(r.speedup, r.speedup_p10, r.speedup_p90, 2) for r in frame.itertuples()
            ],
            "top-1 = fp32": frame.top1_agreement,
            "max Δp": frame.max_softmax_diff,
        }
    )
    if frame.peak_memory_mb.notna().any():
        table["peak MiB"] = frame.peak_memory_mb.round(1)
    return table.dropna(axis=1, how="all").reset_index(drop=True)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a GitHub markdown table (floats to 3 significant digits, NaN blank)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([header, rule, *rows])


def fastest_agreeing(
    results: Sequence[Setting], tolerance: float = AGREEMENT_TOLERANCE
) -> Setting | None:
    """The setting other than fp32 with the highest median speed-up whose predictions agree."""
    agreeing = [s for s in results if s.agrees(tolerance) and s.name != BASELINE]
    return max(agreeing, key=lambda s: s.speedup, default=None)


def recommend(
    results: Sequence[Setting],
    device: torch.device | str,
    tolerance: float = AGREEMENT_TOLERANCE,
) -> str:
    """A sentence naming the fastest setting whose predictions agree with fp32's.

    "Faster" needs the 10th percentile of its per-round speed-ups above 1; otherwise the
    sentence says to keep fp32 and why.
    """
    device = torch.device(device)
    batch = results[0].batch_size if results else 0
    best = fastest_agreeing(results, tolerance)
    disagreeing = [s.name for s in results if s.ok and not s.agrees(tolerance)]
    caveat = (
        f" ({', '.join(disagreeing)} changed a probability by more than {tolerance:g}: left out.)"
        if disagreeing
        else ""
    )
    if best is None:
        return (
            f"On {device.type}, keep fp32: no other setting ran with agreeing predictions.{caveat}"
        )
    spread = (
        f"{best.speedup:.2f}x fp32's speed (p10-p90 {best.speedup_p10:.2f}-{best.speedup_p90:.2f}x)"
    )
    if best.speedup_p10 <= 1:
        return (
            f"On {device.type} at batch {batch}, keep fp32: no setting was reliably faster; the "
            f"best, {best.name}, ran at {spread}.{caveat}"
        )
    return (
        f"On {device.type} at batch {batch}, use {best.name}: {spread}, and its predictions agree "
        f"with fp32's (top-1 agreement {best.top1_agreement:.0%}, largest probability change "
        f"{best.max_softmax_diff:.3f} <= {tolerance:g}).{caveat}"
    )


if __name__ == "__main__":
    _peak_memory_child(*sys.argv[1:])
