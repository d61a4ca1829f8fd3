"""The one thread that owns the model: requests from many HTTP threads are batched into it.

Whatever is queued when the model becomes free runs as one ``service.predict`` call (up to
``max_batch`` prompts), so batches form under load with no added latency when idle. Under
load, ``max_wait_s`` holds a batch open a little to let the callers of the last batch,
who are sending their next requests, join it (see ``_collect``).
"""

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from handlers.errors import InternalError, ServiceUnavailable

log = logging.getLogger(__name__)


@dataclass
class Job:
    payload: Any
    size: int
    future: Future = field(default_factory=Future)


@dataclass
class StreamJob:
    stream: Any  # handlers.flan_t5.TextStream: run() generates into its iterator
    future: Future = field(default_factory=Future)


class Batcher:
    def __init__(self, service, max_batch: int, max_wait_s: float, on_fatal=lambda reason: None):
        """``on_fatal(reason)`` runs on the model thread when the model cannot serve."""
        self.service, self.max_batch, self.max_wait_s = service, max_batch, max_wait_s
        self.on_fatal = on_fatal
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self._last_requests = 0
        self._last_duration = 0.0
        self.state = "starting"  # starting -> ready | failed: <reason>
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name="model", daemon=True)

    def start(self, prepare) -> None:
        """Run ``prepare()`` (place + warm up the model) on the model thread, then serve."""
        self._prepare = prepare
        self.thread.start()

    @property
    def healthy(self) -> bool:
        return self.ready.is_set() and self.thread.is_alive()

    def status(self) -> str:
        if not self.thread.is_alive() and self.ready.is_set():
            return "the model thread has stopped"
        return self.state

    def submit(self, payload: Any, size: int) -> Future:
        if not self.healthy:
            raise ServiceUnavailable(f"model is not ready: {self.status()}")
        job = Job(payload, size)
        self.queue.put(job)
        return job.future

    def submit_stream(self, stream) -> Future:
        if not self.healthy:
            raise ServiceUnavailable(f"model is not ready: {self.status()}")
        job = StreamJob(stream)
        self.queue.put(job)
        return job.future

    def _main(self) -> None:
        try:
            self._prepare()
        except BaseException as exc:
            self.state = f"failed: {type(exc).__name__}: {exc}"
            log.exception("model failed to warm up")
            self.on_fatal(self.state)
            return
        self.state = "ready"
        self.ready.set()
        while True:
            self._run_once()

    def _collect(self) -> tuple[list[Job], list[StreamJob]]:
        """What is queued now; under load (the last batch held several requests) also what
        arrives within ``max_wait_s``, until the callers of the last batch - who are sending
        their next requests - have joined: batches then grow to the number of callers
        instead of settling into halves that take turns."""
        first = self.queue.get()
        jobs, streams = ([first], []) if isinstance(first, Job) else ([], [first])
        size = sum(j.size for j in jobs)
        expected = self.queue.qsize() + 1 + self._last_requests if self._last_requests > 1 else 0
        # Never wait longer than half a batch takes: waiting must cost less than it brings.
        deadline = time.monotonic() + min(self.max_wait_s, self._last_duration / 2)
        while size < self.max_batch:
            remaining = deadline - time.monotonic() if len(jobs) < expected else 0
            try:
                job = self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(job, StreamJob):
                streams.append(job)
                continue
            jobs.append(job)
            size += job.size
        self._last_requests = len(jobs)
        return jobs, streams

    def _run_once(self) -> None:
        jobs, streams = self._collect()
        jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        if jobs:
            log.debug("batch: %d request(s), %d prompt(s)", len(jobs), sum(j.size for j in jobs))
            started = time.monotonic()
            try:
                results = self.service.predict([j.payload for j in jobs])
            except BaseException as exc:  # predict reports per-item errors; this is a bug guard
                log.exception("predict failed for a batch of %d", len(jobs))
                results = [InternalError.from_exception("predict", exc)] * len(jobs)
            self._last_duration = time.monotonic() - started
            for job, result in zip(jobs, results):
                job.future.set_result(result)
        for job in streams:
            if job.future.set_running_or_notify_cancel():
                job.stream.run()
                job.future.set_result(None)
