"""The engine under ``FlanT5Model``: token ids in, token ids out, a batch of jobs at a time
(docs/DESIGN.md, "Engines"). ``INFERENCE_BACKEND`` picks ``ctranslate2``, ``transformers`` or
``auto`` (``choose_backend``). Also what a serving process does for an engine around a fork:
``loads_before_fork`` and ``preload_modules``."""

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from handlers.artifacts import WEIGHT_FILES
from handlers.config import HandlerConfig
from handlers.errors import ModelLoadError
from handlers.generation import GenerationParams
from handlers.scheduler import Job

log = logging.getLogger(__name__)
CT2_FAMILIES = ("t5",)  # model types whose conversion a test here checks against transformers


@dataclass(eq=False)
class GenerationJob(Job):
    """One prompt's generation: its token ids in, ``num_return_sequences`` id lists out."""

    ids: list[int] = field(default_factory=list)
    params: GenerationParams = field(default_factory=GenerationParams)
    max_new_tokens: int = 0  # its own bound (the request's, else the model's default)
    on_token: Callable[[int], bool] | None = None  # streaming: each id as generated; True stops
    # Its figures (handlers.figures): when its engine call started and its sequences ended
    # (time.monotonic()), and the call's size when this job is the one that reports the call.
    started: float = 0.0
    finished: float = 0.0
    reports_call: int = 0

    def finish(self, sequences: list[list[int]]) -> None:
        self.finished = time.monotonic()
        self.resolve(sequences)


class Engine:
    """What both engines do. Each loads without running anything (a process may fork next) and
    has ``place()`` (ready to run, in the process and on the thread that runs it),
    ``describe()`` (serve_info's ``backend``, ``compute_type`` and ``device``),
    ``tokenize(texts, special=True)`` (ids, with the closing ``</s>`` when ``special``),
    ``detokenize(sequences)`` (as transformers' ``batch_decode(skip_special_tokens=True)``),
    ``batch_key(params)`` (jobs whose keys are equal may share a ``run``) and ``run(jobs)``:
    ``job.finish(sequences)`` for each job, without ``</s>``, as soon as its own sequences end
    where the engine can tell; ``on_token`` per id."""

    name: str  # the INFERENCE_BACKEND value, for messages
    eos_token_id: int
    max_input_tokens: int  # the model's own input limit
    max_new_tokens: int  # the model's default bound on generated tokens
    splits_at_spaces: bool  # long texts may be tokenized in pieces (handlers.tokenizer)
    lanes = 1  # batches that may run at once
    streams_in_batches = False  # a streamed job may share a batch with others
    budget = None  # on a GPU, the handlers.gpu_memory.MemoryBudget of one call

    def close(self) -> None:
        """Free what must not outlive the interpreter (the scheduler calls it at exit)."""

    def check(self, params: GenerationParams) -> None:
        """Raise BadRequest, naming the parameter, for what this engine cannot honour."""


def gpu_visible() -> bool:
    """Whether this host shows an NVIDIA GPU, asked without initialising CUDA (which cannot
    cross a fork)."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def ct2_only(path: Path) -> bool:
    """A CTranslate2 model with no Hugging Face weights beside it."""
    return (path / "model.bin").is_file() and not any((path / name).is_file() for name in WEIGHT_FILES)


def choose_backend(path: Path, config: HandlerConfig) -> tuple[str, str]:
    """(backend, why). ``auto``: CTranslate2 for the families its conversion is tested for here,
    where it can run on the device; transformers otherwise."""
    if config.backend != "auto":
        return config.backend, f"INFERENCE_BACKEND={config.backend}"
    if ct2_only(path):
        return "ctranslate2", "auto: the model dir holds a CTranslate2 model only"
    try:
        family = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        family = None
    if family not in CT2_FAMILIES:
        return "transformers", (f"auto: model type {family!r} is not one whose CTranslate2 conversion is "
                                "tested here")
    if (config.device or ("cuda" if gpu_visible() else "cpu")).startswith("cuda"):
        from handlers import cuda
        cublas = cuda.preload_cublas12()
        if not cublas.ok:
            return "transformers", f"auto: CTranslate2 cannot use the GPU here ({cublas})"
    return "ctranslate2", f"auto: a {family} model, which CTranslate2 runs"


def load_engine(path: Path, config: HandlerConfig) -> Engine:
    """Load without running anything (see ``Engine``). With ``auto``, a model CTranslate2 cannot
    convert or load is served by transformers, saying why."""
    backend, why = choose_backend(path, config)
    if backend == "ctranslate2":
        from handlers.ct2_engine import CTranslate2Engine
        try:
            engine = CTranslate2Engine(path, config)
            log.info("engine for %s: ctranslate2 (%s)", path, why)
            return engine
        except ModelLoadError as exc:
            if config.backend != "auto":
                raise
            why = f"auto: CTranslate2 cannot serve it: {exc.message}"
    elif ct2_only(path):
        raise ModelLoadError(f"{path} holds a CTranslate2 model: serve it with INFERENCE_BACKEND=ctranslate2")
    from handlers.transformers_engine import TransformersEngine
    engine = TransformersEngine(path, config)
    log.info("engine for %s: transformers (%s)", path, why)
    return engine


def loads_before_fork(config: HandlerConfig, model_dir: str | None = None) -> bool:
    """Whether a parent may load the model before forking workers that run it: CTranslate2 (its
    loading only reads files), transformers on the CPU (workers share the weights
    copy-on-write), not with CUDA (it cannot cross a fork), asked without initialising CUDA."""
    backend = choose_backend(Path(model_dir), config)[0] if model_dir else config.backend
    if backend == "ctranslate2":
        return True
    if config.device:
        return config.device == "cpu"
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch
    return not torch.cuda.is_available()


def preload_modules(config: HandlerConfig, model_dir: str | None = None) -> None:
    """Import what loading a model with ``config`` will need, and nothing that starts a thread:
    a parent that forks workers pays the imports once and its workers share the pages."""
    import handlers.service  # noqa: F401 - what every load needs
    if choose_backend(Path(model_dir or "."), config)[0] == "ctranslate2":
        import ctranslate2  # noqa: F401 - importing starts no thread; a Translator would

        import handlers.ct2_engine  # noqa: F401 - tokenizers
        return
    import transformers

    import handlers.transformers_engine  # noqa: F401 - torch
    path = Path(model_dir or "") / "config.json"
    architectures = json.loads(path.read_text()).get("architectures") if path.is_file() else None
    for name in architectures or []:  # the model's own classes, imported lazily by transformers
        getattr(transformers, str(name), None)


def use_threads(threads: int | None) -> None:
    """torch's threads on the calling thread (OpenMP keeps a team per thread), when torch is in
    this process: the transformers engine's, or a user script's own torch model."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads or len(os.sched_getaffinity(0)))
