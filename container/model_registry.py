"""The models this server has loaded, and the only way to load or unload one.

Every load goes through here, so every load is checked the same way before MMS sees it:
the name (1-255 of ``A-Z a-z 0-9 . _ - /``; it never reaches a file name, a shell or a
properties file: MMS only ever sees ``mms_name(name)``), the url (a local directory
inside the model root, symlinks resolved, no scheme), duplicates (409) and memory (507).
After MMS says "registered", the workers' own load reports decide (MMS says 200 even when
the Python side failed); a failed load is unregistered again and answered with its reason.
"""

import hashlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from container import load_status, memory
from container.http_errors import ApiError
from container.mms_client import MmsClient, MmsUnavailable
from container.process_table import group_members

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}")
SCHEME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def validate_name(name) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise ApiError(400, f"invalid model name {str(name)[:80]!r}: use 1-255 characters of "
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
        raise ApiError(400, "url must be a non-empty local path without control characters")
    if SCHEME_PATTERN.match(url):
        raise ApiError(400, f"url {url[:200]!r}: only local directories under {root} can be "
                            "loaded (no http://, s3://, file:// ...)")
    path = Path(os.path.realpath(root / url))  # an absolute url replaces root
    if os.path.commonpath([path, root]) != str(root):
        raise ApiError(400, f"url {url[:200]!r} is outside the model root {root}")
    if not path.exists():
        raise ApiError(404, f"url {url[:200]!r} does not exist")
    if not path.is_dir():
        raise ApiError(400, f"url {url[:200]!r} is not a directory")
    return path


@dataclass
class ModelRecord:
    name: str
    url: str  # as the caller gave it
    path: Path  # resolved
    mms_name: str
    workers: int
    load_seconds: float
    pss_bytes: int = 0
    rss_bytes: int = 0
    worker_pids: list[int] = field(default_factory=list)

    def describe(self) -> dict:
        return {"modelName": self.name, "modelUrl": self.url, "workers": self.workers,
                "loadSeconds": round(self.load_seconds, 3),
                "memoryPssBytes": self.pss_bytes, "memoryRssBytes": self.rss_bytes}


@dataclass
class MemoryPolicy:
    """507 when a load would leave less than ``reserve_bytes`` free, or (with a budget)
    make the model workers together use more than ``budget_bytes``."""

    reserve_bytes: int = 256 * memory.MiB
    budget_bytes: int | None = None
    worker_fixed_bytes: int = memory.DEFAULT_WORKER_FIXED_BYTES  # refined by each load

    def estimate(self, model_dir: Path, workers: int) -> int:
        return workers * (self.worker_fixed_bytes + int(memory.WEIGHTS_FACTOR * memory.weights_bytes(model_dir)))


class ModelRegistry:
    def __init__(self, client: MmsClient, *, state_dir: Path, model_root: Path, java_pgid: int,
                 workers: int, batch_size: int, max_batch_delay_ms: int, timeout_s: int,
                 load_timeout_s: int, policy: MemoryPolicy):
        self.client, self.state_dir, self.java_pgid = client, state_dir, java_pgid
        self.model_root = Path(os.path.realpath(model_root))
        self.workers, self.batch_size, self.max_batch_delay_ms = workers, batch_size, max_batch_delay_ms
        self.timeout_s, self.load_timeout_s, self.policy = timeout_s, load_timeout_s, policy
        self._models: dict[str, ModelRecord] = {}
        self._loading: set[str] = set()
        self._lock = threading.Lock()  # guards the dicts
        self._load_lock = threading.Lock()  # one load/unload at a time: memory checks see the last one

    # Queries (no MMS call).
    def get(self, name: str) -> ModelRecord | None:
        return self._models.get(name)

    def names(self) -> list[str]:
        return sorted(self._models)

    def worker_pids(self, name_in_mms: str) -> list[int]:
        """Processes in MMS's group serving ``name_in_mms``: one listener per worker and the
        process each listener forked to run the model."""
        out = []
        for info in group_members(self.java_pgid):
            args = info.cmdline
            if "--model-name" in args and args[args.index("--model-name") + 1:][:1] == (name_in_mms,):
                out.append(info.pid)
        return out

    def used_bytes(self) -> int:
        return sum(r.pss_bytes for r in list(self._models.values()))

    # Changes.
    def load(self, name, url, *, check_memory: bool = True) -> ModelRecord:
        name = validate_name(name)
        path = resolve_url(url, self.model_root)
        with self._lock:
            if name in self._models or name in self._loading:
                raise ApiError(409, f"model {name!r} is already loaded")
            self._loading.add(name)
        try:
            with self._load_lock:
                if check_memory:
                    self._check_memory(name, path)
                record = self._load(name, url, path)
            with self._lock:
                self._models[name] = record
            return record
        finally:
            with self._lock:
                self._loading.discard(name)

    def _check_memory(self, name: str, path: Path) -> None:
        need = self.policy.estimate(path, self.workers)
        free = memory.available_bytes()
        mib = memory.MiB
        if free - need < self.policy.reserve_bytes:
            raise ApiError(507, f"not enough memory to load {name!r}: it needs about {need // mib} MiB "
                                f"({self.workers} worker(s)), {free // mib} MiB are free and "
                                f"{self.policy.reserve_bytes // mib} MiB are kept in reserve")
        budget = self.policy.budget_bytes
        if budget is not None and self.used_bytes() + need > budget:
            raise ApiError(507, f"loading {name!r} (about {need // mib} MiB) would exceed the model "
                                f"memory budget: {self.used_bytes() // mib} of {budget // mib} MiB in use")

    def _load(self, name: str, url: str, path: Path) -> ModelRecord:
        internal = mms_name(name)
        load_status.clear(self.state_dir, internal)
        started = time.monotonic()
        store_relative = os.path.relpath(path, self.model_root)
        try:
            resp = self.client.register(internal, store_relative, workers=self.workers,
                                        batch_size=self.batch_size, max_batch_delay_ms=self.max_batch_delay_ms,
                                        timeout=max(self.timeout_s, 60) + 60)
        except MmsUnavailable as exc:
            self._rollback(internal)
            raise ApiError(503, f"model {name!r} not loaded: {exc}") from None
        reports = self._wait_reports(internal, started) if resp.status == 200 else []
        failed = next((r for r in reports if not r.ok), None)
        if resp.status != 200 or failed or len(reports) < self.workers:
            self._rollback(internal)
            if failed:
                raise ApiError(failed.status, f"model {name!r} failed to load: {failed.error}")
            if resp.status in (404, 409):  # the url vanished meanwhile / MMS still had it
                raise ApiError(resp.status, f"model {name!r} not loaded: {resp.message()}")
            if resp.status == 200:
                raise ApiError(504 if time.monotonic() - started >= self.load_timeout_s else 500,
                               f"model {name!r} failed to load: {len(reports)} of {self.workers} "
                               f"worker(s) finished loading within {time.monotonic() - started:.0f} s "
                               "(a worker process died or hung; see the server log)")
            raise ApiError(500, f"model {name!r} failed to load: MMS answered {resp.status} "
                                f"({resp.message()})")
        record = ModelRecord(name, url, path, internal, self.workers, time.monotonic() - started)
        self._measure(record)
        weights = memory.weights_bytes(path)
        if record.worker_pids:
            per_worker = record.pss_bytes // self.workers - int(memory.WEIGHTS_FACTOR * weights)
            self.policy.worker_fixed_bytes = max(64 * memory.MiB, per_worker)
        log.info("model %r loaded from %s in %.2f s: %d worker(s), %.0f MiB PSS (%.0f MiB RSS)",
                 name, path, record.load_seconds, self.workers, record.pss_bytes / memory.MiB,
                 record.rss_bytes / memory.MiB)
        return record

    def _wait_reports(self, internal: str, started: float) -> list[load_status.LoadStatus]:
        """The workers' load reports, once every worker has written one. Stops early when a
        report says failed, or when a worker that was loading is gone (killed, crashed)."""
        seen: set[int] = set()
        while True:
            reports = load_status.read_all(self.state_dir, internal)
            if len(reports) >= self.workers or any(not r.ok for r in reports):
                return reports
            pids = set(self.worker_pids(internal))
            reported = {r.pid for r in reports}
            if seen - pids - reported or time.monotonic() - started > self.load_timeout_s:
                return reports
            seen |= pids
            time.sleep(0.05)

    def _measure(self, record: ModelRecord) -> None:
        record.worker_pids = self.worker_pids(record.mms_name)
        usage = [m for m in map(memory.process_memory, record.worker_pids) if m is not None]
        record.pss_bytes = sum(m.pss for m in usage)
        record.rss_bytes = sum(m.rss for m in usage)

    def _rollback(self, internal: str) -> None:
        try:
            self.client.unregister(internal, timeout=self.timeout_s + 30)
        except MmsUnavailable:
            pass
        self._wait_workers_gone(internal)
        load_status.clear(self.state_dir, internal)

    def _wait_workers_gone(self, internal: str, timeout_s: float = 10.0) -> list[int]:
        deadline = time.monotonic() + timeout_s
        while (left := self.worker_pids(internal)) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in left:  # MMS stops the listener; a forked worker it left behind goes here
            log.warning("killing worker %d that MMS left behind for %s", pid, internal)
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        return left

    def unload(self, name: str) -> ModelRecord:
        with self._load_lock:
            with self._lock:
                record = self._models.get(name)
                if record is None:
                    raise ApiError(404, f"model {name[:255]!r} is not loaded")
            try:
                resp = self.client.unregister(record.mms_name, timeout=self.timeout_s + 30)
            except MmsUnavailable as exc:
                raise ApiError(503, f"model {name!r} not unloaded: {exc}") from None
            if resp.status not in (200, 404):
                raise ApiError(500, f"model {name!r} not unloaded: MMS answered {resp.status} "
                                    f"({resp.message()})")
            self._wait_workers_gone(record.mms_name)
            load_status.clear(self.state_dir, record.mms_name)
            with self._lock:
                self._models.pop(name, None)
        log.info("model %r unloaded (%.0f MiB PSS returned)", name, record.pss_bytes / memory.MiB)
        return record
