"""Generation parameters: validated once at decode time, hashable so equal ones batch together."""

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from handlers.errors import BadRequest


@dataclass(frozen=True)
class GenerationParams:
    """Per-request generation settings; ``None`` means the model's generation_config default."""

    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    num_beams: int | None = None
    do_sample: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    length_penalty: float | None = None
    early_stopping: bool | str | None = None
    num_return_sequences: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate`` (``seed`` and ``stop`` are applied around it)."""
        skip = {"seed", "stop"}
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in skip and getattr(self, f.name) is not None}


PARAMETER_NAMES = tuple(f.name for f in fields(GenerationParams))
MAX_NUM_BEAMS = 16
MAX_RETURN_SEQUENCES = 16
MAX_STOP_SEQUENCES = 16
# temperature and repetition_penalty divide the logits: below this they overflow to inf and
# sampling fails on NaN probabilities (found by fuzzing).
MIN_DIVISOR = 0.01


def _int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"parameter {name!r} must be an integer, got {type(value).__name__} {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise BadRequest(f"parameter {name!r} must be {bound}, got {value}")
    return value


def _float(name: str, value: Any, *, low: float | None = None, high: float | None = None,
           low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"parameter {name!r} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise BadRequest(f"parameter {name!r} must be finite, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise BadRequest(f"parameter {name!r} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise BadRequest(f"parameter {name!r} must be <= {high}, got {value}")
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"parameter {name!r} must be true or false, got {value!r}")
    return value


def parse_parameters(raw: Any, *, max_new_tokens_cap: int) -> GenerationParams:
    """Validate a request's ``parameters`` object; every error names the parameter."""
    if raw is None:
        return GenerationParams()
    if not isinstance(raw, dict):
        raise BadRequest(f"'parameters' must be a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(PARAMETER_NAMES) - {"stream", "max_length"})
    if unknown:
        raise BadRequest(f"unknown generation parameter(s) {', '.join(map(repr, unknown))}; "
                         f"supported: {', '.join(PARAMETER_NAMES)}, stream")
    given = {k: v for k, v in raw.items() if v is not None and k != "stream"}
    if "max_length" in given:  # older callers: for an encoder-decoder it bounds new tokens
        if "max_new_tokens" in given:
            raise BadRequest("give either 'max_new_tokens' or 'max_length', not both")
        given["max_new_tokens"] = given.pop("max_length")
    out = _lengths(given, max_new_tokens_cap)
    for name, low, high in (("num_beams", 1, MAX_NUM_BEAMS), ("num_return_sequences", 1, MAX_RETURN_SEQUENCES),
                            ("top_k", 0, None), ("no_repeat_ngram_size", 0, None), ("seed", 0, 2**63 - 1)):
        if name in given:
            out[name] = _int(name, given[name], low, high)
    if "do_sample" in given:
        out["do_sample"] = _bool("do_sample", given["do_sample"])
    for name, bounds in (("temperature", dict(low=MIN_DIVISOR, high=100.0)),
                         ("top_p", dict(low=0.0, low_open=True, high=1.0)),
                         ("repetition_penalty", dict(low=MIN_DIVISOR, high=100.0)),
                         ("length_penalty", dict(low=-100.0, high=100.0))):
        if name in given:
            out[name] = _float(name, given[name], **bounds)
    if "early_stopping" in given:
        value = given["early_stopping"]
        if not (isinstance(value, bool) or value == "never"):
            raise BadRequest(f"parameter 'early_stopping' must be true, false or \"never\", got {value!r}")
        out["early_stopping"] = value
    if "stop" in given:
        out["stop"] = _stop(given["stop"])
    sampling = out.get("do_sample", False)
    returns, beams = out.get("num_return_sequences", 1), out.get("num_beams", 1)
    if not sampling and returns > beams:
        raise BadRequest(f"parameter 'num_return_sequences' ({returns}) must be <= 'num_beams' "
                         f"({beams}) unless 'do_sample' is true")
    return GenerationParams(**out)


def _lengths(given: dict, cap: int) -> dict[str, int]:
    out = {}
    if "max_new_tokens" in given:
        out["max_new_tokens"] = _int("max_new_tokens", given["max_new_tokens"], 1)
        if out["max_new_tokens"] > cap:
            raise BadRequest(f"parameter 'max_new_tokens' is {out['max_new_tokens']}, above this "
                             f"server's cap of {cap} (INFERENCE_MAX_NEW_TOKENS)")
    if "min_new_tokens" in given:
        out["min_new_tokens"] = _int("min_new_tokens", given["min_new_tokens"], 0, cap)
        if out["min_new_tokens"] > out.get("max_new_tokens", cap):
            raise BadRequest("parameter 'min_new_tokens' must be <= 'max_new_tokens'")
    return out


def _stop(stop: Any) -> tuple[str, ...]:
    sequences = [stop] if isinstance(stop, str) else stop
    if (not isinstance(sequences, list) or not all(isinstance(s, str) and s for s in sequences)
            or len(sequences) > MAX_STOP_SEQUENCES):
        raise BadRequest(f"parameter 'stop' must be a non-empty string or a list of at most "
                         f"{MAX_STOP_SEQUENCES} non-empty strings, got {stop!r}")
    return tuple(sequences)


def default_max_new_tokens(model_dir: Path, cap: int) -> int:
    """What a request that does not say may generate: the model's ``generation_config.json``
    ``max_new_tokens`` (else 64, what the engines use), at most the server's cap."""
    try:
        configured = json.loads((model_dir / "generation_config.json").read_text()).get("max_new_tokens")
    except (OSError, ValueError, AttributeError):
        configured = None
    return min(configured if isinstance(configured, int) and configured > 0 else 64, cap)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """The text up to (not including) the earliest stop sequence."""
    cut = len(text)
    for sequence in stop:
        index = text.find(sequence)
        if index != -1:
            cut = min(cut, index)
    return text[:cut]
