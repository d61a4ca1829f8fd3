#!/usr/bin/env bash
# Build the Flan-T5 SageMaker inference images and optionally push them to Amazon ECR.
# Run ./build.sh --help for the options. docs/IMAGES.md explains the images.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: ./build.sh [--cpu] [--gpu] [options]

Builds Dockerfile.cpu and/or Dockerfile.gpu (default: --cpu) and tags each image
  <repo>:<version>-<cpu|gpu>   <repo>:<git-sha>-<cpu|gpu>   [<repo>:latest-<cpu|gpu>]

Build options:
  --cpu / --gpu             which images to build (both may be given)
  --repo NAME               repository name (default: flan-t5-sagemaker)
  --version V               version tag (default: version in pyproject.toml, else 0.0.0)
  --latest                  also tag latest-<cpu|gpu>
  --base-image IMAGE        BASE_IMAGE build argument (default: the Dockerfile's)
  --torch-requirement REQ   pip requirement for torch (default: torch==2.13.0)
  --torch-index-url URL     index for torch (default: the Dockerfile's: PyTorch's cpu or
                            cu128 wheel index; '' means PyPI)
  --demo-ct2 QUANTIZATION   the demo model converted for INFERENCE_BACKEND=ctranslate2,
                            baked in beside it: int8 (default), int8_float32, float32,
                            bfloat16, int8_bfloat16, or none (no converted copy)
  --wheelhouse DIR          offline build: pip --no-index --find-links DIR (DIR must hold
                            wheels for every requirement, torch included)
  --ca-cert FILE            extra CA certificates (PEM) trusted by pip during the build;
                            used in the builder stage only, never in the final image
  --build-arg K=V           extra docker build argument (repeatable)
  --no-cache                docker build --no-cache

Push options (Amazon ECR):
  --push                    push every tag; prints the pushed image URIs
  --account ID              AWS account (default: aws sts get-caller-identity)
  --region REGION           AWS region (default: aws configure get region, AWS_REGION)
  --registry HOST[:PORT]    registry to push to instead of
                            <account>.dkr.ecr.<region>.amazonaws.com
  --uri-file FILE           also write the pushed URIs (tags and digests) to FILE

Environment: DOCKER (docker client, default docker), AWS_ENDPOINT_URL (ECR/STS API
endpoint, e.g. a moto server), the usual AWS_* credential variables.

Examples:
  ./build.sh --cpu --gpu --latest
  ./build.sh --cpu --push --region us-east-1
  ./build.sh --cpu --wheelhouse ./wheels --ca-cert /etc/ssl/certs/corp-ca.pem
EOF
}

die() {
    echo "build.sh: error: $*" >&2
    exit 1
}

log() {
    echo "build.sh: $*" >&2
}

# AWS CLI calls go to AWS_ENDPOINT_URL when it is set (old CLIs ignore the variable).
aws_cli() {
    if [[ -n "${AWS_ENDPOINT_URL:-}" ]]; then
        aws --endpoint-url "$AWS_ENDPOINT_URL" "$@"
    else
        aws "$@"
    fi
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DOCKER="${DOCKER:-docker}"
FLAVORS=()
REPO="flan-t5-sagemaker"
VERSION=""
LATEST=0
BASE_IMAGE=""
TORCH_REQUIREMENT=""
TORCH_INDEX_URL=""
TORCH_INDEX_URL_SET=0
DEMO_CT2=""
WHEELHOUSE=""
CA_CERT=""
EXTRA_BUILD_ARGS=()
NO_CACHE=()
PUSH=0
ACCOUNT=""
REGION=""
REGISTRY=""
URI_FILE=""

need_value() {
    [[ $# -ge 2 && -n "${2+x}" ]] || die "$1 needs a value (see --help)"
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --cpu) FLAVORS+=(cpu) ;;
        --gpu) FLAVORS+=(gpu) ;;
        --repo) need_value "$@"; REPO="$2"; shift ;;
        --version) need_value "$@"; VERSION="$2"; shift ;;
        --latest) LATEST=1 ;;
        --base-image) need_value "$@"; BASE_IMAGE="$2"; shift ;;
        --torch-requirement) need_value "$@"; TORCH_REQUIREMENT="$2"; shift ;;
        --torch-index-url) need_value "$@"; TORCH_INDEX_URL="$2"; TORCH_INDEX_URL_SET=1; shift ;;
        --demo-ct2) need_value "$@"; DEMO_CT2="$2"; shift ;;
        --wheelhouse) need_value "$@"; WHEELHOUSE="$2"; shift ;;
        --ca-cert) need_value "$@"; CA_CERT="$2"; shift ;;
        --build-arg) need_value "$@"; EXTRA_BUILD_ARGS+=(--build-arg "$2"); shift ;;
        --no-cache) NO_CACHE=(--no-cache) ;;
        --push) PUSH=1 ;;
        --account) need_value "$@"; ACCOUNT="$2"; shift ;;
        --region) need_value "$@"; REGION="$2"; shift ;;
        --registry) need_value "$@"; REGISTRY="$2"; shift ;;
        --uri-file) need_value "$@"; URI_FILE="$2"; shift ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done

[[ ${#FLAVORS[@]} -gt 0 ]] || FLAVORS=(cpu)
[[ "$REPO" =~ ^[a-z0-9][a-z0-9._/-]+$ ]] \
    || die "--repo '$REPO': use 2+ lowercase letters, digits, '.', '_', '-', '/'"
[[ -z "$WHEELHOUSE" || -d "$WHEELHOUSE" ]] || die "--wheelhouse $WHEELHOUSE: not a directory"
[[ -z "$DEMO_CT2" || "$DEMO_CT2" =~ ^(int8|int8_float32|float32|bfloat16|int8_bfloat16|none)$ ]] \
    || die "--demo-ct2 '$DEMO_CT2': use int8, int8_float32, float32, bfloat16, int8_bfloat16 or none"
[[ -z "$CA_CERT" || -f "$CA_CERT" ]] || die "--ca-cert $CA_CERT: no such file"

# --- docker --------------------------------------------------------------------------
command -v "$DOCKER" >/dev/null 2>&1 \
    || die "docker client '$DOCKER' not found: install Docker (https://docs.docker.com/get-docker/)"
if ! docker_info_err="$("$DOCKER" info 2>&1 >/dev/null)"; then
    die "cannot reach the Docker daemon (is dockerd running? DOCKER_HOST=${DOCKER_HOST:-unset}): ${docker_info_err##*$'\n'}"
fi

# --- ECR preflight (before the long build: fail fast without credentials) -----------------------------------------------------------------------
if [[ $PUSH -eq 1 ]]; then
    command -v aws >/dev/null 2>&1 \
        || die "--push needs the AWS CLI ('aws'): pip install awscli, or see https://aws.amazon.com/cli/"
    [[ -z "${AWS_ENDPOINT_URL:-}" ]] || log "using AWS API endpoint $AWS_ENDPOINT_URL"

    if [[ -z "$REGION" ]]; then
        REGION="$(aws configure get region 2>/dev/null || true)"
        REGION="${REGION:-${AWS_REGION:-${AWS_DEFAULT_REGION:-}}}"
    fi
    [[ -n "$REGION" ]] || die "no AWS region: pass --region or run 'aws configure'"

    sts_err="$(mktemp)"
    if ! identity_account="$(aws_cli sts get-caller-identity --region "$REGION" \
            --query Account --output text 2>"$sts_err")"; then
        err="$(cat "$sts_err")"; rm -f "$sts_err"
        die "no usable AWS credentials (aws sts get-caller-identity failed: ${err##*$'\n'}); configure them with 'aws configure' or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    fi
    rm -f "$sts_err"
    ACCOUNT="${ACCOUNT:-$identity_account}"
    REGISTRY="${REGISTRY:-$ACCOUNT.dkr.ecr.$REGION.amazonaws.com}"
    log "pushing to $REGISTRY/$REPO (account $ACCOUNT, region $REGION)"
fi

# --- tags ----------------------------------------------------------------------------
if [[ -z "$VERSION" ]]; then
    if [[ -f "$ROOT/pyproject.toml" ]]; then
        VERSION="$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$ROOT/pyproject.toml" | head -n 1)"
    fi
    VERSION="${VERSION:-0.0.0}"
fi
GIT_SHA="nogit"
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    GIT_SHA="$(git -C "$ROOT" rev-parse --short=12 HEAD)"
    if ! git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null; then
        GIT_SHA="${GIT_SHA}-dirty"
    fi
fi

# --- optional build extras: staged inside the context, removed on exit -------------------
EXTRA_DIR="$ROOT/build/docker-extra"
cleanup() {
    rm -rf "$EXTRA_DIR"
}
trap cleanup EXIT
rm -rf "$EXTRA_DIR"
if [[ -n "$WHEELHOUSE" || -n "$CA_CERT" ]]; then
    mkdir -p "$EXTRA_DIR"
    if [[ -n "$WHEELHOUSE" ]]; then
        log "offline build: staging wheelhouse $WHEELHOUSE"
        # Hard links when on the same file system (instant), else a copy.
        cp -al "$WHEELHOUSE/." "$EXTRA_DIR/wheelhouse" 2>/dev/null \
            || { rm -rf "$EXTRA_DIR/wheelhouse"; cp -a "$WHEELHOUSE/." "$EXTRA_DIR/wheelhouse"; }
    fi
    if [[ -n "$CA_CERT" ]]; then
        log "trusting extra CA certificates from $CA_CERT (builder stage only)"
        cp "$CA_CERT" "$EXTRA_DIR/extra-ca.pem"
    fi
fi

# --- build ---------------------------------------------------------------------------
BUILT_TAGS=()
for flavor in "${FLAVORS[@]}"; do
    dockerfile="$ROOT/Dockerfile.$flavor"
    [[ -f "$dockerfile" ]] || die "$dockerfile not found"
    tags=("$REPO:$VERSION-$flavor" "$REPO:$GIT_SHA-$flavor")
    [[ $LATEST -eq 0 ]] || tags+=("$REPO:latest-$flavor")
    args=()
    for tag in "${tags[@]}"; do args+=(--tag "$tag"); done
    [[ -z "$BASE_IMAGE" ]] || args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
    [[ -z "$TORCH_REQUIREMENT" ]] || args+=(--build-arg "TORCH_REQUIREMENT=$TORCH_REQUIREMENT")
    [[ $TORCH_INDEX_URL_SET -eq 0 ]] || args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
    [[ -z "$DEMO_CT2" ]] || args+=(--build-arg "DEMO_CT2_QUANTIZATION=$DEMO_CT2")
    args+=(--label "org.opencontainers.image.version=$VERSION"
           --label "org.opencontainers.image.revision=$GIT_SHA")

    log "building $flavor image: $DOCKER build -f Dockerfile.$flavor ${args[*]} ${EXTRA_BUILD_ARGS[*]} ${NO_CACHE[*]} ."
    start=$SECONDS
    "$DOCKER" build -f "$dockerfile" "${args[@]}" "${EXTRA_BUILD_ARGS[@]}" "${NO_CACHE[@]}" "$ROOT"
    size="$("$DOCKER" image inspect --format '{{.Size}}' "${tags[0]}")"
    log "built $flavor image in $((SECONDS - start)) s, $((size / 1000000)) MB: ${tags[*]}"
    BUILT_TAGS+=("${tags[@]}")
done

[[ $PUSH -eq 1 ]] || exit 0

# --- push ------------------------------------------------------------------------------
if ! aws_cli ecr describe-repositories --region "$REGION" --registry-id "$ACCOUNT" \
        --repository-names "$REPO" >/dev/null 2>&1; then
    log "creating ECR repository $REPO"
    aws_cli ecr create-repository --region "$REGION" --registry-id "$ACCOUNT" \
        --repository-name "$REPO" >/dev/null
fi
aws_cli ecr get-login-password --region "$REGION" \
    | "$DOCKER" login --username AWS --password-stdin "$REGISTRY"

URIS=()
for tag in "${BUILT_TAGS[@]}"; do
    remote="$REGISTRY/$tag"
    "$DOCKER" tag "$tag" "$remote"
    log "pushing $remote"
    "$DOCKER" push "$remote"
    URIS+=("$remote")
done
# Digests are known once pushed; a digest URI pins exactly what was built.
for remote in "${URIS[@]}"; do
    digest_uri="$("$DOCKER" image inspect --format '{{join .RepoDigests "\n"}}' "$remote" \
        | grep -F "$REGISTRY/$REPO@" | head -n 1 || true)"
    [[ -z "$digest_uri" ]] || URIS+=("$digest_uri")
done
mapfile -t URIS < <(printf '%s\n' "${URIS[@]}" | awk '!seen[$0]++')

echo "Pushed image URIs (use one as image= / image_uri=):"
printf '  %s\n' "${URIS[@]}"
if [[ -n "$URI_FILE" ]]; then
    printf '%s\n' "${URIS[@]}" > "$URI_FILE"
fi
