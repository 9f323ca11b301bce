"""Tunable policies for polling, retries, rate limits and timeouts. This module performs no I/O.

Defaults follow Kie's published limits (KIE-API.md §2, §4.3): at most 3 polls per
second per task and 20 task creations per 10 seconds.
"""

from __future__ import annotations

import attrs


def _positive(_inst: object, attr: attrs.Attribute[float], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attr.name} must be > 0 (got {value!r})")


def _non_negative(_inst: object, attr: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attr.name} must be >= 0 (got {value!r})")


@attrs.frozen
class PollPolicy:
    """When to poll a task that somebody waits on.

    The interval starts at ``initial`` and grows by ``growth`` seconds for every
    second the task has run, up to ``maximum``; once the first track exists the
    interval is capped at ``after_first`` because completion usually follows soon.
    Each interval is multiplied by a random factor in ``1 ± jitter`` so that
    thousands of tasks submitted together do not poll in lock-step. No task is
    ever polled more often than every ``min_interval`` seconds (Kie allows 3/s).
    While callbacks are expected (the client has a receiver or a callback URL),
    polls are only a safety net: a task still PENDING is probed ``callback_probe``
    seconds after its last news (Kie's text stage usually comes within that), a
    later stage after ``callback_grace`` seconds. A probe that finds the task ahead
    of its callbacks marks them overdue: the client warns once and polls every task
    whose callbacks are overdue at the normal cadence until callbacks arrive again.
    A poll that fails after its retries backs off up to ``outage_maximum``.
    """

    initial: float = attrs.field(default=2.0, validator=_positive)
    growth: float = attrs.field(default=0.12, validator=_non_negative)
    maximum: float = attrs.field(default=10.0, validator=_positive)
    # 9 s, not 5: a task whose first track lands early would otherwise poll every 5 s
    # until it completes; 9 s keeps a 150 s task at <= 25 polls wherever its first
    # track lands (benchmarks/polls.py, docs/performance.md).
    after_first: float = attrs.field(default=9.0, validator=_positive)
    jitter: float = attrs.field(default=0.1, validator=_non_negative)
    min_interval: float = attrs.field(default=0.34, validator=_positive)
    callback_grace: float = attrs.field(default=150.0, validator=_positive)
    callback_probe: float = attrs.field(default=15.0, validator=_positive)
    outage_maximum: float = attrs.field(default=30.0, validator=_positive)


@attrs.frozen
class RetryPolicy:
    """Capped exponential backoff with full jitter, for requests that are safe to repeat."""

    attempts: int = attrs.field(default=5)
    base: float = attrs.field(default=0.5, validator=_positive)
    cap: float = attrs.field(default=20.0, validator=_positive)
    max_retry_after: float = attrs.field(default=60.0, validator=_positive)

    @attempts.validator
    def _check_attempts(self, _attr: attrs.Attribute[int], value: int) -> None:
        if value < 1:
            raise ValueError(f"attempts must be >= 1 (got {value!r})")


@attrs.frozen
class RateLimits:
    """Client-side caps that keep a whole client inside Kie's limits.

    Submits are paced to ``submits_per_window`` per ``submit_window`` seconds, with a
    margin, counted the way Kie counts them (by arrival). The total request rate is
    adaptive by default (``requests_per_second=None``): no cap until Kie's 429s are a
    real share of its replies, then it backs off to what Kie accepted (honouring
    ``Retry-After``) and grows back when the push-back stops. A number sets a fixed
    ceiling instead, never adapted. ``max_in_flight`` must stay below
    ``connection_limit`` so that requests never queue inside the connection pool
    (where they could time out unsent).
    """

    submits_per_window: int = 20
    submit_window: float = attrs.field(default=10.0, validator=_positive)
    requests_per_second: float | None = attrs.field(default=None)
    max_in_flight: int = 32
    connection_limit: int = 100

    def __attrs_post_init__(self) -> None:
        if self.requests_per_second is not None and not self.requests_per_second > 0:
            raise ValueError(
                f"requests_per_second must be > 0 or None (got {self.requests_per_second!r})"
            )
        if self.submits_per_window < 1:
            raise ValueError(f"submits_per_window must be >= 1 (got {self.submits_per_window})")
        if not 1 <= self.max_in_flight < self.connection_limit:
            raise ValueError(
                "max_in_flight must be >= 1 and below connection_limit "
                f"(got {self.max_in_flight} and {self.connection_limit})"
            )


@attrs.frozen
class Timeouts:
    """Per-request timeouts in seconds (a wait's deadline comes from the caller).

    ``connect``: opening a connection. ``read``: the longest wait for data; an API
    reply is small and comes in one read, so an API call (submit, poll, credits) must
    be answered within ``read``, while an upload or download may run for as long as
    data keeps coming, each read within ``read``. ``total``: the most any API call
    may take (the smaller of ``read`` and ``total`` bounds it); transfers have none.
    """

    connect: float = attrs.field(default=10.0, validator=_positive)
    read: float = attrs.field(default=30.0, validator=_positive)
    total: float = attrs.field(default=60.0, validator=_positive)
