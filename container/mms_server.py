"""Start, watch and stop one MMS stack: the front on the public port, MMS (Java) behind it.

    run(settings) -> exit code        (serve.settings.Settings; ``serve`` calls this)
    python -m container.mms_server --model-dir DIR | --multi-model [...]   (tests, benchmarks)

The stack owns readiness: the front answers 503 with ``not_ready()``'s reason until MMS
is up and (single-model) the default model has loaded. On SIGTERM/SIGINT the front stops
accepting and drains, then MMS and every process of its group are stopped, all within
``STOP_WITHIN_S`` (SageMaker sends SIGKILL ~30 s after SIGTERM). Exit code 0 after
SIGTERM/SIGINT; 1 when MMS died or never came up, or (single-model) the model failed to
load: as on the flask stack, a broken model is a dead server, never one that looks alive.
"""

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from container import memory, protocol
from container.api import Api
from container.dispatch import BatchSettings
from container.front import Front
from container.mms_process import MmsProcess
from container.model_registry import ModelRegistry
from handlers.artifacts import resolve_model_dir
from handlers.config import ConfigError, HandlerConfig
from handlers.errors import InferenceError
from serve import logs
from serve.settings import Settings

log = logging.getLogger("container.mms_server")

DEFAULT_MODEL_NAME = "model"
STOP_WITHIN_S = 25
JAVA_STOP_S = 8  # of STOP_WITHIN_S, kept for stopping Java and its workers after the drain


class MmsStack:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.default_model = DEFAULT_MODEL_NAME
        self.stop_requested = threading.Event()
        self.registry: ModelRegistry | None = None
        self._not_ready: str | None = "the model server is starting"
        self.model_failed = False
        self.handler_config = HandlerConfig.from_env(os.environ)  # ConfigError for a bad value
        self.batching = BatchSettings(
            senders=settings.workers, max_batch=self.handler_config.max_batch_size,
            max_wait_s=settings.max_batch_wait_ms / 1000, timeout_s=settings.timeout_s,
            max_envelope_bytes=protocol.envelope_cap(settings.max_payload_bytes))
        # The public port first: a port clash fails now, and callers can connect at once.
        self.front = Front(settings.bind_host, settings.port, routes=Api(self).routes,
                           max_payload_bytes=settings.max_payload_bytes, read_timeout_s=settings.timeout_s)
        self.mms = MmsProcess(settings)

    def not_ready(self) -> str | None:
        """None when requests can be served, else why not (the answer of /ping)."""
        return self._not_ready

    def serve(self) -> int:
        self.front.start()
        model_dir = None
        if not self.settings.multi_model:
            try:
                # A model.tar.gz is extracted here once, not in every worker.
                model_dir = Path(os.path.realpath(resolve_model_dir(self.settings.model_dir)))
            except InferenceError as exc:
                log.error("cannot serve %s: %s; stopping", self.settings.model_dir, exc.message)
                return 1
        model_root = model_dir.parent if model_dir else Path(self.settings.model_root)
        try:
            client = self.mms.start(model_root, self.front.port, self.stop_requested)
        except RuntimeError as exc:
            log.error("%s", exc)
            return 1
        if client is None:  # stopped during start-up
            return 0
        budget_mb = self.settings.memory_budget_mb
        policy = memory.MemoryPolicy(self.settings.memory_reserve_mb * memory.MiB,
                                     budget_mb and budget_mb * memory.MiB, backend=self.handler_config.backend)
        self.registry = ModelRegistry(client, state_dir=self.mms.state_dir, model_root=model_root,
                                      java_pgid=self.mms.java.pid, workers=self.settings.workers,
                                      load_timeout_s=self.settings.load_timeout_s, policy=policy,
                                      batching=self.batching)
        if self.settings.multi_model:
            self._not_ready = None
        else:
            self._not_ready = "the default model is loading"
            threading.Thread(target=self._load_default_model, args=(model_dir,), name="default-model",
                             daemon=True).start()
        log.info("MMS stack listening on port %d (%s)", self.front.port,
                 "multi-model" if self.settings.multi_model else f"model {self.settings.model_dir}")
        while not self.stop_requested.wait(0.5):
            if self.mms.exit_code() is not None:
                log.error("MMS (Java) exited with %s; stopping", self.mms.exit_code())
                return 1
        return 1 if self.model_failed else 0

    def _load_default_model(self, model_dir: Path) -> None:
        try:
            self.registry.load(self.default_model, str(model_dir), check_memory=False)
            self._not_ready = None
            log.info("default model ready: %s", self.settings.model_dir)
        except InferenceError as exc:
            self._not_ready = exc.message
            log.error("default model %s failed to load (%d): %s; stopping",
                      self.settings.model_dir, exc.status, exc.message)
            self.model_failed = True
            self.stop_requested.set()

    def shutdown(self) -> None:
        """Drain the front, then stop MMS and its workers, within STOP_WITHIN_S."""
        deadline = time.monotonic() + STOP_WITHIN_S
        left = self.front.drain(min(self.settings.timeout_s, deadline - time.monotonic() - JAVA_STOP_S))
        if left:
            log.warning("%d request(s) still running after the drain period", left)
        self.mms.stop(deadline)


def run(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT (exit code 0) or until MMS dies (1). See the module doc."""
    if not logging.getLogger().handlers:
        logs.configure(settings.log_level)
    try:
        stack = MmsStack(settings)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.bind_host, settings.port, exc)
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


# Command-line flags and the environment variables they stand for: Settings reads both.
FLAGS = {"--port": "SAGEMAKER_BIND_TO_PORT", "--bind-host": "SERVE_BIND_HOST",
         "--safe-port-range": "SAGEMAKER_SAFE_PORT_RANGE", "--workers": "SAGEMAKER_MODEL_SERVER_WORKERS",
         "--timeout": "SAGEMAKER_MODEL_SERVER_TIMEOUT", "--torch-threads": "INFERENCE_TORCH_THREADS",
         "--model-root": "SERVE_MODEL_ROOT", "--memory-budget-mb": "SERVE_MODEL_MEMORY_BUDGET_MB",
         "--memory-reserve-mb": "SERVE_MODEL_MEMORY_RESERVE_MB", "--load-timeout": "SERVE_MODEL_LOAD_TIMEOUT"}


def main(argv: list[str] | None = None) -> int:
    """The stack without ``serve``'s flask branch: flags override the environment."""
    parser = argparse.ArgumentParser(prog="python -m container.mms_server", description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", help="single-model mode: the model to serve")
    parser.add_argument("--multi-model", action="store_true", help="multi-model endpoint (models via POST /models)")
    for flag, variable in FLAGS.items():
        parser.add_argument(flag, help=f"sets {variable}")
    args = parser.parse_args(argv)
    logs.configure(os.environ.get("LOG_LEVEL", "INFO").upper())
    env = dict(os.environ, SERVING_STACK="mms", SAGEMAKER_MULTI_MODEL="true" if args.multi_model else "false")
    env.update({variable: getattr(args, flag[2:].replace("-", "_")) for flag, variable in FLAGS.items()
                if getattr(args, flag[2:].replace("-", "_")) is not None})
    try:
        settings = Settings.from_env(env, args.model_dir)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    if not settings.multi_model and not args.model_dir:
        parser.error("--model-dir or --multi-model is required")
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
