"""What both HTTP stacks call: decode -> predict (batched across requests) -> encode.

``load_service`` picks the default Flan-T5 service, or a user script's hooks with our
defaults filling the gaps.
"""

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from handlers import codecs, content_types
from handlers.artifacts import resolve_model_dir
from handlers.codecs import Generation, Payload
from handlers.config import HandlerConfig
from handlers.errors import BadRequest, InferenceError, InternalError, ModelLoadError
from handlers.flan_t5 import FlanT5Model, TextStream
from handlers.user_script import UserScript, find_script

log = logging.getLogger(__name__)


class Context:
    """The optional trailing ``context`` argument of user hooks, shaped like MMS's."""

    def __init__(self, model_dir: Path, gpu_id: int | None = None):
        self.model_dir = str(model_dir)
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": gpu_id}


class FlanT5Service:
    """The default: our codecs around ``FlanT5Model``; payloads from many requests share
    one ``generate`` when their parameters match."""

    batchable = True
    streamable = True

    def __init__(self, model: FlanT5Model, config: HandlerConfig):
        self.model, self.config = model, config

    def warm_up(self) -> None:
        self.model.warm_up()

    def negotiate(self, content_type: str | None, accept: str | None) -> str:
        request_type = content_types.parse(content_type)[0] or content_types.JSON
        return content_types.negotiate(accept, request_type, self.config.default_accept)

    def decode(self, body: bytes, content_type: str | None, accept: str | None) -> Payload:
        if content_types.parse(accept)[0] == content_types.EVENT_STREAM:
            payload = codecs.decode(body, content_type, content_types.JSON, self.config.max_new_tokens)
            return replace(payload, stream=True)
        return codecs.decode(body, content_type, self.negotiate(content_type, accept),
                             self.config.max_new_tokens)

    def predict(self, payloads: list[Payload]) -> list[list[Generation] | InferenceError]:
        """One result per payload, same order; a failure fails only its own payload."""
        requests = [request for payload in payloads for request in payload.requests]
        generations = self.model.generate(requests)
        results, start = [], 0
        for payload in payloads:
            mine = generations[start:start + len(payload.requests)]
            start += len(payload.requests)
            failed = next((g for g in mine if isinstance(g, InferenceError)), None)
            results.append(failed or mine)
        return results

    def encode(self, result: list[Generation], payload: Payload) -> tuple[bytes, str]:
        return codecs.encode(payload, result)

    def stream(self, payload: Payload, timeout: float) -> TextStream:
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
    stream: bool = False


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


class ScriptService:
    """A user script's hooks; any hook it leaves out falls back to ``FlanT5Service``.

    ``mms_style``: ``predict(model, payload)`` gets ``[{"body": bytes}]`` as MMS-based images
    passed it, instead of the raw bytes flask-based images passed.
    """

    streamable = False

    def __init__(self, script: UserScript, model_dir: Path, config: HandlerConfig,
                 mms_style: bool = False, context: Any = None):
        self.script, self.config, self.mms_style = script, config, mms_style
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

    def warm_up(self) -> None:
        if self.default is not None and self.batchable:
            self.default.warm_up()

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

    def predict(self, payloads: list[ScriptPayload]) -> list:
        if self.batchable:
            return self.default.predict([p.data for p in payloads])
        results = []
        for payload in payloads:
            try:
                results.append(self._predict_one(payload))
            except InferenceError as exc:
                results.append(exc)
        return results

    def _predict_one(self, payload: ScriptPayload) -> Any:
        call, ctx = self.script.call, self.context
        if self.script.has("transform_fn"):
            return call("transform_fn", self.model, payload.data, payload.content_type,
                        payload.accept, context=ctx)
        if self.raw and self.mms_style:
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


def load_service(model_dir, config: HandlerConfig | None = None, *, mms_style: bool = False,
                 context: Any = None):
    """The service for ``model_dir`` (or a model.tar.gz): user script if present, else Flan-T5."""
    config = config or HandlerConfig()
    path = resolve_model_dir(model_dir)
    script_path = find_script(path, config.program, config.submit_dir)
    if script_path is None:
        return FlanT5Service(FlanT5Model.load(path, config), config)
    return ScriptService(UserScript(script_path), path, config, mms_style, context)
