"""Device memory on a GPU: how many sequences one engine call may hold in what the device has
free (``MemoryBudget``, from the model's shape), and what happens when a call runs out anyway
(``run_in_memory``): the cache is freed, the batch split in halves and retried, and a request
that cannot fit alone gets a 400 naming what to lower while the others are answered.
Functions whose inputs can be passed in, so each is testable on a machine with no GPU.
"""

import gc
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from handlers.errors import BadRequest, InferenceError

log = logging.getLogger(__name__)
T = TypeVar("T")

# (bytes per weight, bytes per activation), by INFERENCE_DTYPE / CT2_COMPUTE_TYPE name
PRECISION_BYTES = {"float32": (4, 4), "bfloat16": (2, 2), "int8_bfloat16": (1, 2), "int8_float32": (1, 4),
                   "int8": (1, 4)}


@dataclass(frozen=True)
class T5Shape:
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_heads: int = 8
    num_layers: int = 6
    num_decoder_layers: int = 6
    vocab_size: int = 32128

    @classmethod
    def from_config(cls, config: Mapping) -> "T5Shape":
        """From a model's config.json (T5's defaults where it is silent)."""
        values = {name: int(config[name]) for name in cls.__dataclass_fields__ if config.get(name)}
        values.setdefault("num_decoder_layers", values.get("num_layers", cls.num_layers))
        return cls(**values)

    def parameters(self) -> int:
        attention = 4 * self.d_model * self.num_heads * self.d_kv
        ffn = 3 * self.d_model * self.d_ff  # gated-gelu: wi_0, wi_1, wo
        return (2 * self.vocab_size * self.d_model + self.num_layers * (attention + ffn)
                + self.num_decoder_layers * (2 * attention + ffn))

    def sequence_bytes(self, input_tokens: int, new_tokens: int, activation: int) -> int:
        """Device memory one generated sequence holds at its longest: its decoder key/value
        caches (self-attention over the new tokens, cross-attention over the input), its copy of
        the encoder output, and one step's float32 logits and log-probabilities."""
        cache = 2 * self.num_decoder_layers * self.num_heads * self.d_kv * (input_tokens + new_tokens)
        return (cache + input_tokens * self.d_model) * activation + 2 * self.vocab_size * 4

    def encoding_bytes(self, input_tokens: int, activation: int) -> int:
        """Device memory encoding one input takes at its peak: one layer's attention scores (and
        their float32 softmax) and its gated feed-forward activations."""
        return input_tokens * (self.d_model + 3 * self.d_ff) * activation + 2 * self.num_heads * input_tokens ** 2 * 4


@dataclass(frozen=True)
class MemoryBudget:
    """How many inputs, and so sequences (inputs x beams x returned sequences), one engine call
    may hold in this worker's share of the device's memory."""

    usable: int  # bytes this worker's calls may take
    shape: T5Shape
    activation: int  # bytes per activation value

    @classmethod
    def measure(cls, free: int, shape: T5Shape, precision: str, *, weights_loaded: bool = True,
                share: int = 1, headroom: float = 0.85) -> "MemoryBudget":
        """``free``: the device's free bytes, after the model is placed (``weights_loaded``), or
        before (its weights are then taken off); ``share``: the workers on this device;
        ``precision``: INFERENCE_DTYPE / CT2_COMPUTE_TYPE's name (or str(torch dtype))."""
        weight, activation = PRECISION_BYTES.get(precision.removeprefix("torch."), (4, 4))
        free = free // max(share, 1) - (0 if weights_loaded else shape.parameters() * weight)
        return cls(max(int(free * headroom), 0), shape, activation)

    def max_inputs(self, input_tokens: int, new_tokens: int, sequences_per_input: int = 1) -> int:
        """Inputs per call (at least 1: one that does not fit meets ``run_in_memory``), each
        generating ``sequences_per_input`` (num_beams x num_return_sequences) sequences."""
        per_input = (max(sequences_per_input, 1) * self.shape.sequence_bytes(input_tokens, new_tokens, self.activation)
                     + self.shape.encoding_bytes(input_tokens, self.activation))
        return max(1, self.usable // per_input)


def torch_free_bytes(device) -> int:
    """What torch may still allocate on ``device``: the device's free memory plus the blocks
    torch's caching allocator holds but does not use."""
    import torch
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


OUT_OF_MEMORY = ("out of memory", "cuda_error_out_of_memory", "cublas_status_alloc_failed")


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError, or CTranslate2's RuntimeError saying so."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and any(mark in str(exc).lower() for mark in OUT_OF_MEMORY)


def free_device_cache() -> None:
    """After an out-of-memory error: collect what the failed call left and give torch's cached
    blocks back to the device. CTranslate2's allocator frees its cache itself when it runs out."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def does_not_fit(input_tokens: int, max_new_tokens: int, num_beams: int, num_return_sequences: int) -> BadRequest:
    """The 400 for one request that runs out of device memory alone."""
    return BadRequest(f"this request does not fit in the GPU's free memory even alone ({input_tokens} input tokens, "
                      f"max_new_tokens {max_new_tokens}, num_beams {num_beams}, num_return_sequences "
                      f"{num_return_sequences}): lower max_new_tokens, num_beams, num_return_sequences or the "
                      "input's length")


def run_in_memory(run: Callable[[list[T]], list], items: list[T], too_big: Callable[[T], InferenceError],
                  free_cache: Callable[[], None] = free_device_cache) -> list:
    """``run(items)``, one result per item. On an out-of-memory error: free the cache, then run
    each half on its own, recursively; an item that runs out of memory alone is answered with
    ``too_big(item)`` and the others still run. Any other error propagates."""
    try:
        return run(items)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        error = f"{type(exc).__name__}: {str(exc)[:200]}"
    free_cache()  # out of the except block: the error's frames (and their tensors) are gone
    if len(items) == 1:
        log.warning("out of device memory on one request alone (%s): answering it 400", error)
        return [too_big(items[0])]
    half = (len(items) + 1) // 2
    log.warning("out of device memory on %d requests (%s): running them as %d + %d", len(items), error, half,
                len(items) - half)
    return run_in_memory(run, items[:half], too_big, free_cache) + run_in_memory(run, items[half:], too_big, free_cache)
