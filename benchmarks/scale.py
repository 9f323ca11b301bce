"""10 000 tasks in one process: tracking to completion, scheduler lateness, loop lag, aclose.

Tasks are created server-side (10 000 submits paced at Kie's 20 per 10 s would take
83 minutes; pacing itself is checked on a small burst) and re-attached with
``client.task(id)``; every figure is set next to a raw-aiohttp client that runs one
coroutine per task polling at a fixed interval.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable
from typing import Any

import aiohttp

from benchmarks._common import Figure, fd_count, percentile, task_count
from benchmarks._server import API_KEY, ServerProcess
from kiemashup import MashupClient, MashupRequest, PollPolicy, RateLimits

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
# Client-wide caps high enough that the network, not the cap, sets the pace (per-task
# pacing, min_interval 0.34 s, stays as it ships).
FAST = RateLimits(requests_per_second=4000.0, max_in_flight=64, connection_limit=100)
RAW_INTERVAL = 3.0  # the raw client's fixed poll interval


class LagProbe:
    """A ticker that sleeps ``period`` and records how much it overslept."""

    def __init__(self, period: float = 0.01) -> None:
        self.period = period
        self.worst = 0.0
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            planned = loop.time() + self.period
            await asyncio.sleep(self.period)
            lag = loop.time() - planned
            self.samples.append(lag)
            self.worst = max(self.worst, lag)

    def __enter__(self) -> LagProbe:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def _raw_track(
    url: str,
    ids: list[str],
    interval: float,
    until_done: bool,
    stop: asyncio.Event | None,
    lateness: list[float] | None = None,
) -> dict[str, Any]:
    """The hand-written baseline: one session, one coroutine per task, fixed interval."""
    loop = asyncio.get_running_loop()
    lateness = [] if lateness is None else lateness
    polls = 0
    record_info = url + "/api/v1/generate/record-info"

    async def one(task_id: str, session: aiohttp.ClientSession) -> None:
        nonlocal polls
        while stop is None or not stop.is_set():
            async with session.get(
                record_info, params={"taskId": task_id}, headers=HEADERS
            ) as resp:
                body = await resp.json()
            polls += 1
            if until_done and body["data"]["status"] == "SUCCESS":
                return
            planned = loop.time() + interval * (0.9 + 0.2 * random.random())
            await asyncio.sleep(planned - loop.time())
            lateness.append(loop.time() - planned)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
        tasks = [loop.create_task(one(task_id, session)) for task_id in ids]
        if stop is not None:
            await stop.wait()
            for task in tasks:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=stop is not None)
    return {"polls": polls, "lateness": lateness}


async def _timed(coro: Awaitable[Any]) -> tuple[Any, float, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    with LagProbe() as probe:
        result = await coro
    return result, time.perf_counter() - wall, time.process_time() - cpu, probe.worst


async def track_sdk(url: str, ids: list[str]) -> tuple[int, float, float, float]:
    """Every task re-attached and waited on to completion: (polls, wall, CPU, worst lag)."""

    async def sdk() -> int:
        async with MashupClient(API_KEY, base_url=url, rate_limits=FAST) as client:
            handles = [client.task(task_id) for task_id in ids]
            snaps = await asyncio.gather(*(h.wait() for h in handles))
            assert all(s.status == "SUCCESS" for s in snaps)
            return client.requests_sent

    polls, wall, cpu, lag = await _timed(sdk())
    return polls, wall, cpu, lag


async def track_raw(url: str, ids: list[str]) -> tuple[int, float, float, float]:
    raw, wall, cpu, lag = await _timed(_raw_track(url, ids, RAW_INTERVAL, True, None))
    return raw["polls"], wall, cpu, lag


async def steady(
    url: str, ids: list[str], raw_ids: list[str], interval: float, warm: float, span: float
) -> Any:
    """Tasks that never finish, polled every ~``interval``: lateness, lag, then aclose()."""
    policy = PollPolicy(initial=interval, growth=0.0, maximum=interval, after_first=interval)
    loop = asyncio.get_running_loop()
    tasks_before, fds_before = task_count(), fd_count()
    client = MashupClient(API_KEY, base_url=url, rate_limits=FAST, poll_policy=policy)
    waits = [loop.create_task(client.task(task_id).wait()) for task_id in ids]
    with LagProbe() as probe:
        await asyncio.sleep(warm)  # the first round: everything is due at once
        lateness: list[float] = []
        client._scheduler.lateness = lateness  # benchmark hook
        probe.worst = 0.0
        await asyncio.sleep(span)
        client._scheduler.lateness = None
        sdk_lag = probe.worst
        started = time.perf_counter()
        await client.aclose()
        results = await asyncio.gather(*waits, return_exceptions=True)
        close_time = time.perf_counter() - started
    closed_errors = sum(1 for r in results if type(r).__name__ == "ClientClosedError")
    await asyncio.sleep(0.1)  # let transports finish closing
    tasks_after, fds_after = task_count(), fd_count()

    stop = asyncio.Event()
    raw_lateness: list[float] = []

    async def raw_run() -> None:
        await _raw_track(url, raw_ids, interval, until_done=False, stop=stop, lateness=raw_lateness)

    with LagProbe() as probe:
        runner = loop.create_task(raw_run())
        await asyncio.sleep(warm)
        probe.worst = 0.0
        mark = len(raw_lateness)
        await asyncio.sleep(span)
        raw_window = raw_lateness[mark:]  # copied before the stop
        raw_lag = probe.worst
        raw_close_started = time.perf_counter()
        stop.set()
        await runner
        raw_close = time.perf_counter() - raw_close_started
    return {
        "lateness": lateness,
        "raw_lateness": raw_window,
        "sdk_lag": sdk_lag,
        "raw_lag": raw_lag,
        "close": close_time,
        "raw_close": raw_close,
        "closed_errors": closed_errors,
        "tasks": (tasks_before, tasks_after),
        "fds": (fds_before, fds_after),
    }


async def paced_burst(url: str, n: int, limit: int, window: float) -> float:
    """``n`` submits at once through RateLimits(limit per window); the seconds they took."""
    request = MashupRequest(["https://e.com/a.mp3", "https://e.com/b.mp3"], prompt="x")
    limits = RateLimits(submits_per_window=limit, submit_window=window)
    started = time.perf_counter()
    async with MashupClient(
        API_KEY, base_url=url, callback_url="https://e.com/cb", rate_limits=limits
    ) as client:
        await asyncio.gather(*(client.submit(request) for _ in range(n)))
    return time.perf_counter() - started


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def run(quick: bool) -> list[Figure]:
    n = 1000 if quick else 10_000
    figures: list[Figure] = []
    # Tracking to completion (tasks finish 3 s after creation), per-task limits enforced.
    with ServerProcess(enforce_rate_limits=True) as server:
        ids = server.create(n, text=1.0, first=2.0, complete=3.0)
        sdk_result = asyncio.run(track_sdk(server.url, ids))
        # Fresh tasks for the raw run, so that both see the same timeline from creation.
        raw_ids = server.create(n, text=1.0, first=2.0, complete=3.0)
        raw_result = asyncio.run(track_raw(server.url, raw_ids))
        stats = server.stats()
        sdk_polls, sdk_wall, sdk_cpu, sdk_lag = sdk_result
        raw_polls, raw_wall, raw_cpu, raw_lag = raw_result
        figures.append(
            Figure(
                name=f"{n} tasks tracked to completion (polling)",
                value=sdk_wall,
                unit="s wall",
                target="all complete, 0 per-task rate violations",
                met=stats["poll_rate_violations"] == 0,
                baseline=raw_wall,
                ratio=sdk_wall / raw_wall,
                note=f"per-task violations {stats['poll_rate_violations']} (server-side); "
                f"polls/task SDK {sdk_polls / n:.2f} vs raw {raw_polls / n:.2f} "
                f"(raw: fixed {RAW_INTERVAL:g} s); CPU SDK {sdk_cpu:.1f} s vs raw {raw_cpu:.1f} s",
            )
        )
        lag = max(sdk_lag, 0.0)
        figures.append(
            Figure(
                name=f"Event-loop lag, {n}-wait gather",
                value=_ms(lag),
                unit="ms max",
                target="≤ 100 ms",
                met=_ms(lag) <= 100,
                baseline=_ms(raw_lag),
                ratio=lag / raw_lag if raw_lag > 0 else None,
                note="10 ms ticker's worst oversleep while tracking to completion",
            )
        )

    # Pacing: a small burst of submits through the shipped default RateLimits.
    # Quick mode scales Kie's 20 per 10 s down to 5 per 1 s on both sides.
    burst, limit, window = (12, 5, 1.0) if quick else (45, 20, 10.0)
    with ServerProcess(
        enforce_rate_limits=True, creation_limit=limit, creation_window=window
    ) as server:
        took = asyncio.run(paced_burst(server.url, burst, limit, window))
        stats = server.stats()
    figures.append(
        Figure(
            name=f"Creation pacing, {burst} submits",
            value=float(stats["creation_rate_violations"]),
            unit="violations",
            target=f"0 ({limit} per {window:g} s)",
            met=stats["creation_rate_violations"] == 0 and stats["creations"] == burst,
            note=f"{burst} submits gathered at once, created in {took:.1f} s "
            "(the server counts its own sliding window)",
        )
    )

    # Steady polling of tasks that never finish: lateness, lag, aclose().
    interval, warm, span = (2.5, 3.0, 4.0) if quick else (10.0, 12.0, 15.0)
    with ServerProcess(enforce_rate_limits=True) as server:
        ids = server.create(n, never=True)
        raw_ids = server.create(n, never=True)
        steady_result = asyncio.run(steady(server.url, ids, raw_ids, interval, warm, span))
        stats = server.stats()
    late, raw_late = steady_result["lateness"], steady_result["raw_lateness"]
    p99, worst = percentile(late, 99), max(late, default=float("nan"))
    raw_p99, raw_worst = percentile(raw_late, 99), max(raw_late, default=float("nan"))
    figures.append(
        Figure(
            name=f"Scheduler lateness p99, {n} pending",
            value=_ms(p99),
            unit="ms",
            target="≤ 5 ms",
            met=_ms(p99) <= 5,
            baseline=_ms(raw_p99),
            ratio=p99 / raw_p99 if raw_p99 > 0 else None,
            note=f"{len(late)} polls planned every {interval:g} s ±10 %, after the first round; "
            f"raw: asyncio.sleep oversleep of one coroutine per task",
        )
    )
    figures.append(
        Figure(
            name=f"Scheduler lateness max, {n} pending",
            value=_ms(worst),
            unit="ms",
            target="≤ 50 ms",
            met=_ms(worst) <= 50,
            baseline=_ms(raw_worst),
            ratio=worst / raw_worst if raw_worst > 0 else None,
            note=f"per-task rate violations {stats['poll_rate_violations']}; "
            f"loop lag in this phase {_ms(steady_result['sdk_lag']):.1f} ms "
            f"(raw {_ms(steady_result['raw_lag']):.1f} ms)",
        )
    )
    tasks, fds = steady_result["tasks"], steady_result["fds"]
    clean = tasks[1] <= tasks[0] and fds[1] <= fds[0]
    figures.append(
        Figure(
            name=f"aclose() with {n} pending",
            value=steady_result["close"],
            unit="s",
            target="≤ 1 s, tasks and fds back",
            met=steady_result["close"] <= 1.0 and clean,
            baseline=steady_result["raw_close"],
            ratio=steady_result["close"] / steady_result["raw_close"],
            note=f"asyncio tasks {tasks[0]}→{tasks[1]}, fds {fds[0]}→{fds[1]}, "
            f"{steady_result['closed_errors']} waits got ClientClosedError; "
            "raw: cancel every coroutine, close the session",
        )
    )
    return figures
