"""The Flan-T5 interceptor: encode -> generate -> decode over a list of requests."""

import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch
import transformers
from transformers import (AutoModelForSeq2SeqLM, AutoTokenizer, StoppingCriteria,
                          TextIteratorStreamer)

from handlers.artifacts import check_model_dir, resolve_model_dir, weight_file
from handlers.codecs import Generation
from handlers.config import HandlerConfig
from handlers.errors import BadRequest, GatewayTimeout, InternalError, ModelLoadError
from handlers.generation import GenerationParams, cut_at_stop

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


class CancelledCriteria(StoppingCriteria):
    """Stops generation when the consumer of a stream has gone away or hit a stop sequence."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool,
                          device=input_ids.device)


class FlanT5Model:
    """A seq2seq model and its tokenizer. Loads on the CPU; ``place()`` moves it to its device.

    Loading does no torch compute, so a process may load, fork, and let the child place and
    run it (torch's thread pool and CUDA do not survive a fork).
    """

    def __init__(self, model, tokenizer, model_dir: Path, device: torch.device,
                 max_input_tokens: int, max_batch_size: int):
        self.model, self.tokenizer, self.model_dir = model, tokenizer, model_dir
        self.device, self.max_input_tokens, self.max_batch_size = device, max_input_tokens, max_batch_size
        self._placed = False

    @classmethod
    def load(cls, model_dir, config: HandlerConfig = HandlerConfig()) -> "FlanT5Model":
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        path = resolve_model_dir(model_dir)
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
        limits = [n for n in (tokenizer.model_max_length, getattr(model.config, "n_positions", None))
                  if isinstance(n, int) and 0 < n < 1_000_000]
        max_input = config.max_input_tokens or (min(limits) if limits else 512)
        default_new = model.generation_config.max_new_tokens or 64
        model.generation_config.max_new_tokens = min(default_new, config.max_new_tokens)
        model.generation_config.max_length = None
        log.info("loaded %s (%s, %.1fM parameters, %s on %s, max %d input tokens)", path,
                 type(model).__name__, model.num_parameters() / 1e6, dtype, device, max_input)
        return cls(model, tokenizer, path, device, max_input, config.max_batch_size)

    def place(self) -> None:
        if not self._placed:
            self.model.to(self.device)
            self._placed = True

    def _encode(self, prompts: list[str]) -> tuple[dict, list[bool]]:
        """Tokenize, truncating to the model's input limit (kept: the closing ``</s>``)."""
        ids = self.tokenizer(prompts, add_special_tokens=True)["input_ids"]
        limit, eos = self.max_input_tokens, self.tokenizer.eos_token_id
        truncated = [len(row) > limit for row in ids]
        ids = [row[:limit - 1] + [eos] if cut else row for row, cut in zip(ids, truncated)]
        width = max(len(row) for row in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in ids], device=self.device)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids], device=self.device)
        return {"input_ids": input_ids, "attention_mask": mask}, truncated

    @torch.inference_mode()
    def _generate(self, prompts: list[str], params: GenerationParams, **extra) -> list[Generation]:
        self.place()
        inputs, truncated = self._encode(prompts)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        output = self.model.generate(**inputs, **params.generate_kwargs(), **extra)
        texts = self.tokenizer.batch_decode(output, skip_special_tokens=True)
        n = params.num_return_sequences
        return [Generation(tuple(cut_at_stop(t, params.stop) for t in texts[i * n:(i + 1) * n]), cut)
                for i, cut in enumerate(truncated)]

    def generate(self, requests: list[tuple[str, GenerationParams]]) -> list[Generation | InternalError]:
        """One result per request, same order. Requests with equal parameters run as one batch;
        a failing batch fails only its own requests."""
        results: list = [None] * len(requests)
        groups = defaultdict(list)
        for index, (_, params) in enumerate(requests):
            groups[params].append(index)
        for params, indexes in groups.items():
            # A seeded sample must not depend on what shares its batch: one prompt per call.
            size = 1 if params.seed is not None else self.max_batch_size
            for start in range(0, len(indexes), size):
                chunk = indexes[start:start + size]
                try:
                    outputs = self._generate([requests[i][0] for i in chunk], params)
                except Exception as exc:  # a model failure is this group's 500, not the server's
                    log.exception("generate failed for %d prompt(s)", len(chunk))
                    outputs = [InternalError.from_exception("generate", exc)] * len(chunk)
                for index, output in zip(chunk, outputs):
                    results[index] = output
        return results

    def warm_up(self) -> None:
        """One real generate on the target device; raises if the model cannot answer."""
        [result] = self.generate([("warm up", GenerationParams(max_new_tokens=2))])
        if isinstance(result, Exception):
            raise result

    def stream(self, prompt: str, params: GenerationParams, timeout: float) -> "TextStream":
        if params.num_beams not in (None, 1) or params.num_return_sequences != 1:
            raise BadRequest("streaming supports one sequence without beam search "
                             "(num_beams 1, num_return_sequences 1)")
        return TextStream(self, prompt, params, timeout)


class TextStream:
    """Text pieces of one generation. ``run()`` generates (call it on the model's own thread);
    iterating yields the pieces as they come, cut at the first stop sequence."""

    def __init__(self, model: FlanT5Model, prompt: str, params: GenerationParams, timeout: float):
        self.model, self.prompt, self.params = model, prompt, params
        self.streamer = TextIteratorStreamer(model.tokenizer, skip_prompt=True,
                                             skip_special_tokens=True, timeout=timeout)
        self.cancelled = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.model._generate([self.prompt], self.params, streamer=self.streamer,
                                 stopping_criteria=[CancelledCriteria(self.cancelled)])
        except BaseException as exc:
            log.exception("streaming generate failed")
            self.error = exc
            self.streamer.end()

    def cancel(self) -> None:
        self.cancelled.set()

    def __iter__(self) -> Iterator[str]:
        text, sent = "", 0
        hold = max((len(s) for s in self.params.stop), default=1) - 1
        try:
            for piece in self.streamer:
                text += piece
                cut = cut_at_stop(text, self.params.stop)
                if len(cut) < len(text):
                    self.cancel()
                    if cut[sent:]:
                        yield cut[sent:]
                    return
                if len(text) - hold > sent:
                    yield text[sent:len(text) - hold]
                    sent = len(text) - hold
            if self.error is not None:
                raise InternalError.from_exception("generate", self.error)
            if text[sent:]:
                yield text[sent:]
        except queue.Empty:
            self.cancel()
            raise GatewayTimeout("no token generated within the model server timeout") from None
        finally:
            self.cancel()  # the caller went away: stop generating
