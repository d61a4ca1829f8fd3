"""Package a fine-tuned model (a training output dir) as a clean SageMaker ``model.tar.gz``.

    python -m tools.package TRAINING_DIR OUT.tar.gz [--code DIR] [--question TEXT]

Keeps what serving needs: ``config.json``, ``generation_config.json``, the weights
(safetensors or ``pytorch_model.bin``, sharded or not), the tokenizer files, and ``code/``
(``--code DIR``, else the training dir's own ``code/``). Leaves out everything else and says
what: optimizer, scheduler and RNG state, ``training_args.bin``, ``checkpoint-*/`` dirs, logs.
Files go in owned by root with mode 0644 (dirs 0755) whatever their modes on disk
(safetensors may write 0600).

Before writing anything it loads the packaged files with ``handlers.load_service`` and answers
one question through the servers' own decode -> predict -> encode path (the user script's
hooks when ``code/inference.py`` exists): a broken model fails here, not on the endpoint.
"""

import argparse
import fnmatch
import gzip
import json
import logging
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from handlers.config import ConfigError, HandlerConfig
from handlers.errors import InferenceError

KEEP = (
    "config.json", "generation_config.json",
    # weights, sharded or not
    "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
    "pytorch_model.bin", "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json",
    # tokenizer (T5's sentencepiece and fast tokenizers; BPE and WordPiece vocabularies)
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "spiece.model", "sentencepiece.bpe.model", "vocab.json", "merges.txt", "vocab.txt",
)
WEIGHTS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json")
SKIP_IN_CODE = ("__pycache__", "*.pyc", ".*")
DEFAULT_QUESTION = "Translate to German: How old are you?"


class PackageError(Exception):
    """The training dir cannot become a model.tar.gz; the message says why and what to do."""


def select(training_dir: Path) -> tuple[list[Path], list[str]]:
    """(files to keep, names left out) at the top of ``training_dir``."""
    if not training_dir.is_dir():
        raise PackageError(f"{training_dir} is not a directory")
    entries = sorted(training_dir.iterdir())
    kept = [p for p in entries if p.is_file() and any(fnmatch.fnmatch(p.name, k) for k in KEEP)]
    left_out = [p.name + ("/" if p.is_dir() else "") for p in entries
                if p not in kept and p.name != "code"]
    names = {p.name for p in kept}
    if "config.json" not in names:
        raise PackageError(f"{training_dir} has no config.json: not a Hugging Face model dir "
                           "(save the final model with trainer.save_model(DIR) or model.save_pretrained(DIR))")
    if not any(fnmatch.fnmatch(n, w) for n in names for w in WEIGHTS):
        checkpoints = [p.name for p in entries if p.is_dir() and p.name.startswith("checkpoint-")]
        hint = (f"; it holds {', '.join(checkpoints)}: pass one of them as TRAINING_DIR" if checkpoints
                else "")
        raise PackageError(f"no model weights (model.safetensors or pytorch_model.bin) at the top of "
                           f"{training_dir}{hint}")
    return kept, left_out


def code_files(code_dir: Path) -> list[Path]:
    """Every file below ``code_dir``, relative to it, without caches and hidden files."""
    if not code_dir.is_dir():
        raise PackageError(f"--code {code_dir}: not a directory")
    files = []
    for root, dirs, names in os.walk(code_dir):
        dirs[:] = sorted(d for d in dirs if not any(fnmatch.fnmatch(d, s) for s in SKIP_IN_CODE))
        files += [Path(root, n).relative_to(code_dir) for n in sorted(names)
                  if not any(fnmatch.fnmatch(n, s) for s in SKIP_IN_CODE)]
    if not any(f.suffix == ".py" for f in files):
        raise PackageError(f"--code {code_dir} holds no .py file (expected inference.py)")
    return files


def stage(kept: list[Path], code_dir: Path | None, target: Path) -> None:
    """Copy the files to keep into ``target`` (0644 files, 0755 dirs)."""
    for path in kept:
        shutil.copyfile(path, target / path.name)
    if code_dir is not None:
        for relative in code_files(code_dir):
            (target / "code" / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(code_dir / relative, target / "code" / relative)
    for root, dirs, files in os.walk(target):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)


def validate(model_dir: Path, question: str) -> str:
    """Load ``model_dir`` as the servers do and answer ``question``; the encoded answer."""
    import transformers

    from handlers.service import load_service
    transformers.utils.logging.disable_progress_bar()
    try:
        service = load_service(model_dir, HandlerConfig.from_env(os.environ))
        payload = service.decode(json.dumps({"inputs": question}).encode(), "application/json",
                                 "application/json")
        [result] = service.predict([payload])
        if isinstance(result, InferenceError):
            raise result
        body, _ = service.encode(result, payload)
    except (InferenceError, ConfigError) as exc:
        raise PackageError(f"the model does not load or answer: {exc}") from exc
    except Exception as exc:  # a user script's own failure (its traceback is in the log)
        raise PackageError(f"the model does not load or answer: {type(exc).__name__}: {exc}") from exc
    return body.decode(errors="replace")


def write_archive(source: Path, out: Path) -> None:
    """``source``'s files as a reproducible tar.gz (sorted, mtime 0, root:root); written to a
    temporary name first, so a failure leaves no half-written archive behind."""
    members = sorted(source.rglob("*"))
    partial = out.with_name(out.name + ".partial")
    try:
        with open(partial, "wb") as raw, gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in members:
                info = tar.gettarinfo(path, arcname=path.relative_to(source).as_posix())
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
                info.mode = 0o755 if path.is_dir() else 0o644
                if path.is_dir():
                    tar.addfile(info)
                else:
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
        os.chmod(partial, 0o644)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


def package(training_dir: Path, out: Path, code: Path | None = None,
            question: str = DEFAULT_QUESTION, report=print) -> None:
    kept, left_out = select(training_dir)
    if (training_dir / "code").is_dir():
        if code is None:
            code = training_dir / "code"
        elif code.resolve() != (training_dir / "code").resolve():
            left_out.append(f"code/ (replaced by {code})")
    if not out.parent.is_dir():
        raise PackageError(f"{out.parent} does not exist")
    with tempfile.TemporaryDirectory(prefix="package-") as scratch:
        staged = Path(scratch)
        stage(kept, code, staged)
        names = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
        report(f"keeping: {', '.join(names)}")
        if left_out:
            report(f"leaving out: {', '.join(left_out)}")
        report(f"checking: loading it with handlers and asking {question!r}")
        try:
            answer = validate(staged, question)
        except PackageError as exc:  # name the user's files, not the scratch copies
            raise PackageError(str(exc).replace(str(staged), str(training_dir))) from exc
        report(f"answer: {answer}")
        write_archive(staged, out)
    report(f"wrote {out} ({out.stat().st_size:,d} bytes)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.package",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("training_dir", type=Path, help="the fine-tuned model (a training output dir)")
    parser.add_argument("out", type=Path, help="the model.tar.gz to write")
    parser.add_argument("--code", type=Path, help="dir packed as code/ (inference.py, requirements.txt); "
                        "default: TRAINING_DIR/code when it exists")
    parser.add_argument("--question", default=DEFAULT_QUESTION,
                        help="prompt the check answers before the archive is written")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        package(args.training_dir, args.out, args.code, args.question)
    except PackageError as exc:
        print(f"package: error: {exc}; nothing written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
