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
    """With callbacks on time, only the final callback's confirming poll is left."""
    timeline = ((20.0, Stage.TEXT), (110.0, Stage.FIRST), (150.0, Stage.COMPLETE))
    assert simulate_polls(timeline, callbacks=True) == 1
