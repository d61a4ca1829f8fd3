"""Errors the MMS front answers itself, in the same body shape as ``handlers.errors``.

(``handlers`` is not imported here: importing it loads torch, and the front process holds
no model.)
"""

import json


class ApiError(Exception):
    """Becomes HTTP ``status`` with body ``{"error": message, "code": status}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message

    def body(self) -> bytes:
        return json.dumps({"error": self.message, "code": self.status}).encode()
