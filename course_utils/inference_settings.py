"""What each inference setting is, and how a network is prepared for it.

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

:func:`prepare` turns a model into a :class:`Runner` for one setting, or raises
:class:`SettingUnavailable` with the reason where it cannot run here (fp16 on a CPU, int8 on
CUDA, compile without a compiler). :func:`prediction_agreement` compares a setting's softmax with
fp32's on the same images: when no probability moves by more than ``tolerance``, the top class
can only change where fp32's top-two margin is below ``2 * tolerance``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from course_utils.config import artifacts_dir

__all__ = [
    "AGREEMENT_TOLERANCE",
    "AUTOCAST_DTYPES",
    "BASELINE",
    "INDUCTOR_CACHE_ENV",
    "SETTINGS",
    "Agreement",
    "Runner",
    "SettingUnavailable",
    "logits_agreement",
    "prediction_agreement",
    "prepare",
    "use_artifacts_inductor_cache",
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
# A setting "agrees" with fp32 when no softmax probability of any image moves by more than this.
AGREEMENT_TOLERANCE = 0.05
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
# The autocast dtype of each mixed-precision setting.
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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


def use_artifacts_inductor_cache() -> None:
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
    use_artifacts_inductor_cache()
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
    if setting in AUTOCAST_DTYPES:
        if setting == "fp16" and device.type != "cuda":
            raise SettingUnavailable("fp16 autocast is a CUDA setting (on a CPU, use bf16)")
        precision = torch.autocast(device.type, dtype=AUTOCAST_DTYPES[setting])
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


def logits_agreement(reference: torch.Tensor, logits: torch.Tensor) -> Agreement:
    """How close ``logits`` (a setting's) are to ``reference`` (fp32's on the same images)."""
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
    return logits_agreement(reference, runner.forward(runner.inputs(images)))
