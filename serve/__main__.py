"""``serve`` / ``python -m serve``: start the model server SageMaker expects.

Starts nginx, gunicorn (serve/app.py) and, on the multi-model stack (SAGEMAKER_MULTI_MODEL=true
or SERVING_STACK=mms), multi-model-server; exits non-zero as soon as any of them dies, so a crash
never looks healthy. SIGTERM: nginx quits gracefully first (finishes what it accepted), then
gunicorn, then multi-model-server and its process group, all within SageMaker's 30 s.
"""

import argparse
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from contract import logs, routes
from contract.settings import KEEPALIVE_S, REPO_ROOT, STOP_DEADLINE_S, Settings, first_unreadable, log_options
from handlers import cuda
from handlers.artifacts import resolve_model_dir
from handlers.config import ConfigError
from handlers.errors import InferenceError
from serve.log_relay import LogRelay

log = logging.getLogger("serve")
MULTIPROC_ENV = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")  # prometheus_client's own


def render_nginx(settings: Settings, runtime_dir: Path, upstream: str) -> Path:
    values = {
        "runtime_dir": str(runtime_dir),
        # As root, nginx would drop its workers to "nobody", who cannot reach the private
        # runtime dir; unprivileged (the images), it runs as the invoking user anyway.
        "user_directive": "user root;" if os.geteuid() == 0 else "",
        "bind_host": settings.bind_host,
        "port": str(settings.port),
        "upstream": upstream,
        "max_payload_bytes": str(settings.max_payload_bytes),
        "proxy_read_timeout": str(settings.proxy_timeout_s),
        "load_timeout": str(settings.load_request_timeout_s),
        # A client that cannot send its request within the request timeout cannot be
        # answered within it either.
        "client_timeout": str(settings.timeout_s),
        "keepalive": str(KEEPALIVE_S),
        "allowed_methods": routes.nginx_methods_map(settings.multi_model),
        "access_log_format": "json" if settings.log_format == "json" else "oneline",
        "served_paths": routes.served_paths(settings.multi_model),
    }
    text = (REPO_ROOT / "nginx.conf").read_text()
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    path = runtime_dir / "nginx.conf"
    path.write_text(text)
    return path


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (gunicorn's or nginx's workers), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


class Supervisor:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="serve-"))
        self.stopping = False
        self.children: dict[str, subprocess.Popen] = {}
        self.mms = None
        self.relay = LogRelay(settings.log_format == "json")

    def listen(self) -> tuple[socket.socket, str]:
        """The socket gunicorn serves on, bound here so that requests arriving while gunicorn
        starts (or replaces a worker) wait in its backlog instead of being refused."""
        if self.settings.safe_port_range:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            low, high = self.settings.safe_port_range
            for port in range(low, high + 1):
                with contextlib.suppress(OSError):
                    sock.bind(("127.0.0.1", port))
                    break
            else:
                raise ConfigError(f"no free port in SAGEMAKER_SAFE_PORT_RANGE {low}-{high}")
            address = "%s:%d" % sock.getsockname()
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            path = self.runtime_dir / "gunicorn.sock"
            sock.bind(str(path))
            address = f"unix:{path}"
        sock.listen(2048)
        return sock, address

    def start_mms(self, env: dict) -> None:
        """multi-model-server (Java) on a private port, up before the app that talks to it."""
        from container.mms_process import MmsProcess
        s = self.settings
        self.mms = MmsProcess(s)
        self.mms.start(Path(s.model_store), s.port, lambda: self.stopping,
                       output=lambda: self.relay.pipes("multi-model-server"))
        self.children["multi-model-server"] = self.mms.java
        env["SERVE_MMS"] = self.mms.describe()

    def start(self) -> None:
        s = self.settings
        sock, upstream = self.listen()
        conf = render_nginx(s, self.runtime_dir, upstream)
        nginx = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin")
        if not nginx:
            raise ConfigError("nginx is not installed (apt-get install nginx)")
        self.children["nginx"] = self.spawn("nginx", [nginx, "-c", str(conf), "-p", str(self.runtime_dir)])
        env = {k: v for k, v in os.environ.items() if k not in MULTIPROC_ENV}
        env.update(SERVE_SETTINGS=s.to_json(), SERVE_UPSTREAM=f"fd://{sock.fileno()}",
                   TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
        if s.stack == "flask":  # /metrics adds up what every gunicorn worker counted (contract.metrics)
            (self.runtime_dir / "metrics").mkdir()
            env[MULTIPROC_ENV[0]] = str(self.runtime_dir / "metrics")
        if s.stack == "mms":
            self.start_mms(env)
        gunicorn = [sys.executable, "-m", "gunicorn", "--config", "python:serve.gunicorn_conf",
                    "serve.wsgi:app"]
        self.children["gunicorn"] = self.spawn("gunicorn", gunicorn, env=env, cwd=REPO_ROOT,
                                               pass_fds=(sock.fileno(),))
        sock.close()
        backend = "multi-model-server" if s.stack == "mms" else "the model in the app"
        served = "models from " + s.model_root if s.multi_model else s.model_dir
        log.info("serving %s on %s:%d (nginx -> gunicorn at %s -> %s; %d worker(s) x %d engine thread(s), "
                 "timeout %d s, payload cap %d bytes)", served, s.bind_host, s.port, upstream, backend,
                 s.workers, s.handler.threads, s.timeout_s, s.max_payload_bytes)

    def spawn(self, name: str, cmd: list[str], **kwargs) -> subprocess.Popen:
        """A child whose output goes through the log relay (LOG_FORMAT=json) or straight out."""
        pipes = self.relay.pipes(name)
        try:
            return subprocess.Popen(cmd, **pipes, **kwargs)
        finally:
            self.relay.started(pipes)

    def request_stop(self, signum, _frame) -> None:
        if not self.stopping:
            log.info("received %s: stopping gracefully", signal.Signals(signum).name)
            self.stopping = True

    def _wait(self, name: str, deadline: float) -> None:
        child = self.children.get(name)
        if child is None:
            return
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in time: killing it and its workers", name)
            # Its workers, found before the kill: orphans get a new parent.
            workers = child_pids(child.pid)
            child.kill()
            child.wait()
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        """nginx (finishes what it accepted), gunicorn (its workers finish theirs), then
        multi-model-server: each within its share of the stop window."""
        deadline = time.monotonic() + STOP_DEADLINE_S
        java_s = self.settings.java_stop_s
        for name, sig, until in (("nginx", signal.SIGQUIT, deadline - java_s - 3),
                                 ("gunicorn", signal.SIGTERM, deadline - java_s)):
            child = self.children.get(name)
            if child is not None and child.poll() is None:
                child.send_signal(sig)
            self._wait(name, until)
        if self.mms is not None:
            self.mms.stop(deadline)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        try:
            if not self.settings.multi_model:  # a model.tar.gz: extracted once, here
                try:
                    model_dir = resolve_model_dir(self.settings.model_dir)
                except InferenceError as exc:
                    log.error("cannot serve %s: %s", self.settings.model_dir, exc.message)
                    return 1
                self.settings = replace(self.settings, model_dir=str(model_dir))
            try:
                self.start()
            except RuntimeError as exc:  # multi-model-server did not come up
                log.error("%s", exc)
                self.stop()
                return 1
            while not self.stopping:
                for name, child in self.children.items():
                    code = child.poll()
                    if code is not None:
                        log.error("%s exited with code %s: stopping the server", name, code)
                        self.stop()
                        return 1
                time.sleep(0.1)
            self.stop()
            log.info("stopped")
            return 0
        finally:
            self.relay.drain()
            shutil.rmtree(self.runtime_dir, ignore_errors=True)


def usable_gpus(settings: Settings) -> int | None:
    """The GPUs to serve on, found before anything forks (handlers.cuda.check_gpu); None when a
    GPU is here but unusable, or one was asked for and none is here (each logged)."""
    device = settings.handler.device or ""
    if device.startswith("cpu"):
        return 0
    torch_cuda = cuda.torch_cuda_version()
    check = cuda.check_gpu(cuda.required_cuda(settings.handler.backend))
    if check.error or (check.warning and device.startswith("cuda")):
        log.error("GPU check: %s", check.error or check.warning)
        return None
    if check.warning and torch_cuda:  # a GPU image on a host without a GPU
        log.warning("GPU check: %s", check.warning)
    for i, gpu in enumerate(check.devices):
        log.info("GPU %d: %s (compute capability %d.%d, %.1f of %.1f GiB free), driver %s", i, gpu.name,
                 *gpu.capability, gpu.free / 2**30, gpu.total / 2**30, check.driver)
    return len(check.devices)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="serve", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", choices=["serve"], help="accepted and ignored "
                        "(SageMaker runs the image as `docker run IMAGE serve`)")
    parser.add_argument("--model-dir", help="model directory or model.tar.gz (default: SM_MODEL_DIR "
                        "or /opt/ml/model; the embedded demo model when that is empty)")
    args = parser.parse_args(argv)
    logs.configure(*log_options(os.environ))
    try:
        settings = Settings.from_env(os.environ, args.model_dir)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    unreadable = None if settings.multi_model else first_unreadable(settings.model_dir)
    if unreadable:
        log.error("cannot read %s as uid %d (gid %d): run the container as root, the image's default "
                  "(SageMaker does), or make the model readable by this uid (chmod -R a+rX on the host "
                  "dir; in Kubernetes, fsGroup)", unreadable, os.geteuid(), os.getegid())
        return 2
    gpus = usable_gpus(settings)
    if gpus is None:
        return 2
    if gpus:
        settings = Settings.from_env(os.environ, args.model_dir, gpus=gpus)
    if settings.stack == "mms" and not shutil.which("java"):
        log.error("the multi-model stack (SAGEMAKER_MULTI_MODEL=true or SERVING_STACK=mms) runs on "
                  "multi-model-server, which needs Java: this image has none (the GPU image serves "
                  "single models; use the CPU image for multi-model endpoints)")
        return 2
    try:
        return Supervisor(settings).run()
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
