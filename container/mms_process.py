"""One MMS (Java) instance: its private directory, its port, its config, its process group.

The private directory (``$TMPDIR/mms-XXXX``: config.properties, MMS's worker sockets and
fifos, the workers' load reports) keeps two servers on one host from sharing a path.
"""

import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from container import process_table, protocol
from container.mms_client import MmsClient, MmsUnavailable
from container.mms_config import java_command, render_properties

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
MMS_MAX_PORT = 32766  # MMS's Connector refuses 32767 and up
RANDOM_PORTS = (20000, MMS_MAX_PORT + 1)
MAX_SOCKET_DIR = 80  # AF_UNIX paths stop at 107 bytes; MMS appends "/.mms.sock.9000" etc.
STARTUP_TIMEOUT_S = 120


def pick_internal_port(safe_port_range: tuple[int, int] | None, exclude: set[int]) -> int:
    """A free 127.0.0.1 port for MMS: the first free one in SAGEMAKER_SAFE_PORT_RANGE when
    set, else a random free one (never the kernel's ephemeral ports: MMS refuses 32767+)."""
    if safe_port_range:
        candidates = range(safe_port_range[0], min(safe_port_range[1], MMS_MAX_PORT) + 1)
    else:
        candidates = random.sample(range(*RANDOM_PORTS), 200)
    for port in candidates:
        if port in exclude:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port for MMS in {safe_port_range or RANDOM_PORTS} "
                       f"(MMS cannot use ports above {MMS_MAX_PORT})")


class MmsProcess:
    def __init__(self, settings):
        self.settings = settings
        base = tempfile.gettempdir()
        if len(base) > MAX_SOCKET_DIR - 25:
            log.warning("TMPDIR %s is too long for MMS's unix sockets; using /tmp", base)
            base = "/tmp"
        self.private = Path(tempfile.mkdtemp(prefix="mms-", dir=base))
        self.state_dir = self.private / "state"
        self.state_dir.mkdir()
        (self.private / "tmp").mkdir()
        self.java: subprocess.Popen | None = None

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TMPDIR"] = str(self.private / "tmp")
        env[protocol.ENV_STATE_DIR] = str(self.state_dir)
        env[protocol.ENV_SETTINGS] = self.settings.to_json()  # the workers' settings, read once here
        env[protocol.ENV_PYTHON] = sys.executable
        # MMS's worker sets OMP_NUM_THREADS=1 unless it is set; workers x threads <= cores.
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.settings.handler.threads)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env["MALLOC_ARENA_MAX"] = "2"  # Java's own malloc arenas: one per thread otherwise
        return env

    def start(self, model_store: Path, exclude_port: int, stopping: Callable[[], bool],
              output: Callable[[], dict] | None = None) -> MmsClient | None:
        """Start Java and wait until MMS answers; None when a stop was requested meanwhile.
        Raises RuntimeError when MMS does not come up. ``output()``: Popen's stdout and stderr
        for Java (the supervisor's log relay; the file descriptors are closed here once passed)."""
        s = self.settings
        for attempt in range(3):  # a port probed free can be taken before Java binds it
            self.port = pick_internal_port(s.safe_port_range, {exclude_port})
            config_file = self.private / "config.properties"
            config_file.write_text(render_properties(self.port, str(model_store), s.workers, s.timeout_s,
                                                     s.max_payload_bytes))
            cmd = java_command(config_file, self.private / "tmp", s.max_payload_bytes)
            log.info("starting MMS on 127.0.0.1:%d (private dir %s)", self.port, self.private)
            pipes = output() if output else {}
            try:
                self.java = subprocess.Popen(cmd, env=self._env(), cwd=self.private, stdin=subprocess.DEVNULL,
                                             start_new_session=True, **pipes)
            finally:
                for fd in pipes.values():
                    os.close(fd)
            client = MmsClient(self.port)
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while time.monotonic() < deadline and not stopping() and self.java.poll() is None:
                try:
                    if client.ping(timeout=1.0).status == 200:
                        return client
                except MmsUnavailable:
                    pass
                time.sleep(0.1)
            if stopping():
                return None
            if self.java.poll() is None:
                break
            log.warning("MMS exited with %s during start-up (attempt %d)", self.java.returncode, attempt + 1)
        raise RuntimeError("MMS did not come up")

    def describe(self) -> str:
        """What the app's backend needs to know of this MMS (``container.backend``), as JSON."""
        return json.dumps({"port": self.port, "state_dir": str(self.state_dir), "pgid": self.java.pid})

    def stop(self, deadline: float) -> None:
        """Java first (it stops its workers), then whatever is left of its group, all by
        ``deadline`` (time.monotonic()); then the private directory goes."""
        if self.java is not None:
            pgid = self.java.pid
            if self.java.poll() is None:
                self.java.terminate()
                try:
                    self.java.wait(timeout=max(0.1, deadline - time.monotonic() - 4))
                except subprocess.TimeoutExpired:
                    log.warning("MMS did not stop in time after SIGTERM; killing it")
            if process_table.group_members(pgid):
                log.info("processes of MMS's group outlived Java; terminating them")
            # Java leads the group: SIGKILL, if needed, reaches it too.
            survivors = process_table.stop_group(pgid, grace_s=max(0.1, deadline - time.monotonic() - 2))
            if survivors:
                log.error("processes left in MMS's group %d: %s", pgid, survivors)
        shutil.rmtree(self.private, ignore_errors=True)
