"""handlers.batching.BatchPolicy, the batching policy of both stacks, with real threads
and queues."""

import queue
import threading
import time

from handlers.batching import BatchPolicy


def filled(*items) -> queue.SimpleQueue:
    q = queue.SimpleQueue()
    for item in items:
        q.put(item)
    return q


def put_later(q: queue.SimpleQueue, delay_s: float, *items) -> threading.Thread:
    def put():
        time.sleep(delay_s)
        for item in items:
            q.put(item)
    thread = threading.Thread(target=put)
    thread.start()
    return thread


def test_idle_takes_what_is_queued_up_to_the_max_in_order():
    q = filled(*range(10))
    policy = BatchPolicy(max_size=4, max_wait_s=1.0)
    assert policy.collect(q) == [0, 1, 2, 3]
    assert policy.collect(q) == [4, 5, 6, 7]
    assert policy.collect(q) == [8, 9]


def test_sizes_count_towards_the_max_and_size_0_rides_along():
    q = filled(("a", 3), ("stream", 0), ("b", 3), ("c", 3))
    policy = BatchPolicy(max_size=6, max_wait_s=0)
    assert policy.collect(q, size=lambda item: item[1]) == [("a", 3), ("stream", 0), ("b", 3)]
    assert policy.collect(q, size=lambda item: item[1]) == [("c", 3)]


def test_the_first_item_is_waited_for():
    q = queue.SimpleQueue()
    thread = put_later(q, 0.2, "late")
    assert BatchPolicy(max_size=4, max_wait_s=0).collect(q) == ["late"]
    thread.join()


def test_an_idle_server_never_waits_for_more():
    q = filled("only")
    policy = BatchPolicy(max_size=8, max_wait_s=5.0)
    policy.ran(10.0)  # even after a slow batch: the last batch held one request
    thread = put_later(q, 0.5, "next")
    assert policy.collect(q) == ["only"]
    thread.join()


def test_under_load_the_callers_of_the_last_batch_are_waited_for():
    policy = BatchPolicy(max_size=8, max_wait_s=2.0)
    q = filled(1, 2, 3, 4)
    assert policy.collect(q) == [1, 2, 3, 4]
    policy.ran(1.0)  # the wait is bounded by half of this
    q.put(5)
    thread = put_later(q, 0.1, 6, 7, 8)  # the other callers send again a little later
    assert policy.collect(q) == [5, 6, 7, 8]
    thread.join()


def test_the_wait_is_at_most_half_the_last_batch():
    policy = BatchPolicy(max_size=8, max_wait_s=2.0)
    assert policy.collect(filled(1, 2, 3, 4)) == [1, 2, 3, 4]
    policy.ran(0.02)  # batches take 20 ms: waiting 0.5 s for company would cost more than it brings
    q = filled(5)
    thread = put_later(q, 0.5, 6)
    assert policy.collect(q) == [5]
    thread.join()
