"""The one thread that owns the model: requests from many HTTP threads are batched into it.

Batches form by ``handlers.batching.BatchPolicy`` (shared with the MMS stack's front):
whatever is queued when the model becomes free, up to ``max_batch`` prompts, plus a short
wait under load for the callers of the last batch. Stream jobs ride along in the queue and
run one by one after the batch.
"""

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from handlers.batching import BatchPolicy
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
        self.policy = BatchPolicy(max_batch, max_wait_s)
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
        items = self.policy.collect(self.queue, size=lambda item: item.size if isinstance(item, Job) else 0)
        return [j for j in items if isinstance(j, Job)], [j for j in items if isinstance(j, StreamJob)]

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
            self.policy.ran(time.monotonic() - started)
            for job, result in zip(jobs, results):
                job.future.set_result(result)
        for job in streams:
            if job.future.set_running_or_notify_cancel():
                job.stream.run()
                job.future.set_result(None)
