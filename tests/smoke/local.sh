#!/usr/bin/env bash
# Smoke test of an image, started the way SageMaker local mode starts it:
#   docker run -v <model>:/opt/ml/model:ro -p 127.0.0.1:<port>:8080 IMAGE serve
# then: /ping 200 (cold start measured), a demo question answered correctly, a bad input's
# 4xx, SIGTERM (docker stop) and a clean exit 0.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: tests/smoke/local.sh IMAGE [--model DIR] [--port PORT] [--expect-log TEXT] [-- DOCKER_RUN_ARGS...]

  IMAGE         the image to test, e.g. flan-t5-sagemaker:0.1.0-cpu
  --model DIR   model directory mounted read-only at /opt/ml/model
                (default: demo/model, the demo model; its answers come from
                demo/data/biography_qa.jsonl)
  --port PORT   host port on 127.0.0.1 (default: a free one)
  --expect-log TEXT
                the server's log must hold TEXT once the question is answered
                (tests/smoke/local_gpu.sh: ' on cuda', the model loaded on the GPU)
  -- ARGS       extra `docker run` arguments (tests/smoke/local_gpu.sh passes --gpus all)

Environment: DOCKER (client, default docker), SMOKE_PING_TIMEOUT (seconds, default 180).
EOF
}

die() {
    echo "local.sh: FAILED: $*" >&2
    exit 1
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DOCKER="${DOCKER:-docker}"
IMAGE=""
MODEL_DIR="$ROOT/demo/model"
PORT=""
EXPECT_LOG=""
RUN_ARGS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --model) MODEL_DIR="$2"; shift ;;
        --port) PORT="$2"; shift ;;
        --expect-log) EXPECT_LOG="$2"; shift ;;
        --) shift; RUN_ARGS=("$@"); break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [[ -z "$IMAGE" ]] || die "one IMAGE only"; IMAGE="$1" ;;
    esac
    shift
done
[[ -n "$IMAGE" ]] || { usage >&2; exit 2; }
[[ -d "$MODEL_DIR" ]] || die "model directory $MODEL_DIR not found"
MODEL_DIR="$(cd "$MODEL_DIR" && pwd)"
command -v curl >/dev/null || die "curl is needed"
QA_FILE="$ROOT/demo/data/biography_qa.jsonl"
[[ -f "$QA_FILE" ]] || die "$QA_FILE not found"
if [[ -z "$PORT" ]]; then
    PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
URL="http://127.0.0.1:$PORT"
NAME="flan-t5-smoke-$$"
WORK="$(mktemp -d)"

cleanup() {
    "$DOCKER" rm -f "$NAME" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# status code of a request; the body lands in $WORK/body
request() {  # METHOD PATH [CONTENT_TYPE BODY]
    local args=(-s -o "$WORK/body" -w '%{http_code}' -X "$1" --max-time 60)
    [[ $# -lt 4 ]] || args+=(-H "Content-Type: $3" --data-binary "$4")
    curl "${args[@]}" "$URL$2" || echo "000"
}

echo "local.sh: starting $IMAGE (model $MODEL_DIR -> /opt/ml/model, port 127.0.0.1:$PORT)"
started="$(date +%s.%N)"
"$DOCKER" run -d --name "$NAME" -v "$MODEL_DIR:/opt/ml/model:ro" -p "127.0.0.1:$PORT:8080" \
    "${RUN_ARGS[@]}" "$IMAGE" serve >/dev/null

deadline=$((SECONDS + ${SMOKE_PING_TIMEOUT:-180}))
status=000
while [[ $SECONDS -lt $deadline ]]; do
    status="$(request GET /ping)"
    [[ "$status" != 200 ]] || break
    if [[ "$("$DOCKER" inspect --format '{{.State.Running}}' "$NAME")" != true ]]; then
        "$DOCKER" logs --tail 40 "$NAME" >&2
        die "the container exited before /ping said 200"
    fi
    sleep 0.2
done
if [[ "$status" != 200 ]]; then
    "$DOCKER" logs --tail 40 "$NAME" >&2
    die "/ping never said 200 (last status $status)"
fi
cold="$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")"
echo "local.sh: cold start to first 200 /ping: ${cold} s"

# A question the demo model has memorised, and its answer.
mapfile -t qa < <(python3 -c '
import json, sys
row = json.loads(open(sys.argv[1]).readline())
print(json.dumps(row["question"]))
print(json.dumps(row["answer"]))' "$QA_FILE")
question="${qa[0]}"
answer="${qa[1]}"
body="{\"inputs\": $question}"
status="$(request POST /invocations application/json "$body")"
[[ "$status" == 200 ]] || die "POST /invocations $body -> $status: $(cat "$WORK/body")"
python3 -c '
import json, sys
got, want = json.load(open(sys.argv[1])), [{"generated_text": json.loads(sys.argv[2])}]
if got != want:
    sys.exit(f"answer {got!r}, expected {want!r}")' "$WORK/body" "$answer" \
    || die "wrong answer to $question"
echo "local.sh: $question -> $(cat "$WORK/body")"
if [[ -n "$EXPECT_LOG" ]]; then
    "$DOCKER" logs "$NAME" > "$WORK/log" 2>&1
    grep -qF -- "$EXPECT_LOG" "$WORK/log" || { tail -n 40 "$WORK/log" >&2; die "the log has no '$EXPECT_LOG'"; }
    echo "local.sh: log: $(grep -F -- "$EXPECT_LOG" "$WORK/log" | head -n 1)"
fi

status="$(request POST /invocations application/json '{"inputs": ')"
[[ "$status" == 400 ]] || die "malformed JSON -> $status (expected 400): $(cat "$WORK/body")"
echo "local.sh: malformed JSON -> 400 $(cat "$WORK/body")"
status="$(request POST /invocations image/png 'not an image')"
[[ "$status" == 415 ]] || die "image/png -> $status (expected 415): $(cat "$WORK/body")"
echo "local.sh: unsupported content type -> 415"

# SIGTERM, as SageMaker and `docker stop` send it; a clean stop exits 0 well before SIGKILL.
stop_started=$SECONDS
"$DOCKER" stop -t 30 "$NAME" >/dev/null
code="$("$DOCKER" inspect --format '{{.State.ExitCode}}' "$NAME")"
[[ "$code" == 0 ]] || { "$DOCKER" logs --tail 40 "$NAME" >&2; die "exit code $code after SIGTERM (expected 0)"; }
echo "local.sh: SIGTERM -> exit 0 in $((SECONDS - stop_started)) s"
echo "local.sh: PASSED ($IMAGE, cold start ${cold} s)"
