"""Scale at the defaults, end to end: pacing, the adaptive budget, priorities, refresh().

Real FakeKieServer on loopback, the shipped RateLimits unless a test says otherwise.
Timing jitter is injected on purpose (seeded "slow" faults delay arrivals), and the
assertions are counts the server keeps by its own arrival clock.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from typing import Any

from kiemashup import MashupClient, MashupRequest, PollPolicy, RateLimits, Stage, TaskSnapshot
from kiemashup._core.state import make_snapshot
from kiemashup._handle import Hooks, TaskHandle, TaskState
from kiemashup._scheduler import PollScheduler
from kiemashup.testing import FakeKieServer, Fault, Timeline
from kiemashup.testing._task import RecordedRequest

ClientFactory = Callable[..., MashupClient]


def jitter(endpoint: str, seed: int, most: float) -> Callable[[RecordedRequest], Fault | None]:
    """A ``fault_for`` that delays each request to ``endpoint`` by 0..``most`` s (seeded)."""
    rng = random.Random(seed)

    def fault_for(recorded: RecordedRequest) -> Fault | None:
        if recorded.endpoint != endpoint:
            return None
        return Fault(endpoint, "slow", delay=rng.choice([0.0, 0.0, most * rng.random(), most]))

    return fault_for


# --- refresh() and latest show the server's status ---------------------------------------------


async def test_refresh_shows_an_unknown_status_at_the_same_stage(
    make_client: ClientFactory, mashup_request: MashupRequest
) -> None:
    """PENDING, then an unknown status at the same stage, then TEXT: refresh() shows each."""
    timeline = Timeline.custom(
        steps=((0.0, "PENDING"), (0.3, "QUEUED_UPSTREAM"), (0.8, "TEXT_SUCCESS"))
    )
    async with FakeKieServer(default_timeline=timeline) as server:
        client = make_client(server=server)
        handle = await client.submit(mashup_request)
        first = await handle.refresh()
        assert first.status == "PENDING"
        await asyncio.sleep(0.4)
        queued = await handle.refresh()
        assert (queued.status, queued.stage) == ("QUEUED_UPSTREAM", Stage.PENDING)
        assert handle.latest is queued
        await asyncio.sleep(0.5)
        assert (await handle.refresh()).stage is Stage.TEXT
        assert (await client.get_task(handle.task_id)).status == "TEXT_SUCCESS"


# --- creation pacing ------------------------------------------------------------------------


async def test_gathered_submits_draw_no_429_when_arrivals_jitter(
    make_client: ClientFactory, mashup_request: MashupRequest
) -> None:
    """45 gathered submits, each delayed 0-80 ms on its way: no 429, 0 violations, 45 tasks."""
    async with FakeKieServer(creation_limit=20, creation_window=0.5) as server:
        server.fault_for = jitter("submit", seed=12, most=0.08)
        client = make_client(
            server=server, rate_limits=RateLimits(submits_per_window=20, submit_window=0.5)
        )
        handles = await asyncio.gather(*(client.submit(mashup_request) for _ in range(45)))
        assert len({h.task_id for h in handles}) == 45
        assert server.count("submit") == 45  # a 429 would have caused a resend
        assert server.creation_rate_violations() == 0


async def test_a_client_right_after_another_ones_burst_meets_one_429_at_most(
    make_client: ClientFactory, mashup_request: MashupRequest
) -> None:
    """Another client filled the window: the next one draws at most one 429, then paces itself."""
    limits = RateLimits(submits_per_window=5, submit_window=0.6)
    async with FakeKieServer(creation_limit=5, creation_window=0.6) as server:
        first = make_client(server=server, rate_limits=limits)
        await asyncio.gather(*(first.submit(mashup_request) for _ in range(5)))
        second = make_client(server=server, rate_limits=limits)
        handles = await asyncio.gather(*(second.submit(mashup_request) for _ in range(8)))
        assert len(handles) == 8
        assert server.creations == 13
        assert server.count("submit") - 13 <= 1  # at most one 429, then paced from its reply


# --- the adaptive request budget --------------------------------------------------------------


def global_limit(
    rate: int, clock: Callable[[], float]
) -> Callable[[RecordedRequest], Fault | None]:
    """A ``fault_for`` answering 429 (with Retry-After) to record-info above ``rate`` per second."""
    accepted: deque[float] = deque()

    def fault_for(recorded: RecordedRequest) -> Fault | None:
        if recorded.endpoint != "record-info":
            return None
        now = clock()
        while accepted and accepted[0] <= now - 1.0:
            accepted.popleft()
        if len(accepted) >= rate:
            return Fault("record-info", "rate_limit", retry_after="1")
        accepted.append(now)
        return None

    return fault_for


async def test_waits_finish_against_a_server_that_limits_the_total_rate(
    make_client: ClientFactory,
) -> None:
    """300 re-attached waits, a server allowing 100 polls/s: all complete, the budget backs off."""
    timeline = Timeline.success(text=0.5, first=1.0, complete=1.5)
    async with FakeKieServer(default_timeline=timeline) as server:
        ids = [server._create({"prompt": "x"}, server.clock()).task_id for _ in range(300)]
        server.fault_for = global_limit(100, server.clock)
        client = make_client(
            server=server,
            rate_limits=RateLimits(),
            poll_policy=PollPolicy(initial=0.5, growth=0.0, maximum=0.5, after_first=0.5),
        )
        async with asyncio.timeout(60):
            done = await asyncio.gather(*(client.task(i).wait() for i in ids))
        assert all(s.stage is Stage.COMPLETE for s in done)
        assert client._transport.budget.cuts >= 1
        assert server.poll_rate_violations() == 0


async def test_thousand_re_attached_tasks_at_the_defaults(
    make_client: ClientFactory,
) -> None:
    """1 000 re-attached tasks, shipped RateLimits and PollPolicy: all done, ≤ 3 polls a task."""
    timeline = Timeline.success(text=1.0, first=2.0, complete=3.0)
    async with FakeKieServer(default_timeline=timeline) as server:
        ids = [server._create({"prompt": "x"}, server.clock()).task_id for _ in range(1000)]
        client = make_client(server=server, rate_limits=RateLimits(), poll_policy=PollPolicy())
        async with asyncio.timeout(60):
            done = await asyncio.gather(*(client.task(i).wait() for i in ids))
        assert all(s.stage is Stage.COMPLETE for s in done)
        assert server.poll_rate_violations() == 0
        assert server.count("record-info") <= 3 * 1000


# --- the per-task floor -----------------------------------------------------------------------


async def test_refreshes_and_scheduled_polls_share_the_per_task_limit(
    make_client: ClientFactory, mashup_request: MashupRequest
) -> None:
    """Refreshes racing the scheduler, with replies delayed at random: never 4 polls in 1 s."""
    endless = Timeline.success(text=30.0, first=40.0, complete=50.0)
    async with FakeKieServer(default_timeline=endless) as server:
        server.fault_for = jitter("record-info", seed=5, most=0.3)
        client = make_client(server=server, poll_policy=PollPolicy(initial=0.01, maximum=0.01))
        handle = await client.submit(mashup_request)
        waiter = asyncio.ensure_future(handle.wait())
        for _ in range(3):
            await asyncio.gather(*(handle.refresh() for _ in range(3)))
        waiter.cancel()
        assert server.count("record-info") >= 9
        assert server.poll_rate_violations() == 0
        assert server.max_polls_per_second(handle.task_id) <= 3


# --- priorities -------------------------------------------------------------------------------


class Recorder:
    """A fake fetch that records the order of polls and lets a test await the n-th one."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self._marks: dict[int, asyncio.Event] = {}
        self.gate = asyncio.Event()
        self.gate.set()

    async def fetch(self, state: TaskState) -> TaskSnapshot:
        self.order.append(state.task_id)
        mark = self._marks.get(len(self.order))
        if mark is not None:
            mark.set()
        await self.gate.wait()
        await asyncio.sleep(0)
        return make_snapshot(state.task_id, "PENDING")

    async def reached(self, n: int) -> None:
        if len(self.order) < n:
            await self._marks.setdefault(n, asyncio.Event()).wait()


async def test_confirming_polls_go_before_everything_else() -> None:
    """With 200 polls due, a final callback's confirming poll is among the next few."""
    recorder = Recorder()
    policy = PollPolicy(initial=60.0, growth=0.0, maximum=60.0)
    scheduler = PollScheduler(recorder.fetch, policy, max_in_flight=1)
    hooks = Hooks(fetch=recorder.fetch, watch=scheduler.watch, unwatch=scheduler.unwatch)
    states = [TaskState(f"t{i}") for i in range(200)]
    waits = [asyncio.ensure_future(TaskHandle(s, hooks).wait()) for s in states]
    await recorder.reached(5)  # 200 re-attached tasks due now, 5 polled so far
    confirmed = states[-1]
    scheduler.confirm(confirmed)
    await recorder.reached(12)
    assert confirmed.task_id in recorder.order[5:8]
    for wait in waits:
        wait.cancel()
    await scheduler.aclose()
    await asyncio.gather(*waits, return_exceptions=True)


async def test_tasks_that_waited_longest_are_polled_first() -> None:
    """Polls queued behind a busy poller go out in the order they fell due, oldest first."""
    recorder = Recorder()
    recorder.gate.clear()  # the one poll slot stays busy while the others queue up
    scheduler = PollScheduler(recorder.fetch, PollPolicy(initial=60.0), max_in_flight=1)
    hooks = Hooks(fetch=recorder.fetch, watch=scheduler.watch, unwatch=scheduler.unwatch)
    names = [f"t{i:02d}" for i in range(50)]
    waits: list[asyncio.Future[Any]] = []
    for name in [names[0], *reversed(names[1:])]:  # t00 first, then t49 down to t01
        waits.append(asyncio.ensure_future(TaskHandle(TaskState(name), hooks).wait()))
        await asyncio.sleep(0.002)  # distinct due times
    recorder.gate.set()
    await recorder.reached(50)
    assert recorder.order == [names[0], *reversed(names[1:])]
    for wait in waits:
        wait.cancel()
    await scheduler.aclose()
    await asyncio.gather(*waits, return_exceptions=True)
