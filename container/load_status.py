"""How a worker tells the launcher whether its model loaded, and why not.

MMS reports a model as registered (200) even when the handler's ``initialize`` raised:
it logs the traceback and serves 500s afterwards. So each worker process writes one small
JSON file per load, ``STATE_DIR/<mms model name>/<pid>.json``, before it answers MMS's
load command; the front reads those files once MMS says the workers are up.
"""

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class LoadStatus:
    pid: int
    ok: bool
    status: int  # HTTP status the failure maps to (200 when ok)
    error: str  # the Python-side reason, no traceback ("" when ok)
    load_seconds: float
    kind: str  # which service loaded: FlanT5Service, ScriptService, ...

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def model_dir(state_dir: str | os.PathLike, mms_name: str) -> Path:
    return Path(state_dir) / "load" / mms_name


def write(state_dir: str | os.PathLike, mms_name: str, status: LoadStatus) -> None:
    """Atomically (write + rename), so the reader never sees half a file."""
    folder = model_dir(state_dir, mms_name)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{status.pid}.tmp"
    tmp.write_text(status.to_json())
    os.replace(tmp, folder / f"{status.pid}.json")


def read_all(state_dir: str | os.PathLike, mms_name: str) -> list[LoadStatus]:
    folder = model_dir(state_dir, mms_name)
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            out.append(LoadStatus(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return out


def clear(state_dir: str | os.PathLike, mms_name: str) -> None:
    folder = model_dir(state_dir, mms_name)
    if folder.is_dir():
        for path in folder.iterdir():
            path.unlink(missing_ok=True)
