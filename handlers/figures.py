"""What a request cost the engine, measured where the engine runs and carried back with the
answer: the front turns it into the ``Server-Timing`` header and into ``/metrics``.

On the single-model stack the engine runs in the app's own process; on the multi-model stack
in an MMS worker, whose answer envelope carries these figures back to the app
(``container.protocol``). Times are ``time.monotonic()`` values: CLOCK_MONOTONIC, one clock
for every process of the host, so the front compares them with its own arrival time.

Engine calls: each one is reported by exactly one of the prompts it ran (the first), so the
sizes the front collects from all answers count every call once.
"""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Figures:
    start: float  # its first engine call started
    end: float  # its last prompt's sequences were complete
    input_tokens: int = 0  # token ids the engine read (after truncation, with the closing </s>)
    generated_tokens: int = 0  # token ids it generated (without </s>), all its sequences
    calls: tuple[int, ...] = ()  # prompts per engine call, for the calls this request reports

    @classmethod
    def combine(cls, parts) -> "Figures | None":
        """The figures of a request whose prompts ran as several jobs; None when none ran."""
        parts = [p for p in parts if p is not None]
        if not parts:
            return None
        return cls(min(p.start for p in parts), max(p.end for p in parts),
                   sum(p.input_tokens for p in parts), sum(p.generated_tokens for p in parts),
                   tuple(size for p in parts for size in p.calls))

    def server_timing(self, arrived: float) -> str:
        """The W3C ``Server-Timing`` value: time queued since ``arrived``, time in the engine (ms)."""
        queue, engine = max(0.0, self.start - arrived), max(0.0, self.end - self.start)
        return f"queue;dur={queue * 1000:.1f}, engine;dur={engine * 1000:.1f}"

    def to_json(self) -> dict:
        return {"start": self.start, "end": self.end, "input_tokens": self.input_tokens,
                "generated_tokens": self.generated_tokens, "calls": list(self.calls)}

    @classmethod
    def from_json(cls, data) -> "Figures | None":
        """Figures from another process's answer; None when absent or malformed (an answer
        never fails for its figures)."""
        if not isinstance(data, dict):
            return None
        try:
            start, end = float(data["start"]), float(data["end"])
            counts = [int(data.get(k, 0)) for k in ("input_tokens", "generated_tokens")]
            calls = tuple(int(size) for size in data.get("calls", ()))
        except (KeyError, TypeError, ValueError):
            return None
        if not (math.isfinite(start) and math.isfinite(end)) or min(counts, default=0) < 0 or \
                any(size < 1 for size in calls):
            return None
        return cls(start, end, counts[0], counts[1], calls)
