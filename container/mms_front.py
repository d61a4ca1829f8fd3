"""The public port of the MMS stack: SageMaker's contract in front of MMS's own API.

Why a front at all (MMS 1.1.11 binds the public port itself in sagemaker-inference):
- ``/invocations`` with ``X-Amzn-SageMaker-Target-Model``: MMS ignores the header, and
  routes ``/invocations`` only to models named on its command line, never to one loaded
  through its management API.
- ``GET /models`` pages with ``page_size`` / ``next_page_token`` here; MMS takes ``limit``
  and answers ``nextPageToken``.
- MMS answers 200 to a load whose Python side failed, and ``/ping`` 200 while the default
  model is broken; it downloads ``http(s)://`` urls and loads any path on the disk.
- MMS parses ``application/x-www-form-urlencoded`` and multipart bodies itself and hands the
  worker no body at all; here every body reaches the handler as sent (the caller's
  Content-Type travels in a header), and a body over the cap is refused with 413 before
  it is read.
- MMS's own errors become the same ``{"error", "code"}`` JSON the handlers send.

Workers, queueing and timeouts are MMS's (batching is off: see MMS_BATCH_SIZE in
``container.mms_server``). The front is one thread per
connection in the launcher process, with no model and no torch in it.
"""

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

from container.http_errors import ApiError
from container.mms_client import MmsClient, MmsResponse, MmsUnavailable
from container.mms_config import ORIGINAL_CONTENT_TYPE
from container.model_registry import ModelRegistry

log = logging.getLogger(__name__)

TARGET_MODEL = "x-amzn-sagemaker-target-model"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "transfer-encoding", "upgrade", "host", "content-length", "content-type",
              "expect"}
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000


def is_mms_error(resp: MmsResponse) -> bool:
    """Whether MMS itself answered (``{"code", "type": "...Exception", "message"}``) rather
    than our handler service (``{"error", "code"}``, or the model's answer)."""
    if resp.status < 400:
        return False
    body = resp.json()
    return set(body) == {"code", "type", "message"}


class Front:
    """State the request threads share: readiness, the registry, in-flight requests."""

    def __init__(self, *, host: str, port: int, multi_model: bool, max_payload_bytes: int,
                 timeout_s: int, workers: int, default_model: str = "model"):
        self.multi_model, self.max_payload_bytes, self.timeout_s = multi_model, max_payload_bytes, timeout_s
        self.workers, self.default_model = workers, default_model
        self.client: MmsClient | None = None
        self.registry: ModelRegistry | None = None
        self.not_ready_reason = "the model server is starting"
        self.stopping = False
        self._in_flight = 0
        self._idle = threading.Condition()
        self.server = ThreadingHTTPServer((host, port), FrontHandler, bind_and_activate=False)
        self.server.daemon_threads = True
        self.server.block_on_close = False  # idle keep-alive threads must not hold up exit
        self.server.allow_reuse_address = True
        self.server.request_queue_size = 128
        self.server.front = self
        self.server.server_bind()
        self.server.server_activate()
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="mms-front", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def ready(self, client: MmsClient, registry: ModelRegistry) -> None:
        self.client, self.registry = client, registry
        self.not_ready_reason = None if self.multi_model else "the default model is loading"

    def enter(self) -> None:
        with self._idle:
            self._in_flight += 1

    def leave(self) -> None:
        with self._idle:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.notify_all()

    def drain(self, timeout_s: float) -> int:
        """Stop accepting, then wait (bounded) for requests in progress. Returns how many
        were still running at the deadline."""
        self.stopping = True
        self.server.shutdown()
        self.server.server_close()
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=timeout_s)
            return self._in_flight


class FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle on, the body waits for the
    # client's delayed ACK of the headers (~40 ms per request).
    disable_nagle_algorithm = True
    server_version = "sagemaker-mms"
    sys_version = ""

    @property
    def front(self) -> Front:
        return self.server.front

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PUT(self):
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        self.front.enter()
        try:
            if self.front.stopping:
                self.close_connection = True
                raise ApiError(503, "the server is shutting down")
            self._route(method)
        except ApiError as exc:
            if exc.status >= 500 and not self.path.startswith("/ping"):
                log.warning("%s %s -> %d: %s", method, self.path[:200], exc.status, exc.message)
            self._send(exc.status, exc.body())
        except Exception:  # noqa: BLE001 - log the traceback, never send it
            log.exception("%s %s failed", method, self.path[:200])
            self._send(500, ApiError(500, "internal error in the model server front end").body())
        finally:
            self.front.leave()

    def _route(self, method: str) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        if path == "/ping":
            return self._only(method, "GET", self._ping)
        if path == "/execution-parameters":
            return self._only(method, "GET", self._execution_parameters)
        if path == "/invocations":
            return self._only(method, "POST", self._invocations)
        if path == "/models" or path.startswith("/models/"):
            if not self.front.multi_model:
                raise ApiError(404, "the model management API exists only on multi-model "
                                    "endpoints (SAGEMAKER_MULTI_MODEL=true)")
            if self.front.registry is None:
                self._read_body()
                raise ApiError(503, self.front.not_ready_reason or "the model server is starting")
            rest = path[len("/models/"):] if path != "/models" else ""
            if not rest:
                handlers = {"GET": lambda: self._list(query), "POST": lambda: self._load(query)}
            elif rest.endswith("/invoke"):
                handlers = {"POST": lambda: self._invoke(unquote(rest[:-len("/invoke")]))}
            else:
                name = unquote(rest)
                handlers = {"GET": lambda: self._describe(name), "DELETE": lambda: self._unload(name)}
            if method not in handlers:
                raise ApiError(405, f"{method} is not allowed on {path[:200]}")
            return handlers[method]()
        raise ApiError(404, f"no such path: {path[:200]}")

    @staticmethod
    def _only(method: str, allowed: str, handler):
        if method != allowed:
            raise ApiError(405, f"use {allowed}")
        return handler()

    # Health.
    def _ping(self) -> None:
        front = self.front
        reason = front.not_ready_reason
        if reason is None:
            try:
                resp = front.client.ping()
                if resp.status != 200:
                    reason = f"the model server reports {resp.message()}"
            except MmsUnavailable as exc:
                reason = str(exc)
        self._read_body()  # keep the connection usable
        if reason:
            raise ApiError(503, reason)
        self._send_json(200, {"status": "Healthy"})

    def _execution_parameters(self) -> None:
        self._send_json(200, {"MaxConcurrentTransforms": self.front.workers, "BatchStrategy": "MULTI_RECORD",
                              "MaxPayloadInMB": max(1, self.front.max_payload_bytes // (1024 * 1024))})

    # Inference.
    def _invocations(self) -> None:
        if not self.front.multi_model:
            return self._invoke(self.front.default_model)
        target = self.headers.get(TARGET_MODEL)
        if not target:
            self._read_body()
            raise ApiError(400, "this is a multi-model endpoint: name the model in the "
                                "X-Amzn-SageMaker-Target-Model header or POST /models/{name}/invoke")
        return self._invoke(target)

    def _invoke(self, name: str) -> None:
        front = self.front
        body = self._read_body()
        if front.not_ready_reason:
            raise ApiError(503, front.not_ready_reason)
        record = front.registry.get(name)
        if record is None:
            raise ApiError(404, f"model {name[:255]!r} is not loaded")
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in HOP_BY_HOP and not k.lower().startswith("x-serve-")}
        headers["Content-Type"] = "application/octet-stream"
        if self.headers.get("Content-Type"):
            headers[ORIGINAL_CONTENT_TYPE] = self.headers["Content-Type"]
        started = time.monotonic()
        try:
            resp = front.client.request("POST", f"/predictions/{quote(record.mms_name)}", body=body,
                                        headers=headers, timeout=front.timeout_s + 10)
        except MmsUnavailable as exc:
            raise ApiError(503, f"model {name!r}: {exc}") from None
        elapsed = time.monotonic() - started
        extra = {}
        if self.headers.get(CUSTOM_ATTRIBUTES) is not None:
            extra[CUSTOM_ATTRIBUTES] = self.headers[CUSTOM_ATTRIBUTES]
        if not is_mms_error(resp):
            content_type = resp.headers.get("content-type") or "application/octet-stream"
            return self._send(resp.status, resp.body, content_type, extra)
        # MMS answered by itself: queue full, worker timed out or died, model just unloaded.
        # On a timeout MMS says 500 "Worker died." (it kills the worker and starts another).
        status = resp.status if resp.status >= 400 else 500
        if status == 404:
            message = f"model {name!r} is not loaded"
        elif status in (408, 500) and elapsed >= front.timeout_s - 0.5:
            status, message = 504, (f"model {name!r} did not answer within {front.timeout_s} s; "
                                    "its worker is being restarted")
        else:
            message = f"model {name!r}: the model server answered {resp.status}: {resp.message()}"
        raise ApiError(status, message)

    # Model management (multi-model endpoints).
    def _load(self, query: dict) -> None:
        raw = self._read_body()
        if raw.strip():
            try:
                request = json.loads(raw)
            except ValueError:
                raise ApiError(400, "POST /models takes a JSON body {\"model_name\": ..., \"url\": ...}") from None
            if not isinstance(request, dict):
                raise ApiError(400, "POST /models takes a JSON object {\"model_name\": ..., \"url\": ...}")
        else:  # MMS's query-parameter form
            request = {k: v[0] for k, v in query.items()}
        if "model_name" not in request or "url" not in request:
            raise ApiError(400, "POST /models needs model_name and url")
        record = self.front.registry.load(request["model_name"], request["url"])
        self._send_json(200, {"status": f"model {record.name!r} loaded", **record.describe()})

    def _list(self, query: dict) -> None:
        size_raw = (query.get("page_size") or query.get("limit") or [str(DEFAULT_PAGE_SIZE)])[0]
        token_raw = (query.get("next_page_token") or ["0"])[0]
        if not size_raw.isdigit() or not 1 <= int(size_raw) <= MAX_PAGE_SIZE:
            raise ApiError(400, f"page_size must be an integer from 1 to {MAX_PAGE_SIZE}")
        if not token_raw.isdigit():
            raise ApiError(400, "invalid next_page_token")
        start, size = int(token_raw), int(size_raw)
        names = self.front.registry.names()
        models = []
        for name in names[start:start + size]:
            record = self.front.registry.get(name)
            if record is not None:
                models.append({"modelName": record.name, "modelUrl": record.url})
        out = {"models": models}
        if start + size < len(names):
            out["next_page_token"] = str(start + size)
        self._send_json(200, out)

    def _describe(self, name: str) -> None:
        record = self.front.registry.get(name)
        if record is None:
            raise ApiError(404, f"model {name[:255]!r} is not loaded")
        self._send_json(200, record.describe())

    def _unload(self, name: str) -> None:
        record = self.front.registry.unload(name)
        self._send_json(200, {"status": f"model {record.name!r} unloaded"})

    # Plumbing.
    def _read_body(self) -> bytes:
        """The request body, refusing (413) one over the cap before reading it."""
        cap = self.front.max_payload_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(cap)
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        if not raw.strip().isdigit():
            self.close_connection = True
            raise ApiError(400, "invalid Content-Length")
        length = int(raw)
        if length > cap:
            self.close_connection = True  # the unread body must not be taken for a request
            raise ApiError(413, f"the body is {length} bytes; the limit is {cap} bytes")
        return self.rfile.read(length)

    def _read_chunked(self, cap: int) -> bytes:
        body = bytearray()
        while True:
            line = self.rfile.readline(1026)
            try:
                size = int(line.split(b";")[0].strip() or b"x", 16)
            except ValueError:
                self.close_connection = True
                raise ApiError(400, "malformed chunked body") from None
            if size == 0:
                while self.rfile.readline(1026).strip():  # trailers
                    pass
                return bytes(body)
            if len(body) + size > cap:
                self.close_connection = True
                raise ApiError(413, f"the body exceeds the limit of {cap} bytes")
            body += self.rfile.read(size)
            self.rfile.readline(3)

    def _send_json(self, status: int, value) -> None:
        self._send(status, json.dumps(value).encode())

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
