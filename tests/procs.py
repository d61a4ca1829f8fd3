"""Starting real servers for tests, and reading the process table."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
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
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
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
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path else ""

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
