"""What ``GET /metrics`` serves, the same on both stacks (Prometheus text, ``prometheus_client``).

Recorded in the front only (docs/DESIGN.md, "Metrics, timing, logs"). Label values are bounded:
the routes, HTTP statuses, and model names only while the model is loaded (others count under
``model=""``). The flask stack's workers add up in multiprocess mode; the MMS stack's app is one
process, so an unloaded model's series can be removed.
"""

import threading
import time
import tomllib

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest, multiprocess, values)

from contract.settings import REPO_ROOT
from handlers.figures import Figures

disable_created_metrics()  # the same samples in both modes (multiprocess mode has no _created)
REGISTRY = CollectorRegistry(auto_describe=True)
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
PROMPTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
LOAD_SECONDS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def _version() -> str:
    try:
        return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


REQUESTS = Counter("serve_requests", "Requests the app answered, by the contract's route (none: a path "
                   "it does not serve), model and HTTP status; nginx's own answers (a body over the cap, "
                   "a malformed request) are not counted", ["route", "model", "status"], registry=REGISTRY)
DURATION = Histogram("serve_request_duration_seconds", "Requests for a model: arrival at the app to the "
                     "last byte sent", ["model"], buckets=SECONDS, registry=REGISTRY)
QUEUE = Histogram("serve_queue_duration_seconds", "Requests for a model: arrival at the app to the start "
                  "of its first engine call", ["model"], buckets=SECONDS, registry=REGISTRY)
ENGINE = Histogram("serve_engine_duration_seconds", "Requests for a model: start of its first engine call "
                   "to its last sequence's end", ["model"], buckets=SECONDS, registry=REGISTRY)
BATCH = Histogram("serve_batch_size", "Prompts per engine call", ["model"], buckets=PROMPTS, registry=REGISTRY)
DEPTH = Gauge("serve_queue_depth", "Waiting for an engine lane: prompts in the model's queue (flask stack), "
              "requests in the model's queue at the front (MMS stack)", ["model"], multiprocess_mode="livesum",
              registry=REGISTRY)
INPUT_TOKENS = Counter("serve_input_tokens", "Token ids the engine read (after truncation)", ["model"],
                       registry=REGISTRY)
GENERATED_TOKENS = Counter("serve_generated_tokens", "Token ids the engine generated", ["model"],
                           registry=REGISTRY)
INFO = Gauge("serve_info", "1: the stack, the engine (the default model's; on a multi-model endpoint the "
             "configured INFERENCE_BACKEND, CT2_COMPUTE_TYPE, INFERENCE_DEVICE) and the server's version",
             ["stack", "backend", "compute_type", "device", "version"], multiprocess_mode="max", registry=REGISTRY)
MODELS_LOADED = Gauge("serve_models_loaded", "Models loaded and served", multiprocess_mode="max",
                      registry=REGISTRY)
LOAD_DURATION = Histogram("serve_model_load_duration_seconds", "Successful model loads (multi-model stack)",
                          buckets=LOAD_SECONDS, registry=REGISTRY)
LOADS = Counter("serve_model_loads", "Model loads by outcome: ok, or the HTTP status of the failure",
                ["outcome"], registry=REGISTRY)
UNLOADS = Counter("serve_model_unloads", "Model unloads by outcome: ok, or the HTTP status of the failure",
                  ["outcome"], registry=REGISTRY)
MEMORY = Gauge("serve_model_memory_bytes", "Memory of a loaded model's worker processes (kind: pss, rss), "
               "as measured when it loaded (what the 507 check counts)", ["model", "kind"], registry=REGISTRY)
PER_MODEL = (REQUESTS, DURATION, QUEUE, ENGINE, BATCH, DEPTH, INPUT_TOKENS, GENERATED_TOKENS, MEMORY)

_lock = threading.Lock()  # a model's series are written only while it is in _loaded
_loaded: set[str] = set()


def set_info(stack: str, engine: dict[str, str]) -> None:
    if not values.ValueClass._multiprocess:  # one series: what serves now
        INFO.clear()
    INFO.labels(stack, engine.get("backend", ""), engine.get("compute_type", ""), engine.get("device", ""),
                _version()).set(1)


def model_loaded(name: str, *, load_seconds: float | None = None, pss_bytes: int = 0, rss_bytes: int = 0) -> None:
    """``name`` is served from now on: its series may appear."""
    with _lock:
        _loaded.add(name)
        MODELS_LOADED.set(len(_loaded))
        if pss_bytes or rss_bytes:
            MEMORY.labels(name, "pss").set(pss_bytes)
            MEMORY.labels(name, "rss").set(rss_bytes)
    if load_seconds is not None:
        LOAD_DURATION.observe(load_seconds)
        LOADS.labels("ok").inc()


def model_unloaded(name: str) -> None:
    """``name`` is no longer served: its series go (multi-model stack: one process, no files)."""
    with _lock:
        _loaded.discard(name)
        MODELS_LOADED.set(len(_loaded))
        for metric in PER_MODEL:
            metric.remove_by_labels({"model": name})
    UNLOADS.labels("ok").inc()


def load_failed(status: int) -> None:
    LOADS.labels(str(status)).inc()


def unload_failed(status: int) -> None:
    UNLOADS.labels(str(status)).inc()


def label(model: str | None) -> str:
    """``model`` while it is loaded, else "" (a label value is never a name callers made up)."""
    return model if model in _loaded else ""


def queue_depth(model: str, depth: int) -> None:
    with _lock:
        if model in _loaded:
            DEPTH.labels(model).set(depth)


def observe_request(route: str, model: str | None, status: int, arrived: float, figures: Figures | None) -> None:
    """A request the app answered, once its last byte is sent; ``arrived``: time.monotonic() at
    its arrival; ``figures``: what it cost the engine (None when it never reached one)."""
    elapsed = time.monotonic() - arrived
    with _lock:
        name = label(model)
        REQUESTS.labels(route, name, str(status)).inc()
        if not name:
            return
        DURATION.labels(name).observe(elapsed)
        if figures is None:
            return
        QUEUE.labels(name).observe(max(0.0, figures.start - arrived))
        ENGINE.labels(name).observe(max(0.0, figures.end - figures.start))
        INPUT_TOKENS.labels(name).inc(figures.input_tokens)
        GENERATED_TOKENS.labels(name).inc(figures.generated_tokens)
        for size in figures.calls:
            BATCH.labels(name).observe(size)


def exposition() -> tuple[bytes, str]:
    """The text /metrics answers, and its content type: this process's registry, or (multiprocess
    mode) what every process of the flask stack's gunicorn wrote."""
    registry = REGISTRY
    if values.ValueClass._multiprocess:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def worker_exited(pid: int) -> None:
    """gunicorn replaced or stopped worker ``pid``: its live gauges no longer count."""
    if values.ValueClass._multiprocess:
        multiprocess.mark_process_dead(pid)
