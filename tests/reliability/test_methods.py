"""HTTP methods and headers, the same on both stacks: on every path a server answers, a
method the path does not serve is 405 with ``Allow`` and the JSON body
``{"error": "<METHOD> is not allowed on <path>; allowed: <methods>", "code": 405}``; HEAD
where GET is allowed answers like GET without a body; unknown paths are 404 JSON; no
``Server:`` header carries a version or names the software behind it.
"""

import json
import re

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
        srv.unknown_paths = UNKNOWN_PATHS
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
                ("GET", "/" + "a" * 9000, None, {}), ("GET", "/ping", None, {"X-Long": "a" * 9000})]
    for method, path, body, headers in requests:
        answer = call(server, method, path, body, headers)
        assert answer.status < 500, (method, path[:40], answer.status, answer.body[:200])
        assert answer.headers.get("content-type") == "application/json" or answer.status < 400, \
            (method, path[:40], answer.status, answer.headers)
    seen = SEEN_SERVER_HEADERS[server.kind]
    assert seen, "no answers recorded"
    assert not [value for value in seen if SOFTWARE.search(value)], seen
