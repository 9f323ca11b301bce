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
