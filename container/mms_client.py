"""HTTP to our own MMS on 127.0.0.1: one keep-alive connection per calling thread."""

import http.client
import json
import threading
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode


@dataclass
class MmsResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names
    body: bytes = b""

    def json(self) -> dict:
        try:
            value = json.loads(self.body or b"{}")
        except (ValueError, RecursionError):
            return {}
        return value if isinstance(value, dict) else {}

    def message(self) -> str:
        """MMS's own error text ({"code", "type", "message"}), or the raw body."""
        return str(self.json().get("message") or self.body[:500].decode(errors="replace"))

    @property
    def from_mms(self) -> bool:
        """Whether MMS itself answered with an error (``{"code", "type": "...Exception",
        "message"}``) rather than our handler service or the model."""
        return self.status >= 400 and set(self.json()) == {"code", "type", "message"}


# What a kept-alive connection that MMS has closed meanwhile fails with.
STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class MmsUnavailable(Exception):
    """MMS did not answer (not started, crashed, or timed out)."""


class MmsClient:
    def __init__(self, port: int):
        self.port = port
        self._local = threading.local()  # each calling thread's keep-alive connection

    def request(self, method: str, path: str, *, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 10.0) -> MmsResponse:
        """One request. When a kept-alive connection turns out to be closed by MMS, the
        request is sent again once on a fresh connection; a fresh one is never retried."""
        if getattr(self._local, "conn", None) is None:
            self._local.conn = http.client.HTTPConnection("127.0.0.1", self.port)
        conn = self._local.conn
        conn.timeout = timeout
        reused = conn.sock is not None
        if reused:
            conn.sock.settimeout(timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            out = MmsResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        except (OSError, http.client.HTTPException) as exc:
            conn.close()  # the next request opens a new one
            if reused and isinstance(exc, STALE):
                return self.request(method, path, body=body, headers=headers, timeout=timeout)
            raise MmsUnavailable(f"MMS on 127.0.0.1:{self.port}: {type(exc).__name__}: {exc}") from None
        if resp.will_close:
            conn.close()
        return out

    # Management API, by MMS's names for things.
    def ping(self, timeout: float = 1.5) -> MmsResponse:
        return self.request("GET", "/ping", timeout=timeout)

    def register(self, mms_name: str, url: str, *, workers: int, timeout: float) -> MmsResponse:
        """MMS's own batching stays off (batch_size 1): the front batches, and sends each
        batch as one envelope (see container.protocol)."""
        query = urlencode({"model_name": mms_name, "url": url, "initial_workers": workers,
                           "synchronous": "true", "batch_size": 1, "max_batch_delay": 0})
        return self.request("POST", f"/models?{query}", timeout=timeout)

    def unregister(self, mms_name: str, timeout: float) -> MmsResponse:
        return self.request("DELETE", f"/models/{quote(mms_name, safe='')}", timeout=timeout)

    def predict(self, mms_name: str, envelope: bytes, timeout: float) -> MmsResponse:
        return self.request("POST", f"/predictions/{quote(mms_name, safe='')}", body=envelope,
                            headers={"Content-Type": "application/octet-stream"}, timeout=timeout)
