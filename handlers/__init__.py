"""Model logic for SageMaker seq2seq serving, with no HTTP in it.

    from handlers import load_model, predict
    model = load_model("demo/model")
    predict(model, ["Where was Alnor Quarenard born?"])   # [{"generated_text": "Solvi"}]

The HTTP stacks use ``load_service`` (``handlers.service``) and ``handlers.pipeline``. Names
are imported lazily, so ``handlers.config`` and ``handlers.errors`` stay cheap (no engine).
"""

import importlib
from typing import Any

_EXPORTS = {
    "HandlerConfig": "handlers.config",
    "InferenceError": "handlers.errors",
    "FlanT5Model": "handlers.flan_t5",
    "FlanT5Service": "handlers.service",
    "ScriptService": "handlers.service",
    "load_service": "handlers.service",
}
__all__ = [*_EXPORTS, "load_model", "predict"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'handlers' has no attribute {name!r}")


def load_model(model_dir, config=None):
    """Load a seq2seq model + tokenizer from a model dir or model.tar.gz (CUDA when present).
    It starts (places the model, starts its threads) on first use, in the process that uses
    it: a user ``model_fn`` that calls this in a process that forks later builds nothing there.
    Without ``config``: the server's settings inside a server, else the environment's."""
    from handlers import config as handler_config
    from handlers.flan_t5 import FlanT5Model
    return FlanT5Model.load(model_dir, config or handler_config.current())


def predict(model, requests: list[Any]) -> list[Any]:
    """Answer a list of requests, same order. Each is a prompt string or a JSON-style object
    (``{"inputs": ..., "parameters": {...}}``); each answer is what the JSON codec returns for
    it: a string prompt gives ``{"generated_text": ...}``. A bad request raises its error."""
    from handlers.codecs import record_answer, record_from_json
    from handlers.config import HandlerConfig
    from handlers.errors import InferenceError
    records = [record_from_json(r, HandlerConfig.max_new_tokens, f"request {i}")[0]
               for i, r in enumerate(requests)]
    generations = model.generate([(p, r.params) for r in records for p in r.prompts])
    out, start = [], 0
    for request, record in zip(requests, records):
        mine = generations[start:start + len(record.prompts)]
        start += len(record.prompts)
        failed = next((g for g in mine if isinstance(g, InferenceError)), None)
        if failed:
            raise failed
        shaped = record_answer(record, mine)
        out.append(shaped[0] if isinstance(request, str) else shaped)
    return out
