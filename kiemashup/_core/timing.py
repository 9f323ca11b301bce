"""Timing rules without a clock: backoff, poll intervals and sliding windows.

This module performs no I/O and reads no clock or randomness: ``now`` and ``rand``
are arguments.
"""

from __future__ import annotations

from collections import deque

from kiemashup._core.errors import RateLimitError
from kiemashup._core.models import Stage
from kiemashup._core.policy import PollPolicy, RetryPolicy


def backoff_delay(attempt: int, policy: RetryPolicy, rand: float) -> float:
    """Full-jitter capped exponential backoff before retry number ``attempt`` (1-based)."""
    ceiling = min(policy.cap, policy.base * 2.0 ** min(attempt - 1, 64))  # no float overflow
    return float(ceiling * rand)


def retry_delay(error: Exception, attempt: int, policy: RetryPolicy, rand: float) -> float:
    """How long to wait before retrying after ``error``; Retry-After wins when given."""
    if isinstance(error, RateLimitError) and error.retry_after is not None:
        return min(error.retry_after, policy.max_retry_after)
    return backoff_delay(attempt, policy, rand)


def poll_interval(stage: Stage, age: float, policy: PollPolicy, rand: float) -> float:
    """Seconds until the next poll of a task ``age`` seconds old at ``stage``.

    ``rand`` is uniform in [0, 1); it spreads polls by ``policy.jitter`` either way.
    """
    base = min(policy.maximum, policy.initial + policy.growth * max(0.0, age))
    if stage >= Stage.FIRST:
        base = min(base, policy.after_first)
    jittered = base * (1.0 + policy.jitter * (2.0 * rand - 1.0))
    return max(policy.min_interval, jittered)


def outage_interval(failures: int, policy: PollPolicy, rand: float) -> float:
    """Backoff for a task whose polls keep failing: grows to ``outage_maximum``, jittered."""
    base = min(policy.outage_maximum, policy.initial * 2.0 ** min(failures, 16))
    return float(max(policy.min_interval, base * (0.5 + 0.5 * rand)))


class SlidingWindow:
    """At most ``limit`` events in any ``window`` seconds; time is passed in."""

    __slots__ = ("_times", "limit", "window")

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._times: deque[float] = deque()

    def delay(self, now: float) -> float:
        """Seconds to wait before one more event is allowed (0 when allowed now)."""
        times = self._times
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) < self.limit:
            return 0.0
        # Times may include reservations in the future; the limit-th latest one decides.
        return max(0.0, times[-self.limit] + self.window - now)

    def record(self, now: float) -> None:
        self._times.append(now)

    def release(self, when: float) -> None:
        """Give back a slot recorded at ``when`` that was never used (its sender gave up)."""
        if when in self._times:  # else it already left the window
            self._times.remove(when)
