"""The dynamic batching policy of both stacks: what goes into the next batch.

Whatever is queued when the consumer becomes free (the flask stack's model thread, or a
sender that feeds one MMS worker) runs as one batch, up to ``max_size``: batches form
under load with no added latency when idle. Under load (the last batch held several
requests) the policy also waits, at most ``max_wait_s`` and half the last batch's run
time, for the callers of the last batch - who are sending their next requests - to join:
batches then grow to the number of callers instead of settling into halves that take
turns. Waiting never costs more than half a batch, so it costs less than it brings.

Standard library only; each consumer thread keeps its own ``BatchPolicy``.
"""

import queue
import time
from collections.abc import Callable
from typing import Any


class BatchPolicy:
    def __init__(self, max_size: int, max_wait_s: float):
        self.max_size, self.max_wait_s = max_size, max_wait_s
        self._last_members = 0
        self._last_duration = 0.0

    def collect(self, source: queue.SimpleQueue, size: Callable[[Any], int] = lambda item: 1) -> list:
        """Block for the first item, then take what the policy allows, in queue order.

        ``size(item)`` is the item's share of ``max_size`` (prompts, or 1 per request); an
        item of size 0 rides along without counting as a batch member (a stream job)."""
        first = source.get()
        items, total = [first], size(first)
        members = 1 if total else 0
        expected = source.qsize() + 1 + self._last_members if self._last_members > 1 else 0
        deadline = time.monotonic() + min(self.max_wait_s, self._last_duration / 2)
        while total < self.max_size:
            remaining = deadline - time.monotonic() if members < expected else 0
            try:
                item = source.get(timeout=remaining) if remaining > 0 else source.get_nowait()
            except queue.Empty:
                break
            items.append(item)
            weight = size(item)
            total += weight
            members += 1 if weight else 0
        self._last_members = members
        return items

    def ran(self, seconds: float) -> None:
        """How long the batch just collected took to run (bounds the next wait)."""
        self._last_duration = seconds
