"""The MMS handler service: what each MMS worker process runs, a thin adapter over ``handlers``.

MMS imports this module in every worker, instantiates its one class (it refuses a module with
more), calls ``initialize(context)`` once and ``handle(batch, context)`` per request. Each MMS
request is a batch envelope from the app (``container.protocol``), answered through
``handlers.pipeline`` in one envelope. Nothing here imports torch: the engine ``handlers`` picks does.
"""

import http
import logging
import os
import struct
import threading
import time

from mms.context import RequestProcessor
from mms.protocol import otf_message_handler

from container import protocol
from contract.settings import Settings
from handlers import config as handler_config, pipeline
from handlers.errors import InferenceError, InsufficientStorage, InternalError, ServiceUnavailable
from handlers.pipeline import Request
from handlers.service import load_service

log = logging.getLogger(__name__)

JSON = "application/json"
NO_STREAM = "its models run on multi-model-server, which answers whole"


class HandlerService:
    """One model in one MMS worker: ``handlers.load_service`` behind MMS's interface."""

    def __init__(self):
        self.service = None
        self.failure: InferenceError | None = None  # what every request gets when the load failed
        self.loaded = threading.Event()
        self.settings = Settings.from_json(os.environ[protocol.ENV_SETTINGS]) \
            if protocol.ENV_SETTINGS in os.environ else Settings()

    def initialize(self, context) -> None:
        """Start loading the model and return at once: MMS bounds a worker's load by the
        per-request timeout, and calls a model registered even when ``initialize`` raised. So
        the load runs on a thread of its own, writes a load report the app waits for, and
        never raises."""
        threading.Thread(target=self._load, args=(context,), name="load", daemon=True).start()

    def _load(self, context) -> None:
        started = time.monotonic()
        model_dir = context.system_properties.get("model_dir")
        try:
            handler_config.use(self.settings.handler)  # what a user script's handlers.load_model gets
            service = load_service(model_dir, self.settings.handler, predict_records=True, context=context)
            service.start()
            self.service = service
            log.info("model %s loaded from %s in %.1f s (%s)", context.model_name, model_dir,
                     time.monotonic() - started, type(service).__name__)
        except MemoryError:
            log.exception("model %s: out of memory while loading", context.model_name)
            self.failure = InsufficientStorage("out of memory while loading the model")
        except Exception as exc:  # noqa: BLE001 - any failure must be reported, not raised
            log.error("model %s failed to load from %s", context.model_name, model_dir, exc_info=True)
            self.failure = exc if isinstance(exc, InferenceError) else \
                InternalError.from_exception("the model server", exc)
        try:
            state_dir = os.environ.get(protocol.ENV_STATE_DIR)
            if state_dir:
                failure = self.failure
                protocol.write_report(state_dir, context.model_name, protocol.LoadReport(
                    os.getpid(), failure is None, failure.status if failure else 200,
                    failure.message if failure else "", time.monotonic() - started,
                    type(self.service).__name__, getattr(self.service, "batchable", True),
                    self.service.engine_info() if self.service is not None else {}))
        finally:
            self.loaded.set()

    def handle(self, data, context):
        """Each MMS item is an envelope; each gets one envelope back (or one error for all)."""
        answers = []
        for idx, item in enumerate(data):
            status, content_type, body = self._handle_envelope(item, context)
            try:
                phrase = http.HTTPStatus(status).phrase
            except ValueError:  # a status a user script made up
                phrase = ""
            context.set_response_status(status, phrase, idx)
            context.set_response_content_type(idx, content_type)
            answers.append(body)
        return answers

    def _handle_envelope(self, item, context) -> tuple[int, str, bytes]:
        failure = self.failure if self.loaded.is_set() else \
            ServiceUnavailable("the model is still loading; retry shortly")
        if failure is not None:
            # Answer at once: waiting here would count against MMS's response timeout,
            # and MMS kills and restarts a worker that overruns it.
            return failure.status, JSON, failure.body()
        try:
            items = protocol.unpack(bytes(item.get("body") or b""))
        except ValueError as exc:
            log.error("not a batch envelope from the app: %s", exc)
            return 400, JSON, b'{"error": "not a batch envelope from the front", "code": 400}'
        requests = []
        for meta, request_body in items:
            headers = meta.get("headers") or {}
            lower = {k.lower(): v for k, v in headers.items()}
            requests.append(Request(request_body, lower.get("content-type") or None, lower.get("accept"),
                                    tuple(headers.items())))
        mms_processors = context.request_processor

        def show(index: int) -> None:
            """A user script's hooks see the caller's headers as item 0 of MMS's context, as
            scripts written for sagemaker-inference expect."""
            context.request_processor = [RequestProcessor(dict(requests[index].headers))]

        try:
            responses = pipeline.answer(self.service, requests, no_stream=NO_STREAM, before=show,
                                        max_answer_bytes=self.settings.max_payload_bytes,
                                        deadline=time.monotonic() + self.settings.timeout_s)
        finally:
            context.request_processor = mms_processors
        return 200, protocol.ENVELOPE_TYPE, self._pack(responses)

    def _pack(self, answers: list[pipeline.Response]) -> bytes:
        """One envelope within MMS's response cap: an answer that would push it over is left
        out (``"alone": true``) and the app sends that request again on its own. Each answer
        carries its figures for the app's Server-Timing and /metrics."""
        room = protocol.envelope_cap(self.settings.max_payload_bytes) - 4096 * (len(answers) + 1)
        items = []
        for answer in answers:
            if len(answer.body) > room:
                items.append(({"alone": True}, b""))
                continue
            room -= len(answer.body)
            meta = {"status": answer.status, "content_type": answer.content_type}
            if answer.figures is not None:
                meta["figures"] = answer.figures.to_json()
            items.append((meta, answer.body))
        return protocol.pack(items)


# Work around an MMS 1.1.11 bug: its Java decoder reads the per-item response-header map with
# the bytes received *so far* as the size limit (``CodecUtils.readMap``), so an answer split
# across two socket reads inside that map is taken for a corrupt frame and MMS fails every
# request in flight with "Worker died.". Status and content type travel in fields of their
# own, so the map is sent empty.
otf_message_handler.encode_response_headers = lambda _headers: struct.pack("!i", 0)
