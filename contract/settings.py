"""Every server setting, read once from the environment (``Settings.from_env``, the only place
it is read) into one frozen object passed down as JSON. Every timeout, margin and stop window
below derives from ``SAGEMAKER_MODEL_SERVER_TIMEOUT`` and SageMaker's 30 s from SIGTERM to SIGKILL.
"""

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from handlers.config import ConfigError, HandlerConfig, choice, env_float, env_int

REPO_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_MODEL_DIR = REPO_ROOT / "demo" / "model"
TRUE = ("1", "true", "yes", "on")
STOP_DEADLINE_S = 28  # everything has stopped this long after SIGTERM (SageMaker sends SIGKILL at 30 s)
KEEPALIVE_S = 75  # idle keep-alive connections (nginx's default)
LOG_FORMATS = ("text", "json")


def _env_int_alias(env: Mapping[str, str], names: tuple[str, ...], default: int) -> int:
    """The first of ``names`` that is set (SageMaker's name, then the older alias)."""
    name = next((n for n in names if env.get(n, "").strip()), names[0])
    return env_int(env, name, default)


def _port_range(raw: str | None) -> tuple[int, int] | None:
    if not raw:
        return None
    try:
        low, high = (int(part) for part in raw.split("-"))
    except ValueError:
        raise ConfigError(f"SAGEMAKER_SAFE_PORT_RANGE={raw!r} is not LOW-HIGH") from None
    if not 0 < low <= high < 65536:
        raise ConfigError(f"SAGEMAKER_SAFE_PORT_RANGE={raw!r} is not a valid port range")
    return low, high


def _is_empty(path: Path) -> bool:
    """Nothing to serve at ``path`` (missing, or a dir of hidden files only): the embedded
    model then. A path this process may not read is not empty: ``first_unreadable`` says so."""
    try:
        if not stat.S_ISDIR(os.stat(path).st_mode):
            return False  # a model.tar.gz
        return not any(p for p in path.iterdir() if not p.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return True
    except PermissionError:
        return False


def first_unreadable(path: str) -> str | None:
    """``path`` or the first file or dir below it that this process cannot read (SageMaker
    local mode mounts a dir only root may read); None when everything can be read."""
    try:
        is_dir = stat.S_ISDIR(os.stat(path).st_mode)
    except FileNotFoundError:
        return None  # the model loader names what is missing
    except PermissionError:
        return path
    if not os.access(path, os.R_OK | (os.X_OK if is_dir else 0)):
        return path
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            child = os.path.join(root, name)
            if not os.access(child, os.R_OK | (os.X_OK if name in dirs else 0)):
                return child
    return None


def log_options(env: Mapping[str, str]) -> tuple[str, str]:
    """(LOG_LEVEL, LOG_FORMAT) for the logs of a start-up that may yet fail on other settings:
    an invalid format is text here (``Settings.from_env`` then says what is wrong with it)."""
    log_format = env.get("LOG_FORMAT", "").strip().lower()
    return (env.get("LOG_LEVEL", "").strip() or "INFO").upper(), log_format if log_format in LOG_FORMATS else "text"


@dataclass(frozen=True)
class Settings:
    port: int = 8080  # SAGEMAKER_BIND_TO_PORT
    bind_host: str = "0.0.0.0"  # SERVE_BIND_HOST (127.0.0.1 for `make serve`)
    safe_port_range: tuple[int, int] | None = None  # SAGEMAKER_SAFE_PORT_RANGE
    model_dir: str = "/opt/ml/model"  # --model-dir, SM_MODEL_DIR; embedded demo when empty
    stack: str = "flask"  # "mms" when SAGEMAKER_MULTI_MODEL=true or SERVING_STACK=mms
    multi_model: bool = False  # SAGEMAKER_MULTI_MODEL
    workers: int = 1  # SAGEMAKER_MODEL_SERVER_WORKERS, MODEL_SERVER_WORKERS (default: 1 per GPU; MMS: per model)
    gpus: int = 0  # the GPUs the start-up check found usable (each flask worker pinned to one)
    http_threads: int = 64  # SERVE_HTTP_THREADS: request threads per gunicorn worker
    timeout_s: int = 60  # SAGEMAKER_MODEL_SERVER_TIMEOUT, MODEL_SERVER_TIMEOUT (seconds)
    max_payload_bytes: int = 6 * 1024 * 1024  # SAGEMAKER_MAX_PAYLOAD_IN_MB
    log_level: str = "INFO"  # LOG_LEVEL
    log_format: str = "text"  # LOG_FORMAT: text, or json (every line one JSON object)
    # Multi-model stack only:
    model_root: str = "/opt/ml/models"  # SERVE_MODEL_ROOT: POST /models urls must lie below it
    memory_budget_mb: int | None = None  # SERVE_MODEL_MEMORY_BUDGET_MB: cap on loaded models
    memory_reserve_mb: int = 256  # SERVE_MODEL_MEMORY_RESERVE_MB: free memory a load must leave
    load_timeout_s: int = 600  # SERVE_MODEL_LOAD_TIMEOUT: seconds a POST /models may take
    mms_batch_requests: int = 32  # SERVE_MMS_BATCH_REQUESTS: requests sent to an MMS worker at once
    # The model logic's own settings (INFERENCE_*, CT2_*, SAGEMAKER_PROGRAM ...).
    handler: HandlerConfig = field(default_factory=HandlerConfig)

    @classmethod
    def from_env(cls, env: Mapping[str, str], model_dir: str | None = None, gpus: int = 0) -> "Settings":
        multi_model = env.get("SAGEMAKER_MULTI_MODEL", "").strip().lower() in TRUE
        stack = env.get("SERVING_STACK", "").strip().lower() or ("mms" if multi_model else "flask")
        if stack not in ("flask", "mms"):
            raise ConfigError(f"SERVING_STACK={stack!r} must be flask or mms")
        cores = len(os.sched_getaffinity(0))
        # flask: one worker's engine batches everything. MMS: one worker per core per model,
        # one engine thread each (measured faster and steadier: docs/BENCHMARKS.md).
        workers = _env_int_alias(env, ("SAGEMAKER_MODEL_SERVER_WORKERS", "MODEL_SERVER_WORKERS"),
                                 cores if stack == "mms" else max(gpus, 1))
        payload_mb = env_float(env, "SAGEMAKER_MAX_PAYLOAD_IN_MB", 6)
        payload_bytes = int(payload_mb * 1024 * 1024)
        if payload_bytes <= 0:
            raise ConfigError(f"SAGEMAKER_MAX_PAYLOAD_IN_MB={payload_mb} must be positive")
        model_dir = model_dir or env.get("SM_MODEL_DIR", "").strip() or "/opt/ml/model"
        if not multi_model and _is_empty(Path(model_dir)):
            model_dir = env.get("SM_DEFAULT_MODEL_DIR", "").strip() or str(EMBEDDED_MODEL_DIR)
        threads = env_int(env, "INFERENCE_TORCH_THREADS", max(1, cores // workers))
        timeout = _env_int_alias(env, ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "MODEL_SERVER_TIMEOUT"), 60)
        handler = replace(HandlerConfig.from_env(env), threads=threads, timeout_s=timeout)
        return cls(
            port=env_int(env, "SAGEMAKER_BIND_TO_PORT", 8080),
            bind_host=env.get("SERVE_BIND_HOST", "").strip() or "0.0.0.0",
            safe_port_range=_port_range(env.get("SAGEMAKER_SAFE_PORT_RANGE", "").strip()),
            model_dir=model_dir,
            stack=stack,
            multi_model=multi_model,
            workers=workers,
            gpus=gpus,
            http_threads=env_int(env, "SERVE_HTTP_THREADS", 64),
            timeout_s=timeout,
            max_payload_bytes=payload_bytes,
            log_level=log_options(env)[0],
            log_format=choice(env, "LOG_FORMAT", LOG_FORMATS),
            model_root=env.get("SERVE_MODEL_ROOT", "").strip() or "/opt/ml/models",
            memory_budget_mb=env_int(env, "SERVE_MODEL_MEMORY_BUDGET_MB", 0) or None,
            memory_reserve_mb=env_int(env, "SERVE_MODEL_MEMORY_RESERVE_MB", 256, minimum=0),
            load_timeout_s=env_int(env, "SERVE_MODEL_LOAD_TIMEOUT", 600),
            mms_batch_requests=env_int(env, "SERVE_MMS_BATCH_REQUESTS", 32),
            handler=handler,
        )

    # Derived limits: every layer takes its own from here.
    @property
    def proxy_timeout_s(self) -> int:
        """nginx waits this long for the app, which answers 504 itself at ``timeout_s``."""
        return self.timeout_s + 5

    @property
    def worker_timeout_s(self) -> int:
        """gunicorn replaces a worker silent this long (after the app's 504 and nginx's)."""
        return self.timeout_s + 10

    @property
    def backend_timeout_s(self) -> int:
        """The app waits this long for an MMS worker (MMS itself gives up at ``timeout_s``)."""
        return self.timeout_s + 10

    @property
    def load_request_timeout_s(self) -> int:
        """A POST /models may take the load timeout, plus what MMS needs to answer it."""
        return self.load_timeout_s + 60

    @property
    def java_stop_s(self) -> int:
        """Of the stop window, what multi-model-server (Java and its workers) gets, last."""
        return 6 if self.stack == "mms" else 0

    @property
    def drain_s(self) -> int:
        """How long requests in flight at SIGTERM may take to finish (nginx, then gunicorn)."""
        return STOP_DEADLINE_S - 3 - self.java_stop_s

    @property
    def model_store(self) -> str:
        """MMS's model_store, which load urls are taken relative to: the model root of a
        multi-model endpoint, else the single model's parent directory."""
        return self.model_root if self.multi_model else str(Path(self.model_dir).parent)

    @property
    def max_payload_mb(self) -> int:
        """The payload cap in whole MiB, as /execution-parameters reports it (at least 1)."""
        return max(1, self.max_payload_bytes // (1024 * 1024))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Settings":
        data = json.loads(text)
        if data.get("safe_port_range"):
            data["safe_port_range"] = tuple(data["safe_port_range"])
        return cls(**{**data, "handler": HandlerConfig(**data["handler"])})
