"""The model logic's settings: one frozen object, read from the environment once.

A server reads it as part of its own settings (``contract.settings.Settings.from_env``) and
hands it down; ``use(config)`` makes it the process's default, so a user script that calls
``handlers.load_model(dir)`` gets the server's engine. Outside a server (a notebook, a user
script run by hand) ``current()`` reads the environment once.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass

BACKENDS = ("auto", "ctranslate2", "transformers")


class ConfigError(ValueError):
    """An environment variable holds an invalid value; the message names it."""


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    return value


def choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (the first when unset)."""
    value = env.get(name, "").strip().lower() or choices[0]
    if value not in choices:
        raise ConfigError(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not value >= 0:
        raise ConfigError(f"{name}={raw!r} must be a number >= 0")
    return value


@dataclass(frozen=True)
class HandlerConfig:
    """Model-logic settings. Build with ``HandlerConfig.from_env(os.environ)`` at start-up."""

    default_accept: str | None = None  # SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT
    program: str = "inference.py"  # SAGEMAKER_PROGRAM
    submit_dir: str | None = None  # SAGEMAKER_SUBMIT_DIRECTORY (a local dir)
    device: str | None = None  # INFERENCE_DEVICE: cpu, cuda, cuda:1 ... (default: cuda if present)
    dtype: str | None = None  # INFERENCE_DTYPE: float32 or bfloat16 (default: bf16 on capable GPUs)
    max_new_tokens: int = 512  # INFERENCE_MAX_NEW_TOKENS: cap on max_new_tokens per request
    max_input_tokens: int | None = None  # INFERENCE_MAX_INPUT_TOKENS (default: the model's limit)
    max_batch_size: int = 32  # INFERENCE_MAX_BATCH_SIZE: prompts per engine call
    max_batch_wait_ms: float = 20.0  # INFERENCE_MAX_BATCH_WAIT_MS: wait to fill a batch, under load
    backend: str = "auto"  # INFERENCE_BACKEND: auto (CTranslate2 where it runs the model), ctranslate2, transformers
    compute_type: str | None = None  # CT2_COMPUTE_TYPE (default int8 on CPU, bfloat16 on capable GPUs)
    thread_layout: str = "auto"  # CT2_THREAD_LAYOUT: auto (measured at start), replicas, both
    ct2_cache_dir: str | None = None  # CT2_CACHE_DIR: converted checkpoints (default ~/.cache/...)
    threads: int | None = None  # engine threads (INFERENCE_TORCH_THREADS; default: the cores)
    timeout_s: float | None = None  # a server's request timeout (SAGEMAKER_MODEL_SERVER_TIMEOUT), for messages

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "HandlerConfig":
        submit_dir = env.get("SAGEMAKER_SUBMIT_DIRECTORY", "").strip()
        if submit_dir.startswith("s3://"):
            submit_dir = ""  # SageMaker already unpacked it into the model dir's code/
        max_input = env.get("INFERENCE_MAX_INPUT_TOKENS", "").strip()
        return cls(
            default_accept=env.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "").strip() or None,
            program=env.get("SAGEMAKER_PROGRAM", "").strip() or "inference.py",
            submit_dir=submit_dir or None,
            device=env.get("INFERENCE_DEVICE", "").strip() or None,
            dtype=env.get("INFERENCE_DTYPE", "").strip() or None,
            max_new_tokens=env_int(env, "INFERENCE_MAX_NEW_TOKENS", cls.max_new_tokens),
            max_input_tokens=env_int(env, "INFERENCE_MAX_INPUT_TOKENS", 0) if max_input else None,
            max_batch_size=env_int(env, "INFERENCE_MAX_BATCH_SIZE", cls.max_batch_size),
            max_batch_wait_ms=env_float(env, "INFERENCE_MAX_BATCH_WAIT_MS", cls.max_batch_wait_ms),
            backend=choice(env, "INFERENCE_BACKEND", BACKENDS),
            compute_type=env.get("CT2_COMPUTE_TYPE", "").strip().lower() or None,
            thread_layout=choice(env, "CT2_THREAD_LAYOUT", ("auto", "replicas", "both")),
            ct2_cache_dir=env.get("CT2_CACHE_DIR", "").strip() or None,
            threads=env_int(env, "INFERENCE_TORCH_THREADS", 0, minimum=0) or None,
        )


_current: HandlerConfig | None = None


def use(config: HandlerConfig) -> None:
    """Make ``config`` this process's default (what ``handlers.load_model`` uses without one)."""
    global _current
    _current = config


def current() -> HandlerConfig:
    """The config a server set with ``use``; outside a server, the environment's, read once."""
    global _current
    if _current is None:
        _current = HandlerConfig.from_env(os.environ)
    return _current
