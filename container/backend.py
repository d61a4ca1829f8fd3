"""Multi-model-server as the app's backend: the models run in MMS's worker processes.

The supervisor starts MMS (``container.mms_process``) and tells this process its port, state
dir and process group (``SERVE_MMS``). Here, in the app's one gunicorn worker: the loaded
models, each with its queue (``container.dispatch``), and the only way to load or unload one.
Every load is checked before MMS sees it: the name and url (``container.models``), duplicates
(409), memory (507). MMS says 200 even when a load's Python side failed: the workers' load
reports decide. A loaded model is written down in the state dir, so that an app process that
gunicorn replaced takes back the models MMS still holds.
"""

import json
import logging
import os
import threading
import time
from dataclasses import fields
from pathlib import Path

from container import memory, process_table, protocol
from container.dispatch import ModelQueue
from container.mms_client import MmsClient, MmsUnavailable
from container.models import ModelRecord, mms_name, resolve_url, validate_name
from contract import metrics
from contract.routes import DEFAULT_MODEL
from contract.settings import Settings
from handlers.errors import (Conflict, GatewayTimeout, InferenceError, InternalError, NotFound,
                             ServiceUnavailable)
from handlers.generation import default_max_new_tokens
from handlers.pipeline import Request, Response

log = logging.getLogger(__name__)
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "host", "content-length", "expect"}
ANSWER_GRACE_S = 0.5  # past its deadline a caller waits this much longer for the lane's verdict
MMS_UP_TIMEOUT_S = 120
WORKERS_GONE_S = 10  # how long MMS gets to stop a model's processes before they are killed


class MmsBackend:
    def __init__(self, settings: Settings, mms: dict | None = None):
        """``mms``: what the supervisor says of the MMS it started (its ``describe()``)."""
        self.settings = s = settings
        self.mms = mms or json.loads(os.environ["SERVE_MMS"])
        self.client = MmsClient(self.mms["port"])
        self.state_dir, self.java_pgid = Path(self.mms["state_dir"]), self.mms["pgid"]
        self.model_root = Path(os.path.realpath(s.model_store))
        budget = s.memory_budget_mb and s.memory_budget_mb * memory.MiB
        self.policy = memory.MemoryPolicy(s.memory_reserve_mb * memory.MiB, budget, config=s.handler)
        self.state: str | None = "the model server is starting"  # None: ready
        self.ready = threading.Event()
        self._models: dict[str, ModelRecord] = {}
        self._loading: set[str] = set()
        self._lock = threading.Lock()  # guards the dict and the set
        self._load_lock = threading.Lock()  # one load/unload at a time: memory checks see the last one

    def start(self) -> threading.Event:
        """In the app's worker: the models MMS still holds and (single model) the default model,
        on a thread of its own; ``ready`` is set once requests can be served. A default model
        that fails to load stops the worker with exit code 4, which stops gunicorn and the server."""
        threading.Thread(target=self._start, name="mms-start", daemon=True).start()
        return self.ready

    def _start(self) -> None:
        s = self.settings
        deadline = time.monotonic() + MMS_UP_TIMEOUT_S
        while not self._mms_up() and time.monotonic() < deadline:
            time.sleep(0.1)
        self._adopt()
        if not s.multi_model and DEFAULT_MODEL not in self._models:
            self.state = "the default model is loading"
            try:
                self._report_loaded(self._add(DEFAULT_MODEL, s.model_dir, check_memory=False))
            except Exception as exc:  # noqa: BLE001 - a broken single model is a stopped server
                log.critical("default model %s failed to load: %s; stopping", s.model_dir,
                             getattr(exc, "message", exc))
                logging.shutdown()
                os._exit(4)  # gunicorn halts the whole server when a worker exits with 4
        default = self._models.get(DEFAULT_MODEL)
        metrics.set_info(s.stack, default.engine if default is not None and not s.multi_model else {
            "backend": s.handler.backend, "compute_type": s.handler.compute_type or "auto",
            "device": s.handler.device or "auto"})
        self.state = None
        log.info("MMS backend ready (%s)", "multi-model" if s.multi_model else f"model {s.model_dir}")
        self.ready.set()

    def _mms_up(self) -> bool:
        try:
            return self.client.ping(timeout=1.0).status == 200
        except MmsUnavailable:
            return False

    def not_ready(self) -> str | None:
        if self.state is not None:
            return self.state
        try:
            resp = self.client.ping()
            return None if resp.status == 200 else f"the model server reports {resp.message()}"
        except MmsUnavailable as exc:
            return str(exc)

    def _check_ready(self) -> None:
        if self.state is not None:
            raise ServiceUnavailable(self.state)

    def _record(self, name: str) -> ModelRecord:
        self._check_ready()
        record = self._models.get(name)
        if record is None:
            raise NotFound(f"model {name[:255]!r} is not loaded")
        return record

    def invoke(self, name: str | None, request: Request, deadline: float) -> Response:
        name = DEFAULT_MODEL if name is None else name
        record = self._record(name)
        headers = {k: v for k, v in request.headers if k.lower() not in HOP_BY_HOP}
        call = record.queue.submit(headers, request.body, deadline)
        try:
            return call.future.result(timeout=deadline - time.monotonic() + ANSWER_GRACE_S)
        except TimeoutError:
            call.future.cancel()
            raise GatewayTimeout(f"model {name!r} did not answer within {self.settings.timeout_s} s") \
                from None

    @staticmethod
    def _report_loaded(record: ModelRecord, loaded_now: bool = True) -> None:
        """/metrics: the model's series may appear; a load is counted."""
        metrics.model_loaded(record.name, load_seconds=record.load_seconds if loaded_now else None,
                             pss_bytes=record.pss_bytes, rss_bytes=record.rss_bytes)

    def load(self, name, url) -> dict:
        try:
            self._check_ready()
            record = self._add(name, url)
        except Exception as exc:
            metrics.load_failed(exc.status if isinstance(exc, InferenceError) else 500)
            raise
        self._report_loaded(record)
        return {"status": f"model {record.name!r} loaded", **record.describe()}

    def unload(self, name: str) -> dict:
        try:
            self._check_ready()
            with self._load_lock:
                with self._lock:
                    record = self._models.pop(name, None)
                if record is None:
                    raise NotFound(f"model {name[:255]!r} is not loaded")
                record.queue.close(self.settings.timeout_s + 10)  # what was sent is answered first
                self._remove(record.mms_name, name)
        except Exception as exc:
            metrics.unload_failed(exc.status if isinstance(exc, InferenceError) else 500)
            raise
        log.info("model %r unloaded (%.0f MiB PSS returned)", name, record.pss_bytes / memory.MiB)
        metrics.model_unloaded(record.name)
        return {"status": f"model {record.name!r} unloaded"}

    def describe(self, name: str) -> dict:
        return self._record(name).describe()

    def models(self) -> list[dict]:
        self._check_ready()
        return [r.describe() for r in map(self._models.get, sorted(self._models)) if r is not None]

    def _add(self, name, url, check_memory: bool = True) -> ModelRecord:
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
                    self.policy.check(name, path, self.settings.workers, used)
                record = self._register(name, url, path)
            with self._lock:
                self._models[name] = record
            return record
        finally:
            with self._lock:
                self._loading.discard(name)

    def _register(self, name: str, url: str, path: Path) -> ModelRecord:
        """Load ``path`` into MMS as ``name``; only once every worker reports it loaded."""
        internal, workers = mms_name(name), self.settings.workers
        protocol.clear_reports(self.state_dir, internal)
        started = time.monotonic()
        try:
            resp = self.client.register(internal, os.path.relpath(path, self.model_root),
                                        workers=workers, timeout=self.settings.load_request_timeout_s)
        except MmsUnavailable as exc:
            self._remove(internal)
            raise ServiceUnavailable(f"model {name!r} not loaded: {exc}") from None
        reports = self._wait_reports(internal, started) if resp.status == 200 else []
        failed = next((r for r in reports if not r.ok), None)
        if resp.status != 200 or failed or len(reports) < workers:
            self._remove(internal)
            seconds = time.monotonic() - started
            if failed:
                raise protocol.status_error(failed.status, f"model {name!r} failed to load: {failed.error}")
            if resp.status in (404, 409):  # the url vanished meanwhile / MMS still had it
                raise protocol.status_error(resp.status, f"model {name!r} not loaded: {resp.message()}")
            if resp.status == 200:
                raise protocol.status_error(
                    504 if seconds >= self.settings.load_timeout_s else 500,
                    f"model {name!r} failed to load: {len(reports)} of {workers} worker(s) finished "
                    f"loading within {seconds:.0f} s (a worker process died or hung; see the server log)")
            raise InternalError(f"model {name!r} failed to load: MMS answered {resp.status} "
                                f"({resp.message()})")
        record = ModelRecord(name, url, path, internal, workers, time.monotonic() - started,
                             batchable=all(r.batchable for r in reports), engine=reports[0].engine or {})
        pids = process_table.model_workers(self.java_pgid, internal)
        usage = [m for m in map(memory.process_memory, pids) if m is not None]
        record.pss_bytes, record.rss_bytes = sum(m.pss for m in usage), sum(m.rss for m in usage)
        if record.pss_bytes:
            self.policy.learn(path, workers, record.pss_bytes)
        self._serve(record)
        log.info("model %r loaded from %s in %.2f s: %d worker(s)%s, %.0f MiB PSS (%.0f MiB RSS)",
                 name, path, record.load_seconds, workers,
                 "" if record.batchable else " (its script owns predict: one request at a time)",
                 record.pss_bytes / memory.MiB, record.rss_bytes / memory.MiB)
        return record

    def _serve(self, record: ModelRecord) -> None:
        """Give ``record`` its queue and write it down for a replacement app process."""
        tokens = default_max_new_tokens(record.path, self.settings.handler.max_new_tokens)
        record.queue = ModelQueue(self.client, record.name, record.mms_name, self.settings,
                                  batchable=record.batchable, default_tokens=tokens)
        saved = {f.name: getattr(record, f.name) for f in fields(record) if f.name != "queue"}
        (self.state_dir / "models").mkdir(exist_ok=True)
        (self.state_dir / "models" / f"{record.mms_name}.json").write_text(json.dumps(saved, default=str))

    def _adopt(self) -> None:
        """Serve again the models MMS still holds that an earlier app process loaded (gunicorn
        replaced it), with what that process wrote down."""
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
            self._report_loaded(record, loaded_now=False)

    def _wait_reports(self, internal: str, started: float) -> list[protocol.LoadReport]:
        """The workers' load reports, once every worker has written one. Stops early when a
        report says failed, or when a worker that was loading is gone (killed, crashed)."""
        seen: set[int] = set()
        while True:
            reports = protocol.read_reports(self.state_dir, internal)
            if len(reports) >= self.settings.workers or any(not r.ok for r in reports):
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
