"""What goes into model.tar.gz, and how it is written (for ``python -m tools.package``)."""

import fnmatch
import gzip
import os
import shutil
import tarfile
from pathlib import Path

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

class PackageError(Exception):
    """The training dir cannot become a model.tar.gz; the message says why and what to do."""



def select(training_dir: Path) -> tuple[list[Path], list[str]]:
    """(files to keep, names left out) at the top of ``training_dir``."""
    if not training_dir.exists():
        raise PackageError(f"{training_dir} does not exist")
    if not training_dir.is_dir():
        raise PackageError(f"{training_dir} is not a directory: give the training output dir")
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
    """Copy the files to keep into ``target``."""
    for path in kept:
        shutil.copyfile(path, target / path.name)
    if code_dir is not None:
        for relative in code_files(code_dir):
            (target / "code" / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(code_dir / relative, target / "code" / relative)


def write_archive(source: Path, out: Path) -> None:
    """``source``'s files as a reproducible tar.gz (sorted, mtime 0, root:root, 0644 files and
    0755 dirs); written to a temporary name first, so a failure leaves no half-written archive."""
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
