"""Errors the MMS front answers itself: ``handlers.errors`` with the status given per call."""

from handlers.errors import InferenceError


class ApiError(InferenceError):
    """Becomes HTTP ``status`` with body ``{"error": message, "code": status}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
