"""A Hugging Face seq2seq checkpoint -> a CTranslate2 model (what it writes: ``tools.convert``).
A server that finds no converted model (``ctranslate2/`` beside the HF files, or the model dir
itself) converts it once, in a subprocess (torch never enters a serving process), into a cache
keyed by the checkpoint's hash and the quantization: concurrent starters wait on a lock, and
the model appears by an atomic rename, so nobody reads half of one.
"""

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from handlers.artifacts import WEIGHT_FILES, check_model_dir
from handlers.errors import ModelLoadError
from handlers.tokenizer import input_limit

log = logging.getLogger(__name__)
SUBDIR = "ctranslate2"
QUANTIZATIONS = ("float32", "int8", "int8_float32", "bfloat16", "int8_bfloat16")
CHECKPOINT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "spiece.model",
                    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", *WEIGHT_FILES)
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def shipped_model(model_dir: Path) -> Path | None:
    return next((p for p in (model_dir / SUBDIR, model_dir) if (p / "model.bin").is_file()), None)


def cache_dir(configured: str | None) -> Path:
    return Path(configured) if configured else Path.home() / ".cache" / "flan-t5-serving" / "ctranslate2"


def cache_key(model_dir: Path, quantization: str) -> str:
    """The checkpoint's files (and the shards its index names), the quantization, CTranslate2's version."""
    names = set(CHECKPOINT_FILES)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (model_dir / index).is_file():
            names |= set(json.loads((model_dir / index).read_text()).get("weight_map", {}).values())
    digest = hashlib.sha256(f"{quantization} ctranslate2 {metadata.version('ctranslate2')}".encode())
    for path in sorted(model_dir / name for name in names if (model_dir / name).is_file()):
        with open(path, "rb") as f:
            digest.update(path.name.encode() + b"\0" + hashlib.file_digest(f, "sha256").digest())
    return f"{digest.hexdigest()[:32]}-{quantization}"


def cached_conversion(model_dir: Path, quantization: str, cache: Path) -> Path:
    """The converted model for this checkpoint and quantization, converting it on first use."""
    started = time.monotonic()
    key = cache_key(model_dir, quantization)
    final = cache / key
    if not (final / "model.bin").is_file():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            lock = open(cache / f"{key}.lock", "a")
        except OSError as exc:
            raise ModelLoadError(f"cannot write the conversion cache {cache} (CT2_CACHE_DIR): "
                                 f"{exc}") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process converting this checkpoint: wait for it
            if not (final / "model.bin").is_file():
                work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache))
                try:
                    run_conversion(model_dir, work / "model", quantization)
                    os.rename(work / "model", final)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
    log.info("CTranslate2 model for %s (%s): %s (%.1f s)", model_dir, quantization, final,
             time.monotonic() - started)
    return final


def run_conversion(model_dir: Path, out_dir: Path, quantization: str) -> None:
    """This module in a short-lived process: torch never enters ours."""
    log.info("converting %s to CTranslate2 (%s) in a subprocess", model_dir, quantization)
    command = [sys.executable, "-m", "handlers.convert", str(model_dir.resolve()), str(out_dir.resolve()),
               quantization]
    done = subprocess.run(command, cwd=PACKAGE_ROOT, capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"))
    if done.returncode != 0:
        log.error("conversion of %s failed:\n%s", model_dir, done.stderr[-4000:])
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise ModelLoadError(f"converting {model_dir} to CTranslate2 failed: {last}")


def fix_t5_output_scale() -> None:
    """CTranslate2 4.8.5 scales T5's decoder output by d_model**-0.5 whenever
    ``config.tie_word_embeddings`` is true, which transformers 5 always sets for T5; the model
    itself scales only when ``config.scale_decoder_outputs`` says so (not Flan-T5). Greedy
    answers survive the wrong scale, beam search and sampling do not."""
    from ctranslate2.converters import transformers as hf_converters
    from ctranslate2.specs import model_spec

    class T5Loader(hf_converters.T5Loader):
        def get_model_spec(self, model):
            spec = super().get_model_spec(model)
            config = model.config
            scale = getattr(config, "scale_decoder_outputs", config.tie_word_embeddings)
            spec.decoder.scale_outputs = config.d_model ** -0.5 if scale else model_spec.OPTIONAL
            return spec

    hf_converters._MODEL_LOADERS["T5Config"] = T5Loader()


def convert(model_dir: Path, out_dir: Path, quantization: str) -> Path:
    import transformers
    from ctranslate2.converters import TransformersConverter

    check_model_dir(model_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ModelLoadError(f"{out_dir} is not empty")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    fix_t5_output_scale()
    TransformersConverter(str(model_dir)).convert(str(out_dir), quantization=quantization, force=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    config = transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True)
    tokenizer.model_max_length = input_limit(tokenizer.model_max_length, getattr(config, "n_positions", None))
    tokenizer.save_pretrained(out_dir)  # tokenizer.json, also for a checkpoint with spiece.model only
    try:
        generation = transformers.GenerationConfig.from_pretrained(model_dir, local_files_only=True)
    except OSError:
        generation = transformers.GenerationConfig.from_model_config(config)
    generation.save_pretrained(out_dir)
    # T5 pads its vocabulary past the tokenizer's with repeated "<extra_id_N>" names: give each
    # row a name of its own, so every generated id maps back to itself.
    vocabulary_file = out_dir / "shared_vocabulary.json"
    vocabulary, seen = json.loads(vocabulary_file.read_text()), set()
    for i, token in enumerate(vocabulary):
        vocabulary[i] = token if token not in seen else f"<ctranslate2_padding_{i}>"
        seen.add(vocabulary[i])
    vocabulary_file.write_text(json.dumps(vocabulary, ensure_ascii=False))
    return out_dir


if __name__ == "__main__":  # what run_conversion starts: MODEL_DIR OUT_DIR QUANTIZATION
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        convert(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
    except ModelLoadError as exc:
        sys.exit(f"error: {exc.message}")
