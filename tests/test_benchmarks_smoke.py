"""The benchmark package imports, and its pure polls-per-task simulation runs (no timing)."""

from __future__ import annotations

import random

from benchmarks import simulate_polls
from benchmarks.polls import TIMELINE
from kiemashup import PollPolicy, Stage


def test_benchmarks_import_and_simulate_polling() -> None:
    """The default schedule polls a 150 s task fewer times than a fixed 3 s timer would."""
    polls = simulate_polls(TIMELINE, PollPolicy(), rand=random.Random(0))
    assert 0 < polls < 50


def test_simulate_polls_with_callbacks_on_time() -> None:
    """Callbacks on time: a fresh client probes once before text (at 15 s), then only confirms."""
    timeline = ((20.0, Stage.TEXT), (110.0, Stage.FIRST), (150.0, Stage.COMPLETE))
    assert simulate_polls(timeline, callbacks=True) == 2
    assert simulate_polls(timeline, callbacks=True, learned=True) == 1


def test_a_gate_with_a_floor_ignores_ratios_of_tiny_values() -> None:
    """Quick mode fails on ratio > gate, unless the value is under the figure's floor."""
    from benchmarks._common import Figure

    def figure(value: float, ratio: float, floor: float | None) -> Figure:
        return Figure("f", value, "ms", "t", True, ratio=ratio, gate=4.0, floor=floor)

    assert figure(27.0, 6.9, None).regressed
    assert not figure(27.0, 6.9, 75.0).regressed  # a GC pause at a few ms
    assert figure(900.0, 6.9, 75.0).regressed  # wakes queued again
    assert not figure(900.0, 3.0, 75.0).regressed
    rate = Figure("r", 4846.0, "/s", "t", True, ratio=2.5, gate=2.0, ceiling=4000.0)
    assert not rate.regressed  # far above its target whatever the baseline did
    slow = Figure("r", 2500.0, "/s", "t", True, ratio=2.5, gate=2.0, ceiling=4000.0)
    assert slow.regressed
