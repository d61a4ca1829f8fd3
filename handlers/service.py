"""The service a model is served through: decode one request -> predict many -> encode one.

``Service`` declares the hooks ``handlers.pipeline`` runs (LitServe's ``LitAPI`` shape);
``load_service`` picks the default Flan-T5 service, or a user script's hooks with our
defaults filling the gaps. Nothing here knows HTTP or which stack serves.
"""

import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from handlers import codecs, content_types
from handlers.artifacts import resolve_model_dir
from handlers.codecs import Generation, Payload
from handlers.config import HandlerConfig
from handlers.engine import use_threads
from handlers.errors import BadRequest, GatewayTimeout, InferenceError, InternalError, ModelLoadError
from handlers.figures import Figures
from handlers.flan_t5 import FlanT5Model, timeout_text
from handlers.scheduler import Job, Scheduler
from handlers.user_script import Context, UserScript, find_script

log = logging.getLogger(__name__)


class Service(ABC):
    batchable = True  # predict takes payloads of many requests at once (else one by one)
    streamable = False  # stream() answers as text is generated

    def start(self) -> None:
        """In the serving process, before the first request: place and warm up the model."""

    @property
    def healthy(self) -> bool:
        """Whether the threads that run the model are alive."""
        return True

    @property
    def scheduler(self) -> Scheduler | None:
        """The scheduler whose queue this service's requests wait in (a server watches its depth)."""
        return None

    def engine_info(self) -> dict[str, str]:
        """What runs the model: ``backend``, ``compute_type``, ``device`` (``serve_info``)."""
        return {"backend": "user script", "compute_type": "", "device": ""}

    def figures(self, result: Any) -> Figures | None:
        """What ``predict``'s result for one payload cost the engine, where it can tell."""
        return None

    @abstractmethod
    def decode(self, body: bytes, content_type: str | None, accept: str | None) -> Any:
        """A request -> a payload; raises InferenceError (400/406/415) for a bad one."""

    @abstractmethod
    def predict(self, payloads: list, deadline: float | None = None) -> list:
        """One result per payload, same order; an InferenceError instance for one that failed.
        Past ``deadline`` (time.monotonic()) a payload's result is a 504."""

    @abstractmethod
    def encode(self, result: Any, payload: Any) -> tuple[bytes, str]:
        """A result -> (body, content type)."""

    def wants_stream(self, payload: Any) -> bool:
        return False

    def stream(self, payload: Any, timeout: float) -> Iterator[str]:
        raise BadRequest("this model does not stream")


class FlanT5Service(Service):
    """The default: our codecs around ``FlanT5Model``; every prompt of every request goes to
    the model's scheduler on its own and is batched with whatever else is running."""

    streamable = True

    def __init__(self, model: FlanT5Model, config: HandlerConfig):
        self.model, self.config = model, config

    def start(self) -> None:
        self.model.start()

    @property
    def healthy(self) -> bool:
        return self.model.scheduler.healthy

    @property
    def scheduler(self) -> Scheduler:
        return self.model.scheduler

    def engine_info(self) -> dict[str, str]:
        return self.model.engine_info()

    def figures(self, result: Any) -> Figures | None:
        return Figures.combine(g.figures for g in result) if isinstance(result, list) else None

    def negotiate(self, content_type: str | None, accept: str | None) -> str:
        request_type = content_types.parse(content_type)[0] or content_types.JSON
        return content_types.negotiate(accept, request_type, self.config.default_accept)

    def decode(self, body: bytes, content_type: str | None, accept: str | None) -> Payload:
        if content_types.parse(accept)[0] == content_types.EVENT_STREAM:
            payload = codecs.decode(body, content_type, content_types.JSON, self.config.max_new_tokens)
            return replace(payload, stream=True)
        return codecs.decode(body, content_type, self.negotiate(content_type, accept), self.config.max_new_tokens)

    def predict(self, payloads: list[Payload], deadline: float | None = None) -> list:
        generations = self.model.generate([r for payload in payloads for r in payload.requests], deadline)
        results, start = [], 0
        for payload in payloads:
            mine = generations[start:start + len(payload.requests)]
            start += len(payload.requests)
            results.append(next((g for g in mine if isinstance(g, InferenceError)), mine))
        return results

    def encode(self, result: list[Generation], payload: Payload) -> tuple[bytes, str]:
        return codecs.encode(payload, result)

    def wants_stream(self, payload: Payload) -> bool:
        return payload.stream

    def stream(self, payload: Payload, timeout: float) -> Iterator[str]:
        if len(payload.requests) != 1:
            raise BadRequest("streaming takes exactly one input")
        [(prompt, params)] = payload.requests
        return self.model.stream(prompt, params, timeout)


@dataclass(frozen=True)
class ScriptPayload:
    """What a user script's decode step made of a request: ``data`` is the raw body
    (transform_fn / predict), ``input_fn``'s result, or our ``Payload``."""

    data: Any
    accept: str
    content_type: str


def encode_any(value: Any, accept: str) -> tuple[bytes, str]:
    """A user hook's return value -> (body, content type). ``(body, type)`` tuples are honoured;
    bytes and strings pass as they are; anything else becomes JSON."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], str):
        value, accept = value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), accept
    if isinstance(value, str):  # already encoded by the script, as sagemaker-inference sends it
        return value.encode(), accept
    try:
        return json.dumps(value, ensure_ascii=False).encode(), content_types.JSON
    except (TypeError, ValueError) as exc:
        raise InternalError(f"the user script returned a {type(value).__name__} that cannot be "
                            f"sent as JSON: {exc}") from None


@dataclass(eq=False)
class HookJob(Job):
    payload: Any = None


class ScriptService(Service):
    """A user script's hooks; any hook it leaves out falls back to ``FlanT5Service``.

    ``predict_records``: ``predict(model, payload)`` gets ``[{"body": bytes}]`` (the convention
    of MMS-based images) instead of the raw body (that of flask-based images). The script's
    own predict hooks run one request at a time on one thread of their own.
    """

    def __init__(self, script: UserScript, model_dir: Path, config: HandlerConfig,
                 predict_records: bool = False, context: Any = None):
        self.script, self.config, self.predict_records = script, config, predict_records
        self.context = context if context is not None else Context(model_dir)
        has = script.has
        loader = next((h for h in ("model_fn", "load_model") if has(h)), None)
        if loader:
            try:
                self.model = script.call(loader, str(model_dir), context=self.context)
            except InferenceError as exc:
                raise ModelLoadError(f"{script.path.name} {loader} failed: {exc.message}") from exc
        else:
            self.model = FlanT5Model.load(model_dir, config)
        self.default = FlanT5Service(self.model, config) if isinstance(self.model, FlanT5Model) else None
        # What runs the model: one whole-request hook, predict_fn, or our batched default.
        self.raw = has("transform_fn") or (has("predict") and not has("predict_fn"))
        self.batchable = not (self.raw or has("predict_fn"))
        if self.batchable and self.default is None:
            raise ModelLoadError(f"{script.path.name} loads its own model with {loader} but defines "
                                 "no predict_fn, predict or transform_fn to run it")
        self.hooks = Scheduler(self._run_hooks, max_size=1, name="user script")

    def start(self) -> None:
        self.hooks.start(lambda: use_threads(self.config.threads))
        if self.default is not None and self.batchable:
            self.default.start()

    @property
    def healthy(self) -> bool:
        return self.hooks.healthy and (self.default is None or not self.batchable or self.default.healthy)

    @property
    def scheduler(self) -> Scheduler:
        return self.default.scheduler if self.batchable else self.hooks

    def engine_info(self) -> dict[str, str]:
        return self.default.engine_info() if self.default is not None else super().engine_info()

    def figures(self, result: Any) -> Figures | None:
        return self.default.figures(result) if self.batchable else None

    def decode(self, body: bytes, content_type: str | None, accept: str | None) -> ScriptPayload:
        media_type = content_types.parse(content_type)[0] or content_types.JSON
        content_type = content_type or media_type
        script_accept = accept.strip() if accept and accept.strip() not in ("", "*/*") else \
            (self.config.default_accept or content_types.JSON)
        if self.raw:
            return ScriptPayload(body, script_accept, content_type)
        if self.script.has("input_fn"):
            data = self.script.call("input_fn", body, content_type, context=self.context)
        elif not self.batchable:
            data = codecs.decode_object(body, content_type)
        else:
            data = self.default.decode(body, content_type, self._our_accept(content_type, accept))
        if self.batchable and not isinstance(data, Payload):
            if isinstance(data, list) and data and all(isinstance(d, str) for d in data):
                data = {"inputs": data}
            record, stream = codecs.record_from_json(data, self.config.max_new_tokens, "input_fn result")
            data = Payload((record,), content_types.JSON, self._our_accept(content_type, accept), stream)
        return ScriptPayload(data, script_accept, content_type)

    def _our_accept(self, content_type: str, accept: str | None) -> str:
        # With a user output_fn our codec only shapes the answer (JSON); the script encodes.
        if self.script.has("output_fn"):
            return content_types.JSON
        return self.default.negotiate(content_type, accept)

    def predict(self, payloads: list[ScriptPayload], deadline: float | None = None) -> list:
        if self.batchable:
            return self.default.predict([p.data for p in payloads], deadline)
        if not self.hooks.ready.is_set():
            self.start()
        results = []
        for payload in payloads:  # each on the hooks' own thread, one at a time
            job = HookJob(key=object(), payload=payload)
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            try:
                results.append(self.hooks.submit(job).result(timeout))
            except FutureTimeout:
                job.future.cancel()
                results.append(GatewayTimeout(f"the user script did not answer within {timeout_text(self.config)} "
                                              "(SAGEMAKER_MODEL_SERVER_TIMEOUT)"))
            except InferenceError as exc:
                results.append(exc)
        return results

    def _run_hooks(self, jobs: list["HookJob"]) -> None:
        for job in jobs:
            job.future.set_result(self._predict_one(job.payload))

    def _predict_one(self, payload: ScriptPayload) -> Any:
        call, ctx = self.script.call, self.context
        if self.script.has("transform_fn"):
            return call("transform_fn", self.model, payload.data, payload.content_type,
                        payload.accept, context=ctx)
        if self.raw and self.predict_records:
            result = call("predict", self.model, [{"body": payload.data}], context=ctx)
            return result[0] if isinstance(result, list) and len(result) == 1 else result
        if self.raw:
            return call("predict", self.model, payload.data, context=ctx)
        return call("predict_fn", payload.data, self.model, context=ctx)

    def encode(self, result: Any, payload: ScriptPayload) -> tuple[bytes, str]:
        if self.batchable:
            if not self.script.has("output_fn"):
                return self.default.encode(result, payload.data)
            result = codecs.answer(payload.data, result)
        if self.script.has("output_fn") and not self.raw:
            result = self.script.call("output_fn", result, payload.accept, context=self.context)
        return encode_any(result, payload.accept)


def load_service(model_dir, config: HandlerConfig | None = None, *, predict_records: bool = False,
                 context: Any = None) -> Service:
    """The service for ``model_dir`` (or a model.tar.gz): user script if present, else Flan-T5.
    Loads without running the model or starting a thread (a process may fork next); the
    serving process calls ``start()``. (A server also makes its config the process's default,
    ``handlers.config.use``, so that a user script calling ``handlers.load_model`` gets it.)"""
    config = config or HandlerConfig()
    path = resolve_model_dir(model_dir)
    script_path = find_script(path, config.program, config.submit_dir)
    if script_path is None:
        return FlanT5Service(FlanT5Model.load(path, config), config)
    return ScriptService(UserScript(script_path), path, config, predict_records, context)
