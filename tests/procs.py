"""Starting real servers for tests, and reading the process table."""

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
DEMO_MODEL = Path(os.environ.get("TEST_DEMO_MODEL", REPO / "demo" / "model"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def descendants(pid: int) -> list[int]:
    out = []
    for child in children(pid):
        out += [child, *descendants(child)]
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self):
        return json.loads(self.body)


def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 60) -> Answer:
    """One request on a fresh connection to 127.0.0.1 with nothing normalised, added or
    retried (any method, any path, raw header values). A connection the server drops
    without an answer raises (http.client.RemoteDisconnected, ConnectionResetError)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        try:
            conn.endheaders(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # a server may answer (413) and close before reading the whole body
        if conn.sock is None:  # closed while sending: nothing to read an answer from
            raise ConnectionResetError("the server closed the connection before the request was sent")
        response = conn.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def session_processes(sid: int) -> list[int]:
    """Live processes in session ``sid`` (a server started with start_new_session)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[4]) == sid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


class Server:
    """``python -m serve`` (the full nginx -> gunicorn -> flask stack) on a free port."""

    def __init__(self, model_dir=DEMO_MODEL, env: dict | None = None, port: int | None = None,
                 log_path: Path | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, SAGEMAKER_BIND_TO_PORT=str(self.port), SERVE_BIND_HOST="127.0.0.1",
                        **(env or {}))
        self.args = [sys.executable, "-m", "serve"] + (["--model-dir", str(model_dir)] if model_dir else [])
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.pings: list[int] = []

    def start(self) -> "Server":
        # Append: nginx reopens /dev/stdout with O_APPEND, and a writer without it would
        # overwrite nginx's lines at its own offset.
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.args, cwd=REPO, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 90) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log()}")
            try:
                status = requests.get(self.url + "/ping", timeout=5).status_code
                self.pings.append(status)
                if status == 200:
                    return self
            except requests.RequestException:
                self.pings.append(0)
            time.sleep(0.05)
        raise TimeoutError(f"/ping not 200 within {timeout} s: {self.log()}")

    def log(self) -> str:
        return self.full_log()[-4000:]

    def full_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def model_pids(self) -> list[int]:
        """The gunicorn workers (each owns a model thread)."""
        masters = [p for p in children(self.proc.pid) if "gunicorn" in cmdline(p)]
        return [w for m in masters for w in children(m)]

    def leftovers(self) -> list[str]:
        """Processes of this server's session still alive (nginx, gunicorn and their workers
        all run in the session the server was started in)."""
        return [f"{pid}: {cmdline(pid)[:160]}" for pid in session_processes(self.proc.pid)]

    def post(self, body, content_type="application/json", **kwargs):
        headers = {"Content-Type": content_type, **kwargs.pop("headers", {})}
        return requests.post(self.url + "/invocations", data=body, headers=headers,
                             timeout=kwargs.pop("timeout", 60), **kwargs)

    def stop(self, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # never leave a stray server behind

    def __enter__(self):
        self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()  # a server that never got ready must not outlive the test
            raise

    def __exit__(self, *exc):
        self.stop()
