#!/bin/bash
# Image entrypoint. SageMaker runs `docker run IMAGE serve`; `docker run IMAGE` (no argument)
# means the same. Anything else runs as given (`docker run IMAGE python -c ...`, `bash`).
# `exec` keeps the server as PID 1 so SIGTERM from `docker stop` / SageMaker reaches it.
set -euo pipefail

if [[ $# -eq 0 ]]; then
    exec serve
fi
if [[ "$1" == "serve" ]]; then
    shift
    exec serve "$@"
fi
exec "$@"
