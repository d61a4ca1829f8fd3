"""Lanes: the one scheduler both stacks run, between many request threads and the engine.

Work arrives as ``Job``s from any thread; ``lanes`` threads each take a batch and run it, so
up to ``lanes`` batches run at once (CTranslate2's one-thread replicas on CPU; one MMS worker
each on the multi-model stack; one thread for torch). A lane that becomes free takes:
- the oldest job it may take, and the queued jobs with the same ``key`` (they can share one
  engine call), up to ``max_size`` (``Job.size`` each);
- its share only: the work of that kind (short or long) that is queued or running is split
  evenly among the lanes that are idle or run that kind (as CTranslate2 splits a batch among
  its replicas), so that no lane ends up with most of the callers and the others with few;
- under load (its last batch held several jobs) it waits, at most ``max_wait_s`` and half its
  last batch's run time, for the callers of that batch, who are sending again: batches then
  keep the size of the load instead of settling into small ones that take turns; before long
  work it waits up to ``max_wait_s`` for one more caller, for the same reason;
- long work never takes the last free lane while short work is about: a job is long when its
  ``cost`` (tokens it may generate) is over ``LONG_COST``, and while a short job arrived
  within ``SHORT_WORK_S`` at most ``lanes - 1`` lanes run long work. A new short request then
  finds a lane instead of waiting for a long batch to end (no engine here can add a sequence
  to a running batch; docs/DESIGN.md has the measurements behind this).
``run(batch)`` resolves each job's future (early ones first, if the engine can); a job it
leaves unresolved, or a batch it raises on, fails with the error. ``on_depth``, when a server
sets it, is told the number of queued jobs whenever it changes (its queue-depth gauge).
"""

import atexit
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

from handlers.errors import InferenceError, InternalError, ServiceUnavailable

log = logging.getLogger(__name__)
LONG_COST = 64  # tokens: a job that may generate more is long work
SHORT_WORK_S = 1.0  # short work is "about" this long after a short job arrived


@dataclass(eq=False)
class Job:
    key: Hashable  # jobs with equal keys may share a batch
    cost: int = 0  # tokens it may generate (long work: >= LONG_COST)
    size: int = 1  # its share of a batch's max_size
    future: Future = field(default_factory=Future)

    @property
    def long(self) -> bool:
        return self.cost > LONG_COST

    def resolve(self, value) -> None:
        """Answer the job, unless it was answered or cancelled meanwhile (its caller gave up)."""
        with contextlib.suppress(InvalidStateError):
            self.future.set_result(value)

    def fail(self, error: BaseException) -> None:
        with contextlib.suppress(InvalidStateError):
            self.future.set_exception(error)


@dataclass
class _Lane:
    busy: bool = True  # running a batch (or not yet waiting for one)
    long: bool = False  # the batch it runs holds long work
    members: int = 0  # jobs in its last batch
    duration: float = 0.0  # its last batch's run time


class Scheduler:
    def __init__(self, run: Callable[[list[Job]], None], *, lanes: int = 1, max_size: int = 32,
                 max_wait_s: float = 0.02, name: str = "model"):
        self.run, self.max_size, self.max_wait_s, self.name = run, max_size, max_wait_s, name
        self.lanes = [_Lane() for _ in range(max(1, lanes))]
        self.queue: list[Job] = []
        self.cond = threading.Condition()
        self.state = "starting"  # starting -> ready | failed: <reason> | closed
        self.ready = threading.Event()
        self.last_short = float("-inf")
        self.threads: list[threading.Thread] = []
        self.on_depth: Callable[[int], None] | None = None  # called under the lock: keep it short

    def start(self, prepare: Callable[[], None] | None = None, at_exit: Callable[[], None] | None = None) -> None:
        """Start the lanes; lane 0 runs ``prepare()`` (place and warm up the model) first,
        the others wait for it. Returns once ready; raises what ``prepare`` raised. When the
        interpreter exits, the running batches end first, then ``at_exit()`` runs (freeing the
        engine: CTranslate2 aborts the process when it is freed during finalization after its
        threads ran a Python callback)."""
        if self.threads:
            self.ready.wait()
        else:
            failure: list[BaseException] = []
            self.threads = [threading.Thread(target=self._lane, args=(i, prepare, failure), daemon=True,
                                             name=f"{self.name}-{i}") for i in range(len(self.lanes))]
            for thread in self.threads:
                thread.start()
            atexit.register(self._at_exit, at_exit)
            self.ready.wait()
            if failure:
                raise failure[0]
        if self.state != "ready":
            raise ServiceUnavailable(f"{self.name} is not ready: {self.state}")

    @property
    def healthy(self) -> bool:
        return self.state == "ready" and all(t.is_alive() for t in self.threads)

    def submit(self, job: Job) -> Future:
        if self.state != "ready":
            raise ServiceUnavailable(f"{self.name} is not ready: {self.state}")
        with self.cond:
            self.queue.append(job)
            if not job.long:
                self.last_short = time.monotonic()
            self._depth()
            self.cond.notify_all()
        return job.future

    def _depth(self) -> None:
        if self.on_depth is not None:
            self.on_depth(len(self.queue))

    def close(self) -> list[Job]:
        """Stop taking work; the lanes finish their batches. Returns the jobs never started."""
        with self.cond:
            self.state, left, self.queue = "closed", self.queue, []
            self._depth()
            self.cond.notify_all()
        return left

    def _at_exit(self, then: Callable[[], None] | None, timeout_s: float = 10.0) -> None:
        self.close()
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if then is not None:
            then()

    def _lane(self, index: int, prepare, failure: list) -> None:
        if index == 0:
            try:
                if prepare is not None:
                    prepare()
                self.state = "ready"
            except BaseException as exc:  # noqa: BLE001 - reported by start()
                log.exception("%s failed to start", self.name)
                self.state = f"failed: {type(exc).__name__}: {exc}"
                failure.append(exc)
            self.ready.set()
        self.ready.wait()
        lane = self.lanes[index]
        while self.state == "ready":
            batch = self._take(lane)
            if not batch:
                continue
            started = time.monotonic()
            try:
                self.run(batch)
                error = InternalError(f"{self.name}: the engine left a request unanswered")
            except BaseException as exc:  # noqa: BLE001 - a batch fails alone
                log.exception("%s: a batch of %d failed", self.name, len(batch))
                error = exc if isinstance(exc, InferenceError) else InternalError.from_exception("generate", exc)
            for job in batch:
                job.fail(error)  # unless answered
            lane.duration = time.monotonic() - started
            with self.cond:
                lane.busy = lane.long = False
                self.cond.notify_all()

    def _take(self, lane: _Lane) -> list[Job]:
        """The next batch for ``lane`` (see the module doc); [] when closed."""
        with self.cond:
            lane.busy = False
            while not (batch := self._pick()):
                if self.state != "ready":
                    return []
                # Queued work not picked is long work held for short work: until that ends.
                held = self.last_short + SHORT_WORK_S - time.monotonic() if self.queue else 0
                self.cond.wait(held if held > 0 else None)
            # Under load, let the callers of the last batch return; before long work, let one more
            # caller join (a wait of max_wait_s is little beside a long batch, and keeps callers of
            # long work from drifting apart into batches of one that take turns).
            wanted = max(lane.members if lane.members > 1 else 0, len(batch) + 1 if batch[0].long else 0)
            if len(batch) < wanted:
                wait = self.max_wait_s if batch[0].long else min(self.max_wait_s, lane.duration / 2)
                deadline = time.monotonic() + wait
                while len(batch) < wanted and (left := deadline - time.monotonic()) > 0:
                    self.cond.wait(left)
                    batch = self._pick() or batch
                batch = [j for j in batch if j in self.queue] or self._pick()
            taken = set(map(id, batch))
            self.queue = [j for j in self.queue if id(j) not in taken]
            self._depth()
            lane.busy, lane.long, lane.members = True, any(j.long for j in batch), len(batch)
            return batch

    def _pick(self) -> list[Job]:
        """What a free lane would take now, without taking it (called under the lock)."""
        live = [j for j in self.queue if not j.future.cancelled()]
        if len(live) != len(self.queue):
            self.queue = live
            self._depth()
        if not self.queue:
            return []
        long_lanes = sum(lane.long for lane in self.lanes)
        short_about = time.monotonic() - self.last_short < SHORT_WORK_S
        long_ok = len(self.lanes) == 1 or not short_about or long_lanes < len(self.lanes) - 1
        first = next((j for j in self.queue if long_ok or not j.long), None)
        if first is None:
            return []
        same = [j for j in self.queue if j.key == first.key and (long_ok or not j.long)]
        # Its share of this kind of work (short or long): what is queued and what the lanes
        # running the same kind hold, over those lanes and the idle ones that may take it.
        peers = [lane for lane in self.lanes if lane.busy and lane.long == first.long]
        idle = sum(not lane.busy for lane in self.lanes)
        if first.long and short_about:  # the last lane is kept for short work
            idle = min(idle, len(self.lanes) - 1 - long_lanes)
        share = -(-(sum(j.size for j in same) + sum(lane.members for lane in peers)) // max(1, idle + len(peers)))
        batch, total = [], 0
        for job in same:
            if batch and total + job.size > min(self.max_size, share):
                break
            batch.append(job)
            total += job.size
        return batch
