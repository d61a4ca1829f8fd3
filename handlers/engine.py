"""The engine under ``FlanT5Model``: token ids in, token ids out.

``INFERENCE_BACKEND`` picks one: ``transformers`` (torch, ``model.generate``) or
``ctranslate2`` (a converted model, no torch). Everything above the engine (prompts,
truncation, stop sequences, grouping by parameters, errors) is ``handlers.flan_t5``'s.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from handlers.artifacts import WEIGHT_FILES
from handlers.config import HandlerConfig
from handlers.errors import ModelLoadError
from handlers.generation import GenerationParams


class Engine(Protocol):
    name: str  # the INFERENCE_BACKEND value, for messages
    # Known once placed:
    eos_token_id: int
    max_input_tokens: int  # the model's own input limit
    splits_at_spaces: bool  # long texts may be tokenized in pieces (handlers.tokenizer.splits_at_spaces)

    def place(self) -> None:
        """Ready to run, in the process and on the thread that will run it."""

    def tokenize(self, texts: list[str], special: bool = True) -> list[list[int]]:
        """Ids per text, with the closing ``</s>`` when ``special``."""

    def detokenize(self, sequences: list[list[int]]) -> list[str]:
        """Texts as transformers' ``batch_decode(skip_special_tokens=True)`` gives them."""

    def check(self, params: GenerationParams) -> None:
        """Raise BadRequest, naming the parameter, for what this engine cannot honour."""

    def generate(self, inputs: list[list[int]], params: GenerationParams) -> list[list[int]]:
        """``num_return_sequences`` generated id lists per input, input-major, without ``</s>``."""

    def stream(self, inputs: list[int], params: GenerationParams, on_token: Callable[[int], bool]) -> None:
        """Generate for one input, calling ``on_token(id)`` per token until it returns True."""


def load_engine(path: Path, config: HandlerConfig) -> Engine:
    """Load without running anything (a process may fork after this): see ``Engine.place``."""
    if config.backend == "ctranslate2":
        from handlers.ct2_engine import CTranslate2Engine
        return CTranslate2Engine.load(path, config)
    if (path / "model.bin").is_file() and not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ModelLoadError(f"{path} holds a CTranslate2 model: serve it with INFERENCE_BACKEND=ctranslate2")
    from handlers.transformers_engine import TransformersEngine
    return TransformersEngine.load(path, config)
