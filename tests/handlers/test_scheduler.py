"""handlers.scheduler: the lanes both stacks run, with real threads and a recording run()."""

import threading
import time

import pytest

from handlers.errors import InternalError
from handlers.scheduler import LONG_COST, Job, Scheduler


class Recorder:
    """A run() that records each batch, optionally holding it until released."""

    def __init__(self, seconds: float = 0.0):
        self.seconds, self.batches, self.lock = seconds, [], threading.Lock()
        self.hold = threading.Event()
        self.hold.set()

    def __call__(self, jobs):
        with self.lock:
            self.batches.append([j.name for j in jobs])
        self.hold.wait(10)
        time.sleep(self.seconds)
        for job in jobs:
            job.resolve(job.name)


def job(name, key="k", cost=8) -> Job:
    j = Job(key=key, cost=cost)
    j.name = name
    return j


def started(run, **kwargs) -> Scheduler:
    scheduler = Scheduler(run, **kwargs)
    scheduler.start()
    return scheduler


def test_queued_jobs_of_one_key_share_a_batch_up_to_the_max_in_order():
    run = Recorder()
    run.hold.clear()
    scheduler = started(run, lanes=1, max_size=4, max_wait_s=0)
    first = scheduler.submit(job("a"))
    time.sleep(0.1)  # the lane holds "a"; the rest queue behind it
    futures = [scheduler.submit(job(n)) for n in "bcdefg"]
    run.hold.set()
    assert [f.result(5) for f in [first, *futures]] == list("abcdefg")
    assert run.batches == [["a"], ["b", "c", "d", "e"], ["f", "g"]]


def test_jobs_of_other_keys_wait_for_a_batch_of_their_own_oldest_first():
    run = Recorder()
    run.hold.clear()
    scheduler = started(run, lanes=1, max_size=8, max_wait_s=0)
    futures = [scheduler.submit(job("a"))]
    time.sleep(0.1)
    futures += [scheduler.submit(job(n, key)) for n, key in (("b", 1), ("c", 2), ("d", 1))]
    run.hold.set()
    for f in futures:
        f.result(5)
    assert run.batches == [["a"], ["b", "d"], ["c"]]


def test_a_free_lane_leaves_their_share_to_lanes_about_to_be_free():
    run = Recorder(seconds=0.2)
    run.hold.clear()
    scheduler = started(run, lanes=2, max_size=32, max_wait_s=0)
    blockers = [scheduler.submit(job("x")), scheduler.submit(job("y"))]
    time.sleep(0.1)  # both lanes busy, held
    futures = [scheduler.submit(job(str(i))) for i in range(8)]
    run.hold.set()
    for f in blockers + futures:
        f.result(5)
    # 10 jobs in all for 2 lanes: the first lane to free takes 5 (with the 1 it ran), not all 8
    assert sorted(len(b) for b in run.batches[2:]) == [3, 5], run.batches


def test_under_load_a_lane_waits_briefly_for_the_callers_of_its_last_batch():
    run = Recorder(seconds=0.3)
    scheduler = started(run, lanes=1, max_size=8, max_wait_s=1.0)
    run.hold.clear()
    first = [scheduler.submit(job(f"a{i}")) for i in range(4)]  # taken together as one batch?
    run.hold.set()
    for f in first:
        f.result(5)
    # the 4 callers come back one after another, 30 ms apart: one batch, not four
    futures = []
    for i in range(4):
        futures.append(scheduler.submit(job(f"b{i}")))
        time.sleep(0.03)  # all within half the last batch's 0.3 s
    for f in futures:
        f.result(5)
    assert run.batches[-1] == ["b0", "b1", "b2", "b3"], run.batches


def test_an_idle_lane_never_waits_for_company():
    run = Recorder(seconds=0.5)
    scheduler = started(run, lanes=1, max_size=8, max_wait_s=5.0)
    scheduler.submit(job("only")).result(5)  # a batch of one: the next collect does not wait
    t0 = time.monotonic()
    scheduler.submit(job("next")).result(5)
    assert time.monotonic() - t0 < 1.0


def test_long_work_leaves_a_lane_to_short_work():
    run = Recorder(seconds=0.0)
    run.hold.clear()
    scheduler = started(run, lanes=2, max_size=8, max_wait_s=0)
    short = scheduler.submit(job("s0", cost=8))
    time.sleep(0.05)
    long_one = scheduler.submit(job("L1", key="long", cost=LONG_COST + 1))
    time.sleep(0.05)
    long_two = scheduler.submit(job("L2", key="long2", cost=LONG_COST + 1))
    time.sleep(0.1)
    # lane 1 took s0, lane 2 took L1; L2 may not take the last free lane while short work is about
    assert run.batches == [["s0"], ["L1"]]
    run.hold.set()
    for f in (short, long_one, long_two):
        f.result(5)
    assert run.batches[2] == ["L2"]


def test_held_long_work_takes_the_free_lane_once_short_work_has_gone(monkeypatch):
    monkeypatch.setattr("handlers.scheduler.SHORT_WORK_S", 0.3)
    release, batches = threading.Event(), []

    def run(jobs):
        batches.append([j.name for j in jobs])
        if jobs[0].name == "L1":
            release.wait(10)
        for j in jobs:
            j.resolve(j.name)

    scheduler = started(run, lanes=2, max_size=8, max_wait_s=0)
    scheduler.submit(job("s0")).result(5)
    long_one = scheduler.submit(job("L1", key=1, cost=LONG_COST + 1))
    time.sleep(0.05)
    long_two = scheduler.submit(job("L2", key=2, cost=LONG_COST + 1))
    # held back while short work is about, then started on the free lane while L1 still runs
    assert long_two.result(2) == "L2", batches
    assert not long_one.done()
    release.set()
    assert long_one.result(5) == "L1"


def test_without_short_work_long_work_takes_every_lane(monkeypatch):
    monkeypatch.setattr("handlers.scheduler.SHORT_WORK_S", 0.0)
    run = Recorder()
    run.hold.clear()
    scheduler = started(run, lanes=2, max_size=8, max_wait_s=0)
    futures = [scheduler.submit(job(f"L{i}", key=i, cost=LONG_COST + 1)) for i in range(2)]
    time.sleep(0.2)
    assert len(run.batches) == 2  # both lanes run long work at once
    run.hold.set()
    for f in futures:
        f.result(5)


def test_a_cancelled_job_is_never_run():
    run = Recorder()
    run.hold.clear()
    scheduler = started(run, lanes=1, max_size=8, max_wait_s=0)
    first = scheduler.submit(job("a"))
    time.sleep(0.05)
    gone = scheduler.submit(job("gone"))
    kept = scheduler.submit(job("kept"))
    assert gone.cancel()
    run.hold.set()
    assert kept.result(5) == "kept" and first.result(5) == "a"
    assert ["gone"] not in run.batches and all("gone" not in b for b in run.batches)


def test_a_failing_batch_fails_only_its_jobs_and_the_lane_goes_on():
    calls = []

    def run(jobs):
        calls.append(len(jobs))
        if jobs[0].key == "bad":
            raise RuntimeError("boom")
        for j in jobs:
            j.resolve("ok")

    scheduler = started(run, lanes=1, max_size=8, max_wait_s=0)
    bad = scheduler.submit(job("x", key="bad"))
    with pytest.raises(InternalError, match="boom"):
        bad.result(5)
    assert scheduler.submit(job("y")).result(5) == "ok" and scheduler.healthy


def test_a_job_the_engine_leaves_unanswered_is_a_500():
    scheduler = started(lambda jobs: None, lanes=1)
    with pytest.raises(InternalError, match="unanswered"):
        scheduler.submit(job("x")).result(5)


def test_prepare_runs_on_the_first_lane_before_any_batch_and_its_failure_is_raised():
    seen = []
    scheduler = Scheduler(lambda jobs: [j.resolve(threading.current_thread().name) for j in jobs], name="m")
    scheduler.start(lambda: seen.append(threading.current_thread().name))
    assert seen == ["m-0"] and scheduler.submit(job("x")).result(5) == "m-0"

    broken = Scheduler(lambda jobs: None, name="broken")
    with pytest.raises(ValueError, match="no weights"):
        broken.start(lambda: (_ for _ in ()).throw(ValueError("no weights")))
    assert not broken.healthy and broken.state.startswith("failed: ValueError")


def test_close_returns_what_never_started():
    run = Recorder()
    run.hold.clear()
    scheduler = started(run, lanes=1, max_size=1, max_wait_s=0)
    running = scheduler.submit(job("a"))
    time.sleep(0.05)
    waiting = job("b")
    scheduler.submit(waiting)
    assert scheduler.close() == [waiting]
    run.hold.set()
    assert running.result(5) == "a"


def test_long_work_waits_briefly_for_a_second_caller():
    """Two callers of long work that drift apart would take turns in batches of one (each
    waiting a whole batch for the other); a lane about to start long work waits max_wait_s
    for company, so they run together again."""
    run = Recorder(seconds=0.2)
    scheduler = started(run, lanes=1, max_size=8, max_wait_s=0.3)
    first = scheduler.submit(job("L1", key="long", cost=LONG_COST + 1))
    time.sleep(0.1)  # the second caller comes 100 ms later: within the wait
    second = scheduler.submit(job("L2", key="long", cost=LONG_COST + 1))
    first.result(5), second.result(5)
    assert run.batches == [["L1", "L2"]]
    idle = started(Recorder(), lanes=1, max_size=8, max_wait_s=0.3)
    t0 = time.monotonic()
    idle.submit(job("s", cost=8)).result(5)  # short work on an idle lane never waits for company
    assert time.monotonic() - t0 < 0.2


def test_on_depth_is_told_every_change_of_the_queue():
    """What a server's queue-depth gauge shows: jobs waiting for a lane, never those running."""
    run = Recorder()
    run.hold.clear()
    scheduler = started(run, lanes=1, max_size=2, max_wait_s=0)
    depths = []
    scheduler.on_depth = depths.append
    first = scheduler.submit(job("a"))
    time.sleep(0.1)  # "a" runs; the rest wait
    futures = [scheduler.submit(job(n)) for n in "bcd"]
    cancelled = scheduler.submit(job("e"))
    cancelled.cancel()
    run.hold.set()
    assert [f.result(5) for f in [first, *futures]] == list("abcd")
    time.sleep(0.1)
    assert depths[:5] == [1, 0, 1, 2, 3] and depths[-1] == 0, depths
    assert 4 in depths  # "e" waited too, until a lane saw it was cancelled
