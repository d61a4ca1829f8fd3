"""The one request path of both stacks: decode each request -> predict them together ->
encode each, one answer per request, each failure its own.

The single-model stack calls ``answer`` from each request thread (the model's scheduler
batches across threads); an MMS worker calls it with every request of a batch the front sent.
"""

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from handlers import content_types
from handlers.errors import BadRequest, InferenceError, InternalError, NotAcceptable
from handlers.figures import Figures
from handlers.service import Service

log = logging.getLogger(__name__)
STREAM_HEADERS = {"X-Accel-Buffering": "no", "Cache-Control": "no-cache"}  # nginx: pass each chunk on
DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Request:
    """A request as it reached the server: its body and headers (the caller's, as sent)."""

    body: bytes
    content_type: str | None = None
    accept: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes | Iterator[bytes]  # an iterator: a streamed answer
    headers: dict[str, str] = field(default_factory=dict)
    figures: Figures | None = None  # what it cost the engine (a stream's: once it has ended)

    @classmethod
    def error(cls, exc: InferenceError) -> "Response":
        return cls(exc.status, content_types.JSON, exc.body())


def failed(exc: BaseException) -> Response:
    """An error answer: its status and message; a 5xx's traceback goes to the log only."""
    if not isinstance(exc, InferenceError):
        exc = InternalError.from_exception("the model server", exc)
    if exc.status >= 500:
        log.error("a request failed: %s", exc.message, exc_info=exc.__cause__ or exc.__context__)
    return Response.error(exc)


def answer(service: Service, requests: list[Request], *, deadline: float | None = None,
           no_stream: str | None = None, max_answer_bytes: int | None = None,
           before: Callable[[int], None] | None = None) -> list[Response]:
    """One response per request, same order. ``no_stream``: why this endpoint cannot stream
    (a request asking for a stream is then refused, saying so). ``before(i)`` runs before
    request i's hooks (decode, and predict when requests run one by one)."""
    responses: list[Response | None] = [None] * len(requests)
    decoded = {}
    for i, request in enumerate(requests):
        if before:
            before(i)
        try:
            payload = service.decode(request.body, request.content_type, request.accept)
            if service.streamable and service.wants_stream(payload):
                responses[i] = stream(service, payload, request, deadline, no_stream)
            else:
                decoded[i] = payload
        except Exception as exc:  # noqa: BLE001 - one bad request fails only itself
            responses[i] = failed(exc)
    batches = [list(decoded)] if service.batchable else [[i] for i in decoded]
    for batch in filter(None, batches):
        if before and len(batch) == 1:
            before(batch[0])
        try:
            results = service.predict([decoded[i] for i in batch], deadline)
        except Exception as exc:  # noqa: BLE001 - predict reports per-item errors; a bug guard
            results = [exc] * len(batch)
        for i, result in zip(batch, results):
            responses[i] = encode(service, result, decoded[i], max_answer_bytes)
    return responses


def encode(service: Service, result, payload, max_answer_bytes: int | None) -> Response:
    if isinstance(result, BaseException):
        return failed(result)
    try:
        figures = service.figures(result)
        body, content_type = service.encode(result, payload)
    except Exception as exc:  # noqa: BLE001
        return failed(exc)
    if max_answer_bytes is not None and len(body) > max_answer_bytes:
        return failed(InternalError(f"the answer is {len(body)} bytes, over the {max_answer_bytes}-byte "
                                    "response cap"))
    return Response(200, content_type, body, figures=figures)


def stream(service: Service, payload, request: Request, deadline: float | None,
           no_stream: str | None) -> Response:
    """A streamed answer: server-sent events (``data: {"token": {"text": ...}}`` per piece,
    then ``data: {"generated_text": ...}``), or JSON lines when the caller accepts those."""
    media_type = content_types.parse(request.accept)[0]
    if no_stream:
        if media_type == content_types.EVENT_STREAM:
            raise NotAcceptable(f"this endpoint does not stream ({no_stream}): ask for another Accept "
                                "type to get the whole answer at once")
        raise BadRequest(f'this endpoint does not stream ({no_stream}): leave out "stream": true to get '
                         "the whole answer at once")
    media_type = content_types.JSONLINES if media_type == content_types.JSONLINES else content_types.EVENT_STREAM
    timeout = DEFAULT_TIMEOUT_S if deadline is None else deadline - time.monotonic()
    pieces = service.stream(payload, timeout)

    def frame(obj) -> bytes:
        text = json.dumps(obj, ensure_ascii=False)
        return (f"data: {text}\n\n" if media_type == content_types.EVENT_STREAM else text + "\n").encode()

    def frames() -> Iterator[bytes]:
        text = ""
        try:
            for piece in pieces:
                text += piece
                yield frame({"token": {"text": piece}})
            yield frame({"generated_text": text})
        except InferenceError as exc:
            log.warning("a stream ended with %d %s", exc.status, type(exc).__name__)
            yield frame({"error": exc.message, "code": exc.status})
        finally:
            pieces.cancel()
            response.figures = pieces.figures() if hasattr(pieces, "figures") else None

    response = Response(200, media_type, b"", dict(STREAM_HEADERS))
    response.body = frames()
    return response
