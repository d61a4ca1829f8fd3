"""Request bodies never reach the logs at INFO, on either stack: only sizes and request ids.

Every request below carries a unique marker in its body (good requests, bad ones of every
kind, one that fails in the model); afterwards no log the server wrote holds the marker.
"""

import json
import time
import uuid
from pathlib import Path

from tests.procs import REPO, http_request
from tests.reliability.conftest import QUESTION

MARKER = "bodymarker" + uuid.uuid4().hex
PATH_MARKER = "pathmarker" + uuid.uuid4().hex
CAP = 6 * 1024 * 1024


def marked_requests() -> list[tuple[bytes, dict[str, str]]]:
    q = f"{MARKER} {QUESTION}"
    js = {"Content-Type": "application/json"}
    return [
        (json.dumps({"inputs": q}).encode(), js),
        (json.dumps({"inputs": [q, q], "parameters": {"max_new_tokens": 4, "stop": [MARKER]}}).encode(), js),
        (json.dumps({"inputs": q, "parameters": {"stream": True}}).encode(), js),
        (q.encode(), {"Content-Type": "text/plain"}),
        (f"{q}\n{q}\n".encode(), {"Content-Type": "text/csv"}),
        (f'{json.dumps({"inputs": q})}\n"{MARKER}"\n'.encode(), {"Content-Type": "application/jsonlines"}),
        # bad ones: each error message names the part that is wrong
        (f'{{"inputs": "{MARKER}'.encode(), js),
        (json.dumps({"inputs": q, "parameters": {MARKER: 1}}).encode(), js),
        (json.dumps({"inputs": q, "parameters": {"temperature": MARKER}}).encode(), js),
        (json.dumps({"inputs": q, "parameters": {"stop": [MARKER, 5]}}).encode(), js),
        (json.dumps({"inputs": q, "stream": MARKER}).encode(), js),
        (json.dumps({MARKER: q}).encode(), js),
        (f'{{"inputs": "{MARKER}", "inputs": "{MARKER}"}}'.encode(), js),
        (b'{"inputs": "' + MARKER.encode() + b'\xff"}', js),
        (("[" * 100 + json.dumps(MARKER) + "]" * 100).encode(), js),
        (f'{json.dumps({"inputs": q})}\n{{"{MARKER}"\n'.encode(), {"Content-Type": "application/jsonlines"}),
        (q.encode(), {"Content-Type": f"image/{MARKER}"}),
        (q.encode(), {"Content-Type": "application/json", "Accept": f"image/{MARKER}"}),
        (json.dumps({"inputs": q, "pad": "x" * CAP}).encode(), js),  # 413
        # fails inside the model (sampling at a temperature that overflows)
        (json.dumps({"inputs": q, "parameters": {"do_sample": True, "temperature": 1e-300,
                                                 "max_new_tokens": 2}}).encode(), js),
    ]


def logs_of(server) -> str:
    """Everything the server logged: its output, and any log file MMS may have written."""
    text = server.full_log()
    extra = [REPO / "logs"] + ([server.private_dir] if getattr(server, "private_dir", None) else [])
    for folder in extra:
        if folder and Path(folder).is_dir():
            for path in Path(folder).rglob("*"):
                if path.is_file() and path.suffix in (".log", ".txt", ""):
                    text += path.read_text(errors="replace")
    return text


def test_no_request_body_in_any_log(stack):
    statuses = []
    for body, headers in marked_requests():
        statuses.append(http_request(stack.port, "POST", "/invocations", body, headers, timeout=60).status)
    assert 200 in statuses and 400 in statuses and 413 in statuses, statuses
    http_request(stack.port, "GET", f"/{PATH_MARKER}")  # request lines may be logged, bodies not
    if hasattr(stack, "remember_processes"):
        stack.remember_processes()
    text = logs_of(stack)
    assert "INFO" in text and len(text.splitlines()) > 5, text[-2000:]
    if stack.kind == "flask":  # the access log shows the path and the request's size, never its body
        deadline = time.monotonic() + 10
        while PATH_MARKER not in text and time.monotonic() < deadline:  # nginx logs after it answers
            time.sleep(0.1)
            text = logs_of(stack)
        assert PATH_MARKER in text
        assert text.count(" in=") >= len(statuses)
    lines = [line for line in text.splitlines() if MARKER in line]
    assert not lines, f"{len(lines)} log line(s) hold a request body, e.g. {lines[0][:300]!r}"
