"""The MMS handler service: what each MMS worker process runs, on top of ``handlers``.

MMS imports this module in every worker and instantiates its one class (MMS refuses a
handler module that defines more than one), then calls ``initialize(context)`` once and
``handle(batch, context)`` per request. Each MMS request is a batch envelope from the
front (``container.protocol``): callers' requests, each with its own headers. They are
decoded one by one, run as one batched ``predict`` (a user script that owns ``predict``
runs them one by one), and answered in one envelope, each with its own status, content
type and JSON error body. Tracebacks go to the log only. Nothing here imports torch: the
engine ``handlers`` picks does.
"""

import http
import json
import logging
import os
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from mms.context import RequestProcessor

from container import protocol
from handlers.content_types import EVENT_STREAM, parse
from handlers.errors import BadRequest, InferenceError, InternalError, NotAcceptable

log = logging.getLogger(__name__)

LOADING = (503, b'{"error": "the model is still loading; retry shortly", "code": 503}')
JSON = "application/json"


def _error(exc: BaseException) -> tuple[int, str, bytes]:
    if not isinstance(exc, InferenceError):
        exc = InternalError.from_exception("the model server", exc)
    return exc.status, JSON, exc.body()


def _refuse_streaming(payload, accept: str | None) -> None:
    """The MMS stack answers whole: MMS 1.1.11 has no streamed responses."""
    if parse(accept)[0] == EVENT_STREAM:
        raise NotAcceptable("this endpoint (the multi-model-server stack) does not stream: ask for "
                            "another Accept type to get the whole answer at once")
    if getattr(payload, "stream", False):
        raise BadRequest("this endpoint (the multi-model-server stack) does not stream: leave out "
                         '"stream": true to get the whole answer at once')


class HandlerService:
    """One model in one MMS worker: ``handlers.load_service`` behind MMS's interface."""

    def __init__(self):
        self.service = None
        self.failure = None  # (status, body) every request gets when the load failed
        self.loaded = threading.Event()
        self.max_payload_bytes = int(os.environ.get(protocol.ENV_MAX_PAYLOAD_BYTES) or 6 * 1024 * 1024)
        # Every model call (load, warm-up, each batch) runs on this one thread: OpenMP keeps
        # a thread team per calling thread, and a second team (load on one thread, serve on
        # another) made each request ~10x slower on 2 cores (140 ms instead of 11 ms).
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    def initialize(self, context) -> None:
        """Start loading the model and return at once.

        MMS bounds a worker's load command by the per-request timeout (a model that takes
        longer than SAGEMAKER_MODEL_SERVER_TIMEOUT to load would never start), and calls a
        model registered even when ``initialize`` raised. So the load runs on the model
        thread, writes its outcome to a load report the front waits for, and never raises.
        """
        self.model_thread.submit(self._load, context)

    def _load(self, context) -> None:
        started = time.monotonic()
        model_dir = context.system_properties.get("model_dir")
        try:
            from handlers import HandlerConfig, load_service

            service = load_service(model_dir, HandlerConfig.from_env(os.environ), mms_style=True,
                                   context=context)
            service.warm_up()
            self.service = service
            log.info("model %s loaded from %s in %.1f s (%s)", context.model_name, model_dir,
                     time.monotonic() - started, type(service).__name__)
        except MemoryError:
            log.exception("model %s: out of memory while loading", context.model_name)
            self.failure = (507, b'{"error": "out of memory while loading the model", "code": 507}')
        except Exception as exc:  # noqa: BLE001 - any failure must be reported, not raised
            log.error("model %s failed to load from %s", context.model_name, model_dir, exc_info=True)
            status, _, body = _error(exc)
            self.failure = (status, body)
        try:
            state_dir = os.environ.get(protocol.ENV_STATE_DIR)
            if state_dir:
                code, body = self.failure or (200, b'{"error": ""}')
                protocol.write_report(state_dir, context.model_name, protocol.LoadReport(
                    os.getpid(), self.failure is None, code, json.loads(body)["error"],
                    time.monotonic() - started, type(self.service).__name__,
                    getattr(self.service, "batchable", True)))
        finally:
            self.loaded.set()

    def handle(self, data, context):
        """Each MMS item is an envelope; each gets one envelope back (or one error for all)."""
        if data is None:
            return None
        answers = []
        for idx, item in enumerate(data):
            status, content_type, body = self._handle_envelope(item, context)
            try:
                phrase = http.HTTPStatus(status).phrase
            except ValueError:
                phrase = ""
            context.set_response_status(status, phrase, idx)
            context.set_response_content_type(idx, content_type)
            answers.append(body)
        return answers

    def _handle_envelope(self, item, context) -> tuple[int, str, bytes]:
        failure = self.failure if self.loaded.is_set() else LOADING
        if failure is not None:
            # Answer at once: waiting here would count against MMS's response timeout,
            # and MMS kills and restarts a worker that overruns it.
            return failure[0], JSON, failure[1]
        body = item.get("body") if isinstance(item, dict) else None
        try:
            requests = protocol.unpack(bytes(body or b""))
        except (ValueError, TypeError, KeyError) as exc:
            log.error("not a batch envelope from the front: %s", exc)
            return 400, JSON, b'{"error": "not a batch envelope from the front", "code": 400}'
        answers = self.model_thread.submit(self._run, requests, context).result()
        return 200, protocol.ENVELOPE_TYPE, self._pack(answers)

    def _run(self, requests: list[tuple[dict, bytes]], context) -> list[tuple[int, str, bytes]]:
        """Decode each request with its own headers, predict the decoded ones together (one
        by one for a script that owns predict), encode each: one answer per request, same
        order, each failure its own. A user script's hooks see the caller's headers as
        item 0 of MMS's context, as scripts written for sagemaker-inference expect."""
        answers: list = [None] * len(requests)
        decoded = {}
        mms_processors = context.request_processor
        show = lambda idx: setattr(context, "request_processor",  # noqa: E731
                                   [RequestProcessor(requests[idx][0].get("headers") or {})])
        try:
            for idx, (meta, body) in enumerate(requests):
                show(idx)
                headers = {k.lower(): v for k, v in (meta.get("headers") or {}).items()}
                try:
                    payload = self.service.decode(body, headers.get("content-type") or None,
                                                  headers.get("accept"))
                    if getattr(self.service, "streamable", False):  # where the flask stack streams
                        _refuse_streaming(payload, headers.get("accept"))
                    decoded[idx] = payload
                except Exception as exc:  # noqa: BLE001 - one bad request fails only itself
                    answers[idx] = self._failed(exc)
            order = list(decoded)
            batches = [order] if getattr(self.service, "batchable", True) else [[i] for i in order]
            for batch in batches:
                if len(batch) == 1:
                    show(batch[0])
                try:
                    results = self.service.predict([decoded[i] for i in batch]) if batch else []
                except Exception as exc:  # noqa: BLE001 - predict reports per-item errors; a bug guard
                    results = [exc] * len(batch)
                for idx, result in zip(batch, results):
                    answers[idx] = self._encode(result, decoded[idx])
        finally:
            context.request_processor = mms_processors
        return answers

    def _encode(self, result, payload) -> tuple[int, str, bytes]:
        if isinstance(result, BaseException):
            return self._failed(result)
        try:
            body, content_type = self.service.encode(result, payload)
        except Exception as exc:  # noqa: BLE001
            return self._failed(exc)
        if len(body) > self.max_payload_bytes:
            return 500, JSON, (b'{"error": "the answer is %d bytes, over the %d-byte response cap", '
                               b'"code": 500}' % (len(body), self.max_payload_bytes))
        return 200, content_type, body

    @staticmethod
    def _failed(exc: BaseException) -> tuple[int, str, bytes]:
        status, content_type, body = _error(exc)
        if status >= 500:
            log.error("a request failed", exc_info=exc)
        return status, content_type, body

    def _pack(self, answers: list[tuple[int, str, bytes]]) -> bytes:
        """One envelope, within MMS's response cap: an answer that would push it over is
        left out (``"alone": true``) and the front sends that request again on its own."""
        room = protocol.envelope_cap(self.max_payload_bytes) - 4096 * (len(answers) + 1)
        items = []
        for status, content_type, body in answers:
            if len(body) > room:
                items.append(({"alone": True}, b""))
                continue
            room -= len(body)
            items.append(({"status": status, "content_type": content_type}, body))
        return protocol.pack(items)


def _send_no_response_headers() -> None:
    """Work around an MMS 1.1.11 bug: its Java decoder reads the per-item response-header
    map with the bytes received *so far* as the size limit (``CodecUtils.readMap``), so a
    worker answer that arrives in two socket reads with the split inside that map is taken
    for a corrupt frame: MMS drops the worker and fails every request in flight with
    "Worker died.". Status, reason phrase and content type travel in fields of their own,
    so the map is sent empty."""
    from mms.protocol import otf_message_handler

    otf_message_handler.encode_response_headers = lambda _headers: struct.pack("!i", 0)


_send_no_response_headers()
