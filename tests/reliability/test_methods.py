"""HTTP methods and headers, the same on both stacks: on every path a server answers, a
method the path does not serve is 405 with ``Allow`` and the JSON body
``{"error": "<METHOD> is not allowed on <path>; allowed: <methods>", "code": 405}``; HEAD
where GET is allowed answers like GET without a body; unknown paths are 404 JSON; no
``Server:`` header carries a version or names the software behind it.
"""

import json
import re
import socket

import pytest

from tests.mms.harness import MmsServer, make_model
from tests.procs import http_request
from tests.reliability.conftest import start_stack, stop_stack

SINGLE_MODEL_PATHS = {"/ping": {"GET", "HEAD"}, "/execution-parameters": {"GET", "HEAD"},
                      "/invocations": {"POST"}}
MULTI_MODEL_PATHS = {**SINGLE_MODEL_PATHS, "/models": {"GET", "HEAD", "POST"},
                     "/models/demo": {"GET", "HEAD", "DELETE"}, "/models/demo/invoke": {"POST"}}
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND",
           "FOO_BAR"]
UNKNOWN_PATHS = ["/", "/nope", "/ping/extra", "/invocationsx", "/static/x", "/models/demo/invoke/x"]
SOFTWARE = re.compile(r"\d|gunicorn|werkzeug|python|basehttp|netty|flask", re.IGNORECASE)
SEEN_SERVER_HEADERS: dict[str, set[str]] = {}


@pytest.fixture(scope="module", params=["flask", "mms", "mms-multi"])
def server(request, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp(request.param)
    if request.param == "mms-multi":
        root = tmp_path_factory.mktemp("models")
        make_model(root, "demo")
        srv = MmsServer("--multi-model", "--model-root", str(root), log_path=log_dir / "mms.log")
        try:
            srv.start().wait_ready()
            assert srv.load("demo", root / "demo").status_code == 200
        except BaseException:
            srv.kill_leftovers()
            raise
        srv.paths = MULTI_MODEL_PATHS
        # Model names may hold "/": /models/demo/invoke/x names a model "demo/invoke/x".
        srv.unknown_paths = [p for p in UNKNOWN_PATHS if not p.startswith("/models/")]
    else:
        srv = start_stack(request.param, log_dir)
        srv.paths = SINGLE_MODEL_PATHS
        srv.unknown_paths = UNKNOWN_PATHS + ["/models", "/models/demo", "/models/demo/invoke"]
    srv.kind = request.param
    try:
        yield srv
        assert srv.stop() == 0
    finally:
        stop_stack(srv)


def call(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    answer = http_request(server.port, method, path, body, headers, timeout=30)
    SEEN_SERVER_HEADERS.setdefault(server.kind, set()).add(answer.headers.get("server", ""))
    return answer


def test_a_method_a_path_does_not_serve_is_405_with_allow(server):
    for path, allowed in server.paths.items():
        for method in METHODS:
            if method in allowed:
                continue
            answer = call(server, method, path, b"" if method in ("PUT", "PATCH") else None)
            where = f"{server.kind}: {method} {path}"
            assert answer.status == 405, (where, answer.status, answer.body[:300])
            allow = answer.headers.get("allow")
            assert allow is not None, (where, answer.headers)
            assert {m.strip() for m in allow.split(",")} == allowed, (where, allow)
            assert answer.headers.get("content-type") == "application/json", (where, answer.headers)
            if method == "HEAD":
                assert answer.body == b"", where
            else:
                assert json.loads(answer.body) == {
                    "error": f"{method} is not allowed on {path}; allowed: {allow}", "code": 405}, where


def test_head_answers_like_get_without_a_body(server):
    for path, allowed in server.paths.items():
        if "GET" not in allowed:
            continue
        get, head = call(server, "GET", path), call(server, "HEAD", path)
        assert get.status == 200 and get.body, (server.kind, path, get.status)
        assert head.status == get.status, (server.kind, path, head.status)
        assert head.headers.get("content-type") == get.headers.get("content-type")
        assert head.body == b""


def test_options_is_not_a_200_with_an_empty_html_body(server):
    """The defect of issue 11: flask answered OPTIONS with 200 text/html, MMS with 501."""
    answer = call(server, "OPTIONS", "/invocations")
    assert (answer.status, answer.headers.get("allow")) == (405, "POST")


def test_unknown_paths_are_404_json_for_every_method(server):
    for path in server.unknown_paths:
        for method in METHODS:
            answer = call(server, method, path)
            where = f"{server.kind}: {method} {path}"
            assert answer.status == 404, (where, answer.status, answer.body[:300])
            assert answer.headers.get("content-type") == "application/json", (where, answer.headers)
            if method != "HEAD":
                error = json.loads(answer.body)
                assert error["code"] == 404 and error["error"], where


def test_no_server_header_names_its_software_or_version(server):
    cap = 6 * 1024 * 1024
    requests = [("GET", "/ping", None, {}), ("POST", "/invocations", b"{", {"Content-Type": "application/json"}),
                ("POST", "/invocations", b"x", {"Content-Type": "image/png"}),
                ("POST", "/invocations", b"x" * (cap + 1), {"Content-Type": "application/json"}),
                ("GET", "/nope", None, {}), ("TRACE", "/ping", None, {}), ("OPTIONS", "/ping", None, {}),
                ("GET", "/" + "a" * 9000, None, {}), ("GET", "/ping", None, {"X-Long": "a" * 9000}),
                ("GET", "/ping", None, {"X-Control": "\x01\x7f"})]  # gunicorn refuses it, nginx does not
    for method, path, body, headers in requests:
        answer = call(server, method, path, body, headers)
        assert answer.status < 500, (method, path[:40], answer.status, answer.body[:200])
        assert answer.headers.get("content-type") == "application/json" or answer.status < 400, \
            (method, path[:40], answer.status, answer.headers)
    seen = SEEN_SERVER_HEADERS[server.kind]
    assert seen, "no answers recorded"
    assert not [value for value in seen if SOFTWARE.search(value)], seen


def raw_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; (status, headers, body) of the answer, read to the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize("request_line", [
    b"get /ping HTTP/1.1", b"GET /ping HTTP/2.0", b"GARBAGE", b"GET /../ping HTTP/1.1",
    b"GET /" + b"a" * 70_000 + b" HTTP/1.1", b"GET /ping HTTP/1.1\r\nX-Long: " + b"a" * 70_000,
    b"POST /invocations HTTP/1.1\r\nContent-Length: abc", b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: gzip",
], ids=["lowercase-method", "http2", "garbage", "above-root", "uri-70k", "header-70k", "bad-length",
        "unknown-transfer-coding"])
def test_requests_the_front_cannot_parse_get_a_json_error(server, request_line):
    """nginx (and the MMS front) answer these themselves: JSON like every other error, never
    an HTML page; then the server goes on serving."""
    status, headers, body = raw_exchange(server.port, request_line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert 400 <= status < 600, status
    assert headers.get("content-type") == "application/json", (status, headers, body[:200])
    assert json.loads(body)["code"] == status
    assert call(server, "GET", "/ping").status == 200
