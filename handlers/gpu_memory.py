"""Device memory on a GPU: how many sequences one engine call may hold in what the device has
free (``MemoryBudget``, from the model's shape), and, when a call runs out anyway, splitting it
in halves (``run_in_memory``): a request that cannot fit alone gets a 400 naming what to lower.
"""

import gc
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

from handlers.errors import BadRequest, InferenceError

log = logging.getLogger(__name__)
# (bytes per weight, bytes per activation), by INFERENCE_DTYPE / CT2_COMPUTE_TYPE name
PRECISION_BYTES = {"float32": (4, 4), "bfloat16": (2, 2), "int8_bfloat16": (1, 2), "int8_float32": (1, 4),
                   "int8": (1, 4)}
OUT_OF_MEMORY = ("out of memory", "cuda_error_out_of_memory", "cublas_status_alloc_failed")


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
        values = {f.name: int(config[f.name]) for f in fields(cls) if config.get(f.name)}
        values.setdefault("num_decoder_layers", values.get("num_layers", cls.num_layers))
        return cls(**values)

    def parameters(self) -> int:
        attention = 4 * self.d_model * self.num_heads * self.d_kv
        ffn = 3 * self.d_model * self.d_ff  # gated-gelu: wi_0, wi_1, wo
        return (2 * self.vocab_size * self.d_model + self.num_layers * (attention + ffn)
                + self.num_decoder_layers * (2 * attention + ffn))

    def sequence_bytes(self, input_tokens: int, new_tokens: int, activation: int) -> int:
        """One generated sequence at its longest: its decoder's self- and cross-attention
        key/value caches, its copy of the encoder output, one step's float32 logits and log-probs."""
        cache = 2 * self.num_decoder_layers * self.num_heads * self.d_kv * (input_tokens + new_tokens)
        return (cache + input_tokens * self.d_model) * activation + 2 * self.vocab_size * 4


@dataclass(frozen=True)
class MemoryBudget:
    """How many inputs one engine call may hold in 85 % of what the device has free."""

    usable: int  # bytes
    shape: T5Shape
    activation: int  # bytes per activation value

    @classmethod
    def measure(cls, free: int, shape: T5Shape, precision: str, *,
                weights_loaded: bool = True) -> "MemoryBudget":
        """``free``: the device's free bytes, after the weights are placed or (``weights_loaded``
        false) before; ``precision``: INFERENCE_DTYPE / CT2_COMPUTE_TYPE's name (or a torch dtype's)."""
        weight, activation = PRECISION_BYTES.get(precision.removeprefix("torch."), (4, 4))
        free -= 0 if weights_loaded else shape.parameters() * weight
        return cls(max(int(free * 0.85), 0), shape, activation)

    def max_inputs(self, input_tokens: int, new_tokens: int, sequences_per_input: int = 1) -> int:
        """Inputs per call, each generating ``sequences_per_input`` (beams x returned sequences);
        at least 1: one that does not fit meets ``run_in_memory``."""
        shape, sequences = self.shape, max(sequences_per_input, 1)
        # encoding one input at its peak: one layer's attention scores (and their float32
        # softmax) and its gated feed-forward activations
        encoding = (input_tokens * (shape.d_model + 3 * shape.d_ff) * self.activation
                    + 2 * shape.num_heads * input_tokens ** 2 * 4)
        per_input = sequences * shape.sequence_bytes(input_tokens, new_tokens, self.activation) + encoding
        return max(1, self.usable // per_input)


def torch_free_bytes(device) -> int:
    """The device's free memory plus what torch's caching allocator holds unused."""
    import torch
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def free_device_cache() -> None:
    """Collect what a failed call left and give torch's cached blocks back (CTranslate2's
    allocator frees its own cache when it runs out)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def does_not_fit(input_tokens: int, max_new_tokens: int, num_beams: int,
                 num_return_sequences: int) -> BadRequest:
    """The 400 for one request that runs out of device memory alone."""
    return BadRequest(f"this request does not fit in the GPU's free memory even alone ({input_tokens} input "
                      f"tokens, max_new_tokens {max_new_tokens}, num_beams {num_beams}, num_return_sequences "
                      f"{num_return_sequences}): lower max_new_tokens, num_beams, num_return_sequences or "
                      "the input's length")


def run_in_memory(run: Callable[[list], list], items: list, too_big: Callable[[object], InferenceError],
                  free_cache: Callable[[], None] = free_device_cache) -> list:
    """``run(items)``, one result per item. On an out-of-memory error (torch's, or CTranslate2's
    RuntimeError), free the cache and run each half on its own, recursively; an item out of
    memory alone is answered ``too_big(item)``. Any other error propagates."""
    try:
        return run(items)
    except Exception as exc:
        oom = type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, RuntimeError) and any(
            mark in str(exc).lower() for mark in OUT_OF_MEMORY)
        if not oom:
            raise
        error = f"{type(exc).__name__}: {str(exc)[:200]}"
    free_cache()  # out of the except block: the error's frames (and their tensors) are gone
    if len(items) == 1:
        log.warning("out of device memory on one request alone (%s): answering it 400", error)
        return [too_big(items[0])]
    half = (len(items) + 1) // 2
    log.warning("out of device memory on %d requests (%s): running them as %d + %d", len(items), error, half,
                len(items) - half)
    return [*run_in_memory(run, items[:half], too_big, free_cache),
            *run_in_memory(run, items[half:], too_big, free_cache)]
