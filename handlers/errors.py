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
    status = 400  # the request body or its parameters are malformed or out of range


class NotFound(InferenceError):
    status = 404  # no such path or model


class MethodNotAllowed(InferenceError):
    status = 405  # the path exists but not for this method (e.g. GET /invocations)


class NotAcceptable(InferenceError):
    status = 406  # the Accept header names no media type we can produce


class Conflict(InferenceError):
    status = 409  # a model with that name is already loaded


class PayloadTooLarge(InferenceError):
    status = 413  # the body exceeds the payload cap


class UnsupportedMediaType(InferenceError):
    status = 415  # the Content-Type names no media type we can read


class InternalError(InferenceError):
    status = 500  # the model or a user script failed; the message names the exception

    @classmethod
    def from_exception(cls, where: str, exc: BaseException) -> "InternalError":
        return cls(f"{where} raised {type(exc).__name__}: {exc}")


class ModelLoadError(InferenceError):
    # The model cannot be loaded (a missing or corrupt file, named; a failing user script):
    # POST /models answers it, a single-model server logs it and exits
    status = 422


class ServiceUnavailable(InferenceError):
    status = 503  # the model is not loaded, not warmed up, or can no longer serve


class GatewayTimeout(InferenceError):
    status = 504  # the request did not finish within the model server timeout


class InsufficientStorage(InferenceError):
    status = 507  # not enough memory to load another model
