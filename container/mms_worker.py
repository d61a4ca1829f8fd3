"""MMS's Python scripts, run with the model code imported first.

MMS starts one listener per model (``mms/model_service_worker.py``); each worker is a fork
of it that loads the model. Importing the model code in the listener, before any fork,
pays seconds of imports once per model instead of at every worker start: a worker that
dies serves again after MMS's 1 s back-off and the model's own load (~0.5 s for the demo
model), not ~10 s later, and the workers share those pages. What is imported is the engine
``INFERENCE_BACKEND`` picks: for transformers, torch, transformers and the model's own
classes (named in its config.json, imported lazily by transformers); for ctranslate2, the
``ctranslate2`` and ``tokenizers`` modules, no torch. Only imports run before the fork:
torch hangs in a child forked after the parent ran a parallel op, and a CTranslate2
Translator starts threads (each worker builds its own after the fork). MMS's other scripts
(its metric collector) run as they are. With LOG_FORMAT=json every one of them logs JSON lines.

    python -m container.mms_worker SCRIPT ARGS...   (what container/mms_worker.sh runs)
"""

import logging
import os
import runpy
import sys


def preload(model_dir: str) -> None:
    import container.handler_service  # noqa: F401
    from container import protocol
    from contract.settings import Settings
    from handlers.engine import preload_modules

    preload_modules(Settings.from_json(os.environ[protocol.ENV_SETTINGS]).handler, model_dir)


def use_log_format() -> None:
    """LOG_FORMAT=json: this process's lines as JSON objects, on stdout as MMS's own (Java
    logs each line a worker writes, and the supervisor's relay takes the object back out). MMS's
    own lines stay plain: Java reads some as they are ("[PID] 123", "MMS worker started." on the
    root logger; "[METRICS]..." from ``mms.service``, which log4j2.xml silences), and the relay
    wraps Java's line. MMS's worker script configures logging only where nothing has."""
    from container import protocol
    from contract import logs
    from contract.settings import Settings

    if protocol.ENV_SETTINGS not in os.environ:
        return
    settings = Settings.from_json(os.environ[protocol.ENV_SETTINGS])
    if settings.log_format != "json":
        return
    plain = logging.Formatter("%(message)s")

    class WorkerFormatter(logs.JsonFormatter):
        def format(self, record: logging.LogRecord) -> str:
            mms = record.name == "root" or record.name.split(".")[0] == "mms"
            return plain.format(record) if mms else super().format(record)

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(WorkerFormatter())
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)


if __name__ == "__main__":
    script, sys.argv = sys.argv[1], sys.argv[1:]
    use_log_format()
    if script.endswith("model_service_worker.py") and "--model-path" in sys.argv:
        try:
            preload(sys.argv[sys.argv.index("--model-path") + 1])
        except Exception:  # noqa: BLE001 - the worker's own load reports any real problem
            logging.basicConfig()
            logging.getLogger("container.mms_worker").warning("preloading the model code failed", exc_info=True)
    runpy.run_path(script, run_name="__main__")
