"""Model artifacts: a SageMaker model dir (or model.tar.gz), checked before anything loads it."""

import atexit
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from handlers.errors import ModelLoadError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def extract_archive(archive: Path, target: Path) -> Path:
    """Extract ``archive`` into ``target`` through Python's ``data`` filter (no ``..``, links
    out of the target or device files), refusing absolute names too; the error names the member."""
    def refuse_absolute(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
        if os.path.isabs(member.name):  # the data filter would strip the "/" and extract it
            raise tarfile.AbsolutePathError(member)
        return tarfile.data_filter(member, path)

    try:
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter=refuse_absolute)
    except tarfile.FilterError as exc:
        raise ModelLoadError(f"refusing to extract {archive.name}: member "
                             f"{exc.tarinfo.name!r} is unsafe ({exc})") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ModelLoadError(f"cannot extract {archive.name}: {exc}") from None
    return target


def scratch_dir() -> Path:
    """A private dir for an extracted archive, removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix="model-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A model dir, or an archive extracted into a fresh temporary dir."""
    path = Path(path)
    if path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES):
        return extract_archive(path, scratch_dir())
    if not path.is_dir():
        raise ModelLoadError(f"model directory {str(path)!r} does not exist")
    if not any(path.iterdir()):
        raise ModelLoadError(f"model directory {str(path)!r} is empty")
    if (path / "model.tar.gz").exists() and not (path / "config.json").exists():
        return extract_archive(path / "model.tar.gz", scratch_dir())
    return path


def check_model_dir(path: Path) -> None:
    """Fail early, naming the missing or corrupt file."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{config_file} is missing: not a Hugging Face model directory")
    try:
        if not isinstance(json.loads(config_file.read_text()), dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:  # UnicodeDecodeError is one
        raise ModelLoadError(f"{config_file} is corrupt: {exc}") from None
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ModelLoadError(f"no weights in {path}: expected one of {', '.join(WEIGHT_FILES)}")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(f"no tokenizer in {path}: expected one of {', '.join(TOKENIZER_FILES)}")


def weight_file(path: Path) -> Path:
    return next(path / name for name in WEIGHT_FILES if (path / name).is_file())
