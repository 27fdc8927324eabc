"""Inference settings: agreement with fp32, skip reasons, per-round ratios, the bench command.

resnet18 at 32-64 px with random weights (seeded). The end-to-end command test is the one that
runs torch.compile (tens of seconds on a busy 2-core machine).
"""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest
import torch
from tiny import TinyNet

from course_utils import config, inference_settings, speed
from course_utils.cli import main
from course_utils.models import build_model
from course_utils.speed import AGREEMENT_TOLERANCE, Setting


def images(n: int, side: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18", num_classes=2).eval()


@pytest.mark.parametrize("setting", ["bf16", "int8", "channels_last", "inference_mode"])
def test_settings_give_the_fp32_predictions_within_the_tolerance(resnet18, setting):
    checked, calibration = images(16, 64, seed=1), images(16, 64, seed=2)
    agreement = speed.prediction_agreement(resnet18, checked, setting, calibration=calibration)
    assert agreement.n == 16
    assert agreement.max_softmax_diff <= AGREEMENT_TOLERANCE
    assert agreement.agrees()
    # Where fp32's top-two margin exceeds twice the tolerance, the top class cannot change.
    with torch.no_grad():
        reference = resnet18(checked).softmax(1)
    runner = speed.prepare(resnet18, setting, checked, calibration=calibration)
    changed = (runner.forward(runner.inputs(checked)).softmax(1) - reference).abs().max(1).values
    top2 = reference.topk(2, dim=1).values
    clear = top2[:, 0] - top2[:, 1] > 2 * AGREEMENT_TOLERANCE
    assert (changed <= AGREEMENT_TOLERANCE).all()
    assert clear.any()
    assert agreement.top1 >= clear.float().mean().item()


def test_prepare_leaves_the_model_alone(resnet18):
    before = {k: v.clone() for k, v in resnet18.state_dict().items()}
    speed.prepare(resnet18, "channels_last", images(2, 32, seed=0))
    speed.prepare(resnet18, "int8", images(2, 32, seed=0))
    after = resnet18.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert resnet18.conv1.weight.is_contiguous()  # still NCHW


def test_unavailable_settings_are_rows_with_their_reasons(monkeypatch):
    monkeypatch.setattr(inference_settings, "_has_compiler", lambda: False)
    results = speed.benchmark_settings(
        TinyNet(), images(4, 16, seed=0), ["fp16", "compile"], warmup=0, repeats=1
    )
    assert [s.name for s in results] == ["fp32", "fp16", "compile"]
    assert results[0].ok and results[0].speedup == 1.0
    assert results[1].status == "skipped: fp16 autocast is a CUDA setting (on a CPU, use bf16)"
    assert results[2].status.startswith("skipped: torch.compile needs a C++ compiler")
    assert all(math.isnan(s.median_ms) for s in results[1:])
    with pytest.raises(speed.SettingUnavailable, match="CUDA"):
        speed.prepare(TinyNet(), "fp16", images(1, 16, seed=0))


def test_speedups_are_per_round_ratios_to_fp32():
    steps = {"fp32": lambda: time.sleep(0.004), "slow": lambda: time.sleep(0.008)}
    summary = speed._timed(steps, torch.device("cpu"), batch_size=1, warmup=0, repeats=3)
    assert summary["fp32"]["speedup"] == 1.0
    assert 0.3 < summary["slow"]["speedup"] < 0.6
    assert summary["slow"]["speedup_p10"] <= summary["slow"]["speedup"]
    assert summary["slow"]["speedup"] <= summary["slow"]["speedup_p90"]


def setting(name: str, speedup: float, low: float, diff: float = 0.001) -> Setting:
    return Setting(
        name, "ok", 8, images_per_s=100 * speedup, speedup=speedup, speedup_p10=low,
        speedup_p90=speedup + 0.1, top1_agreement=1.0, max_softmax_diff=diff,
    )  # fmt: skip


def test_recommend_picks_the_fastest_setting_that_agrees():
    results = [
        setting("fp32", 1.0, 1.0, 0.0),
        setting("bf16", 1.4, 1.2),
        setting("int8", 3.0, 2.5, diff=0.2),  # faster, but changes the predictions
        Setting("fp16", "skipped: no CUDA", 8),
    ]
    sentence = speed.recommend(results, "cpu")
    assert sentence.startswith("On cpu at batch 8, use bf16: 1.40x")
    assert "int8 changed a probability" in sentence
    assert speed.fastest_agreeing(results).name == "bf16"
    noisy = [setting("fp32", 1.0, 1.0, 0.0), setting("bf16", 1.05, 0.9)]
    assert "keep fp32: no setting was reliably faster" in speed.recommend(noisy, "cpu")


def test_network_ratio_frame_divides_images_per_second():
    frame = speed.results_frame(
        {
            "ResNet-50": [setting("fp32", 1.0, 1.0), setting("bf16", 2.0, 1.5)],
            "ResNet-101": [setting("fp32", 0.6, 0.6), Setting("bf16", "skipped: x", 8)],
        }
    )
    ratios = speed.network_ratio_frame(frame, "ResNet-101", "ResNet-50")
    assert ratios.setting.tolist() == ["fp32", "bf16"]
    assert ratios["ResNet-101 / ResNet-50"][0] == pytest.approx(0.6)
    assert math.isnan(ratios["ResNet-101 / ResNet-50"][1])
    assert speed.markdown_table(ratios).splitlines()[1] == "|---|---|---|---|"


def test_peak_memory_is_measured_in_a_fresh_process():
    batch = torch.rand(64, 3, 128, 128)  # TinyNet's first activation alone: 8 MiB
    peak = speed.peak_memory(TinyNet(), "fp32", batch)
    assert peak is not None and 8 <= peak < 1024


def test_bench_command_prints_every_setting_and_writes_the_csv(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(config.ARTIFACTS_DIR_ENV, str(tmp_path / "artifacts"))
    monkeypatch.setenv(config.DEVICE_ENV, "cpu")
    monkeypatch.delenv(speed.INDUCTOR_CACHE_ENV, raising=False)
    csv = tmp_path / "bench.csv"
    argv = ["bench", "--arch", "resnet18", "--image-size", "32", "--batch-size", "2"]
    argv += ["--warmup", "1", "--repeats", "2", "--train", "--csv", str(csv)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if "| " in line}
    for name in speed.SETTINGS:
        assert name in rows, name
        status = rows[name].split(" | ")[1]
        assert status == "ok" or status.startswith("skipped: ") and len(status) > 12, status
    assert "skipped: fp16 autocast is a CUDA setting" in rows["fp16"]
    assert "ResNet-18: recommendation\nOn cpu at batch 2, " in out
    assert "training steps at 32 px" in out
    frame = pd.read_csv(csv)
    inference = frame[frame.measurement == "inference"]
    assert inference.setting.tolist() == list(speed.SETTINGS)
    assert set(frame.measurement) == {"inference", "training"}
    ok = inference[inference.status == "ok"]
    assert (ok.images_per_s > 0).all() and (ok.max_softmax_diff <= AGREEMENT_TOLERANCE).all()
    if (inference.setting == "compile").any() and "ok" in rows["compile"]:
        assert (tmp_path / "artifacts" / "inductor").is_dir()
