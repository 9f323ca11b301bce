"""Total outages: the API is down (connections refused); polling backs off and comes back.

Time is scaled: ``OUTAGE`` caps the outage backoff at 0.6 s where the default
``PollPolicy().outage_maximum`` is 30 s, so one "simulated minute" here is
``60 / SCALE`` = 1.2 s of real time. The bounds asserted are the policy's own,
plus loose slack for a busy machine; they are never tight timings.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import pytest

from kiemashup import (
    MashupClient,
    MashupRequest,
    PollPolicy,
    RateLimits,
    RetryPolicy,
    TaskStatus,
    TransportError,
)
from kiemashup._core.timing import outage_interval
from kiemashup.testing import FakeKieServer, Timeline

ClientFactory = Callable[..., MashupClient]

#: Default outage backoff cap: after the API returns, polling resumes within this.
DEFAULT_OUTAGE_MAXIMUM = 30.0
OUTAGE = PollPolicy(
    initial=0.05, growth=0.0, maximum=0.1, after_first=0.1, min_interval=0.05, outage_maximum=0.6
)
SCALE = DEFAULT_OUTAGE_MAXIMUM / OUTAGE.outage_maximum  # 50x: 1 real s = 50 simulated s
SIMULATED_MINUTE = 60.0 / SCALE
RETRY = RetryPolicy(attempts=3, base=0.02, cap=0.1, max_retry_after=0.2)
#: Resumption is checked against the policy bound plus this much scheduling slack.
SLACK = 1.0
ENDLESS = Timeline.success(text=60.0, first=70.0, complete=80.0)


def test_the_default_outage_backoff_is_capped_at_30_s() -> None:
    """PollPolicy().outage_maximum is 30 s, and no outage delay ever exceeds the cap."""
    policy = PollPolicy()
    assert policy.outage_maximum == DEFAULT_OUTAGE_MAXIMUM
    for failures in range(1, 200):
        for rand in (0.0, 0.5, 0.999999):
            delay = outage_interval(failures, policy, rand)
            assert policy.min_interval <= delay <= policy.outage_maximum


async def test_polling_backs_off_during_an_outage_and_resumes_when_it_ends(
    make_client: ClientFactory, fake_server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """While connections are refused polls stay bounded per minute; after, a poll comes soon."""
    fake_server.script(Timeline.success(text=0.1, first=0.2, complete=0.3))
    client = make_client(poll_policy=OUTAGE, retry_policy=RETRY)
    handle = await client.submit(mashup_request)
    down_for = 4 * SIMULATED_MINUTE  # four simulated minutes without the API
    outage = asyncio.create_task(fake_server.restart(down_for=down_for))
    waiting = asyncio.create_task(handle.wait())
    await asyncio.sleep(0)  # the server is down from here
    counts = [client.requests_sent]
    for _ in range(3):
        await asyncio.sleep(SIMULATED_MINUTE)
        counts.append(client.requests_sent)
    assert not waiting.done(), "a wait failed (or finished) during the outage"
    await outage  # the API is back
    back = asyncio.get_running_loop().time()
    async with asyncio.timeout(OUTAGE.outage_maximum + SLACK + 5):
        final = await waiting
    resumed_after = asyncio.get_running_loop().time() - back

    per_minute = [b - a for a, b in itertools.pairwise(counts)]
    # Steady state: rounds at least outage_maximum / 2 apart, each at most RETRY.attempts
    # requests; the first minute also holds the ramp-up from initial to the cap.
    rounds = SIMULATED_MINUTE / (OUTAGE.outage_maximum / 2) + 1
    bound = int(rounds * RETRY.attempts)
    assert all(n > 0 for n in per_minute), f"polling stopped during the outage: {per_minute}"
    assert max(per_minute[1:]) <= bound, f"hot loop: {per_minute} requests per minute > {bound}"
    assert sum(per_minute) <= 3 * bound + 7 * RETRY.attempts
    print(
        f"requests per simulated minute {per_minute} (bound {bound}); resumed after "
        f"{resumed_after:.2f} s = {resumed_after * SCALE:.1f} simulated s"
    )
    assert final.status is TaskStatus.SUCCESS
    assert resumed_after <= OUTAGE.outage_maximum + SLACK, (
        f"polling resumed {resumed_after * SCALE:.0f} simulated s after the outage "
        f"(bound {DEFAULT_OUTAGE_MAXIMUM:.0f} s)"
    )


async def test_a_wait_during_an_outage_ends_only_at_the_callers_deadline(
    make_client: ClientFactory, fake_server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """During an outage a wait raises the caller's TimeoutError, never a TransportError."""
    fake_server.script(ENDLESS)
    client = make_client(poll_policy=OUTAGE, retry_policy=RETRY)
    handle = await client.submit(mashup_request)
    outage = asyncio.create_task(fake_server.restart(down_for=3 * SIMULATED_MINUTE))
    await asyncio.sleep(0)
    before = client.requests_sent
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2 * SIMULATED_MINUTE):
                await handle.wait()
    except TransportError as exc:  # pragma: no cover - the failure this test exists for
        pytest.fail(f"the wait failed with {exc!r} before the caller's deadline")
    finally:
        await outage
    assert client.requests_sent > before  # it kept trying, quietly
    async with asyncio.timeout(OUTAGE.outage_maximum + SLACK + 5):
        snapshot = await handle.refresh()  # the API is back: the same handle works again
    assert snapshot.status is TaskStatus.PENDING


async def test_many_waits_share_one_backoff_during_an_outage(
    make_client: ClientFactory, fake_server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """50 tasks waiting through an outage cost a bounded number of requests each, then finish."""
    fake_server.default_timeline = Timeline.success(text=0.1, first=0.2, complete=0.3)
    fake_server.creation_limit = 1000
    client = make_client(
        poll_policy=OUTAGE,
        retry_policy=RETRY,
        rate_limits=RateLimits(
            submits_per_window=1000, submit_window=1.0, requests_per_second=2000
        ),
    )
    handles = [await client.submit(mashup_request) for _ in range(50)]
    before = client.requests_sent
    outage = asyncio.create_task(fake_server.restart(down_for=3 * SIMULATED_MINUTE))
    async with asyncio.timeout(3 * SIMULATED_MINUTE + OUTAGE.outage_maximum + SLACK + 10):
        finals = await asyncio.gather(*(handle.wait() for handle in handles))
        await outage
    assert {final.status for final in finals} == {TaskStatus.SUCCESS}
    # Per task: ramp-up plus 3 minutes at <= `bound` requests, plus the last poll.
    rounds = SIMULATED_MINUTE / (OUTAGE.outage_maximum / 2) + 1
    per_task = (client.requests_sent - before) / len(handles)
    assert per_task <= (3 * rounds + 8) * RETRY.attempts, per_task
