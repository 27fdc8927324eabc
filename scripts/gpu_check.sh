#!/usr/bin/env bash
# gpu_check.sh: the course's GPU path, checked in one go on a CUDA machine (about 4 minutes on a
# modern GPU). It needs no internet and no package registry, and it does NOT build the venv: it
# runs the machine's own python3 (or $PYTHON) with PYTHONPATH=. and needs only torch and
# torchvision. A step whose Python needs more (pytest, pandas, tqdm...) is skipped, the reason
# printed. Each step runs on, whatever the previous one did; the exit status is 1 if any failed.
#
#   scripts/gpu_check.sh [OUT_DIR]     # default: $GPU_CHECK_OUT, else artifacts/gpu_check/
#
# OUT_DIR receives one log per step (NN-name.log) and summary.txt (also printed): one line per
# step (PASS / FAIL / SKIP, seconds, the step's key line) and a final count.
#
# Steps, what each prints, and what "good" looks like:
#   01-environment   python, torch, torchvision, CUDA and cuDNN versions; GPU name, sm_XY,
#                    memory; whether bf16 is native (sm_80+); which optional packages exist.
#                    FAIL without CUDA or torchvision (the later GPU steps are then skipped).
#   02-cuda-tests    pytest tests/test_cuda.py (fp16 + GradScaler + clipping, bf16, channels-last,
#                    peak memory, pinned copies, resume GPU <-> CPU). Needs pytest, pandas, tqdm.
#                    Good: "8 passed" (bf16 test skipped, reason shown, on a pre-sm_80 GPU).
#   03-step-fp16     benchmarks/bench_train_step.py: our ResNet vs torchvision's, same weights,
#                    batch 64 at 224 px, fp16 + GradScaler, channels-last, interleaved steps.
#                    Good: "ratio ours/torchvision (time per step)" within 0.95-1.05 (same network).
#   04-loop-fp16     benchmarks/bench_training_targets.py --loops-only --amp fp16: the course's
#   05-loop-bf16     train_one_epoch vs a bare torchvision + AMP + channels-last loop, per network,
#                    "... course loop N img/s, bare ... M img/s, ratio R (target >= 0.90)".
#                    fp16 with GradScaler is what a Colab T4 runs; bf16 runs only where native.
#                    Good: R >= 0.90 (our loop within ~10 % of the bare loop). Needs pandas, tqdm.
#   06-memory        peak memory of one training step (AdamW, channels-last) of ResNet-50 and
#                    ResNet-101 at the gpu profile's batch size and 224 px, in fp16 + GradScaler,
#                    bf16 (where native) and fp32: allocated and reserved GiB, and whether it fits
#                    a 15 GiB card (T4) with 0.75 GiB left for the CUDA context. FAIL if fp16 does
#                    not fit (Colab's path). Good: fp16 "fits" for both networks.
#   07-train-resnet50   python -m course_utils train --profile gpu --epochs 1 --image-size 224
#   08-train-resnet101  --batch-size 64 on the bundled data (COURSE_DATASET=bundled): the epoch
#                    line (loss, accuracy, img/s) and "done: epoch 1/1, val acc ...". Good: "done:"
#                    printed, loss finite (accuracy after one epoch from scratch means nothing).
#                    Runs and artifacts go under OUT_DIR. Needs pandas, tqdm.
set -u

cd "$(dirname "$0")/.." || exit 1
OUT="${1:-${GPU_CHECK_OUT:-artifacts/gpu_check}}"
mkdir -p "$OUT" || exit 1
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export MPLBACKEND=agg
export COURSE_ARTIFACTS_DIR="$OUT/artifacts" # nothing is written outside OUT
export CI=1                                  # no progress bars in the logs
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
passed=0 failed=0 skipped=0 have_gpu=0
step_number=0

note() { printf '%-20s %-4s %5s  %s\n' "$1" "$2" "$3" "$4" | tee -a "$SUMMARY"; }

# The modules among "$@" that "$PY" cannot import, with why ("" when all import).
missing_modules() {
    "$PY" - "$@" <<'EOF' 2>/dev/null || echo "python itself (${PY:-python3}) fails"
import importlib, sys
missing = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as error:  # ImportError, or a broken install
        missing.append(f"{name} ({type(error).__name__}: {error})")
print("; ".join(missing))
EOF
}

# run_step NAME TIMEOUT_S "MODULES NEEDED" "KEY-LINE REGEX" COMMAND...
run_step() {
    local name=$1 limit=$2 needs=$3 key=$4
    shift 4
    step_number=$((step_number + 1))
    local label log
    label=$(printf '%02d-%s' "$step_number" "$name")
    log="$OUT/$label.log"
    echo "== $label" >&2
    if [[ -n $needs ]]; then
        local missing
        # shellcheck disable=SC2086  # a list of module names
        missing=$(missing_modules $needs)
        if [[ -n $missing ]]; then
            echo "skipped: cannot import $missing" >"$log"
            note "$label" SKIP - "cannot import $missing"
            skipped=$((skipped + 1))
            return 1
        fi
    fi
    local start=$SECONDS rc
    if command -v timeout >/dev/null; then
        timeout "$limit" "$@" >"$log" 2>&1
    else
        "$@" >"$log" 2>&1
    fi
    rc=$?
    local line
    line=$(grep -E "$key" "$log" | tail -n 4 | tr -s ' ' | paste -sd '|' -)
    [[ $rc == 124 ]] && line="timed out after ${limit}s; $line"
    if [[ $rc == 0 ]]; then
        note "$label" PASS "$((SECONDS - start))s" "$line"
        passed=$((passed + 1))
    else
        note "$label" FAIL "$((SECONDS - start))s" "exit $rc; ${line:-see $log}"
        failed=$((failed + 1))
    fi
    return "$rc"
}

skip_step() { # NAME REASON
    step_number=$((step_number + 1))
    local label
    label=$(printf '%02d-%s' "$step_number" "$1")
    echo "skipped: $2" >"$OUT/$label.log"
    note "$label" SKIP - "$2"
    skipped=$((skipped + 1))
}

read -r -d '' ENVIRONMENT_PY <<'EOF'
import importlib.util, platform, sys
import torch
print(f"python       {platform.python_version()} ({sys.executable})")
print(f"torch        {torch.__version__}")
try:
    import torchvision
    vision = torchvision.__version__
except Exception as error:
    vision = f"NOT importable ({type(error).__name__}: {error})"
print(f"torchvision  {vision}")
print(f"CUDA (torch) {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
if not hasattr(torch.amp, "GradScaler"):
    print("note         torch < 2.3: course_utils.train needs torch.amp.GradScaler (2.3+)")
for name in ("numpy", "PIL", "pandas", "tqdm", "pytest", "matplotlib"):
    print(f"{name:<12} {'present' if importlib.util.find_spec(name) else 'MISSING'}")
if not torch.cuda.is_available():
    sys.exit("GPU          none: torch.cuda.is_available() is False")
p = torch.cuda.get_device_properties(0)
print(f"GPU          {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.1f} GiB "
      f"({torch.cuda.device_count()} device(s))")
print(f"bf16         {'native' if p.major >= 8 else 'NOT native (sm_80+ needed; emulated)'}")
sys.exit(0 if vision[0].isdigit() else 1)
EOF

read -r -d '' MEMORY_PY <<'EOF'
"""Peak memory of one training step of each network, as the gpu profile trains it."""
import os, sys
import torch
import torch.nn.functional as F
from course_utils.config import PROFILES
from course_utils.models import build_model

if hasattr(torch.amp, "GradScaler"):  # torch >= 2.3
    def make_scaler(enabled):
        return torch.amp.GradScaler("cuda", enabled=enabled)
else:  # an older torch
    def make_scaler(enabled):
        return torch.cuda.amp.GradScaler(enabled=enabled)

profile = PROFILES["gpu"]
batch, size = profile.batch_size, 224
card = float(os.environ.get("GPU_CHECK_CARD_GIB", "15"))
budget = card - 0.75  # the CUDA context and cuDNN's handles live outside the allocator
device = torch.device("cuda")
dtypes = {"fp16+scaler": torch.float16, "fp32": None}
if torch.cuda.get_device_capability()[0] >= 8:
    dtypes = {"fp16+scaler": torch.float16, "bf16": torch.bfloat16, "fp32": None}
print(f"one AdamW step, channels-last, batch {batch} at {size} px; card {card:g} GiB, "
      f"budget {budget:.2f} GiB for PyTorch's allocator")
fp16_fits = True
for arch in ("resnet50", "resnet101"):
    for label, dtype in dtypes.items():
        torch.manual_seed(0)
        model = build_model(arch, num_classes=2).to(device, memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scaler = make_scaler(enabled=dtype == torch.float16)
        images = torch.randn(batch, 3, size, size, device=device)
        images = images.contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, 2, (batch,), device=device)

        def step():
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        step()  # the first step creates AdamW's moments and cuDNN's workspaces
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        allocated = torch.cuda.max_memory_allocated() / 2**30
        reserved = torch.cuda.max_memory_reserved() / 2**30
        fits = reserved <= budget
        fp16_fits &= fits or dtype is not torch.float16
        verdict = "fits" if fits else "does NOT fit"
        print(f"{arch:>10} {label:<12} peak allocated {allocated:5.2f} GiB, reserved "
              f"{reserved:5.2f} GiB: {verdict} a {card:g} GiB card")
        del model, optimizer, scaler, images, labels, step
        torch.cuda.empty_cache()
sys.exit(0 if fp16_fits else 1)
EOF

echo "gpu_check: reports in $OUT" >&2
if run_step environment 120 "" "^(GPU|torch |bf16)" "$PY" -c "$ENVIRONMENT_PY"; then
    have_gpu=1
fi
if ((have_gpu)); then
    run_step cuda-tests 240 "pytest course_utils.train course_utils.data" \
        "passed|failed|skipped|error" \
        "$PY" -m pytest tests/test_cuda.py -q -ra -p no:cacheprovider
    run_step step-fp16 240 "numpy course_utils.timing course_utils.models" "^ratio" \
        "$PY" benchmarks/bench_train_step.py --batch-size 64 --image-size 224 --amp \
        --channels-last --warmup 3 --repeats 10
    run_step loop-fp16 300 "course_utils.zoo course_utils.timing" "ratio" \
        "$PY" benchmarks/bench_training_targets.py --loops-only --amp fp16 \
        --gpu-steps 20 --gpu-rounds 3
    if "$PY" -c 'import sys, torch; sys.exit(torch.cuda.get_device_capability()[0] < 8)'; then
        run_step loop-bf16 300 "course_utils.zoo course_utils.timing" "ratio" \
            "$PY" benchmarks/bench_training_targets.py --loops-only --amp bf16 \
            --gpu-steps 20 --gpu-rounds 3
    else
        skip_step loop-bf16 "bf16 is not native on this GPU (sm_80+ needed)"
    fi
    run_step memory 240 "numpy course_utils.models course_utils.config" "fit" \
        "$PY" -c "$MEMORY_PY"
    for arch in resnet50 resnet101; do
        rm -rf "$OUT/runs/$arch" # this script's own run folder from an earlier check
        run_step "train-$arch" 420 "course_utils.cli" "img/s|^done:" \
            env COURSE_DATASET=bundled "$PY" -m course_utils train --arch "$arch" \
            --profile gpu --epochs 1 --image-size 224 --batch-size 64 --output "$OUT/runs/$arch"
    done
else
    for name in cuda-tests step-fp16 loop-fp16 loop-bf16 memory train-resnet50 train-resnet101; do
        skip_step "$name" "no usable CUDA device / torchvision (see 01-environment.log)"
    done
fi

note "gpu_check" "$( ((failed)) && echo FAIL || echo PASS)" "${SECONDS}s" \
    "$passed passed, $failed failed, $skipped skipped; logs in $OUT"
((failed == 0))
