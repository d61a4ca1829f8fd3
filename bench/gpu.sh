#!/usr/bin/env bash
# The engine comparison natively on CUDA (issue 9), in under 5 minutes: raw generate and the
# flask stack, transformers bf16 vs CTranslate2 bfloat16 / int8_bfloat16, on the t5-small and
# t5-base shapes, at concurrency 1, 8 and 32. Prints a Markdown table; plots go to
# docs/engine_bench_gpu_<model>.png. Without a CUDA device it says so and exits 0.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,5p' "$0" | sed 's/^# //'
    echo "usage: bench/gpu.sh   (PYTHON=... to pick the interpreter; default .venv/bin/python)"
    exit 0
fi
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}

if ! "$python" - <<'PY'
import sys
import ctranslate2
import torch
sys.exit(0 if torch.cuda.is_available() and ctranslate2.get_cuda_device_count() > 0 else 1)
PY
then
    echo "bench/gpu.sh: no CUDA device visible to torch and CTranslate2 here: skipped"
    exit 0
fi

echo "bench/gpu.sh: transformers bf16 vs CTranslate2 bfloat16 / int8_bfloat16 on $(nvidia-smi -L 2>/dev/null | head -1 || echo 'a CUDA GPU')"
exec timeout 290 "$python" bench/engine_bench.py --device cuda --models t5-small,t5-base \
    --engines transformers:bfloat16,ctranslate2:bfloat16,ctranslate2:int8_bfloat16 \
    --concurrency 1,8,32 --requests 256 --cold-starts 1 --plot-prefix engine_bench_gpu_
