#!/usr/bin/env bash
# GPU smoke test, the way SageMaker local mode starts a GPU image (instance_type="local_gpu"):
#   docker run --gpus all -v <model>:/opt/ml/model:ro -p 127.0.0.1:<port>:8080 IMAGE serve
# First, with no GPU needed: the image's torch is a CUDA build, CUDA 12's cuBLAS loads by name
# (what CTranslate2 dlopens) and the start-up check runs. Then, where a GPU exists: torch sees
# it inside the container, and tests/smoke/local.sh runs with --gpus all and checks that the
# model was placed on CUDA. Without a GPU (no nvidia-smi, or `docker run --gpus all` fails)
# that part prints SKIPPED and exits 0.
set -euo pipefail

if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
    echo "Usage: tests/smoke/local_gpu.sh IMAGE [local.sh options]"
    echo "  e.g. tests/smoke/local_gpu.sh flan-t5-sagemaker:0.1.0-gpu"
    if [[ $# -ge 1 ]]; then exit 0; fi
    exit 2
fi
IMAGE="$1"
shift
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DOCKER="${DOCKER:-docker}"

skip() {
    echo "local_gpu.sh: SKIPPED the GPU part: no GPU here ($*)"
    exit 0
}

# The image's CUDA libraries, on any machine.
"$DOCKER" run --rm --entrypoint python "$IMAGE" -c '
import ctypes, torch
from handlers import cuda
assert torch.version.cuda, f"torch {torch.__version__} is not a CUDA build"
ctypes.CDLL("libcublas.so.12")  # by name, as CTranslate2 loads it: registered with ldconfig
cublas = cuda.preload_cublas12()
assert cublas.ok, cublas
check = cuda.check_gpu(cuda.required_cuda("transformers"))
print("local_gpu.sh: torch", torch.__version__, "CUDA", torch.version.cuda, "|", cublas, "|",
      check.error or check.warning or f"{len(check.devices)} GPU(s), driver {check.driver}")'

command -v nvidia-smi >/dev/null 2>&1 || skip "nvidia-smi not found"
nvidia-smi -L >/dev/null 2>&1 || skip "nvidia-smi finds no GPU"
if ! err="$("$DOCKER" run --rm --gpus all --entrypoint nvidia-smi "$IMAGE" -L 2>&1)"; then
    skip "docker run --gpus all failed: ${err##*$'\n'}"
fi
echo "local_gpu.sh: GPUs in the container: $err"

# torch must see CUDA in the image (the driver comes from the host).
"$DOCKER" run --rm --gpus all --entrypoint python "$IMAGE" -c '
import torch
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
print("local_gpu.sh: torch", torch.__version__, "CUDA", torch.version.cuda, "on",
      torch.cuda.get_device_name(0), "bf16" if torch.cuda.is_bf16_supported() else "fp32")'

exec bash "$HERE/local.sh" "$IMAGE" --expect-log " on cuda" "$@" -- --gpus all
