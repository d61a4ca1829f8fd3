"""The engine under ``FlanT5Model``: token ids in, token ids out, a batch of jobs at a time.

``INFERENCE_BACKEND`` picks one: ``ctranslate2`` (a converted model, no torch), ``transformers``
(torch, ``model.generate``), or ``auto`` (the default: ``choose_backend``). Everything above the engine (prompts,
truncation, stop sequences, scheduling, errors) is ``handlers.flan_t5``'s and
``handlers.scheduler``'s. This module also holds what a serving process does for an engine
around a fork: ``loads_before_fork`` (may the gunicorn master load, so that workers share the
weights?) and ``preload_modules`` (imports a parent may do before it forks workers).
"""

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from handlers.artifacts import WEIGHT_FILES
from handlers.config import HandlerConfig
from handlers.errors import ModelLoadError
from handlers.generation import GenerationParams
from handlers.scheduler import Job

log = logging.getLogger(__name__)


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


class Engine(Protocol):
    name: str  # the INFERENCE_BACKEND value, for messages
    lanes: int  # batches that may run at once
    eos_token_id: int
    max_input_tokens: int  # the model's own input limit
    max_new_tokens: int  # the model's default bound on generated tokens
    splits_at_spaces: bool  # long texts may be tokenized in pieces (handlers.tokenizer.splits_at_spaces)
    streams_in_batches: bool  # a streamed job may share a batch with others

    def place(self) -> None:
        """Ready to run, in the process and on the thread that will run it."""

    def describe(self) -> dict[str, str]:
        """``backend``, ``compute_type`` and ``device`` (as placed, once placed): serve_info's labels."""

    def close(self) -> None:
        """Free what must not outlive the interpreter (the scheduler calls it at exit)."""

    def tokenize(self, texts: list[str], special: bool = True) -> list[list[int]]:
        """Ids per text, with the closing ``</s>`` when ``special``."""

    def detokenize(self, sequences: list[list[int]]) -> list[str]:
        """Texts as transformers' ``batch_decode(skip_special_tokens=True)`` gives them."""

    def check(self, params: GenerationParams) -> None:
        """Raise BadRequest, naming the parameter, for what this engine cannot honour."""

    def batch_key(self, params: GenerationParams) -> Hashable:
        """Jobs whose keys are equal may run in one ``run`` call."""

    def run(self, jobs: list[GenerationJob]) -> None:
        """Generate for jobs of one key: ``job.finish(sequences)`` each (as soon as its own
        sequences end, where the engine can tell), without ``</s>``; ``on_token`` per id."""


def gpu_visible() -> bool:
    """Whether this host shows an NVIDIA GPU, asked without initialising CUDA (which cannot
    cross a fork)."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def model_type(path: Path) -> str | None:
    try:
        return json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


CT2_FAMILIES = ("t5",)  # model types whose conversion a test here checks against transformers


def choose_backend(path: Path, config: HandlerConfig) -> tuple[str, str]:
    """(backend, why). ``auto``: CTranslate2 for the families its conversion is tested for here,
    where it can run on the device; transformers otherwise."""
    if config.backend != "auto":
        return config.backend, f"INFERENCE_BACKEND={config.backend}"
    hf_weights = any((path / name).is_file() for name in WEIGHT_FILES)
    if (path / "model.bin").is_file() and not hf_weights:
        return "ctranslate2", "auto: the model dir holds a CTranslate2 model only"
    family = model_type(path)
    if family not in CT2_FAMILIES:
        return "transformers", f"auto: model type {family!r} is not one whose CTranslate2 conversion is tested here"
    if (config.device or ("cuda" if gpu_visible() else "cpu")).startswith("cuda"):
        from handlers import cuda
        cublas = cuda.preload_cublas12()
        if not cublas.ok:
            return "transformers", f"auto: CTranslate2 cannot use the GPU here ({cublas})"
    return "ctranslate2", f"auto: a {family} model, which CTranslate2 runs"


def load_engine(path: Path, config: HandlerConfig) -> Engine:
    """Load without running anything (a process may fork after this): see ``Engine.place``. With
    ``auto``, a model CTranslate2 cannot convert or load is served by transformers, saying why."""
    backend, why = choose_backend(path, config)
    if backend == "ctranslate2":
        from handlers.ct2_engine import CTranslate2Engine
        try:
            engine = CTranslate2Engine.load(path, config)
            log.info("engine for %s: ctranslate2 (%s)", path, why)
            return engine
        except ModelLoadError as exc:
            if config.backend != "auto":
                raise
            why = f"auto: CTranslate2 cannot serve it: {exc.message}"
    elif (path / "model.bin").is_file() and not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ModelLoadError(f"{path} holds a CTranslate2 model: serve it with INFERENCE_BACKEND=ctranslate2")
    from handlers.transformers_engine import TransformersEngine
    engine = TransformersEngine.load(path, config)
    log.info("engine for %s: transformers (%s)", path, why)
    return engine


def loads_before_fork(config: HandlerConfig, model_dir: str | None = None) -> bool:
    """Whether a parent may load the model before forking workers that run it: transformers on
    the CPU (workers share the weights copy-on-write; torch runs nothing before the fork), not
    with CUDA (it cannot cross a fork), asked without initialising CUDA. CTranslate2 loads only
    check files before its ``place`` builds the Translator, so loading before a fork is safe."""
    if config.backend == "ctranslate2" or (model_dir and choose_backend(Path(model_dir), config)[0] == "ctranslate2"):
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
