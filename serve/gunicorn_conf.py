"""Gunicorn settings, all derived from serve.settings.Settings (passed by the supervisor).

The master may load the model (``preload_app``) but never runs it: torch's thread pool,
CTranslate2's threads and CUDA do not survive a fork. Each worker then starts its model
thread, which places the model (CTranslate2: builds its Translator) and warms up before /ping
says 200.
"""

import json
import os

from gunicorn import util as gunicorn_util

from handlers.config import HandlerConfig
from serve import logs
from serve.settings import Settings

_settings = Settings.from_json(os.environ["SERVE_SETTINGS"])


def _preload() -> bool:
    """transformers: load the weights once in the master (shared copy-on-write), unless CUDA is
    there (it cannot cross a fork: each worker loads its own). ctranslate2: the master only
    checks the files; each worker builds its own Translator. No torch for ctranslate2."""
    if HandlerConfig.from_env(os.environ).backend != "transformers":
        return True
    # Ask whether a GPU exists without initialising CUDA here.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch
    return not torch.cuda.is_available()


bind = os.environ["SERVE_UPSTREAM"]
workers = _settings.workers
worker_class = "gthread"
threads = _settings.http_threads
preload_app = _preload()
os.environ["SERVE_PRELOAD"] = "1" if preload_app else "0"
timeout = _settings.timeout_s + 10  # after the app's own 504 (timeout_s) and nginx's (+5)
graceful_timeout = 25  # inside SageMaker's 30 s between SIGTERM and SIGKILL
keepalive = 75
accesslog = None  # nginx logs each request once, with its request id
logconfig_dict = logs.gunicorn_logconfig(_settings.log_level)
loglevel = _settings.log_level.lower()
proc_name = "serve-gunicorn"
control_socket_disable = True  # its default path is shared by every gunicorn on the host


def post_worker_init(worker):
    """Accept requests only once this worker's model is warm (until then they wait in the
    socket's backlog or go to a ready worker), telling the arbiter meanwhile that we live."""
    batcher = worker.wsgi.extensions["model_server"].start()
    while not batcher.ready.wait(1):
        worker.notify()


def write_json_error(sock, status_int, reason, mesg):
    """gunicorn's own answers (to a request it cannot parse, e.g. a header value with control
    characters that nginx lets through) as JSON like every other error, not as HTML."""
    body = json.dumps({"error": f"{reason}: {mesg}" if mesg else reason, "code": status_int}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    gunicorn_util.write_nonblock(sock, head.encode("latin-1") + body)


gunicorn_util.write_error = write_json_error  # the workers call it as util.write_error
