"""Every environment variable the handlers read, read once into a frozen object."""

from collections.abc import Mapping
from dataclasses import dataclass

BACKENDS = ("transformers", "ctranslate2")


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
    max_batch_size: int = 32  # INFERENCE_MAX_BATCH_SIZE: prompts per generate call
    backend: str = "transformers"  # INFERENCE_BACKEND: transformers or ctranslate2
    compute_type: str | None = None  # CT2_COMPUTE_TYPE (default int8 on CPU, bfloat16 on capable GPUs)
    ct2_cache_dir: str | None = None  # CT2_CACHE_DIR: converted checkpoints (default ~/.cache/...)
    threads: int | None = None  # CTranslate2 threads: OMP_NUM_THREADS (the stacks set cores / workers)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "HandlerConfig":
        submit_dir = env.get("SAGEMAKER_SUBMIT_DIRECTORY", "").strip()
        if submit_dir.startswith("s3://"):
            submit_dir = ""  # SageMaker already unpacked it into the model dir's code/
        max_input = env.get("INFERENCE_MAX_INPUT_TOKENS", "").strip()
        backend = env.get("INFERENCE_BACKEND", "").strip().lower() or cls.backend
        if backend not in BACKENDS:
            raise ConfigError(f"INFERENCE_BACKEND={backend!r} must be one of {', '.join(BACKENDS)}")
        threads = env.get("OMP_NUM_THREADS", "").strip()
        return cls(
            default_accept=env.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "").strip() or None,
            program=env.get("SAGEMAKER_PROGRAM", "").strip() or "inference.py",
            submit_dir=submit_dir or None,
            device=env.get("INFERENCE_DEVICE", "").strip() or None,
            dtype=env.get("INFERENCE_DTYPE", "").strip() or None,
            max_new_tokens=env_int(env, "INFERENCE_MAX_NEW_TOKENS", cls.max_new_tokens),
            max_input_tokens=env_int(env, "INFERENCE_MAX_INPUT_TOKENS", 0) if max_input else None,
            max_batch_size=env_int(env, "INFERENCE_MAX_BATCH_SIZE", cls.max_batch_size),
            backend=backend,
            compute_type=env.get("CT2_COMPUTE_TYPE", "").strip().lower() or None,
            ct2_cache_dir=env.get("CT2_CACHE_DIR", "").strip() or None,
            threads=int(threads) if threads.isdigit() and int(threads) > 0 else None,
        )
