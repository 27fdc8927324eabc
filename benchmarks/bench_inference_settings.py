"""Inference speed per setting (fp32, inference_mode, channels_last, bf16, fp16, compile, int8).

The same implementation as ``python -m course_utils bench`` (course_utils/speed.py), with the
same options; see ``--help``.

    python benchmarks/bench_inference_settings.py                  # resnet50 and resnet101
    python benchmarks/bench_inference_settings.py --arch resnet50 --batch-sizes 1 8 32 --train
"""

from __future__ import annotations

import sys

from course_utils.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
