"""The single model in this process: the default stack's backend. Loaded where gunicorn imports
the app (its master when ``handlers.engine.loads_before_fork`` allows, so workers share the
weights), started in each worker; each request thread runs the pipeline itself.
"""

import logging
import os
import threading
import time

from contract import metrics
from contract.routes import DEFAULT_MODEL
from contract.settings import Settings
from handlers import config as handler_config, pipeline
from handlers.errors import NotFound
from handlers.pipeline import Request
from handlers.service import load_service

log = logging.getLogger("serve.local")


class LocalBackend:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.service = None
        self.state = "starting"
        self.ready = threading.Event()

    def load(self) -> None:
        handler_config.use(self.settings.handler)  # what a user script's handlers.load_model gets
        started = time.monotonic()
        self.service = load_service(self.settings.model_dir, self.settings.handler)
        log.info("model loaded from %s in %.2f s", self.settings.model_dir, time.monotonic() - started)

    def start(self) -> threading.Event:
        """In the worker: load (unless loaded before the fork), place, warm up, on a thread of
        its own; ``ready`` is set once requests can be served. A model that cannot serve stops
        the worker with exit code 4, which makes gunicorn (and so the server) stop."""
        threading.Thread(target=self._start, name="model-start", daemon=True).start()
        return self.ready

    def _start(self) -> None:
        try:
            if self.service is None:
                self.load()
            started = time.monotonic()
            self.service.start()
        except BaseException as exc:  # noqa: BLE001 - the server must stop, not look alive
            self.state = f"failed: {type(exc).__name__}: {exc}"
            log.critical("model cannot serve (%s): stopping", self.state, exc_info=True)
            logging.shutdown()
            os._exit(4)  # gunicorn halts the whole server when a worker exits with 4 (APP_LOAD_ERROR)
        self.state = "ready"
        log.info("model warmed up in %.2f s; ready", time.monotonic() - started)
        metrics.set_info(self.settings.stack, self.service.engine_info())
        metrics.model_loaded(DEFAULT_MODEL)
        scheduler = self.service.scheduler
        if scheduler is not None:
            scheduler.on_depth = lambda depth: metrics.queue_depth(DEFAULT_MODEL, depth)
        self.ready.set()

    def not_ready(self) -> str | None:
        if self.state == "ready" and not self.service.healthy:
            return "the model's threads have stopped"
        return None if self.state == "ready" else self.state

    def invoke(self, name: str | None, request: Request, deadline: float) -> pipeline.Response:
        if name is not None:
            raise NotFound(f"model {name[:255]!r} is not loaded")
        [answer] = pipeline.answer(self.service, [request], deadline=deadline,
                                   max_answer_bytes=self.settings.max_payload_bytes)
        return answer
