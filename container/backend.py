"""Multi-model-server as the app's backend: the models run in MMS's worker processes.

The supervisor starts MMS (``container.mms_process``) and tells this process its port, state
dir and process group (``SERVE_MMS``). Here, in the app's one gunicorn worker: the registry of
loaded models, one queue per model, and (``SERVING_STACK=mms``) the default model, loaded before
/ping says 200. MMS alone would route ``/invocations`` only to models named on its command line,
say 200 to a load whose Python side failed, and could not batch safely (``container.protocol``).
"""

import json
import logging
import os
import threading
import time
from pathlib import Path

from container.mms_client import MmsClient, MmsUnavailable
from container.model_registry import ModelRecord, ModelRegistry
from contract import metrics
from contract.routes import DEFAULT_MODEL
from contract.settings import Settings
from handlers.errors import GatewayTimeout, InferenceError, NotFound, ServiceUnavailable
from handlers.pipeline import Request, Response

log = logging.getLogger(__name__)
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "host", "content-length", "expect"}
ANSWER_GRACE_S = 0.5  # past its deadline a caller waits this much longer for the lane's verdict
MMS_UP_TIMEOUT_S = 120


class MmsBackend:
    def __init__(self, settings: Settings, mms: dict | None = None):
        """``mms``: what the supervisor says of the MMS it started (its ``describe()``)."""
        self.settings = settings
        self.mms = mms or json.loads(os.environ["SERVE_MMS"])
        self.client = MmsClient(self.mms["port"])
        self.registry: ModelRegistry | None = None
        self.state: str | None = "the model server is starting"  # None: ready
        self.ready = threading.Event()

    def start(self) -> threading.Event:
        """In the app's worker: registry and (single model) the default model, on a thread of
        its own; ``ready`` is set once requests can be served. A default model that fails to
        load stops the worker with exit code 4, which makes gunicorn (and the server) stop."""
        threading.Thread(target=self._start, name="mms-start", daemon=True).start()
        return self.ready

    def _start(self) -> None:
        s = self.settings
        deadline = time.monotonic() + MMS_UP_TIMEOUT_S
        while not self._mms_up() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.registry = ModelRegistry(self.client, s, state_dir=Path(self.mms["state_dir"]),
                                      java_pgid=self.mms["pgid"])
        adopted = self.registry.adopt()
        for name in adopted:
            self._served(self.registry.get(name), loaded_now=False)
        if not s.multi_model and DEFAULT_MODEL not in adopted:
            self.state = "the default model is loading"
            try:
                self._served(self.registry.load(DEFAULT_MODEL, s.model_dir, check_memory=False))
            except Exception as exc:  # noqa: BLE001 - a broken single model is a stopped server
                log.critical("default model %s failed to load: %s; stopping", s.model_dir,
                             getattr(exc, "message", exc))
                logging.shutdown()
                os._exit(4)  # gunicorn halts the whole server when a worker exits with 4
        default = self.registry.get(DEFAULT_MODEL)
        metrics.set_info(s.stack, default.engine if default is not None and not s.multi_model else {
            "backend": s.handler.backend, "compute_type": s.handler.compute_type or "auto",
            "device": s.handler.device or "auto"})
        self.state = None
        log.info("MMS backend ready (%s)", "multi-model" if s.multi_model else f"model {s.model_dir}")
        self.ready.set()

    def _mms_up(self) -> bool:
        try:
            return self.client.ping(timeout=1.0).status == 200
        except MmsUnavailable:
            return False

    def not_ready(self) -> str | None:
        if self.state is not None:
            return self.state
        try:
            resp = self.client.ping()
            return None if resp.status == 200 else f"the model server reports {resp.message()}"
        except MmsUnavailable as exc:
            return str(exc)

    def _registry(self) -> ModelRegistry:
        if self.state is not None:
            raise ServiceUnavailable(self.state)
        return self.registry

    def _record(self, name: str) -> ModelRecord:
        record = self._registry().get(name)
        if record is None:
            raise NotFound(f"model {name[:255]!r} is not loaded")
        return record

    def invoke(self, name: str | None, request: Request, deadline: float) -> Response:
        name = DEFAULT_MODEL if name is None else name
        record = self._record(name)
        headers = {k: v for k, v in request.headers if k.lower() not in HOP_BY_HOP}
        call = record.queue.submit(headers, request.body, deadline)
        try:
            return call.future.result(timeout=deadline - time.monotonic() + ANSWER_GRACE_S)
        except TimeoutError:
            call.future.cancel()
            raise GatewayTimeout(f"model {name!r} did not answer within {self.settings.timeout_s} s") from None

    @staticmethod
    def _served(record: ModelRecord, loaded_now: bool = True) -> None:
        """/metrics: the model's series may appear; a load is counted."""
        metrics.model_loaded(record.name, load_seconds=record.load_seconds if loaded_now else None,
                             pss_bytes=record.pss_bytes, rss_bytes=record.rss_bytes)

    def load(self, name, url) -> dict:
        try:
            record = self._registry().load(name, url)
        except Exception as exc:
            metrics.load_failed(exc.status if isinstance(exc, InferenceError) else 500)
            raise
        self._served(record)
        return {"status": f"model {record.name!r} loaded", **record.describe()}

    def unload(self, name: str) -> dict:
        try:
            record = self._registry().unload(name)
        except Exception as exc:
            metrics.unload_failed(exc.status if isinstance(exc, InferenceError) else 500)
            raise
        metrics.model_unloaded(record.name)
        return {"status": f"model {record.name!r} unloaded"}

    def describe(self, name: str) -> dict:
        return self._record(name).describe()

    def models(self) -> list[dict]:
        registry = self._registry()
        return [r.describe() for r in map(registry.get, registry.names()) if r is not None]
