"""Callers' requests for one model, batched and sent to its MMS workers.

Each loaded model has a ``ModelQueue`` with one sender thread per MMS worker. A sender
takes a batch by ``handlers.batching.BatchPolicy`` (the flask stack's policy: what is
queued when the worker is free, up to a max batch, plus the short wait under load), sends
it as ONE MMS request (a ``container.protocol`` envelope) and hands each caller its own
answer. Models whose user script owns ``predict`` get batches of one.

While a worker (re)starts, MMS holds the request or the worker answers 503 before running
anything: the sender keeps the batch and tries again until the callers' deadlines, so
callers wait instead of failing. A batch in flight on a worker that dies fails (MMS
answers "Worker died."); nothing that may have run is sent twice.
"""

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from container import protocol
from container.mms_client import MmsClient, MmsResponse, MmsUnavailable
from handlers.batching import BatchPolicy
from handlers.errors import GatewayTimeout, InferenceError, InternalError, NotFound, ServiceUnavailable

log = logging.getLogger(__name__)

RETRY_S = 0.05  # between tries while the worker (re)starts
STOP = None  # the queue's end marker; each sender puts it back for the next


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes

    @classmethod
    def error(cls, exc: InferenceError) -> "Answer":
        return cls(exc.status, "application/json", exc.body())


@dataclass(frozen=True)
class BatchSettings:
    senders: int  # per model: one per MMS worker
    max_batch: int  # requests per batch (INFERENCE_MAX_BATCH_SIZE)
    max_wait_s: float  # the policy's wait under load (INFERENCE_MAX_BATCH_WAIT_MS)
    timeout_s: float  # per request (SAGEMAKER_MODEL_SERVER_TIMEOUT)
    max_envelope_bytes: int  # MMS's request and response cap (protocol.envelope_cap)


@dataclass
class Call:
    headers: dict[str, str]  # the caller's, as sent
    body: bytes
    deadline: float  # time.monotonic() by which the caller gives up
    future: Future = field(default_factory=Future)  # -> Answer

    @property
    def nbytes(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers.items())


class ModelQueue:
    def __init__(self, client: MmsClient, name: str, mms_name: str, settings: BatchSettings, *,
                 batchable: bool = True):
        self.client, self.name, self.mms_name = client, name, mms_name
        self.timeout_s, self.max_envelope_bytes = settings.timeout_s, settings.max_envelope_bytes
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.closed = False
        max_batch = settings.max_batch if batchable else 1
        self.threads = [threading.Thread(target=self._send_loop, name=f"send-{mms_name}-{i}", daemon=True,
                                         args=(BatchPolicy(max_batch, settings.max_wait_s),))
                        for i in range(settings.senders)]
        for thread in self.threads:
            thread.start()

    def submit(self, headers: dict[str, str], body: bytes, deadline: float) -> Future:
        if self.closed:
            raise NotFound(f"model {self.name!r} is being unloaded")
        call = Call(headers, body, deadline)
        self.queue.put(call)
        return call.future

    def close(self, timeout_s: float) -> None:
        """Stop taking calls, let the senders finish what they hold, fail the rest (404)."""
        self.closed = True
        self.queue.put(STOP)
        for thread in self.threads:
            thread.join(timeout_s)
        while True:
            try:
                call = self.queue.get_nowait()
            except queue.Empty:
                return
            if call is not STOP:
                call.future.set_result(Answer.error(NotFound(f"model {self.name!r} was unloaded")))

    def _send_loop(self, policy: BatchPolicy) -> None:
        while True:
            items = policy.collect(self.queue, size=lambda item: 0 if item is STOP else 1)
            calls = [c for c in items if c is not STOP and c.future.set_running_or_notify_cancel()]
            if calls:
                started = time.monotonic()
                try:
                    for chunk in self._chunks(calls):
                        self._send(chunk)
                except Exception as exc:  # noqa: BLE001 - a bug here must not strand callers
                    log.exception("sending a batch to model %r failed", self.name)
                    self._fail(calls, InternalError.from_exception("the model server front end", exc))
                policy.ran(time.monotonic() - started)
            if any(item is STOP for item in items):
                self.queue.put(STOP)
                return

    def _chunks(self, calls: list[Call]) -> list[list[Call]]:
        """The batch split so that each envelope stays within MMS's request cap."""
        chunks, size = [[]], 0
        for call in calls:
            if chunks[-1] and size + call.nbytes > self.max_envelope_bytes:
                chunks.append([])
                size = 0
            chunks[-1].append(call)
            size += call.nbytes + 256
        return chunks

    def _send(self, calls: list[Call]) -> None:
        log.debug("model %r: a batch of %d request(s) in one MMS request", self.name, len(calls))
        sent = time.monotonic()
        while calls:
            envelope = protocol.pack([({"headers": c.headers}, c.body) for c in calls])
            try:
                resp = self.client.predict(self.mms_name, envelope, timeout=self.timeout_s + 10)
            except MmsUnavailable as exc:
                return self._fail(calls, ServiceUnavailable(f"model {self.name!r}: {exc}"))
            if resp.status == 200 and resp.headers.get("content-type") == protocol.ENVELOPE_TYPE:
                return self._resolve(calls, resp.body)
            if resp.status != 503:
                return self._fail(calls, self._error(resp, time.monotonic() - sent))
            # 503: nothing ran (MMS has no worker yet, or the worker is still loading).
            now = time.monotonic()
            late = [c for c in calls if c.deadline <= now + RETRY_S]
            self._fail(late, ServiceUnavailable(f"model {self.name!r} is not ready (its worker is "
                                                f"starting): {resp.message()}"))
            calls = [c for c in calls if c not in late]
            time.sleep(RETRY_S)
            sent = time.monotonic()

    def _resolve(self, calls: list[Call], envelope: bytes) -> None:
        answers = protocol.unpack(envelope)
        if len(answers) != len(calls):
            raise ValueError(f"{len(answers)} answers for {len(calls)} requests")
        for call, (meta, body) in zip(calls, answers):
            if meta.get("alone"):  # did not fit in the batch's answer: on its own it does
                self._send([call])
            else:
                call.future.set_result(Answer(meta["status"], meta["content_type"], body))

    def _error(self, resp: MmsResponse, elapsed: float) -> InferenceError:
        """What a caller is told when the whole batch failed."""
        if not resp.from_mms:  # the worker answered for the whole batch (its load failed)
            return protocol.status_error(resp.status, str(resp.json().get("error") or resp.message()))
        if resp.status == 404:
            return NotFound(f"model {self.name!r} is not loaded")
        if elapsed >= self.timeout_s - 0.5:  # MMS kills a worker that overruns the timeout
            return GatewayTimeout(f"model {self.name!r} did not answer within {self.timeout_s:g} s; "
                                  "its worker is being restarted")
        if "Worker died" in resp.message():
            return InternalError(f"model {self.name!r}: its worker process died while running this "
                                 "request; it is being restarted")
        return protocol.status_error(resp.status if resp.status >= 400 else 500,
                                     f"model {self.name!r}: the model server answered {resp.status}: "
                                     f"{resp.message()}")

    @staticmethod
    def _fail(calls: list[Call], exc: InferenceError) -> None:
        for call in calls:
            if not call.future.done():
                call.future.set_result(Answer.error(exc))
