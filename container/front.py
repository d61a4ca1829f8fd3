"""The MMS stack's public HTTP server: connections, reading requests, methods, errors.

One thread per connection in the launcher process (no model, no torch in it); what each
path does is ``container.api``'s. Here:
- Reading a request, from its first byte to the end of its body, must finish within
  ``read_timeout_s`` (the request timeout) however the bytes trickle in: a client that
  sends its headers or body slowly is cut off (408 once the headers are in) and its
  connection closed, while every other connection has its own thread. An idle keep-alive
  connection is closed after ``KEEPALIVE_S``; a client that does not read its answer is
  cut off after ``read_timeout_s``.
- A body over the cap is refused with 413 before it is read.
- Methods: each path names the methods it answers; any other gets 405 with ``Allow``;
  HEAD answers as GET without the body where GET is allowed; an unknown path gets 404.
- Every error is ``{"error", "code"}`` JSON (``handlers.errors``); tracebacks go to the log.
"""

import io
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from container.protocol import status_error
from handlers.errors import (BadRequest, InferenceError, InternalError, MethodNotAllowed, PayloadTooLarge,
                             ServiceUnavailable)

log = logging.getLogger(__name__)

KEEPALIVE_S = 75  # an idle keep-alive connection is closed after this (nginx's default)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    read_body: Callable[[], bytes]


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, value) -> "Reply":
        return cls(status, json.dumps(value).encode())

    @classmethod
    def error(cls, exc: InferenceError, **headers: str) -> "Reply":
        return cls(exc.status, exc.body(), headers=headers)


class DeadlineReader(io.RawIOBase):
    """Socket reads that give up at ``deadline`` (or after ``idle_s`` without one)."""

    def __init__(self, sock, idle_s: float):
        self.sock, self.idle_s, self.deadline = sock, idle_s, None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        timeout = self.idle_s if self.deadline is None else self.deadline - time.monotonic()
        if timeout <= 0:
            raise TimeoutError("the request was not received in time")
        self.sock.settimeout(timeout)
        return self.sock.recv_into(buffer)


class Front:
    """The listening socket, the request threads, and what they share."""

    def __init__(self, host: str, port: int, *, routes, max_payload_bytes: int, read_timeout_s: float):
        """``routes(path)`` -> ``{method: handler(Request) -> Reply}``; raises NotFound."""
        self.routes, self.max_payload_bytes, self.read_timeout_s = routes, max_payload_bytes, read_timeout_s
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
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=max(0.0, timeout_s))
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

    def setup(self) -> None:
        super().setup()
        self.reader = DeadlineReader(self.connection, KEEPALIVE_S)
        self.rfile = io.BufferedReader(self.reader, 65536)

    def handle_one_request(self) -> None:
        self.reader.deadline = None  # waiting for the next request on a kept-alive connection
        try:
            if not self.rfile.peek(1):
                self.close_connection = True
                return
        except OSError:  # idle too long, or reset
            self.close_connection = True
            return
        self.reader.deadline = time.monotonic() + self.front.read_timeout_s
        super().handle_one_request()

    def __getattr__(self, name: str):
        if name.startswith("do_"):  # every method, known or not, is answered by _handle
            return self._handle
        raise AttributeError(name)

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        log.debug("%s " + format, self.address_string(), *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, headers too long ...) as JSON."""
        self.close_connection = True
        if self.request_version != "HTTP/1.0":  # unparsed (HTTP/0.9: no status line) or HTTP/2
            self.request_version = "HTTP/1.1"
        self._send(Reply.error(status_error(code, message or HTTPStatus(code).phrase)))

    def _handle(self) -> None:
        method, path = self.command, urlsplit(self.path).path
        self._body_read = False
        self.front.enter()
        try:
            reply = self._reply(method, path)
        finally:
            self.front.leave()
        if not self._body_read and (self.headers.get("Content-Length", "0").strip() not in ("", "0")
                                    or self.headers.get("Transfer-Encoding")):
            self.close_connection = True  # an unread body must not be taken for a request
        self._send(reply)

    def _reply(self, method: str, path: str) -> Reply:
        try:
            if self.front.stopping:
                self.close_connection = True
                raise ServiceUnavailable("the server is shutting down")
            methods = self.front.routes(path)
            handler = methods.get("GET" if method == "HEAD" and "GET" in methods else method)
            if handler is None:
                allowed = ", ".join(sorted({*methods, *(["HEAD"] if "GET" in methods else [])}))
                return Reply.error(MethodNotAllowed(f"{method[:32]} is not allowed on {path[:200]}; "
                                                    f"allowed: {allowed}"), Allow=allowed)
            return handler(Request(method, path, parse_qs(urlsplit(self.path).query), self.headers,
                                   self._read_body))
        except InferenceError as exc:
            if exc.status >= 500 and path != "/ping":
                log.warning("%s %s -> %d: %s", method[:32], path[:200], exc.status, exc.message)
            return Reply.error(exc)
        except TimeoutError:
            self.close_connection = True
            return Reply.error(status_error(408, "the request body did not arrive within "
                                                 f"{self.front.read_timeout_s:g} s"))
        except ConnectionError:  # the client went away while sending its body
            self.close_connection = True
            return Reply(400)
        except Exception:  # noqa: BLE001 - log the traceback, never send it
            log.exception("%s %s failed", method[:32], path[:200])
            return Reply.error(InternalError("internal error in the model server front end"))

    def _read_body(self) -> bytes:
        """The request body, refusing (413) one over the cap before reading it."""
        self._body_read = True
        cap = self.front.max_payload_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(cap)
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        if not raw.strip().isdigit():
            self.close_connection = True
            raise BadRequest("invalid Content-Length")
        length = int(raw)
        if length > cap:
            self.close_connection = True
            raise PayloadTooLarge(f"the body is {length} bytes; the limit is {cap} bytes")
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            raise BadRequest(f"the body ended after {len(body)} of {length} bytes")
        return body

    def _read_chunked(self, cap: int) -> bytes:
        body = bytearray()
        while True:
            line = self.rfile.readline(1026)
            try:
                size = int(line.split(b";")[0].strip() or b"x", 16)
            except ValueError:
                self.close_connection = True
                raise BadRequest("malformed chunked body") from None
            if size == 0:
                while self.rfile.readline(1026).strip():  # trailers
                    pass
                return bytes(body)
            if len(body) + size > cap:
                self.close_connection = True
                raise PayloadTooLarge(f"the body exceeds the limit of {cap} bytes")
            body += self.rfile.read(size)
            self.rfile.readline(3)

    def _send(self, reply: Reply) -> None:
        self.connection.settimeout(self.front.read_timeout_s)  # a client must read its answer too
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for key, value in reply.headers.items():
                self.send_header(key, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)
        except OSError:  # gone, or not reading: nothing more to say on this connection
            self.close_connection = True
