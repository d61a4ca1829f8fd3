"""A real MMS stack (``python -m serve`` with ``SERVING_STACK=mms``: nginx, gunicorn and the app,
Java, the Python workers) for tests, and what the process table says about it."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.procs import REPO, alive, children, cmdline, descendants, free_port

MIB = 1024 * 1024
FIXTURES = Path(__file__).resolve().parent / "fixtures"
DEMO_MODEL = REPO / "demo" / "model"
MMS_MAIN = "com.amazonaws.ml.mms.ModelServer"
# The harness's flags and the environment variables they stand for (what SageMaker sets).
FLAGS = {"--workers": "SAGEMAKER_MODEL_SERVER_WORKERS", "--timeout": "SAGEMAKER_MODEL_SERVER_TIMEOUT",
         "--torch-threads": "INFERENCE_TORCH_THREADS", "--model-root": "SERVE_MODEL_ROOT",
         "--memory-budget-mb": "SERVE_MODEL_MEMORY_BUDGET_MB", "--memory-reserve-mb": "SERVE_MODEL_MEMORY_RESERVE_MB",
         "--load-timeout": "SERVE_MODEL_LOAD_TIMEOUT", "--safe-port-range": "SAGEMAKER_SAFE_PORT_RANGE"}


def serve_command(args: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """``--multi-model``, ``--model-dir DIR`` and FLAGS -> ``python -m serve`` and its environment."""
    env, rest, args = {"SERVING_STACK": "mms"}, [], list(args)
    while args:
        flag = args.pop(0)
        if flag == "--multi-model":
            env["SAGEMAKER_MULTI_MODEL"] = "true"
        elif flag == "--model-dir":
            rest += [flag, args.pop(0)]
        else:
            env[FLAGS[flag]] = args.pop(0)
    return [sys.executable, "-m", "serve", *rest], env


def demo_model_ready() -> bool:
    return (DEMO_MODEL / "config.json").is_file()


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry))
    return out


def make_model(root: Path, name: str, script: str | None = None, *, weights: bool = True,
               converted: bool = True) -> Path:
    """A model dir under ``root``: a copy of the demo model (when ``weights``; with its converted
    copy ``ctranslate2/`` when ``converted``) plus, optionally, ``fixtures/<script>`` as
    code/inference.py."""
    target = root / name
    if weights:
        shutil.copytree(DEMO_MODEL, target, ignore=None if converted else shutil.ignore_patterns("ctranslate2"))
    else:
        target.mkdir(parents=True)
    if script:
        (target / "code").mkdir(exist_ok=True)
        shutil.copy(FIXTURES / script, target / "code" / "inference.py")
    return target


class MmsServer:
    def __init__(self, *args: str, log_path: Path, port: int | None = None, env: dict | None = None,
                 via_serve: bool = False):
        """``python -m serve`` on the MMS stack, with ARGS (``--multi-model``, ``--model-dir``,
        FLAGS) as the environment SageMaker would set; with ``via_serve`` exactly as given (the
        image's real entrypoint, configured through ``env`` alone)."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if via_serve:
            self.args, stack_env = [sys.executable, "-m", "serve", *args], {}
        else:
            self.args, stack_env = serve_command(args)
        self.env = dict(os.environ, SAGEMAKER_BIND_TO_PORT=str(self.port), SERVE_BIND_HOST="127.0.0.1",
                        **stack_env, **(env or {}))
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.java_pid: int | None = None
        self.private_dir: Path | None = None  # the launcher removes it; a killed one cannot
        self.seen_pids: set[int] = set()

    def start(self) -> "MmsServer":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, cwd=REPO, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 120, status: int = 200) -> "MmsServer":
        """Until /ping answers ``status`` (bounded); fails early if the server exits."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(requests.ConnectionError, requests.Timeout):
                last = requests.get(self.url + "/ping", timeout=3)
                if last.status_code == status:
                    self.remember_processes()
                    return self
            time.sleep(0.1)
        self.kill_leftovers()  # a server that never got ready must not outlive the test
        raise TimeoutError(f"/ping not {status} within {timeout} s (last: "
                           f"{last and (last.status_code, last.text)}):\n{self.log()}")

    def remember_processes(self) -> None:
        """Note Java (its pid is the group of every worker) and every descendant seen."""
        for pid in descendants(self.proc.pid):
            self.seen_pids.add(pid)
            java = cmdline(pid)
            if MMS_MAIN in java:
                self.java_pid = pid
                config = re.search(r" -f (\S+)/config\.properties", java)
                self.private_dir = Path(config.group(1)) if config else None

    def log(self, tail: int | None = 6000) -> str:
        text = self.log_path.read_text(errors="replace")
        return text[-tail:] if tail else text

    def full_log(self) -> str:
        return self.log(None)

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=kwargs.pop("timeout", 30), **kwargs)

    def post(self, path: str, body=b"", content_type: str | None = "application/json", **kwargs):
        headers = dict(kwargs.pop("headers", {}))
        if content_type:
            headers["Content-Type"] = content_type
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        return requests.post(self.url + path, data=body, headers=headers,
                             timeout=kwargs.pop("timeout", 120), **kwargs)

    def delete(self, path: str, **kwargs) -> requests.Response:
        return requests.delete(self.url + path, timeout=kwargs.pop("timeout", 60), **kwargs)

    def load(self, name: str, url, **kwargs) -> requests.Response:
        return self.post("/models", {"model_name": name, "url": str(url)}, **kwargs)

    def invoke(self, name: str, body, content_type="application/json", **kwargs) -> requests.Response:
        return self.post(f"/models/{name}/invoke", body, content_type, **kwargs)

    def stop(self, timeout: float = 45) -> int:
        """SIGTERM, wait (bounded), and return the exit code; SIGKILL the session if it hangs."""
        self.remember_processes()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def model_workers(self, name: str) -> list[int]:
        """This server's processes for model ``name`` (MMS's listener + the process it forked)."""
        from container.models import mms_name

        self.remember_processes()
        flag = f"--model-name {mms_name(name)} "
        return [pid for pid in group_members(self.java_pid) if flag in cmdline(pid) + " "]

    def model_pids(self, name: str = "model") -> list[int]:
        """The process that holds model ``name`` in each of its workers (the one MMS's
        listener forked; ``model_workers`` lists the listeners too)."""
        pids = self.model_workers(name)
        return [pid for pid in pids if any(pid in children(other) for other in pids)]

    def leftovers(self) -> list[str]:
        """Processes of this server still alive: anything in MMS's group or seen earlier."""
        pids = set(self.seen_pids)
        if self.java_pid:
            pids |= set(group_members(self.java_pid))
        return [f"{pid}: {cmdline(pid)[:160]}" for pid in sorted(pids) if alive(pid)]

    def kill_leftovers(self) -> None:
        """Last resort so a failed test leaves nothing running: the launcher's session,
        MMS's group, and every process seen."""
        if self.proc is not None and self.proc.poll() is None:
            self.remember_processes()
        pids = set(self.seen_pids) | (set(group_members(self.java_pid)) if self.java_pid else set())
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        if self.java_pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.java_pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.private_dir is not None and self.private_dir.name.startswith("mms-"):
            shutil.rmtree(self.private_dir, ignore_errors=True)


@contextlib.contextmanager
def running(srv: "MmsServer"):
    """``srv`` started and ready; on the way out it must stop cleanly (exit 0) and leave no
    process behind, and whatever happened nothing of it outlives the block."""
    try:
        yield srv.start().wait_ready()
        assert srv.stop() == 0
        assert srv.leftovers() == []
    finally:
        srv.kill_leftovers()


def wait_until(predicate, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()
