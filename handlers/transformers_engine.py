"""The transformers engine: a seq2seq model on torch, run with ``model.generate``. It loads on
the CPU with no torch compute, so a process may load, fork, and let the child ``place()`` and
run it (torch's thread pool and CUDA do not survive a fork)."""

import logging
from collections.abc import Callable, Hashable
from dataclasses import replace
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from handlers import cuda, gpu_memory
from handlers.artifacts import check_model_dir, weight_file
from handlers.config import HandlerConfig
from handlers.engine import Engine, GenerationJob, use_threads
from handlers.errors import ModelLoadError
from handlers.generation import GenerationParams
from handlers.tokenizer import input_limit, splits_at_spaces

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def pick_dtype(requested: str | None, device: torch.device) -> torch.dtype:
    """bf16 on GPUs that compute it (not T4 / V100: torch emulates it there, slowly), else fp32.
    Never fp16: T5 activations overflow to NaN."""
    name = (requested or "").lower()
    if name in ("float16", "fp16", "half"):
        raise ModelLoadError("INFERENCE_DTYPE=float16 is refused: T5 overflows to NaN in fp16; "
                             "use bfloat16 or float32")
    if requested and name not in DTYPES:
        raise ModelLoadError(f"INFERENCE_DTYPE={requested!r} is not one of {', '.join(DTYPES)}")
    if requested:
        return DTYPES[name]
    if device.type == "cuda" and cuda.native_bf16(torch.cuda.get_device_capability(device)):
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


class TransformersEngine(Engine):
    name = "transformers"  # one lane: one generate at a time, on all of torch's threads

    def __init__(self, path: Path, config: HandlerConfig):
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        check_model_dir(path)
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = pick_dtype(config.dtype, self.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as exc:
            raise ModelLoadError(f"cannot load the tokenizer from {path} (tokenizer.json / spiece.model):"
                                 f" {type(exc).__name__}: {exc}") from exc
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # no OpenMP thread team while loading: this process may fork next
        try:
            self.model = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=dtype, local_files_only=True)
        except Exception as exc:
            raise ModelLoadError(f"cannot load weights from {weight_file(path)}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        finally:
            torch.set_num_threads(threads)
        self.model.eval()
        generation = self.model.generation_config
        self.max_new_tokens = min(generation.max_new_tokens or 64, config.max_new_tokens)
        generation.max_new_tokens, generation.max_length = self.max_new_tokens, None
        self.threads, self.placed = config.threads, False
        self.eos_token_id, self.pad_token_id = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        self.splits_at_spaces = backend is not None and splits_at_spaces(backend)
        self.max_input_tokens = input_limit(self.tokenizer.model_max_length,
                                            getattr(self.model.config, "n_positions", None))
        log.info("loaded %s (%s, %.1fM parameters, %s on %s)", path, type(self.model).__name__,
                 self.model.num_parameters() / 1e6, dtype, self.device)

    def describe(self) -> dict[str, str]:
        return {"backend": self.name, "compute_type": str(self.model.dtype).removeprefix("torch."),
                "device": str(self.device)}

    def place(self) -> None:
        """On the thread that runs every generate (OpenMP keeps a thread team per thread). On a
        GPU, the sequences per call are then bounded by what the device has left."""
        use_threads(self.threads)
        if not self.placed:
            self.model.to(self.device)
            self.placed = True
            if self.device.type == "cuda":
                shape = gpu_memory.T5Shape.from_config(self.model.config.to_dict())
                self.budget = gpu_memory.MemoryBudget.measure(gpu_memory.torch_free_bytes(self.device), shape,
                                                              str(self.model.dtype))

    def tokenize(self, texts: list[str], special: bool = True) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=special)["input_ids"]

    def detokenize(self, sequences: list[list[int]]) -> list[str]:
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=True)

    def _tensors(self, inputs: list[list[int]]) -> dict:
        width = max(len(row) for row in inputs)
        return {"input_ids": torch.tensor([row + [self.pad_token_id] * (width - len(row)) for row in inputs],
                                          device=self.device),
                "attention_mask": torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in inputs],
                                               device=self.device)}

    def batch_key(self, params: GenerationParams) -> Hashable:
        """Equal parameters share a ``generate`` call (stop sequences are cut afterwards); a
        seeded sample runs alone, so that what shares its batch cannot change it."""
        return object() if params.seed is not None else replace(params, stop=())

    @torch.inference_mode()
    def run(self, jobs: list[GenerationJob]) -> None:
        """One ``model.generate`` for the batch (a stream runs alone: its key is its own)."""
        params = jobs[0].params
        if params.seed is not None:
            torch.manual_seed(params.seed)
        kwargs = {**params.generate_kwargs(), "max_new_tokens": max(job.max_new_tokens for job in jobs)}
        streams = [job for job in jobs if job.on_token is not None]
        if streams:
            callback = TokenCallback(streams[0].on_token)
            kwargs.update(streamer=callback, stopping_criteria=[callback])
        output = self.model.generate(**self._tensors([job.ids for job in jobs]), **kwargs)
        rows = [row[1:] for row in output.tolist()]
        rows = [row[:row.index(self.eos_token_id)] if self.eos_token_id in row else row for row in rows]
        n = params.num_return_sequences
        for i, job in enumerate(jobs):
            job.finish(rows[i * n:(i + 1) * n])
