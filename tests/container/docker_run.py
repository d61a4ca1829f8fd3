"""One image run as a container, reached on 127.0.0.1: start, wait for /ping, stop."""

import itertools
import os
import subprocess
import time

import requests

from tests.procs import free_port

DOCKER = os.environ.get("DOCKER", "docker")
_names = itertools.count()


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} -> {result.returncode}: {result.stderr.strip()}")
    return result


class Container:
    """``docker run -d -p 127.0.0.1:<free port>:<container_port> IMAGE ARGS``.

    ``cold_start_s`` is the time from ``docker run`` to the first 200 on /ping.
    """

    def __init__(self, image: str, args: tuple[str, ...] = ("serve",), *, env: dict | None = None,
                 volumes: tuple[tuple[str, str, str], ...] = (), container_port: int = 8080,
                 user: str | None = None):
        self.image, self.args, self.env, self.user = image, args, env or {}, user
        self.volumes, self.container_port = volumes, container_port
        self.name = f"flan-t5-test-{os.getpid()}-{next(_names)}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cold_start_s: float | None = None
        self.started = 0.0

    def start(self) -> "Container":
        cmd = ["run", "-d", "--name", self.name, "-p", f"127.0.0.1:{self.port}:{self.container_port}"]
        for key, value in self.env.items():
            cmd += ["-e", f"{key}={value}"]
        for host, inside, mode in self.volumes:
            cmd += ["-v", f"{host}:{inside}:{mode}"]
        if self.user:
            cmd += ["--user", self.user]
        self.started = time.monotonic()
        docker(*cmd, self.image, *self.args)
        return self

    def running(self) -> bool:
        return docker("inspect", "--format", "{{.State.Running}}", self.name).stdout.strip() == "true"

    def wait_ready(self, timeout: float = 180) -> "Container":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/ping", timeout=2).status_code == 200:
                    self.cold_start_s = time.monotonic() - self.started
                    return self
            except requests.RequestException:
                pass
            if not self.running():
                raise AssertionError(f"container exited before /ping said 200:\n{self.logs()}")
            time.sleep(0.1)
        raise AssertionError(f"/ping not 200 within {timeout} s:\n{self.logs()}")

    def logs(self, tail: int = 60) -> str:
        result = docker("logs", "--tail", str(tail), self.name, check=False)
        return result.stdout + result.stderr

    def exec(self, *args: str) -> subprocess.CompletedProcess:
        return docker("exec", self.name, *args, check=False)

    def wait_exit(self, timeout: float = 120) -> int:
        """The exit code, once the container has stopped on its own."""
        return int(docker("wait", self.name, timeout=timeout).stdout.strip())

    def stop(self, timeout: int = 30) -> int:
        """SIGTERM (``docker stop``), SIGKILL after ``timeout`` s; the exit code."""
        docker("stop", "-t", str(timeout), self.name, timeout=timeout + 30)
        return int(docker("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout)

    def remove(self) -> None:
        docker("rm", "-f", self.name, check=False)
