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
(its metric collector) run as they are.

    python -m container.mms_worker SCRIPT ARGS...   (what container/mms_worker.sh runs)
"""

import json
import logging
import os
import runpy
import sys
from pathlib import Path


def preload(model_dir: str) -> None:
    import container.handler_service  # noqa: F401
    import handlers.service  # noqa: F401 - what every load needs
    from handlers.config import HandlerConfig

    if HandlerConfig.from_env(os.environ).backend == "ctranslate2":
        import ctranslate2  # noqa: F401 - importing starts no thread; a Translator would

        import handlers.ct2_engine  # noqa: F401 - tokenizers
    else:
        import transformers

        import handlers.transformers_engine  # noqa: F401 - torch

        config = Path(model_dir) / "config.json"
        architectures = json.loads(config.read_text()).get("architectures") if config.is_file() else None
        for name in architectures or []:
            getattr(transformers, str(name), None)


if __name__ == "__main__":
    script, sys.argv = sys.argv[1], sys.argv[1:]
    if script.endswith("model_service_worker.py") and "--model-path" in sys.argv:
        try:
            preload(sys.argv[sys.argv.index("--model-path") + 1])
        except Exception:  # noqa: BLE001 - the worker's own load reports any real problem
            logging.basicConfig()
            logging.getLogger("container.mms_worker").warning("preloading the model code failed", exc_info=True)
    runpy.run_path(script, run_name="__main__")
