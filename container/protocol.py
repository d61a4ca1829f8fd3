"""What the app and the MMS workers tell each other besides MMS's own protocol.

- Load reports: MMS says "registered" (200) even when the handler's load failed, so each worker
  writes ``STATE_DIR/load/<mms model name>/<pid>.json`` once its load has finished or failed.
- Batch envelopes: a batch of callers' requests goes to a worker as ONE MMS request and comes
  back as ONE answer (MMS 1.1.11's decoder mis-reads answers of several items that arrive in
  more than one socket read; see handler_service). Layout: ``MAGIC``, a 4-byte big-endian
  length, a JSON list with one dict per item (its metadata and ``"length"``), the bodies.
"""

import json
import os
import shutil
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

from handlers.errors import InferenceError

ENV_STATE_DIR = "SERVE_MMS_STATE_DIR"  # where workers write their load reports
ENV_SETTINGS = "SERVE_SETTINGS"  # contract.settings.Settings as JSON: what every worker reads
ENV_PYTHON = "SERVE_MMS_PYTHON"  # the interpreter container/mms_worker.sh runs

ENVELOPE_TYPE = "application/x-serve-batch"
MAGIC = b"SRVB1"
# http.server lets a request carry 100 header lines of 64 KiB at most: a caller's request
# in an envelope is its body (at most the payload cap) plus at most this much metadata.
MAX_HEADER_BYTES = 100 * 65536


def status_error(status: int, message: str) -> InferenceError:
    """An error whose status is known only at run time (a worker's report or answer, MMS's
    answer); fixed statuses use the named classes of ``handlers.errors``."""
    exc = InferenceError(message)
    exc.status = status
    return exc


def envelope_cap(max_payload_bytes: int) -> int:
    """The largest envelope either way (MMS's max_request_size and max_response_size):
    any one request or answer fits; batches of small ones are split to fit."""
    return 2 * max_payload_bytes + MAX_HEADER_BYTES


def pack(items: list[tuple[dict, bytes]]) -> bytes:
    meta = json.dumps([{**m, "length": len(body)} for m, body in items]).encode()
    return b"".join([MAGIC, struct.pack("!I", len(meta)), meta, *(body for _, body in items)])


def unpack(data: bytes) -> list[tuple[dict, bytes]]:
    """The items of an envelope; ValueError when ``data`` is not one."""
    data = memoryview(data)
    start = len(MAGIC) + 4
    if len(data) < start or bytes(data[:len(MAGIC)]) != MAGIC:
        raise ValueError("not a batch envelope")
    end = start + struct.unpack("!I", data[len(MAGIC):start])[0]
    try:
        items, offset = [], end
        for meta in json.loads(bytes(data[start:end])):
            items.append((meta, bytes(data[offset:offset + meta["length"]])))
            offset += meta["length"]
    except (TypeError, KeyError) as exc:
        raise ValueError(f"malformed batch envelope: {exc}") from None
    if offset != len(data):
        raise ValueError("batch envelope lengths do not add up")
    return items


@dataclass(frozen=True)
class LoadReport:
    pid: int
    ok: bool
    status: int  # HTTP status the failure maps to (200 when ok)
    error: str  # the Python-side reason, no traceback ("" when ok)
    load_seconds: float
    kind: str  # which service loaded: FlanT5Service, ScriptService, ...
    batchable: bool = True  # False: a user script owns predict; requests go one by one
    engine: dict | None = None  # what runs the model: backend, compute_type, device (serve_info)


def reports_dir(state_dir: str | os.PathLike, mms_name: str) -> Path:
    return Path(state_dir) / "load" / mms_name


def write_report(state_dir: str | os.PathLike, mms_name: str, report: LoadReport) -> None:
    """Atomically (write + rename), so the reader never sees half a file."""
    folder = reports_dir(state_dir, mms_name)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{report.pid}.tmp"
    tmp.write_text(json.dumps(asdict(report)))
    os.replace(tmp, folder / f"{report.pid}.json")


def read_reports(state_dir: str | os.PathLike, mms_name: str) -> list[LoadReport]:
    out = []
    for path in sorted(reports_dir(state_dir, mms_name).glob("*.json")):
        try:
            out.append(LoadReport(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return out


def clear_reports(state_dir: str | os.PathLike, mms_name: str) -> None:
    shutil.rmtree(reports_dir(state_dir, mms_name), ignore_errors=True)
