"""One contract, one implementation: both stacks give the same bytes (status, body, Allow) to
the contract's own requests, and an idle crowd costs the multi-model stack no threads."""

import json
import os
import resource
import socket
import time

import pytest

from tests.mms.harness import MmsServer, group_members
from tests.procs import descendants, http_request
from tests.reliability.conftest import start_stack, stop_stack

# (method, path, body, headers): the contract's requests and its common mistakes.
REQUESTS = [
    ("GET", "/ping", None, {}),
    ("HEAD", "/ping", None, {}),
    ("GET", "/execution-parameters", None, {}),
    ("GET", "/no/such/path", None, {}),
    ("GET", "/models", None, {}),  # single-model endpoints: no management API
    ("PUT", "/ping", b"", {}),
    ("GET", "/invocations", None, {}),
    ("DELETE", "/execution-parameters", None, {}),
    ("POST", "/invocations", b'{"inputs": "x"', {"Content-Type": "application/json"}),
    ("POST", "/invocations", b'{"inputs": "x", "inputs": "y"}', {"Content-Type": "application/json"}),
    ("POST", "/invocations", b"x", {"Content-Type": "application/xml"}),
    ("POST", "/invocations", b'{"inputs": "x"}', {"Content-Type": "application/json", "Accept": "image/png"}),
    ("POST", "/invocations", b'{"inputs": "x", "parameters": {"num_beams": 99}}',
     {"Content-Type": "application/json"}),
    ("POST", "/invocations", b'{"inputs": "x", "parameters": {"colour": 1}}', {"Content-Type": "application/json"}),
    ("POST", "/invocations", b'{"inputs": "Where was Alnor Quarenard born?"}',
     {"Content-Type": "application/json", "X-Amzn-SageMaker-Custom-Attributes": "trace=1"}),
]


def answers(server) -> list:
    out = []
    for method, path, body, headers in REQUESTS:
        answer = http_request(server.port, method, path, body, headers)
        kept = {k: v for k, v in answer.headers.items()
                if k in ("content-type", "allow", "x-amzn-sagemaker-custom-attributes")}
        out.append((method, path, answer.status, kept, answer.body))
    return out


def test_both_stacks_answer_the_contract_byte_for_byte(tmp_path):
    seen = {}
    for kind in ("flask", "mms"):
        server = start_stack(kind, tmp_path)
        try:
            seen[kind] = answers(server)
        finally:
            stop_stack(server)
    for flask, mms in zip(seen["flask"], seen["mms"]):
        assert flask == mms
    statuses = [status for _, _, status, _, _ in seen["flask"]]
    assert statuses == [200, 200, 200, 404, 404, 405, 405, 405, 400, 400, 415, 406, 400, 400, 200]


def threads(pids) -> int:
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            pass
    return total


def test_two_thousand_idle_connections_cost_the_multi_model_stack_no_threads(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2200:
        pytest.skip(f"the open-files limit ({hard}) is below 2,200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2200), hard))
    server = MmsServer("--multi-model", "--model-root", str(tmp_path), log_path=tmp_path / "mms.log")
    server.start().wait_ready()
    sockets = []
    try:
        server.remember_processes()
        java = set(group_members(server.java_pid))
        front = [server.proc.pid, *(p for p in descendants(server.proc.pid) if p not in java)]
        before = threads(front)
        for _ in range(2000):  # half-sent requests: a header, never finished
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n")
            sockets.append(s)
        time.sleep(2)
        after = threads(front)
        assert after - before < 100, (before, after)
        answer = http_request(server.port, "GET", "/ping")
        assert answer.status == 200 and json.loads(answer.body) == {"status": "healthy"}
    finally:
        for s in sockets:
            s.close()
        server.stop()
        server.kill_leftovers()
