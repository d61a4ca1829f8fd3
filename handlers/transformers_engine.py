"""The transformers engine: a seq2seq model on torch, run with ``model.generate``."""

import logging
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from handlers.artifacts import check_model_dir, weight_file
from handlers.config import HandlerConfig
from handlers.errors import ModelLoadError
from handlers.generation import GenerationParams
from handlers.tokenizer import splits_at_spaces

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "fp32": torch.float32,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def pick_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(requested: str | None, device: torch.device) -> torch.dtype:
    """bf16 on GPUs that have it, else fp32. Never fp16: T5 activations overflow to NaN."""
    if requested:
        if requested.lower() in ("float16", "fp16", "half"):
            raise ModelLoadError("INFERENCE_DTYPE=float16 is refused: T5 overflows to NaN in fp16; "
                                 "use bfloat16 or float32")
        if requested.lower() not in DTYPES:
            raise ModelLoadError(f"INFERENCE_DTYPE={requested!r} is not one of {', '.join(DTYPES)}")
        return DTYPES[requested.lower()]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


class TokenCallback(BaseStreamer, StoppingCriteria):
    """Hands each generated token to ``on_token``; generation stops once it returns True."""

    def __init__(self, on_token: Callable[[int], bool]):
        self.on_token, self.started, self.stop = on_token, False, False

    def put(self, value) -> None:
        if not self.started:  # the first call carries the decoder's start token
            self.started = True
            return
        for token in value.reshape(-1).tolist():
            self.stop = self.on_token(token) or self.stop

    def end(self) -> None:
        pass

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.stop, dtype=torch.bool, device=input_ids.device)


class TransformersEngine:
    """Loads on the CPU with no torch compute, so a process may load, fork, and let the child
    ``place()`` and run it (torch's thread pool and CUDA do not survive a fork)."""

    name = "transformers"

    def __init__(self, model, tokenizer, device: torch.device):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.eos_token_id, self.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.splits_at_spaces = backend is not None and splits_at_spaces(backend)
        limits = [n for n in (tokenizer.model_max_length, getattr(model.config, "n_positions", None))
                  if isinstance(n, int) and 0 < n < 1_000_000]
        self.max_input_tokens = min(limits) if limits else 512
        self._placed = False

    @classmethod
    def load(cls, path: Path, config: HandlerConfig) -> "TransformersEngine":
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        check_model_dir(path)
        device = pick_device(config.device)
        dtype = pick_dtype(config.dtype, device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as exc:
            raise ModelLoadError(f"cannot load the tokenizer from {path} (tokenizer.json / spiece.model):"
                                 f" {type(exc).__name__}: {exc}") from exc
        try:
            model = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=dtype, local_files_only=True)
        except Exception as exc:
            raise ModelLoadError(f"cannot load weights from {weight_file(path)}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        model.eval()
        default_new = model.generation_config.max_new_tokens or 64
        model.generation_config.max_new_tokens = min(default_new, config.max_new_tokens)
        model.generation_config.max_length = None
        log.info("loaded %s (%s, %.1fM parameters, %s on %s)", path, type(model).__name__,
                 model.num_parameters() / 1e6, dtype, device)
        return cls(model, tokenizer, device)

    def place(self) -> None:
        if not self._placed:  # torch's threads: OMP_NUM_THREADS, or what the stack sets
            self.model.to(self.device)
            self._placed = True

    def tokenize(self, texts: list[str], special: bool = True) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=special)["input_ids"]

    def detokenize(self, sequences: list[list[int]]) -> list[str]:
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=True)

    def check(self, params: GenerationParams) -> None:
        """Every parameter is honoured."""

    def _tensors(self, inputs: list[list[int]]) -> dict:
        width = max(len(row) for row in inputs)
        pad = self.pad_token_id
        return {"input_ids": torch.tensor([row + [pad] * (width - len(row)) for row in inputs], device=self.device),
                "attention_mask": torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in inputs],
                                               device=self.device)}

    @torch.inference_mode()
    def generate(self, inputs: list[list[int]], params: GenerationParams) -> list[list[int]]:
        """``num_return_sequences`` generated id lists per input (input-major), without the
        decoder's start token, the closing ``</s>`` and padding."""
        if params.seed is not None:
            torch.manual_seed(params.seed)
        output = self.model.generate(**self._tensors(inputs), **params.generate_kwargs())
        rows = [row[1:] for row in output.tolist()]
        return [row[:row.index(self.eos_token_id)] if self.eos_token_id in row else row for row in rows]

    @torch.inference_mode()
    def stream(self, inputs: list[int], params: GenerationParams, on_token: Callable[[int], bool]) -> None:
        """Generate for one input, calling ``on_token(id)`` per token until it returns True."""
        if params.seed is not None:
            torch.manual_seed(params.seed)
        callback = TokenCallback(on_token)
        self.model.generate(**self._tensors([inputs]), **params.generate_kwargs(), streamer=callback,
                            stopping_criteria=[callback])
