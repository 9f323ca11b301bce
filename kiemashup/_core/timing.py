"""Timing rules without a clock: backoff, poll intervals, the per-task poll floor,
callback deadlines, the adaptive request budget and the creation window.

This module performs no I/O and reads no clock or randomness: ``now`` and ``rand``
are arguments.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

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


def next_poll_at(last_reply: float, now: float, policy: PollPolicy) -> float:
    """The per-task poll floor (Kie: 3 polls/s per task), the one place it is computed.

    It counts from the *reply* to the previous poll, not its sending: the server's
    arrival clock lies between the two, so polls spaced this way arrive at least
    ``min_interval`` apart however the network delays them.
    """
    return max(now, last_reply + policy.min_interval)


def callback_deadline(stage: Stage, policy: PollPolicy, typical: float | None = None) -> float:
    """Seconds after a task's last callback news before a safety-net probe, by stage.

    ``typical`` is how long the next callback has taken to follow this stage's one
    for this client's other tasks (None while unknown). Unknown, a PENDING task
    expects Kie's text callback within ``callback_probe`` and a later stage waits
    ``callback_grace``. Known, the probe comes when the callback is clearly late:
    three times the typical gap, or the gap plus ``callback_probe`` if sooner, never
    before 2 s. No probe ever comes later than ``callback_grace``.
    """
    if typical is None:
        wait = policy.callback_probe if stage is Stage.PENDING else policy.callback_grace
    else:
        wait = max(2.0, min(typical + policy.callback_probe, 3.0 * typical))
    return min(wait, policy.callback_grace)


GAP_SAMPLES = 3  # tasks whose callbacks must agree before a learned gap is used


def typical_gap(samples: Sequence[float]) -> float | None:
    """The typical gap between two stages' callbacks: the median of the last tasks' gaps.

    None until ``GAP_SAMPLES`` tasks have shown it. A median of several tasks, not a
    running average: one task's forged callbacks (an attacker holding one signed
    delivery can send a "first" right after its "text") cannot make every other task's
    safety net fire early.
    """
    if len(samples) < GAP_SAMPLES:
        return None
    ordered = sorted(samples)
    return ordered[len(ordered) // 2]


def outage_interval(failures: int, policy: PollPolicy, rand: float) -> float:
    """Backoff for a task whose polls keep failing: grows to ``outage_maximum``, jittered."""
    base = min(policy.outage_maximum, policy.initial * 2.0 ** min(failures, 16))
    return float(max(policy.min_interval, base * (0.5 + 0.5 * rand)))


class RequestBudget:
    """The client's total request rate: no cap (or a fixed one) until the server pushes back.

    While limited, at most ``rate`` requests go out in any ``window`` seconds (counted
    like a server's sliding window, so a burst is followed by a pause instead of more
    push-back), spaced at least half their average interval apart.

    A 429 is a rate signal only when push-backs are a real share of the replies: at
    least ``min_push_backs`` of them and ``share`` of all replies in the last ``window``
    seconds. A stray 429 (Kie's per-task limit, say) is left to that request's own
    retry, which honours its ``Retry-After``: cutting the whole client for it would
    throttle every task for nothing. A real push-back sets ``rate`` to 90 % of what
    the server accepted in the last window (never above 85 % of the current rate), at
    most once per ``settle`` seconds of requests sent since the last cut, and pauses
    every request until its ``Retry-After``. Accepted replies grow the rate by 10 % a
    second (at least 1) up to 95 % of what the server accepted when it pushed back, by
    2 % a second past that (probing gently where push-back began); ``recover``
    seconds without a push-back lift the adaptive cap altogether. A fixed ``cap`` is
    the caller's choice: it is never exceeded and never adapted (each 429 is left to
    its request's retry).

    ``rate`` is None while nothing limits the client; ``paused_until`` is the clock
    time before which no request may leave (a push-back's Retry-After).
    """

    __slots__ = (
        "_accepted",
        "_ceiling",
        "_cut_at",
        "_grown_at",
        "_last",
        "_pushed",
        "_sends",
        "cap",
        "cuts",
        "floor",
        "min_push_backs",
        "paused_until",
        "rate",
        "recover",
        "settle",
        "share",
        "window",
    )

    def __init__(
        self,
        cap: float | None = None,
        *,
        floor: float = 2.0,
        window: float = 1.0,
        settle: float = 0.5,
        recover: float = 60.0,
        share: float = 0.05,
        min_push_backs: int = 3,
    ) -> None:
        self.cap = cap
        self.rate: float | None = cap  # requests per window; None: not limited
        self.floor = floor
        self.window = window
        self.settle = settle
        self.recover = recover
        self.share = share
        self.min_push_backs = min_push_backs
        self.cuts = 0
        self._last = float("-inf")
        self.paused_until = float("-inf")
        self._cut_at = float("-inf")
        self._grown_at = float("-inf")
        self._ceiling = math.inf  # what the server accepted when it last pushed back
        self._accepted: deque[float] = deque()
        self._pushed: deque[float] = deque()
        self._sends: deque[float] = deque()  # slots taken while limited (some in the future)

    def reserve(self, now: float, horizon: float = math.inf) -> float:
        """Take the next slot: the seconds to wait before sending (0 when free now).

        A slot more than ``horizon`` seconds away is not taken (the caller asks again
        later): a rate that grows back must speed up requests already waiting, which a
        slot booked far ahead at the low rate would not be.
        """
        start = now if now >= self.paused_until else self.paused_until
        rate = self.rate
        if rate is None:
            return start - now
        sends = self._sends
        limit = max(1, int(rate))
        while len(sends) > limit or (sends and sends[0] <= now - self.window):
            sends.popleft()
        start = max(start, self._last + 0.5 * self.window / rate)
        if len(sends) >= limit:
            start = max(start, sends[-limit] + self.window)
        if start - now > horizon:
            return start - now
        sends.append(start)
        self._last = start
        return start - now

    def _recent(self, log: deque[float], now: float) -> int:
        horizon = now - self.window
        while log and log[0] < horizon:
            log.popleft()
        return len(log)

    def accepted(self, now: float) -> None:
        """A reply that was not a push-back (any other status counts)."""
        log = self._accepted  # trimmed inline (``_recent``): this runs for every reply
        log.append(now)
        horizon = now - self.window
        while log[0] < horizon:
            log.popleft()
        rate = self.rate
        if rate is None or rate == self.cap or now - self._cut_at < self.settle:
            return
        if self.cap is None and now - self._cut_at >= self.recover:
            self.rate = None
            self._sends.clear()
            return
        # Fast back to near where the server pushed back, then slowly past it.
        step = max(1.0, 0.1 * rate) if rate < 0.95 * self._ceiling else max(0.5, 0.02 * rate)
        grown = rate + step * min(1.0, now - max(self._grown_at, self._cut_at))
        self._grown_at = now
        self.rate = grown if self.cap is None else min(grown, self.cap)

    def pushed_back(self, now: float, sent_at: float, retry_after: float | None) -> bool:
        """A 429 reply to a request sent at ``sent_at``; True when it cut the rate."""
        if self.cap is not None:
            return False  # a fixed cap is the caller's choice: each request retries alone
        self._pushed.append(now)
        pushed = self._recent(self._pushed, now)
        accepted = self._recent(self._accepted, now)
        if pushed < self.min_push_backs or pushed < self.share * (pushed + accepted):
            return False  # a stray 429: that request's own retry deals with it
        if sent_at < self._cut_at + self.settle:
            return False  # sent before the last cut could take effect: already counted
        if retry_after is not None and retry_after > 0:
            self.paused_until = max(self.paused_until, now + retry_after)
        self._ceiling = accepted
        target = 0.9 * accepted
        if self.rate is not None:
            target = min(target, 0.85 * self.rate)
        self.rate = max(self.floor, target)
        # The server's window is full: what it accepted lately must age out first.
        self._sends = deque(self._accepted)
        self._last = max(self._last, now)
        self._cut_at = now
        self._grown_at = now
        self.cuts += 1
        return True


class CreationWindow:
    """Kie's creation limit (``limit`` per ``window`` s, counted by arrival), with margin.

    Each submit holds a place from when it is sent until ``window + margin`` seconds
    after its reply (or the moment it was given up): the server's arrival clock lies
    between the two, so no sliding window of the server's ever holds more than
    ``limit`` arrivals, whatever the network or the CPU load does to timing. A fresh
    window, or one that has just been answered 429, lets one submit probe alone
    until a reply comes; a 429 also holds every submit back until its ``Retry-After``
    (else a full window), so a client started right after another one's burst meets
    at most one 429 and then paces itself from that reply.
    """

    __slots__ = ("_ends", "limit", "margin", "not_before", "open", "probing", "window")

    def __init__(self, limit: int, window: float, margin: float | None = None) -> None:
        self.limit = limit
        self.window = window
        self.margin = 0.02 * window + 0.05 if margin is None else margin
        self.open = 0
        self.not_before = float("-inf")
        self.probing = True
        self._ends: deque[float] = deque()

    def wait(self, now: float) -> float | None:
        """Seconds before one more submit may be sent; 0 now; None until a reply comes."""
        now += 1e-9  # a place freeing within a nanosecond is free (float rounding)
        if now < self.not_before:
            return self.not_before - now
        ends = self._ends
        while ends and ends[0] <= now:
            ends.popleft()
        if self.probing and self.open:
            return None
        if self.open + len(ends) < self.limit:
            return 0.0
        return ends[0] - now if ends else None

    def opened(self) -> None:
        """A submit is being sent now (call right after ``wait`` returned 0)."""
        self.open += 1

    def abandoned(self) -> None:
        """A submit that took its place was given up before it was sent: free the place."""
        self.open -= 1

    def closed(self, now: float, *, rejected: bool, retry_after: float | None = None) -> None:
        """A submit got its reply (or was given up) at ``now``; ``rejected``: it was a 429."""
        self.open -= 1
        self._ends.append(now + self.window + self.margin)
        if rejected:
            hold = retry_after if retry_after is not None else self.window + self.margin
            self.not_before = max(self.not_before, now + hold)
            self.probing = True
        else:
            self.probing = False
