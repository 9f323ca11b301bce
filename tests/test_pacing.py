"""Pacing without a clock: the creation window, the adaptive request budget, the poll floor.

Every test here is pure (``kiemashup._core.timing``) and deterministic: a small event
simulation stands in for the network and for Kie, so what is proven holds for any
timing the simulation draws, not only for a lucky run.
"""

from __future__ import annotations

import heapq
import random
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiemashup import PollPolicy, RateLimits, Stage
from kiemashup._core.timing import (
    CreationWindow,
    RequestBudget,
    callback_deadline,
    next_poll_at,
    typical_gap,
)

# --- the creation window --------------------------------------------------------------------


def simulate_creations(
    limit: int,
    window: float,
    latencies: list[tuple[float, float]],
    n: int,
    *,
    prior: tuple[float, ...] = (),
    count_rejected: bool = False,
) -> tuple[int, list[float]]:
    """``n`` gathered submits paced by CreationWindow against a server counting by arrival.

    Submit i reaches the server ``latencies[i][0]`` s after it is sent and its reply
    comes ``latencies[i][1]`` s after that. The server rejects (429) an arrival that
    finds ``limit`` accepted creations (or, with ``count_rejected``, arrivals) in the
    last ``window`` s; a rejected submit is sent again. ``prior`` holds another
    client's accepted creations. Returns (429s, accepted arrival times).
    """
    pacer = CreationWindow(limit, window)
    counted: list[float] = list(prior)
    accepted: list[float] = []
    events: list[tuple[float, int, str, bool]] = []  # (time, seq, kind, rejected)
    seq = 0
    now, waiting, rejections, sent = 0.0, n, 0, 0
    while waiting or events:
        wait = pacer.wait(now) if waiting else None
        next_event = events[0][0] if events else float("inf")
        if wait is not None and now + wait <= next_event:
            if wait > 0:  # sleep, then ask again (as Transport.pace_submit does)
                now += wait
                continue
            pacer.opened()
            waiting -= 1
            there, back = latencies[sent % len(latencies)]
            sent += 1
            heapq.heappush(events, (now + there, seq, f"arrive:{back}", False))
            seq += 1
            continue
        now, _seq, kind, rejected = heapq.heappop(events)
        if kind.startswith("arrive:"):
            in_window = sum(1 for t in counted if now - window < t <= now)
            rejected = in_window >= limit
            if not rejected or count_rejected:
                counted.append(now)
            if not rejected:
                accepted.append(now)
            back = float(kind.split(":", 1)[1])
            heapq.heappush(events, (now + back, seq, "reply", rejected))
            seq += 1
        else:
            pacer.closed(now, rejected=rejected)
            if rejected:
                rejections += 1
                waiting += 1  # the submit is retried
    return rejections, accepted


_latency = st.tuples(st.floats(0.0, 0.4), st.floats(0.0, 0.4))


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 20),
    st.sampled_from([0.5, 1.0, 10.0]),
    st.lists(_latency, min_size=1, max_size=50),
    st.integers(1, 60),
    st.booleans(),
)
def test_gathered_submits_never_draw_a_429_whatever_the_latencies(
    limit: int,
    window: float,
    latencies: list[tuple[float, float]],
    n: int,
    count_rejected: bool,
) -> None:
    """Counted from replies, with margin: no server window ever sees more than the limit."""
    rejections, accepted = simulate_creations(
        limit, window, latencies, n, count_rejected=count_rejected
    )
    assert rejections == 0
    assert len(accepted) == n
    for t in accepted:
        assert sum(1 for u in accepted if t - window < u <= t) <= limit


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 20),
    st.lists(_latency, min_size=1, max_size=30),
    st.integers(1, 40),
    st.floats(0.0, 0.99),
    st.booleans(),
)
def test_a_client_started_after_another_ones_burst_meets_at_most_one_429(
    limit: int,
    latencies: list[tuple[float, float]],
    n: int,
    burst_age: float,
    count_rejected: bool,
) -> None:
    """A full window left by someone else costs one 429; the client then paces from the reply."""
    window = 10.0
    prior = tuple(-burst_age * window * (i + 1) / (limit + 1) for i in range(limit))
    rejections, accepted = simulate_creations(
        limit, window, latencies, n, prior=prior, count_rejected=count_rejected
    )
    assert rejections <= 1
    assert len(accepted) == n


def test_a_fresh_window_probes_with_one_submit_first() -> None:
    """Until the first reply, one submit is on the wire; then up to the limit go at once."""
    pacer = CreationWindow(20, 10.0)
    assert pacer.wait(0.0) == 0.0
    pacer.opened()
    assert pacer.wait(0.0) is None  # the probe's reply decides
    pacer.closed(0.1, rejected=False)
    for _ in range(19):
        assert pacer.wait(0.1) == 0.0
        pacer.opened()
    # 20 places taken: the next frees a window and the margin after the probe's reply.
    assert pacer.wait(0.1) == pytest.approx(10.0 + pacer.margin)


def test_a_429_holds_submits_for_its_retry_after_else_a_full_window() -> None:
    """After a 429 the next submit waits Retry-After, or a whole window plus the margin."""
    pacer = CreationWindow(20, 10.0)
    pacer.opened()
    pacer.closed(1.0, rejected=True, retry_after=3.0)
    assert pacer.wait(1.0) == pytest.approx(3.0)
    other = CreationWindow(20, 10.0)
    other.opened()
    other.closed(1.0, rejected=True)
    assert other.wait(1.0) == pytest.approx(10.0 + other.margin)
    assert other.margin == pytest.approx(0.25)


def test_places_free_a_window_and_margin_after_their_replies() -> None:
    """A full window frees its first place window + margin after the first reply."""
    pacer = CreationWindow(2, 1.0)
    pacer.opened()
    pacer.closed(0.5, rejected=False)
    pacer.opened()
    pacer.closed(0.7, rejected=False)
    assert pacer.wait(0.7) == pytest.approx(0.5 + 1.0 + pacer.margin - 0.7)


# --- the request budget ---------------------------------------------------------------------


def simulate_budget(
    server_rate: int,
    seconds: float,
    *,
    in_flight: int = 16,
    rtt: float = 0.004,
    retry_after: bool = False,
    seed: int = 1,
) -> tuple[int, int, RequestBudget]:
    """A client that always has polls to send, against a server limited to ``server_rate``/s.

    The server answers 429 to an arrival that finds ``server_rate`` accepted requests
    in the last second (with ``Retry-After`` until a place frees, if asked). Returns
    (requests, 429s, the budget).
    """
    rng = random.Random(seed)
    budget = RequestBudget()
    window: deque[float] = deque()
    # (time, seq, kind, sent at or cuts seen, rejected): "send" wakes a reserved request,
    # which goes out only if no cut happened while it slept (as Transport does).
    events: list[tuple[float, int, str, float, bool]] = []
    now, seq, requests, rejected_total = 0.0, 0, 0, 0
    for _ in range(in_flight):
        heapq.heappush(events, (now + budget.reserve(now), seq, "send", budget.cuts, False))
        seq += 1
    while now < seconds:
        now, _seq, kind, value, rejected = heapq.heappop(events)
        if kind == "send":
            if value != budget.cuts:  # a cut came while it slept: take a new slot
                heapq.heappush(events, (now + budget.reserve(now), seq, "send", budget.cuts, False))
                seq += 1
                continue
            arrive = now + rtt * rng.uniform(0.3, 0.7)
            while window and window[0] <= arrive - 1.0:
                window.popleft()
            rejected = len(window) >= server_rate
            if not rejected:
                window.append(arrive)
            heapq.heappush(events, (now + rtt * rng.uniform(0.8, 1.2), seq, "reply", now, rejected))
            seq += 1
            requests += 1
            continue
        if rejected:
            rejected_total += 1
            wait = (window[0] + 1.0 - now) if retry_after and window else None
            budget.pushed_back(now, value, wait)
        else:
            budget.accepted(now)
        heapq.heappush(events, (now + budget.reserve(now), seq, "send", budget.cuts, False))
        seq += 1
    return requests, rejected_total, budget


@pytest.mark.parametrize("retry_after", [False, True], ids=["no Retry-After", "Retry-After"])
@pytest.mark.parametrize("server_rate", [50, 200, 1000])
def test_the_budget_converges_below_a_global_limit(server_rate: int, retry_after: bool) -> None:
    """Above a server's global rate, at most 5 % of requests draw 429 and most capacity is used."""
    seconds = 60.0
    requests, rejected, budget = simulate_budget(server_rate, seconds, retry_after=retry_after)
    assert rejected / requests <= 0.05
    assert requests - rejected >= 0.6 * server_rate * seconds
    assert budget.rate is not None
    assert budget.rate <= 1.2 * server_rate


def test_the_budget_is_uncapped_until_pushed_back() -> None:
    """With no push-back there is no cap: every slot is free at once."""
    budget = RequestBudget()
    assert [budget.reserve(5.0) for _ in range(1000)] == [0.0] * 1000
    assert budget.rate is None


def test_a_push_back_sets_the_rate_to_what_the_server_accepted() -> None:
    """429s that are 5 % of the replies cut the rate to 90 % of what was accepted in 1 s."""
    budget = RequestBudget()
    for i in range(100):
        budget.accepted(i / 100)
    assert budget.pushed_back(0.991, 0.99, None) is False  # one stray 429: no cut
    assert budget.pushed_back(0.992, 0.99, None) is False
    assert budget.rate is None
    for n in range(3, 8):
        budget.pushed_back(0.99 + n / 1000, 0.99, None)
    assert budget.cuts == 1  # the sixth made over 5 %: one cut, then the settle time
    assert budget.rate == pytest.approx(90.0, rel=0.02)


def test_stray_429s_never_slow_the_client() -> None:
    """A 429 now and then (1 % of replies, Kie's per-task limit say) leaves the rate alone."""
    budget = RequestBudget()
    for i in range(20_000):
        now = i / 1000
        if i % 100 == 0:
            budget.pushed_back(now, now - 0.01, 1.0)
        else:
            budget.accepted(now)
    assert budget.cuts == 0
    assert budget.rate is None
    assert budget.reserve(20.0) == 0.0  # and its Retry-After paused nobody else


def test_retry_after_of_a_real_push_back_pauses_every_request() -> None:
    """When 429s are a real share of the replies, their Retry-After holds every request."""
    budget = RequestBudget()
    for n in range(3):
        budget.pushed_back(10.0 + n / 100, 9.9, 2.5)
    assert budget.cuts == 1
    assert budget.reserve(10.1) >= 2.3
    assert budget.reserve(13.0) < 1.0


def test_a_fixed_cap_does_not_adapt() -> None:
    """RateLimits(requests_per_second=N) is the caller's choice: push-back leaves it as set."""
    budget = RequestBudget(50.0)
    for n in range(10):
        assert budget.pushed_back(1.0 + n / 100, 0.5, 1.0) is False
    assert (budget.rate, budget.cuts) == (50.0, 0)


def test_the_budget_recovers_when_push_back_stops() -> None:
    """Accepted replies grow the rate back past the push-back level; a quiet spell lifts it."""
    budget = RequestBudget(recover=30.0)
    for i in range(20):
        budget.accepted(i / 20)
    for _ in range(3):
        budget.pushed_back(1.0, 1.0, None)
    cut = budget.rate
    assert cut is not None
    t = 1.0
    while t < 20.0:
        t += 0.05
        budget.accepted(t)
    assert budget.rate is not None
    assert budget.rate > 20  # past where the server pushed back (20 accepted in 1 s)
    while t < 32.0:
        t += 0.05
        budget.accepted(t)
    assert budget.rate is None


def test_a_fixed_cap_is_never_exceeded() -> None:
    """RateLimits(requests_per_second=N): slots N per second, even while recovering."""
    budget = RequestBudget(10.0)
    slots = [budget.reserve(0.0) for _ in range(30)]
    for t in slots:  # any 1 s window holds at most 10 sends
        assert sum(1 for u in slots if t - 1.0 + 1e-9 < u <= t) <= 10  # float rounding
    assert slots[-1] >= 2.0
    for i in range(200):
        budget.accepted(i * 0.1)
    assert budget.rate == 10.0


def test_rate_limits_default_to_the_adaptive_budget() -> None:
    """The shipped default has no fixed request cap; a fixed one stays an option."""
    assert RateLimits().requests_per_second is None
    assert RateLimits(requests_per_second=20).requests_per_second == 20
    with pytest.raises(ValueError, match="requests_per_second"):
        RateLimits(requests_per_second=0)


# --- the per-task floor and callback deadlines ------------------------------------------------


def test_the_poll_floor_counts_from_the_previous_reply() -> None:
    """The next poll of a task goes min_interval after the previous reply, never sooner."""
    policy = PollPolicy()
    assert next_poll_at(float("-inf"), 3.0, policy) == 3.0
    assert next_poll_at(10.0, 10.1, policy) == pytest.approx(10.0 + policy.min_interval)
    assert next_poll_at(10.0, 11.0, policy) == 11.0


def test_polls_spaced_by_the_floor_never_break_three_per_second_whatever_the_network() -> None:
    """Sends spaced from replies keep any 1 s window of arrivals at 3 or fewer."""
    rng = random.Random(3)
    policy = PollPolicy()
    reply, arrivals = float("-inf"), []
    now = 0.0
    for _ in range(2000):
        send = next_poll_at(reply, now, policy)
        arrive = send + rng.choice([0.0, 0.001, 0.3, 0.6])
        reply = arrive + rng.choice([0.0, 0.001, 0.2])
        arrivals.append(arrive)
        now = send
    for i in range(len(arrivals) - 3):
        assert arrivals[i + 3] - arrivals[i] > 1.0


def test_a_pending_task_is_probed_sooner_than_a_later_stage() -> None:
    """Kie's text callback is due soon after submit; later ones wait callback_grace."""
    policy = PollPolicy()
    assert callback_deadline(Stage.PENDING, policy) == policy.callback_probe == 15.0
    assert callback_deadline(Stage.TEXT, policy) == policy.callback_grace
    assert callback_deadline(Stage.FIRST, policy) == policy.callback_grace
    short = PollPolicy(callback_grace=0.3)
    assert callback_deadline(Stage.PENDING, short) == 0.3


def test_one_tasks_forged_gap_cannot_set_the_typical_gap() -> None:
    """The typical gap is unknown until 3 tasks showed it, then their median: no outlier rules."""
    assert typical_gap([]) is None
    assert typical_gap([0.3, 90.0]) is None
    assert typical_gap([0.3, 90.0, 92.0]) == 90.0  # a forged "first" 0.3 s after "text"
    assert typical_gap([0.3, 0.4, 90.0, 91.0, 92.0]) == 90.0
    assert callback_deadline(Stage.TEXT, PollPolicy(), typical_gap([0.3, 90.0, 92.0])) > 60
