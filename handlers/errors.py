"""Errors that carry their HTTP status.

Every failure a caller can cause or see is one of these. The HTTP stacks turn them into a
response with ``.status`` and ``.body()``; nothing else decides status codes.
"""

import json


class InferenceError(Exception):
    """Base class: becomes HTTP ``status`` with body ``{"error": message, "code": status}``."""

    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def body(self) -> bytes:
        return json.dumps({"error": self.message, "code": self.status}).encode()


class BadRequest(InferenceError):
    """400: the request body or its parameters are malformed or out of range."""

    status = 400


class NotFound(InferenceError):
    """404: no such path or model."""

    status = 404


class MethodNotAllowed(InferenceError):
    """405: the path exists but not for this method (e.g. GET /invocations)."""

    status = 405


class NotAcceptable(InferenceError):
    """406: the Accept header names no media type we can produce."""

    status = 406


class Conflict(InferenceError):
    """409: a model with that name is already loaded."""

    status = 409


class PayloadTooLarge(InferenceError):
    """413: the body exceeds the payload cap."""

    status = 413


class UnsupportedMediaType(InferenceError):
    """415: the Content-Type names no media type we can read."""

    status = 415


class InternalError(InferenceError):
    """500: the model or a user script failed; the message names the exception."""

    status = 500

    @classmethod
    def from_exception(cls, where: str, exc: BaseException) -> "InternalError":
        return cls(f"{where} raised {type(exc).__name__}: {exc}")


class ModelLoadError(InferenceError):
    """422: the model cannot be loaded: its directory is missing a file or holds a corrupt
    one (named in the message), or its user script fails to load. ``POST /models`` answers
    it; a single-model server logs it and exits."""

    status = 422


class ServiceUnavailable(InferenceError):
    """503: the model is not loaded, not warmed up, or can no longer serve."""

    status = 503


class GatewayTimeout(InferenceError):
    """504: the request did not finish within the model server timeout."""

    status = 504


class InsufficientStorage(InferenceError):
    """507: not enough memory to load another model."""

    status = 507
