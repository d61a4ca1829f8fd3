"""The MMS handler service: what each MMS worker process runs, on top of ``handlers``.

MMS imports this module in every worker and instantiates its one class (MMS refuses a
handler module that defines more than one), then calls ``initialize(context)`` once and
``handle(batch, context)`` per batch of requests.

Unlike ``sagemaker_inference``'s ``Transformer`` (which reads every item's headers from
item 0, sets only item 0's content type, and sends tracebacks to callers) each item of an
MMS batch is decoded with its own headers, the whole batch runs as one batched
``predict``, and each item gets its own status code, content type and JSON error body.
Tracebacks go to the log only.
"""

import http
import logging
import os
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from container import load_status
from container.mms_config import ENV_MAX_RESPONSE_BYTES, ENV_STATE_DIR, ORIGINAL_CONTENT_TYPE

log = logging.getLogger(__name__)

LOADING = (503, b'{"error": "the model is still loading; retry shortly", "code": 503}')


def _headers(context, idx: int) -> dict[str, str]:
    """Item ``idx``'s request headers, lower-cased (MMS keeps the caller's spelling)."""
    raw = context.get_all_request_header(idx) or {}
    return {str(k).lower(): v for k, v in raw.items() if isinstance(v, str)}


def _error_status(exc: BaseException) -> tuple[int, bytes]:
    from handlers.errors import InferenceError, InternalError

    if not isinstance(exc, InferenceError):
        exc = InternalError.from_exception("the model server", exc)
    return exc.status, exc.body()


class HandlerService:
    """One model in one MMS worker: ``handlers.load_service`` behind MMS's interface."""

    def __init__(self):
        self.service = None
        self.failure = None  # (status, body) every request gets when the load failed
        self.loaded = threading.Event()
        self.max_response_bytes = int(os.environ.get(ENV_MAX_RESPONSE_BYTES, "0") or 0)
        # Every torch call (load, warm-up, each batch) runs on this one thread: OpenMP keeps
        # a thread team per calling thread, and a second team (load on one thread, serve on
        # another) made each request ~10x slower on 2 cores (140 ms instead of 11 ms).
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    def initialize(self, context) -> None:
        """Start loading the model and return at once.

        MMS bounds a worker's load command by the per-request timeout (a model that takes
        longer than SAGEMAKER_MODEL_SERVER_TIMEOUT to load would never start), and calls a
        model registered even when ``initialize`` raised. So the load runs on the model
        thread, writes its outcome to a status file the front waits for, and never raises.
        """
        self.model_thread.submit(self._load, context)

    def _load(self, context) -> None:
        started = time.monotonic()
        model_dir = context.system_properties.get("model_dir")
        kind = ""
        try:
            from handlers import HandlerConfig, load_service

            config = HandlerConfig.from_env(os.environ)
            service = load_service(model_dir, config, mms_style=True, context=context)
            kind = type(service).__name__
            service.warm_up()
            self.service = service
            log.info("model %s loaded from %s in %.1f s (%s)", context.model_name, model_dir,
                     time.monotonic() - started, kind)
        except MemoryError:
            log.exception("model %s: out of memory while loading", context.model_name)
            self.failure = (507, b'{"error": "out of memory while loading the model", "code": 507}')
        except Exception as exc:  # noqa: BLE001 - any failure must be reported, not raised
            log.error("model %s failed to load from %s", context.model_name, model_dir, exc_info=True)
            self.failure = _error_status(exc)
        try:
            self._report(context, time.monotonic() - started, kind)
        finally:
            self.loaded.set()

    def _report(self, context, seconds: float, kind: str) -> None:
        state_dir = os.environ.get(ENV_STATE_DIR)
        if not state_dir:
            return
        if self.failure is None:
            status = load_status.LoadStatus(os.getpid(), True, 200, "", seconds, kind)
        else:
            import json

            code, body = self.failure
            status = load_status.LoadStatus(os.getpid(), False, code,
                                            json.loads(body).get("error", ""), seconds, kind)
        load_status.write(state_dir, context.model_name, status)

    def handle(self, data, context):
        """One MMS batch in, one answer per item out (same order), each with its own status."""
        if data is None:
            return None
        failure = self.failure if self.loaded.is_set() else LOADING
        if failure is not None:
            # Answer at once: waiting here would count against MMS's response timeout,
            # and MMS kills and restarts a worker that overruns it.
            return [self._answer(context, idx, failure[0], "application/json", failure[1])
                    for idx in range(len(data))]
        return self.model_thread.submit(self._handle_batch, data, context).result()

    def _handle_batch(self, data, context) -> list:
        answers: list = [None] * len(data)
        decoded = {}
        for idx, item in enumerate(data):
            headers = _headers(context, idx)
            body = item.get("body") if isinstance(item, dict) else None
            body = bytes(body) if isinstance(body, (bytes, bytearray)) else \
                (body.encode() if isinstance(body, str) else b"")
            content_type = headers.get(ORIGINAL_CONTENT_TYPE.lower()) or headers.get("content-type")
            try:
                decoded[idx] = self.service.decode(body, content_type or None, headers.get("accept"))
            except Exception as exc:  # noqa: BLE001 - one bad item fails only itself
                answers[idx] = self._error(context, idx, exc)
        if decoded:
            order = list(decoded)
            try:
                results = self.service.predict([decoded[i] for i in order])
            except Exception as exc:  # noqa: BLE001
                results = [exc] * len(order)
            for idx, result in zip(order, results):
                answers[idx] = self._encode(context, idx, result, decoded[idx])
        return answers

    def _encode(self, context, idx: int, result, payload) -> bytes:
        if isinstance(result, BaseException):
            return self._error(context, idx, result)
        try:
            body, content_type = self.service.encode(result, payload)
        except Exception as exc:  # noqa: BLE001
            return self._error(context, idx, exc)
        if self.max_response_bytes and len(body) > self.max_response_bytes:
            # MMS would drop the connection to this worker (and restart it) on a frame
            # over max_response_size: answer the caller with an error instead.
            return self._answer(context, idx, 500, "application/json",
                                b'{"error": "the answer is %d bytes, over the %d-byte response cap", '
                                b'"code": 500}' % (len(body), self.max_response_bytes))
        return self._answer(context, idx, 200, content_type, body)

    def _error(self, context, idx: int, exc: BaseException) -> bytes:
        status, body = _error_status(exc)
        if status >= 500:
            log.error("request %s failed", context.get_request_id(idx), exc_info=exc)
        return self._answer(context, idx, status, "application/json", body)

    @staticmethod
    def _answer(context, idx: int, status: int, content_type: str, body: bytes) -> bytes:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        context.set_response_status(status, phrase, idx)
        context.set_response_content_type(idx, content_type)
        return body


def _send_no_response_headers() -> None:
    """Work around an MMS 1.1.11 bug: its Java decoder reads the per-item response-header
    map with the bytes received *so far* as the size limit (``CodecUtils.readMap``), so a
    worker answer that arrives in two socket reads with the split inside that map is taken
    for a corrupt frame: MMS drops the worker and fails every request in flight with
    "Worker died." (seen under concurrency, with batches). Status, reason phrase and
    content type travel in fields of their own, so the map is sent empty."""
    from mms.protocol import otf_message_handler

    otf_message_handler.encode_response_headers = lambda _headers: struct.pack("!i", 0)


_send_no_response_headers()
