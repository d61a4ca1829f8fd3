"""Gunicorn settings, all derived from contract.settings.Settings (passed by the supervisor).

With ``preload_app`` the master imports ``serve.wsgi`` and reads the model's files once for
every worker, but runs nothing (``handlers.engine.loads_before_fork``); each worker starts its
backend, and takes requests (/ping 200) only once it is ready.
"""

import json
import os

from gunicorn import util as gunicorn_util

from contract import logs, metrics
from contract.settings import KEEPALIVE_S, Settings
from handlers import cuda
from handlers.engine import loads_before_fork

_settings = Settings.from_json(os.environ["SERVE_SETTINGS"])

bind = os.environ["SERVE_UPSTREAM"]
# The multi-model stack's app holds the registry of loaded models: one process, many threads.
workers = _settings.workers if _settings.stack == "flask" else 1
worker_class = "gthread"
threads = _settings.http_threads
preload_app = _settings.stack == "flask" and loads_before_fork(_settings.handler, _settings.model_dir)
timeout = _settings.worker_timeout_s
graceful_timeout = _settings.drain_s
keepalive = KEEPALIVE_S
accesslog = None  # nginx logs each request once, with its request id
logconfig_dict = logs.gunicorn_logconfig(_settings.log_level, _settings.log_format)
loglevel = _settings.log_level.lower()
proc_name = "serve-gunicorn"
control_socket_disable = True  # its default path is shared by every gunicorn on the host


def post_worker_init(worker):
    """Accept requests only once this worker's backend is ready (until then they wait in the
    socket's backlog or go to a ready worker), telling the arbiter meanwhile that we live."""
    from serve import wsgi

    ready = wsgi.backend.start()
    while not ready.wait(1):
        worker.notify()


def pre_fork(server, worker):
    """One flask worker per GPU: a new worker takes the slot (so the GPU) no live one holds."""
    worker.gpu_slot = cuda.free_slot((getattr(w, "gpu_slot", -1) for w in server.WORKERS.values()),
                                     server.num_workers)


def post_fork(server, worker):
    """Pin the worker to its GPU before CUDA starts in it: it is then cuda:0 there."""
    gpu = cuda.worker_gpu(worker.gpu_slot, _settings.gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if gpu is not None and _settings.stack == "flask":
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def child_exit(server, worker):
    """A worker that exited no longer counts in /metrics' live gauges (its counts stay)."""
    metrics.worker_exited(worker.pid)


def write_json_error(sock, status_int, reason, mesg):
    """gunicorn's own answers (to a request it cannot parse, e.g. a header value with control
    characters that nginx lets through) as JSON like every other error, not as HTML."""
    body = json.dumps({"error": f"{reason}: {mesg}" if mesg else reason, "code": status_int}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    gunicorn_util.write_nonblock(sock, head.encode("latin-1") + body)


gunicorn_util.write_error = write_json_error  # the workers call it as util.write_error
