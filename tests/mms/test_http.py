"""The MMS stack's front as an HTTP server, for real: methods on every path, HEAD, unknown
paths, bodies it parses itself, and clients that send slowly."""

import json
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.mms.harness import MmsServer, make_model

TIMEOUT_S = 4
PATHS = {  # path -> methods it answers (HEAD wherever GET is)
    "/ping": "GET, HEAD",
    "/execution-parameters": "GET, HEAD",
    "/invocations": "POST",
    "/models": "GET, HEAD, POST",
    "/models/echo": "DELETE, GET, HEAD",
    "/models/echo/invoke": "POST",
}
SINGLE_MODEL_PATHS = ("/ping", "/execution-parameters", "/invocations")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    (make_model(root, "echo", "scripted_inference.py", weights=False) / "behaviour.json").write_text("{}")
    return root


@pytest.fixture(scope="module")
def multi(root, tmp_path_factory):
    srv = MmsServer("--multi-model", "--model-root", str(root), "--timeout", str(TIMEOUT_S),
                    log_path=tmp_path_factory.mktemp("log") / "multi.log")
    try:
        srv.start().wait_ready()
        assert srv.load("echo", root / "echo").status_code == 200
        yield srv
        assert srv.stop() == 0
    finally:
        srv.kill_leftovers()


@pytest.fixture(scope="module")
def single(root, tmp_path_factory):
    srv = MmsServer("--model-dir", str(root / "echo"), log_path=tmp_path_factory.mktemp("log") / "single.log")
    try:
        srv.start().wait_ready()
        yield srv
        assert srv.stop() == 0
    finally:
        srv.kill_leftovers()


def check_405(response, method: str, path: str, allowed: str) -> None:
    assert response.status_code == 405, (method, path, response.status_code, response.text)
    assert response.headers["Allow"] == allowed
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"error": f"{method} is not allowed on {path}; allowed: {allowed}", "code": 405}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", ["OPTIONS", "PUT", "PATCH", "TRACE", "BREW", "GET", "POST", "DELETE"])
def test_a_method_the_path_does_not_answer_is_405_with_allow(multi, method, path):
    allowed = PATHS[path]
    if method in allowed.split(", "):
        return
    check_405(requests.request(method, multi.url + path, data=b'{"x": 1}', timeout=10), method, path, allowed)


@pytest.mark.parametrize("method", ["OPTIONS", "PUT", "PATCH", "BREW", "DELETE"])
def test_single_model_endpoints_answer_methods_the_same_way(single, method):
    for path in SINGLE_MODEL_PATHS:
        check_405(requests.request(method, single.url + path, timeout=10), method, path, PATHS[path])
    assert single.post("/invocations", {"echo": "still here"}).json()["echo"] == "still here"


@pytest.mark.parametrize("path", ["/ping", "/execution-parameters", "/models", "/models/echo"])
def test_head_answers_as_get_without_a_body(multi, path):
    get = requests.get(multi.url + path, timeout=10)
    head = requests.head(multi.url + path, timeout=10)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["Content-Type"] == get.headers["Content-Type"]
    assert head.headers["Content-Length"] == str(len(get.content))


@pytest.mark.parametrize("method", ["GET", "POST", "OPTIONS", "HEAD"])
def test_unknown_paths_are_404_json(multi, single, method):
    for server in (multi, single):
        r = requests.request(method, server.url + "/nope/ping", timeout=10)
        assert r.status_code == 404
        if method != "HEAD":
            assert r.json()["code"] == 404 and "/nope/ping" in r.json()["error"]
    r = single.get("/models")
    assert r.status_code == 404 and "multi-model" in r.json()["error"]


def test_deeply_nested_json_when_loading_is_400(multi):
    for body in ("[" * 5000 + "]" * 5000, '{"model_name": ' * 3000):
        r = multi.post("/models", body)
        assert r.status_code == 400, r.text
        assert r.json()["code"] == 400 and "JSON" in r.json()["error"]
    assert multi.get("/ping").status_code == 200


def slow_client(server, head: bytes, body: bytes) -> tuple[float, bytes]:
    """Send ``head`` at once, then ``body`` a byte a second; (seconds until the server
    answered or closed, what it sent)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        received = b""
        for byte in body:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(1)
            try:
                chunk = sock.recv(4096)
                received += chunk
                if not chunk or received.endswith(b"}"):
                    break
            except BlockingIOError:
                continue
            except OSError:
                break
        return time.monotonic() - started, received


def test_slow_clients_are_cut_off_while_others_are_served(multi):
    results, stop = [], threading.Event()

    def normal_client():
        with requests.Session() as session:
            while not stop.is_set():
                r = session.post(multi.url + "/models/echo/invoke", data=b'{"echo": 1}', timeout=10,
                                 headers={"Content-Type": "application/json"})
                results.append(r.status_code)
                time.sleep(0.05)

    thread = threading.Thread(target=normal_client)
    thread.start()
    try:
        body = b'{"echo": "' + b"x" * 40 + b'"}'
        head = (b"POST /models/echo/invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body))
        seconds, answer = slow_client(multi, head, body)
        assert seconds < TIMEOUT_S + 3, seconds
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b'"code": 408' in answer
        seconds, answer = slow_client(multi, b"", head + body)  # the headers trickle in
        assert seconds < TIMEOUT_S + 3 and answer == b"", (seconds, answer)
    finally:
        stop.set()
        thread.join(15)
    assert len(results) > 20 and set(results) == {200}, results
