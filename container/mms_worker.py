"""MMS's Python scripts, run with the model code imported first.

MMS starts one listener per model (``mms/model_service_worker.py``) and forks each worker from
it. Importing the engine's modules (``handlers.engine.preload_modules``) in the listener pays
for them once per model: the workers share those pages, and one that dies serves again after
MMS's 1 s back-off and the model's own load, not ~10 s later. Only imports run before the fork
(torch hangs in a child forked after a parallel op; a CTranslate2 Translator starts threads).

    python -m container.mms_worker SCRIPT ARGS...   (what container/mms_worker.sh runs)
"""

import logging
import os
import runpy
import sys

from container import protocol
from contract import logs
from contract.settings import Settings


def use_log_format(settings: Settings) -> None:
    """LOG_FORMAT=json: this process's lines as JSON objects on stdout, where Java logs them and
    the supervisor's relay takes them back out. MMS's own lines stay plain: Java reads some as
    they are ("[PID] 123", "MMS worker started."; "[METRICS]...", which log4j2.xml silences)."""
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
    settings = Settings.from_json(os.environ[protocol.ENV_SETTINGS]) \
        if protocol.ENV_SETTINGS in os.environ else None
    if settings is not None and settings.log_format == "json":
        use_log_format(settings)
    if script.endswith("model_service_worker.py") and "--model-path" in sys.argv:
        try:
            import container.handler_service  # noqa: F401
            from handlers.engine import preload_modules

            preload_modules(settings.handler, sys.argv[sys.argv.index("--model-path") + 1])
        except Exception:  # noqa: BLE001 - the worker's own load reports any real problem
            logging.basicConfig()
            logging.getLogger("container.mms_worker").warning("preloading the model code failed",
                                                              exc_info=True)
    runpy.run_path(script, run_name="__main__")
