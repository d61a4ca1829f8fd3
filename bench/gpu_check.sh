#!/usr/bin/env bash
# The GPU check: one script, under 5 minutes, on a bare Linux GPU machine with Python 3.12 and a
# CUDA torch (no Docker, no network, no nginx). It installs the wheels it carries (prepared here
# by bench/gpu_check_wheels.sh), prints the driver and whether CUDA 12's cuBLAS loads, runs
# tests/gpu (transformers bf16 against CPU float32; CTranslate2 bfloat16 / int8_bfloat16 where
# cuBLAS 12 loads; a real out-of-memory batch split with every request and the next one
# answered), measures both engines in-process on t5-small, Flan-T5-base and Flan-T5-large
# shapes at batch 1, 8 and 32 (bench/gpu_engines.py), and writes it all to one report file.
# Without a GPU it says so in one line and exits 0.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bench/gpu_check.sh [--report FILE] [--wheels DIR] [--cpu]

  --report FILE  the report (default: build/gpu-check-report.md); on a device machine,
                 e.g. --report "$OUT/gpu_check.md" so that it comes back
  --wheels DIR   the wheel folder to install from (default: build/gpu-check-wheels, made by
                 bench/gpu_check_wheels.sh); without it, what is installed is used
  --cpu          run every step on the CPU anyway, to try the script where there is no GPU
                 (tests/gpu skip; a short benchmark of t5-small on the CPU)

Environment: PYTHON (default python3): the interpreter with the CUDA torch. Exits non-zero
when a test or the benchmark fails; the report says which.
EOF
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPORT="$ROOT/build/gpu-check-report.md"
WHEELS="$ROOT/build/gpu-check-wheels"
CPU=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --report) REPORT="$2"; shift ;;
        --wheels) WHEELS="$2"; shift ;;
        --cpu) CPU=1 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
PYTHON="${PYTHON:-python3}"

if [[ $CPU -eq 0 ]] && ! { nvidia-smi -L 2>/dev/null | grep -q '^GPU' || compgen -G '/dev/nvidia[0-9]*' >/dev/null; }; then
    echo "gpu_check.sh: no NVIDIA GPU here (no nvidia-smi listing, no /dev/nvidia*): nothing to check"
    exit 0
fi

cd "$ROOT"
mkdir -p "$(dirname "$REPORT")"
: > "$REPORT"
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
started=$SECONDS
failed=()

say() {  # to the terminal and the report
    echo "$*" | tee -a "$REPORT"
}

section() {
    say ""
    say "## $* (+$((SECONDS - started)) s)"
    say ""
}

step() {  # TITLE TIMEOUT_S COMMAND...: its output, fenced, into the report
    local title="$1" limit="$2" code=0
    shift 2
    section "$title"
    say '```'
    timeout "$limit" "$@" 2>&1 | tee -a "$REPORT" || code=$?
    say '```'
    if [[ $code -ne 0 ]]; then
        say "**$title: exit code $code$([[ $code -eq 124 ]] && echo ", stopped after $limit s")**"
        failed+=("$title")
    fi
}

say "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), $(hostname)"
say ""
say "$("$PYTHON" -c 'import platform, sys; print("Python", platform.python_version(), sys.executable)')," \
    "commit $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)$([[ $CPU -eq 1 ]] && echo ", --cpu")"

section "Driver"
say '```'
{ nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_cap --format=csv 2>&1 \
    && nvidia-smi 2>/dev/null | grep -m1 'CUDA Version'; } | tee -a "$REPORT" || say "(no nvidia-smi)"
say '```'

section "Install"
if [[ -d "$WHEELS" ]]; then
    install=("$PYTHON" -m pip install --disable-pip-version-check --no-index --find-links "$WHEELS"
             flask gunicorn ctranslate2 tokenizers pytest requests)
    say "From $WHEELS ($(find "$WHEELS" -name '*.whl' | wc -l) wheels), what is missing only:"
    say '```'
    if ! "${install[@]}" > "$REPORT.pip" 2>&1; then
        if grep -q externally-managed "$REPORT.pip"; then  # a distribution's Python on a bare machine
            "${install[@]}" --break-system-packages > "$REPORT.pip" 2>&1 || failed+=("Install")
        else
            failed+=("Install")
        fi
    fi
    grep -E '^(Successfully installed|ERROR)' "$REPORT.pip" | tee -a "$REPORT" || say "(all already installed)"
    rm -f "$REPORT.pip"
    say '```'
else
    say "No wheel folder at $WHEELS: using what is installed."
fi

step "CUDA" 60 "$PYTHON" -c '
import ctranslate2, torch, transformers
from handlers import cuda
print("torch", torch.__version__, "CUDA", torch.version.cuda, "| transformers", transformers.__version__,
      "| ctranslate2", ctranslate2.__version__)
check = cuda.check_gpu(cuda.required_cuda("transformers"))  # in a child process: CUDA stays uninitialised here
print("start-up check:", check.error or check.warning or f"passes: driver {check.driver} (CUDA {check.driver_cuda})")
for i, device in enumerate(check.devices):
    print(f"  cuda:{i} {device.name}, compute capability {device.capability}, native bf16 {cuda.native_bf16(device.capability)},"
          f" {device.free / 2**30:.1f} of {device.total / 2**30:.1f} GiB free")
print(cuda.preload_cublas12())
print("CTranslate2 sees", ctranslate2.get_cuda_device_count(), "CUDA device(s)")
if torch.cuda.is_available():
    print("torch.cuda.is_bf16_supported():", torch.cuda.is_bf16_supported())
'

step "tests/gpu" 120 "$PYTHON" -m pytest tests/gpu -v -s -rs -p no:cacheprovider

if [[ $CPU -eq 1 ]]; then
    step "Engines (on the CPU: t5-small only)" 150 "$PYTHON" bench/gpu_engines.py --device cpu --shapes t5-small \
        --batches 1,8 --new-tokens 8 --seconds 0.5
else
    step "Engines" 150 "$PYTHON" bench/gpu_engines.py
fi

section "Result"
if [[ ${#failed[@]} -eq 0 ]]; then
    say "gpu_check.sh: every step passed in $((SECONDS - started)) s; report: $REPORT"
else
    say "gpu_check.sh: FAILED: ${failed[*]} (in $((SECONDS - started)) s); report: $REPORT"
    exit 1
fi
