#!/bin/bash
# Image entrypoint. SageMaker runs `docker run IMAGE serve`; `docker run IMAGE` (no argument)
# means the same. Anything else runs as given (`docker run IMAGE python -c ...`, `bash`).
# `exec` keeps the server as PID 1 so SIGTERM from `docker stop` / SageMaker reaches it.
#
# CUDA forward compatibility (GPU image on an NVIDIA CUDA base): when the host's driver is
# too old for the image's CUDA major version (CUDA 12 needs a driver >= 525.60.13, CUDA 13 >=
# 580.65.06), the CUDA compat libraries of the base (/usr/local/cuda/compat, a newer libcuda)
# go first on LD_LIBRARY_PATH, as AWS documents for SageMaker; they work on data-center GPUs
# with the driver branches NVIDIA supports, and the server's start-up check names the error
# where they do not. CUDA_COMPAT=0 never uses them, CUDA_COMPAT=1 always does (default: auto).
set -euo pipefail

# "a.b.c" -> true when version $1 is older than version $2
version_lt() {
    [[ "$1" != "$2" && "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" == "$1" ]]
}

host_driver() {
    local version=""
    if command -v nvidia-smi >/dev/null 2>&1; then
        version="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1 || true)"
    fi
    if [[ -z "$version" && -r /proc/driver/nvidia/version ]]; then
        version="$(sed -n 's/^NVRM version:.* \([0-9][0-9]*\.[0-9][0-9.]*\) .*$/\1/p' /proc/driver/nvidia/version)"
    fi
    echo "$version"
}

cuda_compat() {
    local dir="${CUDA_COMPAT_DIR:-/usr/local/cuda/compat}" mode="${CUDA_COMPAT:-auto}"
    [[ "$mode" != 0 && -e "$dir/libcuda.so.1" ]] || return 0
    local compat host needed
    compat="$(readlink "$dir/libcuda.so.1" | sed -n 's/^libcuda\.so\.//p')"  # e.g. 570.124.06
    host="$(host_driver)"
    [[ -n "$host" ]] || return 0  # no GPU given to this container
    case "${CUDA_VERSION:-}" in  # set by NVIDIA's CUDA bases, e.g. 12.8.1
        13.*) needed=580.65.06 ;;
        12.*) needed=525.60.13 ;;
        *) needed="$compat" ;;
    esac
    if [[ "$mode" == 1 ]] || { version_lt "$host" "$needed" && version_lt "$host" "$compat"; }; then
        export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "entrypoint: NVIDIA driver $host, image CUDA ${CUDA_VERSION:-?}: using CUDA's compat libraries" \
             "($dir, libcuda $compat)" >&2
    fi
}

cuda_compat

if [[ $# -eq 0 ]]; then
    exec serve
fi
if [[ "$1" == "serve" ]]; then
    shift
    exec serve "$@"
fi
exec "$@"
