"""Each loaded model's queue: callers' requests batched onto its MMS workers.

One ``handlers.scheduler.Scheduler`` per model, one lane per MMS worker: a lane sends its batch
as ONE MMS request (a ``container.protocol`` envelope) and hands each caller its own answer. A
worker answers a batch whole, so a batch holds short or long requests only (by the
``max_new_tokens`` a small JSON body asks for); models whose script owns ``predict`` get batches
of one. While a worker (re)starts MMS answers 503 before running anything: the lane tries
again until the callers' deadlines. A batch on a worker that dies fails; nothing that may have
run is sent twice.
"""

import json
import logging
import time
from dataclasses import dataclass, field

from container import protocol
from container.mms_client import MmsClient, MmsResponse, MmsUnavailable
from contract import metrics
from contract.settings import Settings
from handlers.errors import GatewayTimeout, InferenceError, InternalError, NotFound, ServiceUnavailable
from handlers.figures import Figures
from handlers.pipeline import Response
from handlers.scheduler import Job, Scheduler

log = logging.getLogger(__name__)

RETRY_S = 0.05  # between tries while the worker (re)starts
PEEK_BYTES = 65536  # bodies up to this size are read for the tokens they ask for


@dataclass(eq=False)
class Call(Job):
    headers: dict[str, str] = field(default_factory=dict)  # the caller's, as sent
    body: bytes = b""
    deadline: float = 0.0  # time.monotonic() by which the caller gives up

    @property
    def nbytes(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers.items())


def asked_tokens(headers: dict[str, str], body: bytes, default: int) -> int:
    """The ``max_new_tokens`` (or ``max_length``) a small JSON body asks for, else ``default``:
    what the scheduler needs to keep short and long requests apart; the worker validates."""
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "application/json")
    if len(body) > PEEK_BYTES or "json" not in content_type.lower():
        return default
    try:
        parameters = json.loads(body).get("parameters") or {}
        asked = parameters.get("max_new_tokens", parameters.get("max_length"))
    except (ValueError, AttributeError, RecursionError):
        return default
    return asked if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0 else default


class ModelQueue:
    def __init__(self, client: MmsClient, name: str, mms_name: str, settings: Settings, *,
                 batchable: bool = True, default_tokens: int = 64):
        self.client, self.name, self.mms_name, self.settings = client, name, mms_name, settings
        self.batchable, self.default_tokens = batchable, default_tokens
        self.scheduler = Scheduler(self._send_batch, lanes=settings.workers,  # one per MMS worker
                                   max_size=settings.mms_batch_requests if batchable else 1,
                                   max_wait_s=settings.handler.max_batch_wait_ms / 1000,
                                   name=f"model {name!r}")
        self.scheduler.on_depth = lambda depth: metrics.queue_depth(name, depth)  # requests waiting here
        self.scheduler.start()

    def submit(self, headers: dict[str, str], body: bytes, deadline: float) -> Call:
        call = Call(key=object(), cost=asked_tokens(headers, body, self.default_tokens), headers=headers,
                    body=body, deadline=deadline)
        if self.batchable:  # an MMS worker answers a batch whole: long and short apart
            call.key = call.long
        try:
            self.scheduler.submit(call)
        except ServiceUnavailable:
            raise NotFound(f"model {self.name!r} is being unloaded") from None
        return call

    def close(self, timeout_s: float) -> None:
        """Stop taking calls, let the lanes finish what they hold, fail the rest (404)."""
        for call in self.scheduler.close():
            call.resolve(Response.error(NotFound(f"model {self.name!r} was unloaded")))
        for thread in self.scheduler.threads:
            thread.join(timeout_s)

    def _send_batch(self, calls: list[Call]) -> None:
        """The batch in envelopes that each fit MMS's request cap."""
        chunk, size = [], 0
        cap = protocol.envelope_cap(self.settings.max_payload_bytes)  # MMS's max_request_size
        for call in calls:
            if chunk and size + call.nbytes > cap:
                self._send(chunk)
                chunk, size = [], 0
            chunk.append(call)
            size += call.nbytes + 256
        self._send(chunk)

    def _send(self, calls: list[Call]) -> None:
        log.debug("model %r: a batch of %d request(s) in one MMS request", self.name, len(calls))
        sent = time.monotonic()
        while calls:
            envelope = protocol.pack([({"headers": c.headers}, c.body) for c in calls])
            try:
                resp = self.client.predict(self.mms_name, envelope, timeout=self.settings.backend_timeout_s)
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
                call.resolve(Response(meta["status"], meta["content_type"], body,
                                      figures=Figures.from_json(meta.get("figures"))))

    def _error(self, resp: MmsResponse, elapsed: float) -> InferenceError:
        """What a caller is told when the whole batch failed."""
        if not resp.from_mms:  # the worker answered for the whole batch (its load failed)
            return protocol.status_error(resp.status, str(resp.json().get("error") or resp.message()))
        if resp.status == 404:
            return NotFound(f"model {self.name!r} is not loaded")
        if elapsed >= self.settings.timeout_s - 0.5:  # MMS kills a worker that overruns the timeout
            return GatewayTimeout(f"model {self.name!r} did not answer within {self.settings.timeout_s:g} s; "
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
            call.resolve(Response.error(exc))
