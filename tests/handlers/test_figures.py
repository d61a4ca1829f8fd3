"""handlers.figures: what a request cost the engine, combined over its prompts and carried
between processes (an MMS worker's answer envelope) without ever failing an answer."""

import pytest

from handlers.figures import Figures


def test_a_requests_prompts_combine_into_its_figures():
    parts = [Figures(10.0, 10.5, 7, 3, (4,)), None, Figures(10.1, 10.9, 5, 2)]
    assert Figures.combine(parts) == Figures(10.0, 10.9, 12, 5, (4,))
    assert Figures.combine([None]) is None
    assert Figures(10.2, 10.25).server_timing(10.0) == "queue;dur=200.0, engine;dur=50.0"


def test_figures_round_trip_and_malformed_ones_are_dropped():
    figures = Figures(1.5, 2.5, 10, 4, (3, 1))
    assert Figures.from_json(figures.to_json()) == figures
    for bad in (None, "x", {}, {"start": "a", "end": 1}, {"start": 1, "end": 2, "calls": [0]},
                {"start": float("nan"), "end": 1}, {"start": 1, "end": 2, "input_tokens": -1},
                {"start": 1, "end": 2, "calls": "ab"}):
        assert Figures.from_json(bad) is None, bad


@pytest.mark.parametrize("arrived", [10.0, 10.3])
def test_server_timing_never_goes_negative(arrived):
    queue, engine = Figures(10.2, 10.1).server_timing(arrived).split(", ")
    assert queue.startswith("queue;dur=") and float(queue.split("=")[1]) >= 0
    assert engine == "engine;dur=0.0"
