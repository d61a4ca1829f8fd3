#!/bin/sh
# What MMS runs as "python" (its --python): the interpreter the launcher runs on, with
# container/mms_worker.py in front of MMS's own scripts (see that file).
exec "${SERVE_MMS_PYTHON:-python3}" -m container.mms_worker "$@"
