"""The models this server has loaded, and the only way to load or unload one.

Every load is checked here before MMS sees it: the name (MMS only ever sees ``mms_name(name)``),
the url (a local directory inside the model root, symlinks resolved), duplicates (409) and
memory (507). After MMS says "registered" the workers' load reports decide (MMS says 200 even
when the Python side failed). A loaded model is written down in the state dir, so that an app
process that gunicorn replaced takes back the models MMS still holds (``adopt``).
"""

import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from container import memory, process_table, protocol
from container.dispatch import ModelQueue
from container.mms_client import MmsClient, MmsUnavailable
from contract.settings import Settings
from handlers.errors import BadRequest, Conflict, InternalError, NotFound, ServiceUnavailable
from handlers.generation import default_max_new_tokens

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}")
SCHEME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
WORKERS_GONE_S = 10  # how long MMS gets to stop a model's processes before they are killed


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


class ModelRegistry:
    def __init__(self, client: MmsClient, settings: Settings, *, state_dir: Path, java_pgid: int):
        self.client, self.settings, self.state_dir, self.java_pgid = client, settings, state_dir, java_pgid
        self.model_root = Path(os.path.realpath(settings.model_root if settings.multi_model
                                                else Path(settings.model_dir).parent))
        self.workers = settings.workers
        budget_mb = settings.memory_budget_mb
        self.policy = memory.MemoryPolicy(settings.memory_reserve_mb * memory.MiB,
                                          budget_mb and budget_mb * memory.MiB, config=settings.handler)
        self._models: dict[str, ModelRecord] = {}
        self._loading: set[str] = set()
        self._lock = threading.Lock()  # guards the dict and the set
        self._load_lock = threading.Lock()  # one load/unload at a time: memory checks see the last one

    def get(self, name: str) -> ModelRecord | None:
        return self._models.get(name)

    def names(self) -> list[str]:
        return sorted(self._models)

    def load(self, name, url, *, check_memory: bool = True) -> ModelRecord:
        name = validate_name(name)
        path = resolve_url(url, self.model_root)
        with self._lock:
            if name in self._models or name in self._loading:
                raise Conflict(f"model {name!r} is already loaded")
            self._loading.add(name)
        try:
            with self._load_lock:
                if check_memory:
                    used = sum(r.pss_bytes for r in list(self._models.values()))
                    self.policy.check(name, path, self.workers, used)
                record = self._load(name, url, path)
            with self._lock:
                self._models[name] = record
            return record
        finally:
            with self._lock:
                self._loading.discard(name)

    def _load(self, name: str, url: str, path: Path) -> ModelRecord:
        internal = mms_name(name)
        protocol.clear_reports(self.state_dir, internal)
        started = time.monotonic()
        try:
            resp = self.client.register(internal, os.path.relpath(path, self.model_root),
                                        workers=self.workers, timeout=self.settings.load_request_timeout_s)
        except MmsUnavailable as exc:
            self._remove(internal)
            raise ServiceUnavailable(f"model {name!r} not loaded: {exc}") from None
        reports = self._wait_reports(internal, started) if resp.status == 200 else []
        failed = next((r for r in reports if not r.ok), None)
        if resp.status != 200 or failed or len(reports) < self.workers:
            self._remove(internal)
            seconds = time.monotonic() - started
            if failed:
                raise protocol.status_error(failed.status, f"model {name!r} failed to load: {failed.error}")
            if resp.status in (404, 409):  # the url vanished meanwhile / MMS still had it
                raise protocol.status_error(resp.status, f"model {name!r} not loaded: {resp.message()}")
            if resp.status == 200:
                raise protocol.status_error(
                    504 if seconds >= self.settings.load_timeout_s else 500,
                    f"model {name!r} failed to load: {len(reports)} of {self.workers} worker(s) finished "
                    f"loading within {seconds:.0f} s (a worker process died or hung; see the server log)")
            raise InternalError(f"model {name!r} failed to load: MMS answered {resp.status} "
                                f"({resp.message()})")
        record = ModelRecord(name, url, path, internal, self.workers, time.monotonic() - started,
                             batchable=all(r.batchable for r in reports), engine=reports[0].engine or {})
        pids = process_table.model_workers(self.java_pgid, internal)
        usage = [m for m in map(memory.process_memory, pids) if m is not None]
        record.pss_bytes, record.rss_bytes = sum(m.pss for m in usage), sum(m.rss for m in usage)
        if record.pss_bytes:
            self.policy.learn(path, self.workers, record.pss_bytes)
        self._serve(record)
        log.info("model %r loaded from %s in %.2f s: %d worker(s)%s, %.0f MiB PSS (%.0f MiB RSS)",
                 name, path, record.load_seconds, self.workers,
                 "" if record.batchable else " (its script owns predict: one request at a time)",
                 record.pss_bytes / memory.MiB, record.rss_bytes / memory.MiB)
        return record

    def _serve(self, record: ModelRecord) -> None:
        tokens = default_max_new_tokens(record.path, self.settings.handler.max_new_tokens)
        record.queue = ModelQueue(self.client, record.name, record.mms_name, self.settings,
                                  batchable=record.batchable, default_tokens=tokens)
        folder = self.state_dir / "models"
        folder.mkdir(exist_ok=True)
        fields = ("name", "url", "mms_name", "workers", "load_seconds", "pss_bytes", "rss_bytes", "batchable",
                  "engine")
        (folder / f"{record.mms_name}.json").write_text(json.dumps(
            {**{f: getattr(record, f) for f in fields}, "path": str(record.path)}))

    def adopt(self) -> list[str]:
        """The models MMS still holds that an earlier app process loaded (gunicorn replaced it):
        served again, with what that process wrote down. Returns their names."""
        for path in sorted((self.state_dir / "models").glob("*.json")):
            data = json.loads(path.read_text())
            try:
                held = self.client.request("GET", f"/models/{data['mms_name']}", timeout=10).status == 200
            except MmsUnavailable:
                held = False
            if not held:
                path.unlink(missing_ok=True)
                continue
            record = ModelRecord(**{**data, "path": Path(data["path"])})
            self._serve(record)
            self._models[record.name] = record
            log.info("model %r: still loaded in MMS, served again", record.name)
        return self.names()

    def _wait_reports(self, internal: str, started: float) -> list[protocol.LoadReport]:
        """The workers' load reports, once every worker has written one. Stops early when a
        report says failed, or when a worker that was loading is gone (killed, crashed)."""
        seen: set[int] = set()
        while True:
            reports = protocol.read_reports(self.state_dir, internal)
            if len(reports) >= self.workers or any(not r.ok for r in reports):
                return reports
            pids = set(process_table.model_workers(self.java_pgid, internal))
            late = time.monotonic() - started > self.settings.load_timeout_s
            if late or seen - pids - {r.pid for r in reports}:
                return reports
            seen |= pids
            time.sleep(0.05)

    def _remove(self, internal: str, name: str | None = None) -> None:
        """Unregister ``internal`` and make sure its processes and files are gone. ``name``: an
        unload, which logs what MMS said; a failed load's rollback does not."""
        seen = process_table.model_workers(self.java_pgid, internal)  # one exiting is no longer listed
        try:
            resp = self.client.unregister(internal, timeout=self.settings.timeout_s + 30)
            problem = None if resp.status in (200, 404) else \
                f"answered the unload with {resp.status} ({resp.message()})"
        except MmsUnavailable as exc:
            problem = f"did not answer the unload ({exc})"
        if problem and name is not None:
            log.error("model %r: MMS %s; stopping its processes", name, problem)
        for pid in process_table.wait_workers_gone(self.java_pgid, internal, WORKERS_GONE_S, seen):
            log.warning("killed worker %d that MMS left behind for %s", pid, internal)
        protocol.clear_reports(self.state_dir, internal)
        (self.state_dir / "models" / f"{internal}.json").unlink(missing_ok=True)

    def unload(self, name: str) -> ModelRecord:
        with self._load_lock:
            with self._lock:
                record = self._models.pop(name, None)
            if record is None:
                raise NotFound(f"model {name[:255]!r} is not loaded")
            record.queue.close(self.settings.timeout_s + 10)  # what was sent is answered first
            self._remove(record.mms_name, name)
        log.info("model %r unloaded (%.0f MiB PSS returned)", name, record.pss_bytes / memory.MiB)
        return record
