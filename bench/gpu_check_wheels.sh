#!/usr/bin/env bash
# Prepares the wheel folder bench/gpu_check.sh installs on a bare GPU machine (no network there):
# flask, gunicorn, ctranslate2, tokenizers, pytest and requests with their dependencies, as
# CPython 3.12 manylinux x86_64 wheels, at the versions this project's .venv runs. Leaves out
# what would not fit and the lent GPU machines already have (numpy, by default), and checks
# that the folder plus the repo stay within the 64 MiB that travel with a device command.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bench/gpu_check_wheels.sh [--dest DIR] [--without NAMES] [--python-version X.Y]

  --dest DIR            the wheel folder (default: build/gpu-check-wheels, git-ignored;
                        name it in the device tool's `carry`)
  --without NAMES       comma-separated distributions left out (default: numpy, which the lent
                        machines have and which alone would take 16 MB of the 64 MiB)
  --python-version X.Y  the target interpreter (default: 3.12, the lent machines')

Needs network access to PyPI (here, not on the GPU machine) and .venv (its `pip freeze` pins
the versions). Prints the folder's size and the budget left.
EOF
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/build/gpu-check-wheels"
WITHOUT="numpy"
PYVER="3.12"
PACKAGES=(flask gunicorn ctranslate2 tokenizers pytest requests)
BUDGET=$((64 * 1024 * 1024))
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --dest) DEST="$2"; shift ;;
        --without) WITHOUT="$2"; shift ;;
        --python-version) PYVER="$2"; shift ;;
        *) echo "gpu_check_wheels.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
PIP="$ROOT/.venv/bin/pip"
[[ -x "$PIP" ]] || { echo "gpu_check_wheels.sh: $PIP is missing: run make venv" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The venv's versions as constraints (its +cpu torch is no constraint for these packages).
"$PIP" freeze --disable-pip-version-check | grep -v -E '^(torch|-e |#)' > "$work/constraints.txt"
# PyPI itself (--isolated: not this machine's mirrors, which serve CPython 3.11 wheels).
pypi="$("$ROOT/.venv/bin/python" -c 'from pip._internal.models.index import PyPI; print(PyPI.simple_url)')"
cert="$("$PIP" config get global.cert 2>/dev/null || true)"
cert_args=()
[[ -z "$cert" || ! -f "$cert" ]] || cert_args=(--cert "$cert")
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
           manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done

echo "gpu_check_wheels.sh: downloading ${PACKAGES[*]} and their dependencies for CPython $PYVER into $DEST"
rm -rf "$DEST"
mkdir -p "$DEST"
"$PIP" download --isolated --disable-pip-version-check -q "${cert_args[@]}" --index-url "$pypi" \
    --only-binary=:all: --python-version "$PYVER" --implementation cp "${platforms[@]}" \
    -c "$work/constraints.txt" -d "$DEST" "${PACKAGES[@]}"

IFS=, read -r -a left_out <<< "$WITHOUT"
for name in "${left_out[@]}"; do
    pattern="$(echo "$name" | tr '-' '_')"
    for wheel in "$DEST"/*.whl; do
        base="$(basename "$wheel")"
        if [[ "${base,,}" == "${pattern,,}"-* ]]; then
            echo "gpu_check_wheels.sh: leaving out $base ($(du -h "$wheel" | cut -f1))"
            rm "$wheel"
        fi
    done
done

# What travels with a device command: the repo's tracked and untracked-not-ignored files, plus this.
repo_bytes="$(cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 -r stat -c %s 2>/dev/null \
              | awk '{s += $1} END {print s + 0}')"
wheel_bytes="$(du -sb "$DEST" | cut -f1)"
total=$((repo_bytes + wheel_bytes))
printf 'gpu_check_wheels.sh: %d wheels, %.1f MiB; the repo %.1f MiB; together %.1f of %d MiB\n' \
    "$(find "$DEST" -name '*.whl' | wc -l)" "$(echo "$wheel_bytes / 1048576" | bc -l)" \
    "$(echo "$repo_bytes / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)" $((BUDGET / 1048576))
if [[ $total -gt $BUDGET ]]; then
    echo "gpu_check_wheels.sh: error: over the 64 MiB a device command carries; leave more out (--without)" >&2
    exit 1
fi
