"""LOG_FORMAT=json: every line a server writes is one JSON object (time, level, logger,
message), whichever process wrote it: the Python processes, nginx's access log (JSON) and
error log (wrapped by the supervisor), Java and MMS's workers (wrapped, their own objects taken
back out). Request lines carry the request id, model, status, sizes and durations; no line
holds a request body."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

from tests.mms.harness import MmsServer, make_model
from tests.procs import REPO, Server, free_port, http_request
from tests.reliability.conftest import ANSWER, QUESTION

MARKER = "bodymarker" + uuid.uuid4().hex
JSON = {"Content-Type": "application/json"}
REQUIRED = {"time", "level", "logger", "message"}
LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?[+-]\d\d:\d\d")


def every_line(text: str) -> list[dict]:
    """Each line of ``text`` as the JSON object it must be."""
    objects = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            obj = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line[:300]!r}") from None
        assert isinstance(obj, dict) and REQUIRED <= obj.keys(), f"line {number}: {line[:300]}"
        assert obj["level"] in LEVELS and ISO_TIME.fullmatch(obj["time"]), f"line {number}: {line[:300]}"
        objects.append(obj)
    assert MARKER not in text, "a request body reached the log"
    return objects


def access_lines(objects: list[dict]) -> list[dict]:
    lines = [o for o in objects if o["logger"] == "nginx.access"]
    for line in lines:
        assert re.fullmatch(r"[0-9a-f]{32}", line["rid"]), line
        assert all(isinstance(line[k], int) for k in ("status", "bytes_in", "bytes_out")), line
        assert isinstance(line["duration_s"], float), line
    return lines


def test_a_flask_run_that_served_failed_and_streamed(tmp_path):
    server = Server(log_path=tmp_path / "serve.log", env={"LOG_FORMAT": "json"})
    with server:
        good = http_request(server.port, "POST", "/invocations", json.dumps({"inputs": QUESTION}).encode(), JSON)
        assert good.status == 200 and json.loads(good.body) == [{"generated_text": ANSWER}]
        stream = http_request(server.port, "POST", "/invocations", json.dumps({"inputs": QUESTION}).encode(),
                              {**JSON, "Accept": "text/event-stream"})
        assert stream.status == 200 and b"generated_text" in stream.body
        failed = [http_request(server.port, "POST", "/invocations", f'{{"inputs": "{MARKER}'.encode(), JSON),
                  http_request(server.port, "POST", "/invocations", json.dumps({MARKER: 1}).encode(), JSON),
                  http_request(server.port, "POST", "/invocations", MARKER.encode() * 160_000, JSON),
                  http_request(server.port, "GET", "/no/such/path")]
        assert [a.status for a in failed] == [400, 400, 413, 404]
        [worker] = server.model_pids()
        os.kill(worker, signal.SIGKILL)  # gunicorn says so, and starts another
        deadline = time.monotonic() + 60
        while server.model_pids() in ([], [worker]) or http_request(server.port, "GET", "/ping").status != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert server.proc.returncode == 0
    objects = every_line(server.full_log())
    access = access_lines(objects)
    by_rid = {line["rid"]: line for line in access}
    assert {line["status"] for line in access} >= {200, 400, 404, 413}
    served = by_rid[good.headers["x-request-id"]]
    assert served["model"] == "model" and served["path"] == "/invocations"
    assert re.fullmatch(r"queue;dur=[\d.]+, engine;dur=[\d.]+", served["server_timing"]), served
    assert by_rid[stream.headers["x-request-id"]]["server_timing"] == ""
    too_large = by_rid[failed[2].headers["x-request-id"]]
    assert too_large["status"] == 413 and too_large["model"] == ""  # nginx answered it
    app_lines = [o for o in objects if o["logger"] == "serve.app"]
    assert {o["rid"] for o in app_lines} >= {failed[0].headers["x-request-id"], failed[3].headers["x-request-id"]}
    assert all({"status", "model", "bytes_in", "path"} <= o.keys() for o in app_lines)
    assert any(o["logger"] == "nginx.error" and "too large body" in o["message"] for o in objects)
    loggers = {o["logger"] for o in objects}
    assert {"serve", "gunicorn.error", "serve.local", "handlers.ct2_engine"} <= loggers, loggers
    assert any(o["logger"] == "gunicorn.error" and o["level"] == "ERROR" and str(worker) in o["message"]
               for o in objects)


def test_a_multi_model_run_that_loaded_invoked_and_unloaded(tmp_path):
    root = tmp_path / "models"
    make_model(root, "m1")
    server = MmsServer("--multi-model", "--model-root", str(root), "--workers", "1", log_path=tmp_path / "mms.log",
                       env={"LOG_FORMAT": "json"})
    try:
        server.start().wait_ready()
        assert server.load("m1", "m1").status_code == 200
        answer = server.invoke("m1", {"inputs": QUESTION})
        assert answer.status_code == 200 and answer.json() == [{"generated_text": ANSWER}]
        assert re.fullmatch(r"queue;dur=[\d.]+, engine;dur=[\d.]+", answer.headers["Server-Timing"])
        assert server.invoke("m1", f'{{"inputs": "{MARKER}'.encode()).status_code == 400
        assert server.delete("/models/m1").status_code == 200
        assert server.stop() == 0
    finally:
        server.kill_leftovers()
    objects = every_line(server.full_log())
    access = access_lines(objects)
    invoked = next(o for o in access if o["rid"] == answer.headers["X-Request-Id"])
    assert invoked["model"] == "m1" and invoked["server_timing"] == answer.headers["Server-Timing"]
    assert {(o["method"], o["path"], o["status"]) for o in access} >= {
        ("POST", "/models", 200), ("POST", "/models/m1/invoke", 200), ("POST", "/models/m1/invoke", 400),
        ("DELETE", "/models/m1", 200)}
    java = [o for o in objects if o["logger"].startswith("com.amazonaws.ml.mms")]
    assert java and all("thread" in o for o in java)
    worker = [o for o in objects if o["logger"] == "container.handler_service"]
    assert any("loaded" in o["message"] and o.get("thread", "").startswith("W-") for o in worker), worker
    registry = " ".join(o["message"] for o in objects if o["logger"] == "container.backend")
    assert "model 'm1' loaded" in registry and "model 'm1' unloaded" in registry


def serve_once(**env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serve"], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, SAGEMAKER_BIND_TO_PORT=str(free_port()), **env))


def test_a_start_up_error_is_a_json_line_too_and_an_unknown_format_is_one():
    done = serve_once(LOG_FORMAT="json", SAGEMAKER_MAX_PAYLOAD_IN_MB="lots")
    assert done.returncode == 2
    [line] = every_line(done.stderr + done.stdout)
    assert line["level"] == "ERROR" and "SAGEMAKER_MAX_PAYLOAD_IN_MB='lots' is not a number" in line["message"]
    done = serve_once(LOG_FORMAT="xml")
    assert done.returncode == 2
    assert "LOG_FORMAT='xml' must be one of text, json" in done.stderr
