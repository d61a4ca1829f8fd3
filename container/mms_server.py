"""Start, watch and stop one MMS stack: the front on the public port, MMS (Java) behind it.

    run(model_dir, port=8080, safe_port_range=None, workers=1, timeout_s=60,
        max_payload_bytes=6 * 1024 * 1024, multi_model=False) -> exit code

One call = one private directory (``$TMPDIR/mms-XXXX``: config.properties, MMS's worker
sockets and fifos, the workers' load reports), so two servers on one host never share a
path. Java runs as the leader of its own process group: on SIGTERM the front stops
accepting and drains, Java is asked to stop, then whatever is left of the group (MMS
leaves forked workers behind) is terminated and /proc is checked until none is left.
Exit code 0 after SIGTERM/SIGINT; 1 when MMS died or never came up.
"""

import argparse
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

from container import memory
from container.http_errors import ApiError
from container.mms_client import MmsClient, MmsUnavailable
from container.mms_config import ENV_MAX_RESPONSE_BYTES, ENV_STATE_DIR, MmsConfig, java_command
from container.mms_front import Front
from container.model_registry import MemoryPolicy, ModelRegistry
from container.process_table import group_members, stop_group

log = logging.getLogger("container.mms_server")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_ROOT = "/opt/ml/models"  # where SageMaker puts multi-model endpoint models
DEFAULT_MODEL_NAME = "model"
MMS_MAX_PORT = 32766  # MMS's Connector refuses 32767 and up
RANDOM_PORTS = (20000, MMS_MAX_PORT + 1)
MAX_SOCKET_DIR = 80  # AF_UNIX paths stop at 107 bytes; MMS appends "/.mms.sock.9000" etc.
DRAIN_MAX_S = 20
# MMS batching stays off (batch_size 1): MMS 1.1.11's Java decoder reads a worker's answer
# with unchecked reads (ModelResponseDecoder: the per-item status int; CodecUtils.readMap),
# and takes an answer that arrives in more than one 512-byte socket read for a corrupt
# frame: it drops the worker ("Worker died.", the model reloads). Batched answers are
# longer than 512 bytes and crash it within seconds at concurrency 8; a single item's
# unchecked fields always sit in the first read. Requests run one per worker instead.
MMS_BATCH_SIZE = 1  # SageMaker sends SIGKILL ~30 s after SIGTERM: leave time to stop Java


def pick_internal_port(safe_port_range: tuple[int, int] | None, exclude: set[int]) -> int:
    """A free 127.0.0.1 port for MMS: the first free one in SAGEMAKER_SAFE_PORT_RANGE when
    set, else a random free one. MMS refuses ports above 32766 ("Invalid port number"), so
    the kernel's ephemeral ports (32768+) are no use."""
    if safe_port_range:
        candidates = list(range(safe_port_range[0], min(safe_port_range[1], MMS_MAX_PORT) + 1))
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


def make_private_dir() -> Path:
    base = tempfile.gettempdir()
    if len(base) > MAX_SOCKET_DIR - 25:
        log.warning("TMPDIR %s is too long for MMS's unix sockets; using /tmp", base)
        base = "/tmp"
    private = Path(tempfile.mkdtemp(prefix="mms-", dir=base))
    for sub in ("tmp", "state"):
        (private / sub).mkdir()
    return private


class MmsStack:
    """One running stack; ``run`` drives it."""

    def __init__(self, *, model_dir, port, bind_host, safe_port_range, workers, timeout_s,
                 max_payload_bytes, multi_model, model_root, torch_threads, batch_size,
                 max_batch_delay_ms, policy, startup_timeout_s, load_timeout_s, java_heap_mb):
        self.model_dir, self.multi_model, self.workers = model_dir, multi_model, workers
        self.timeout_s, self.max_payload_bytes = timeout_s, max_payload_bytes
        self.safe_port_range, self.torch_threads = safe_port_range, torch_threads
        self.batch_size, self.max_batch_delay_ms, self.policy = batch_size, max_batch_delay_ms, policy
        self.startup_timeout_s, self.java_heap_mb = startup_timeout_s, java_heap_mb
        self.load_timeout_s = load_timeout_s
        self.model_root = Path(model_root)  # single-model: the model's parent, once unpacked
        self.stop_requested = threading.Event()
        self.java: subprocess.Popen | None = None
        # The public port first: a port clash fails now, and callers can connect at once.
        self.front = Front(host=bind_host, port=port, multi_model=multi_model,
                           max_payload_bytes=max_payload_bytes, timeout_s=timeout_s, workers=workers)
        self.private = make_private_dir()

    def _java_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TMPDIR"] = str(self.private / "tmp")
        env[ENV_STATE_DIR] = str(self.private / "state")
        env[ENV_MAX_RESPONSE_BYTES] = str(self.max_payload_bytes)
        # MMS's worker sets OMP_NUM_THREADS=1 unless it is set; workers x threads <= cores.
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.torch_threads)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start_mms(self) -> MmsClient:
        for attempt in range(3):  # a port probed free can be taken before Java binds it
            port = pick_internal_port(self.safe_port_range, {self.front.port})
            config = MmsConfig(port=port, model_store=str(self.model_root), workers=self.workers,
                               timeout_s=self.timeout_s, max_payload_bytes=self.max_payload_bytes)
            config_file = self.private / "config.properties"
            config_file.write_text(config.render())
            cmd = java_command(config_file, self.private / "tmp", heap_mb=self.java_heap_mb)
            log.info("starting MMS on 127.0.0.1:%d (private dir %s)", port, self.private)
            self.java = subprocess.Popen(cmd, env=self._java_env(), cwd=self.private,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
            client = MmsClient(port)
            if self._wait_mms_up(client):
                return client
            if self.stop_requested.is_set() or self.java.poll() is None:
                break
            log.warning("MMS exited with %s during start-up (attempt %d)", self.java.returncode, attempt + 1)
        raise RuntimeError("MMS did not come up")

    def _wait_mms_up(self, client: MmsClient) -> bool:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline and not self.stop_requested.is_set():
            if self.java.poll() is not None:
                return False
            try:
                if client.ping(timeout=1.0).status == 200:
                    return True
            except MmsUnavailable:
                pass
            time.sleep(0.1)
        return False

    def unpack_default_model(self) -> Path:
        """MMS loads directories only: a model.tar.gz given as the model is unpacked into
        the private directory (refusing members that would land outside it)."""
        path = Path(os.path.realpath(self.model_dir))
        if not path.is_file():
            return path
        target = self.private / "model"
        try:
            with tarfile.open(path) as tar:
                tar.extractall(target, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise ApiError(500, f"cannot unpack {path}: {exc}") from None
        return target

    def load_default_model(self, registry: ModelRegistry) -> None:
        try:
            registry.load(DEFAULT_MODEL_NAME, str(self.model_dir), check_memory=False)
            self.front.not_ready_reason = None
            log.info("default model ready: %s", self.model_dir)
        except ApiError as exc:
            self.front.not_ready_reason = exc.message
            log.error("default model %s failed to load (%d): %s; /ping stays 503",
                      self.model_dir, exc.status, exc.message)

    def serve(self) -> int:
        self.front.start()
        unpack_error = None
        if not self.multi_model:
            try:
                self.model_dir = self.unpack_default_model()
                self.model_root = Path(os.path.realpath(self.model_dir)).parent
            except ApiError as exc:
                log.error("%s; /ping stays 503", exc.message)
                unpack_error = exc.message
        try:
            client = self.start_mms()
        except RuntimeError as exc:
            if self.stop_requested.is_set():
                return 0
            log.error("%s", exc)
            return 1
        registry = ModelRegistry(client, state_dir=self.private / "state", model_root=self.model_root,
                                 java_pgid=self.java.pid, workers=self.workers, batch_size=self.batch_size,
                                 max_batch_delay_ms=self.max_batch_delay_ms, timeout_s=self.timeout_s,
                                 load_timeout_s=self.load_timeout_s, policy=self.policy)
        self.front.ready(client, registry)
        if unpack_error:
            self.front.not_ready_reason = unpack_error
        elif not self.multi_model:
            threading.Thread(target=self.load_default_model, args=(registry,), name="default-model",
                             daemon=True).start()
        log.info("MMS stack listening on port %d (%s)", self.front.port,
                 "multi-model" if self.multi_model else f"model {self.model_dir}")
        while not self.stop_requested.wait(0.5):
            if self.java.poll() is not None:
                log.error("MMS (Java) exited with %s; stopping", self.java.returncode)
                return 1
        return 0

    def shutdown(self) -> None:
        """Drain the front, stop Java, then make sure no process of its group is left."""
        left = self.front.drain(min(self.timeout_s, DRAIN_MAX_S))
        if left:
            log.warning("%d request(s) still running after the drain period", left)
        if self.java is not None:
            pgid = self.java.pid
            if self.java.poll() is None:
                self.java.terminate()
                try:
                    self.java.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    log.warning("MMS did not stop within 10 s of SIGTERM; killing it")
            outlived = group_members(pgid)
            if outlived:
                log.info("%d process(es) of MMS's group outlived Java; terminating them", len(outlived))
            survivors = stop_group(pgid, grace_s=5.0)
            if self.java.poll() is None:
                self.java.kill()
                self.java.wait(timeout=5)
            if survivors:
                log.error("processes left in MMS's group %d: %s", pgid, [p.pid for p in survivors])
        shutil.rmtree(self.private, ignore_errors=True)


def run(model_dir: str | None, *, port: int, safe_port_range: tuple[int, int] | None, workers: int,
        timeout_s: int, max_payload_bytes: int, multi_model: bool, bind_host: str = "0.0.0.0",
        torch_threads: int | None = None, model_root: str = DEFAULT_MODEL_ROOT, memory_budget_bytes: int | None = None,
        memory_reserve_bytes: int = 256 * memory.MiB, startup_timeout_s: int = 120,
        load_timeout_s: int = 600, java_heap_mb: int = 512) -> int:
    """Serve until SIGTERM/SIGINT (exit code 0) or until MMS dies (1). See the module doc."""
    if not multi_model and not model_dir:
        raise ValueError("single-model mode needs model_dir")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(levelname)s] %(name)s - %(message)s")
    cores = len(os.sched_getaffinity(0))
    try:
        stack = MmsStack(
            model_dir=model_dir, port=port, bind_host=bind_host, safe_port_range=safe_port_range,
            workers=workers, timeout_s=timeout_s, max_payload_bytes=max_payload_bytes,
            multi_model=multi_model, model_root=model_root,
            torch_threads=torch_threads or max(1, cores // workers), batch_size=MMS_BATCH_SIZE,
            max_batch_delay_ms=0,
            policy=MemoryPolicy(reserve_bytes=memory_reserve_bytes, budget_bytes=memory_budget_bytes),
            startup_timeout_s=startup_timeout_s, load_timeout_s=load_timeout_s, java_heap_mb=java_heap_mb)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", bind_host, port, exc)
        return 1

    def on_signal(signum, _frame):
        log.info("%s: draining and stopping", signal.Signals(signum).name)
        stack.stop_requested.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        code = stack.serve()
    finally:
        stack.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("MMS stack stopped (exit code %d)", code)
    return code


def main(argv: list[str] | None = None) -> int:
    """Command line for tests and benchmarks (``serve`` calls ``run`` with its Settings)."""
    p = argparse.ArgumentParser(prog="python -m container.mms_server", description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", help="single-model mode: the model to serve")
    p.add_argument("--multi-model", action="store_true", help="multi-model endpoint (models via POST /models)")
    p.add_argument("--model-root", default=DEFAULT_MODEL_ROOT, help="multi-model: urls must be under this dir")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--bind-host", default="0.0.0.0")
    p.add_argument("--safe-port-range", help="LOW-HIGH: MMS's internal port comes from here")
    p.add_argument("--workers", type=int, default=1, help="workers (processes) per model")
    p.add_argument("--timeout", type=int, default=60, help="per-request timeout, seconds")
    p.add_argument("--max-payload-bytes", type=int, default=6 * 1024 * 1024)
    p.add_argument("--torch-threads", type=int)
    p.add_argument("--memory-budget-mb", type=int, help="most memory all model workers together may use")
    p.add_argument("--memory-reserve-mb", type=int, default=256, help="free memory a load must leave")
    p.add_argument("--load-timeout", type=int, default=600, help="seconds a model may take to load")
    args = p.parse_args(argv)
    port_range = tuple(int(x) for x in args.safe_port_range.split("-")) if args.safe_port_range else None
    return run(args.model_dir, port=args.port, safe_port_range=port_range, workers=args.workers,
               timeout_s=args.timeout, max_payload_bytes=args.max_payload_bytes, multi_model=args.multi_model,
               bind_host=args.bind_host, torch_threads=args.torch_threads, model_root=args.model_root,
               memory_budget_bytes=args.memory_budget_mb * memory.MiB if args.memory_budget_mb else None,
               memory_reserve_bytes=args.memory_reserve_mb * memory.MiB, load_timeout_s=args.load_timeout)


if __name__ == "__main__":
    sys.exit(main())
