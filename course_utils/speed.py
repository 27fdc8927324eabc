"""How fast a network runs under each inference setting, and whether its predictions stay the same.

Measured the way timm's ``benchmark.py`` does it: each setting is prepared once (converted,
compiled, quantized), then warm-up rounds, then timed rounds with the device synchronised around
each call; all settings of a network are interleaved in the same rounds
(:func:`course_utils.timing.time_interleaved`), so a slow spell of the machine hits every one
alike. A speed-up is the **per-round** ratio fp32 time / setting time, reported as its median and
10th-90th percentiles, so its spread is visible next to it.

What each setting is, how it is prepared and when it agrees with fp32 live in
:mod:`course_utils.inference_settings`; peak memory per setting (a fresh process each) in
:mod:`course_utils.peak_memory`; both are re-exported here. A setting that cannot run here is
kept as a row ``skipped: <reason>``. :func:`recommend` names the fastest setting that agrees, in
a sentence built from the measurements.

For reference (not a measurement of this course): published GPU throughput tables put
ResNet-101 at about 0.61-0.65 of ResNet-50's images/s, for 1.91x its multiply-accumulates
(7.8 vs 4.1 GMACs at 224 px; e.g. NVIDIA's DeepLearningExamples and timm's benchmark results).
:func:`network_ratio_frame` gives the same ratio measured on this machine, per setting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from course_utils import timing
from course_utils.inference_settings import (
    AGREEMENT_TOLERANCE,
    AUTOCAST_DTYPES,
    BASELINE,
    INDUCTOR_CACHE_ENV,
    SETTINGS,
    Agreement,
    Runner,
    SettingUnavailable,
    logits_agreement,
    prediction_agreement,
    prepare,
    use_artifacts_inductor_cache,
)
from course_utils.peak_memory import memory_measure, peak_memory

__all__ = [
    "AGREEMENT_TOLERANCE",
    "BASELINE",
    "INDUCTOR_CACHE_ENV",
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
    "use_artifacts_inductor_cache",
]

TRAIN_SETTINGS: tuple[str, ...] = ("fp32", "channels_last", "bf16", "fp16")


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
        agreement = logits_agreement(reference, runner.forward(runner.inputs(images)))
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
            autocast=AUTOCAST_DTYPES.get(name),
            channels_last=name == "channels_last",
        )
    summaries = _timed(steps, device, batch_size, warmup, repeats)
    return [
        Setting(name, f"skipped: {skipped[name]}", batch_size)
        if name in skipped
        else Setting(name, "ok", batch_size, **summaries[name])
        for name in settings
    ]


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
