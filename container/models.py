"""What a multi-model load request names, checked before MMS sees it: the model's name (MMS only
ever sees ``mms_name(name)``) and its url (a directory inside the model root, symlinks
resolved); and the record of a loaded model, which the state dir keeps."""

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from container.dispatch import ModelQueue
from handlers.errors import BadRequest, NotFound

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}")
SCHEME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def validate_name(name) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise BadRequest(f"invalid model name {str(name)[:80]!r}: use 1-255 characters of "
                         "A-Z a-z 0-9 . _ - / starting with a letter or digit, no '..'")
    return name


def mms_name(name: str) -> str:
    """The name MMS knows a model by: readable, unique per public name, and safe anywhere."""
    readable = re.sub(r"[^A-Za-z0-9_]", "_", name)[:40]
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def resolve_url(url, root: Path) -> Path:
    """``url`` as a real directory inside ``root``; 400 when it is not allowed, 404 when
    it does not exist. Relative urls are taken relative to ``root``."""
    if not isinstance(url, str) or not url or len(url) > 4096 or \
            any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise BadRequest("url must be a non-empty local path without control characters")
    if SCHEME_PATTERN.match(url):
        raise BadRequest(f"url {url[:200]!r}: only local directories under {root} can be "
                         "loaded (no http://, s3://, file:// ...)")
    path = Path(os.path.realpath(root / url))  # an absolute url replaces root
    if os.path.commonpath([path, root]) != str(root):
        raise BadRequest(f"url {url[:200]!r} is outside the model root {root}")
    if not path.exists():
        raise NotFound(f"url {url[:200]!r} does not exist")
    if not path.is_dir():
        raise BadRequest(f"url {url[:200]!r} is not a directory")
    return path


@dataclass
class ModelRecord:
    name: str
    url: str  # as the caller gave it
    path: Path  # resolved
    mms_name: str
    workers: int
    load_seconds: float
    queue: ModelQueue | None = None
    pss_bytes: int = 0
    rss_bytes: int = 0
    batchable: bool = True  # False: its script owns predict; requests go one at a time
    engine: dict = field(default_factory=dict)  # what its workers run it on (their load reports)

    def describe(self) -> dict:
        return {"modelName": self.name, "modelUrl": self.url, "workers": self.workers,
                "loadSeconds": round(self.load_seconds, 3),
                "memoryPssBytes": self.pss_bytes, "memoryRssBytes": self.rss_bytes}
