"""The flask app: /ping, /invocations, /execution-parameters over one model-owning batcher."""

import json
import logging
import os
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace

from flask import Flask, Response, request

from handlers import HandlerConfig, load_service
from handlers.codecs import Payload
from handlers.content_types import EVENT_STREAM, JSONLINES, parse
from werkzeug.exceptions import HTTPException, MethodNotAllowed as WerkzeugMethodNotAllowed

from handlers.errors import (GatewayTimeout, InferenceError, InternalError, MethodNotAllowed,
                             NotFound, PayloadTooLarge, ServiceUnavailable)
from serve.batcher import Batcher
from serve.settings import Settings

log = logging.getLogger("serve.app")
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"


def set_torch_threads(config: HandlerConfig, threads: int) -> None:
    """transformers backend: torch's threads in this process (for user scripts' models too).
    The ctranslate2 backend takes ``config.threads`` per Translator and never imports torch."""
    if config.backend == "transformers":
        import torch
        torch.set_num_threads(threads)


def error_response(error: InferenceError, headers: dict | None = None) -> Response:
    return Response(error.body(), status=error.status, mimetype="application/json", headers=headers)


def not_allowed_response(method: str, path: str, allowed) -> Response:
    """405 with ``Allow``: the same answer the MMS front gives (nginx's own 405 too)."""
    allow = ", ".join(sorted(allowed))
    error = MethodNotAllowed(f"{method} is not allowed on {path}; allowed: {allow}")
    return error_response(error, {"Allow": allow})


class ModelServer:
    """The model for one worker process: loaded (maybe in the gunicorn master, no compute),
    then placed, warmed up and run on the batcher's own thread in the worker. No torch here:
    the engine (INFERENCE_BACKEND) imports what it needs."""

    def __init__(self, settings: Settings, env=os.environ):
        self.settings = settings
        # CTranslate2's threads per worker: cores / workers (INFERENCE_TORCH_THREADS), as torch's.
        self.config = replace(HandlerConfig.from_env(env), threads=settings.torch_threads)
        self.service = None
        self.batcher: Batcher | None = None

    def load(self) -> None:
        started = time.monotonic()
        self.service = load_service(self.settings.model_dir, self.config)
        log.info("model loaded from %s in %.2f s", self.settings.model_dir, time.monotonic() - started)

    def start(self) -> Batcher:
        """In the worker: start the model thread (load if not preloaded, place, warm up)."""
        self.batcher = Batcher(self, self.config.max_batch_size, self.settings.max_batch_wait_ms / 1000,
                               on_fatal=self._fatal)
        self.batcher.start(self._prepare)
        return self.batcher

    def predict(self, payloads):  # the batcher calls this on the model thread
        return self.service.predict(payloads)

    def _prepare(self) -> None:
        set_torch_threads(self.config, self.settings.torch_threads)
        if self.service is None:
            self.load()
        started = time.monotonic()
        self.service.warm_up()
        log.info("model warmed up in %.2f s (%s backend, %d threads); ready", time.monotonic() - started,
                 self.config.backend, self.config.threads)

    def _fatal(self, reason: str) -> None:
        # Gunicorn halts the whole server when a worker exits with 4 (APP_LOAD_ERROR), so the
        # supervisor exits non-zero instead of answering 503 forever.
        log.critical("model cannot serve (%s): stopping", reason)
        logging.shutdown()
        os._exit(4)


def create_app(settings: Settings, preload: bool = True) -> Flask:
    app = Flask("serve", static_folder=None)
    server = ModelServer(settings)
    if preload:
        set_torch_threads(server.config, 1)  # no torch thread pool in a process that will fork
        server.load()  # reads the model, runs nothing (CTranslate2 builds its Translator in the worker)
    app.extensions["model_server"] = server

    def rid() -> str:
        return request.headers.get("X-Request-Id", "-")

    # No automatic OPTIONS (flask's 200 with an empty text/html body): a method a path does
    # not serve is 405 with Allow. HEAD answers like GET, without a body.
    @app.get("/ping", provide_automatic_options=False)
    def ping():
        batcher = server.batcher
        if batcher is not None and batcher.healthy:
            return Response(b'{"status": "healthy"}', mimetype="application/json")
        status = batcher.status() if batcher else "starting"
        return Response(json.dumps({"error": f"model is not ready: {status}", "code": 503}),
                        status=503, mimetype="application/json")

    @app.get("/execution-parameters", provide_automatic_options=False)
    def execution_parameters():
        return {"MaxConcurrentTransforms": max(2, settings.workers * 2),
                "BatchStrategy": "MULTI_RECORD",
                "MaxPayloadInMB": settings.max_payload_bytes // (1024 * 1024)}

    @app.post("/invocations", provide_automatic_options=False)
    def invocations():
        started = time.monotonic()
        if (request.content_length or 0) > settings.max_payload_bytes:
            raise PayloadTooLarge(f"request body is larger than {settings.max_payload_bytes} bytes "
                                  "(SAGEMAKER_MAX_PAYLOAD_IN_MB)")
        body = request.get_data(cache=False)
        if len(body) > settings.max_payload_bytes:
            raise PayloadTooLarge(f"request body is larger than {settings.max_payload_bytes} bytes "
                                  "(SAGEMAKER_MAX_PAYLOAD_IN_MB)")
        accept = request.headers.get("Accept")
        if server.batcher is None or not server.batcher.healthy:
            status = server.batcher.status() if server.batcher else "starting"
            raise ServiceUnavailable(f"model is not ready: {status}")
        service = server.service
        payload = service.decode(body, request.headers.get("Content-Type"), accept)
        if wants_stream(payload, accept) and getattr(service, "streamable", False):
            response = stream_response(payload, accept)
        else:
            response = complete_response(payload, started)
        if CUSTOM_ATTRIBUTES in request.headers:
            response.headers[CUSTOM_ATTRIBUTES] = request.headers[CUSTOM_ATTRIBUTES]
        return response

    def wants_stream(payload, accept: str | None) -> bool:
        return bool(getattr(payload, "stream", False)) or parse(accept)[0] == EVENT_STREAM

    def complete_response(payload, started: float) -> Response:
        size = len(payload.requests) if isinstance(payload, Payload) else 1
        future = server.batcher.submit(payload, size)
        remaining = settings.timeout_s - (time.monotonic() - started)
        try:
            result = future.result(timeout=max(remaining, 0.001))
        except FutureTimeout:
            future.cancel()
            raise GatewayTimeout(f"inference did not finish within {settings.timeout_s} s "
                                 "(SAGEMAKER_MODEL_SERVER_TIMEOUT)") from None
        if isinstance(result, InferenceError):
            raise result
        body, content_type = server.service.encode(result, payload)
        return Response(body, content_type=content_type)

    def stream_response(payload, accept: str | None) -> Response:
        media_type = JSONLINES if parse(accept)[0] == JSONLINES else EVENT_STREAM
        stream = server.service.stream(payload, timeout=settings.timeout_s)
        server.batcher.submit_stream(stream)
        request_id = rid()

        def frame(obj) -> bytes:
            text = json.dumps(obj, ensure_ascii=False)
            return (f"data: {text}\n\n" if media_type == EVENT_STREAM else text + "\n").encode()

        def chunks():
            text = ""
            try:
                for piece in stream:
                    text += piece
                    yield frame({"token": {"text": piece}})
                yield frame({"generated_text": text})
            except InferenceError as exc:
                log.warning("rid=%s stream ended with %s", request_id, exc.message)
                yield frame({"error": exc.message, "code": exc.status})
            finally:
                stream.cancel()

        return Response(chunks(), content_type=media_type, headers={"X-Accel-Buffering": "no",
                                                                    "Cache-Control": "no-cache"})

    @app.errorhandler(InferenceError)
    def inference_error(error: InferenceError):
        # The message may quote the body (a parameter's value): only at DEBUG, never at INFO.
        log.warning("rid=%s %s %s -> %d %s (%s bytes in)", rid(), request.method, request.path,
                    error.status, type(error).__name__, request.content_length or 0)
        log.debug("rid=%s %s", rid(), error.message)
        return error_response(error)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if isinstance(exc, WerkzeugMethodNotAllowed):
            return not_allowed_response(request.method, request.path, exc.valid_methods or ())
        if exc.code == 404:
            error = NotFound(f"no such path: {request.path} (this server answers /ping, "
                             "/execution-parameters and /invocations)")
        else:
            error = InferenceError(exc.description or exc.name)
            error.status = exc.code or 500
        return error_response(error)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("rid=%s %s %s failed", rid(), request.method, request.path)
        return error_response(InternalError.from_exception(request.path, exc))

    return app
