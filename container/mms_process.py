"""One MMS (Java) instance: its private directory, its port, its config, its process group.

The private directory (``$TMPDIR/mms-XXXX``: config.properties, MMS's worker sockets and
fifos, the workers' load reports) keeps two servers on one host from sharing a path. The
config comes from our settings and nothing else (never ``/etc/sagemaker-mms.properties``),
and MMS binds only 127.0.0.1: the public port is the app's.
"""

import json
import logging
import math
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

import mms

from container import process_table, protocol
from container.mms_client import MmsClient, MmsUnavailable

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
MMS_HOME = Path(mms.__file__).resolve().parent.parent  # MMS's -Dmodel_server_home
NETTY_THREADS = "2"  # MMS only routes here: two event-loop threads each way are plenty
MMS_MAX_PORT = 32766  # MMS's Connector refuses 32767 and up
RANDOM_PORTS = (20000, MMS_MAX_PORT + 1)
MAX_SOCKET_DIR = 80  # AF_UNIX paths stop at 107 bytes; MMS appends "/.mms.sock.9000" etc.
STARTUP_TIMEOUT_S = 120


class ConfigValueError(ValueError):
    """A value cannot be written into a Java properties file safely."""


def render_properties(port: int, model_store: str, workers: int, timeout_s: int,
                      max_payload_bytes: int) -> str:
    """One MMS instance's config.properties: MMS's own port on 127.0.0.1 (inference and
    management), registration urls relative to ``model_store``, ``workers`` per model, the
    per-request timeout, and request and response caps that fit a batch envelope."""
    address = f"http://127.0.0.1:{port}"
    cap = str(protocol.envelope_cap(max_payload_bytes))  # the app refuses bodies over the payload cap (413)
    properties = {
        "inference_address": address,
        "management_address": address,
        "model_store": model_store,
        "default_service_handler": "container.handler_service",  # MMS imports it in each worker
        "default_workers_per_model": str(workers),
        # MMS reads default_response_timeout in MINUTES; 1.1.x prefers the _seconds key when
        # present. Both are written so no reader sees a 60x longer timeout.
        "default_response_timeout": str(max(1, math.ceil(timeout_s / 60))),
        "default_response_timeout_seconds": str(timeout_s),
        "unregister_model_timeout": str(timeout_s),
        "max_request_size": cap,
        "max_response_size": cap,
        "job_queue_size": "100",  # the app sends at most one batch per worker at a time
        "number_of_netty_threads": NETTY_THREADS,
        "netty_client_threads": NETTY_THREADS,
        "decode_input_request": "false",  # handlers decode bodies, MMS must not
        "preload_model": "false",  # each worker loads after MMS forks it
        "use_native_io": "true",  # workers talk over unix sockets in our private dir
        "enable_envvars_config": "false",  # no MMS_* variable may override this file
        "async_logging": "true",
        "metric_time_interval": "31536000",  # MMS would start a Python process each minute
    }
    lines = ["# Written by container/mms_process.py for one MMS instance; not shared."]
    lines += [f"{key}={escape_property(value)}" for key, value in properties.items()]
    return "\n".join(lines) + "\n"


def escape_property(value: str) -> str:
    """``value`` as a java.util.Properties value that reads back as exactly ``value``: control
    characters are refused (a newline would start a new key); backslashes and a leading space
    are escaped, non-ASCII becomes \\uXXXX."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ConfigValueError(f"control character in properties value {value!r}")
    out = value.replace("\\", "\\\\")
    if out.startswith(" "):
        out = "\\" + out
    return "".join(c if ord(c) < 0x80 else f"\\u{ord(c):04x}" for c in out)


def java_memory_flags(max_payload_bytes: int) -> list[str]:
    """Bounds for every part of Java's memory, sized for what MMS does here (routing, a few
    envelopes in flight), so a long run plateaus: the heap holds the envelopes being copied
    (twice each) plus MMS's own few MiB; netty's direct buffers hold those on the wire."""
    envelope_mib = -(-protocol.envelope_cap(max_payload_bytes) // (1024 * 1024))
    return [
        f"-Xmx{64 + 4 * envelope_mib}m", "-Xms16m",
        "-XX:MinHeapFreeRatio=10", "-XX:MaxHeapFreeRatio=30",  # give a grown heap back
        f"-XX:MaxDirectMemorySize={32 + 2 * envelope_mib}m",
        "-XX:MaxMetaspaceSize=64m", "-XX:ReservedCodeCacheSize=32m", "-XX:TieredStopAtLevel=1",
        "-Xss512k",
        "-Dio.netty.allocator.numDirectArenas=1", "-Dio.netty.allocator.numHeapArenas=1",
    ]


def java_command(config_file: Path, tmp_dir: Path, max_payload_bytes: int) -> list[str]:
    """The Java front end, started directly (the ``multi-model-server`` CLI would write its
    pid to a fixed ``$TMPDIR/.model_server.pid`` and hide the Java pid from us)."""
    java_home = os.environ.get("JAVA_HOME")
    return [
        os.path.join(java_home, "bin", "java") if java_home else "java",
        *java_memory_flags(max_payload_bytes),
        "-XX:+UseSerialGC",  # fewest GC threads: the cores belong to the model
        "-XX:+UseContainerSupport",
        f"-Dmodel_server_home={MMS_HOME}",
        f"-Dlog4j.configurationFile=file://{HERE / 'log4j2.xml'}",
        f"-Djava.io.tmpdir={tmp_dir}",  # worker sockets and their stdout/stderr fifos
        "-cp", str(MMS_HOME / "mms" / "frontend" / "*"),
        "com.amazonaws.ml.mms.ModelServer",
        "--python", str(HERE / "mms_worker.sh"),  # our preloading wrapper (container/mms_worker.py)
        "-f", str(config_file),
    ]


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
