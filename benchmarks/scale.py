"""Scale at the shipped defaults: re-attached tasks tracked to completion, a server that
pushes back, creation pacing, scheduler lateness, loop lag, aclose.

Tasks are created server-side (10 000 submits paced at Kie's 20 per 10 s would take
83 minutes; pacing itself is checked on a small burst) and re-attached with
``client.task(id)``. The client runs with its shipped defaults (``RateLimits()``,
``PollPolicy()``: no raised caps). Every figure is set next to a hand-written
raw-aiohttp poller run in the same process against the same server process: one
shared session, one coroutine per task, polling every second.
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
RAW_INTERVAL = 1.0  # the hand-written poller's fixed interval
STAGES = {"text": 1.0, "first": 2.0, "complete": 3.0}  # seconds after creation


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
    complete_at: float | None = None,
) -> dict[str, Any]:
    """The hand-written baseline: one session, one coroutine per task, fixed interval.

    A 429 (or any non-JSON reply) is simply tried again at the next tick.
    """
    loop = asyncio.get_running_loop()
    lateness = [] if lateness is None else lateness
    lags: list[float] = []
    polls = limited = 0
    record_info = url + "/api/v1/generate/record-info"

    async def one(task_id: str, session: aiohttp.ClientSession) -> None:
        nonlocal polls, limited
        while stop is None or not stop.is_set():
            async with session.get(
                record_info, params={"taskId": task_id}, headers=HEADERS
            ) as resp:
                body = await resp.json(content_type=None)
            polls += 1
            if body.get("code") != 200:
                limited += 1
            elif until_done and body["data"]["status"] == "SUCCESS":
                if complete_at is not None:
                    lags.append(time.monotonic() - complete_at)
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
    return {"polls": polls, "lateness": lateness, "lags": lags, "limited": limited}


async def _timed(coro: Awaitable[Any]) -> tuple[Any, float, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    with LagProbe() as probe:
        result = await coro
    return result, time.perf_counter() - wall, time.process_time() - cpu, probe.worst


async def track_sdk(url: str, ids: list[str], complete_at: float) -> dict[str, Any]:
    """Every task re-attached and waited on to completion, at the shipped defaults."""
    lags: list[float] = []

    async def sdk() -> tuple[int, int]:
        async with MashupClient(API_KEY, base_url=url) as client:

            async def one(task_id: str) -> None:
                snapshot = await client.task(task_id).wait()
                assert snapshot.status == "SUCCESS"
                lags.append(time.monotonic() - complete_at)

            await asyncio.gather(*(one(task_id) for task_id in ids))
            return client.requests_sent, client._transport.budget.cuts

    (requests, cuts), wall, cpu, lag = await _timed(sdk())
    return {"requests": requests, "cuts": cuts, "wall": wall, "cpu": cpu, "lag": lag, "lags": lags}


async def track_raw(url: str, ids: list[str], complete_at: float) -> dict[str, Any]:
    raw, wall, cpu, lag = await _timed(
        _raw_track(url, ids, RAW_INTERVAL, True, None, complete_at=complete_at)
    )
    return {
        "requests": raw["polls"],
        "wall": wall,
        "cpu": cpu,
        "lag": lag,
        "lags": raw["lags"],
        "limited": raw["limited"],
    }


def compare(server: ServerProcess, n: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, int]]:
    """The SDK, then the raw poller, each on ``n`` fresh tasks of the same timeline."""
    ids, at = server.create_at(n, **STAGES)
    sdk = asyncio.run(track_sdk(server.url, ids, at + STAGES["complete"]))
    sdk_stats = server.stats()
    server.call("reset_counts")
    raw_ids, raw_at = server.create_at(n, **STAGES)
    raw = asyncio.run(track_raw(server.url, raw_ids, raw_at + STAGES["complete"]))
    stats = server.stats()
    sdk["limited"] = sdk_stats["limited"]
    sdk["record_info"] = sdk_stats["record_info"]
    raw["record_info"] = stats["record_info"]
    sdk["violations"] = sdk_stats["poll_rate_violations"]
    return sdk, raw, stats


async def steady(
    url: str, ids: list[str], raw_ids: list[str], interval: float, warm: float, span: float
) -> Any:
    """Tasks that never finish, polled every ~``interval``: lateness, lag, then aclose()."""
    policy = PollPolicy(initial=interval, growth=0.0, maximum=interval, after_first=interval)
    loop = asyncio.get_running_loop()
    tasks_before, fds_before = task_count(), fd_count()
    client = MashupClient(API_KEY, base_url=url, poll_policy=policy)  # RateLimits as shipped
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


def _reattached(n: int) -> list[Figure]:
    """1 000 re-attached tasks at 1/2/3 s: lag, requests per task, CPU."""
    with ServerProcess(enforce_rate_limits=True) as server:
        sdk, raw, _stats = compare(server, n)
    done = len(sdk["lags"]) == n
    p99, raw_p99 = percentile(sdk["lags"], 99), percentile(raw["lags"], 99)
    per_task, raw_per_task = sdk["requests"] / n, raw["requests"] / n
    return [
        Figure(
            name=f"{n} re-attached tasks: completion lag p99",
            value=p99,
            unit="s",
            target="≤ 2 s, all done",
            met=done and p99 <= 2.0,
            baseline=raw_p99,
            ratio=p99 / raw_p99 if raw_p99 > 0 else None,
            note=f"stages at 1/2/3 s; lag = wait() returned - complete; p50 "
            f"{percentile(sdk['lags'], 50):.2f} s (raw {percentile(raw['lags'], 50):.2f} s); "
            f"per-task violations {sdk['violations']}; shipped RateLimits and PollPolicy",
        ),
        Figure(
            name=f"{n} re-attached tasks: requests per task",
            value=per_task,
            unit="requests",
            target="≤ 3",
            met=per_task <= 3.0,
            baseline=raw_per_task,
            ratio=per_task / raw_per_task,
            gate=1.2,
            note=f"client.requests_sent / {n}; raw: every {RAW_INTERVAL:g} s until SUCCESS",
        ),
        Figure(
            name=f"{n} re-attached tasks: client CPU",
            value=sdk["cpu"],
            unit="s CPU",
            target="≤ the poller's",
            met=sdk["cpu"] <= raw["cpu"],
            baseline=raw["cpu"],
            ratio=sdk["cpu"] / raw["cpu"],
            gate=1.5,
            note=f"time.process_time() of the whole tracking run; "
            f"µs per request SDK {sdk['cpu'] / sdk['requests'] * 1e6:.0f} "
            f"vs raw {raw['cpu'] / raw['requests'] * 1e6:.0f}; "
            f"wall SDK {sdk['wall']:.1f} s vs raw {raw['wall']:.1f} s",
        ),
    ]


def _many(n: int) -> list[Figure]:
    """N re-attached tasks (a batch resuming after a crash): wall time, per-task limits."""
    with ServerProcess(enforce_rate_limits=True) as server:
        sdk, raw, _stats = compare(server, n)
    done = len(sdk["lags"]) == n
    ratio = sdk["wall"] / raw["wall"]
    return [
        Figure(
            name=f"{n} re-attached tasks: all done",
            value=sdk["wall"],
            unit="s wall",
            target="≤ 2x the poller's, 0 per-task violations",
            met=done and ratio <= 2.0 and sdk["violations"] == 0,
            baseline=raw["wall"],
            ratio=ratio,
            gate=3.0,
            note=f"per-task violations {sdk['violations']} (server-side); requests/task SDK "
            f"{sdk['requests'] / n:.2f} vs raw {raw['requests'] / n:.2f}; CPU SDK "
            f"{sdk['cpu']:.1f} s vs raw {raw['cpu']:.1f} s; lag p99 SDK "
            f"{percentile(sdk['lags'], 99):.2f} s vs raw {percentile(raw['lags'], 99):.2f} s",
        ),
        Figure(
            name=f"Event-loop lag, {n}-wait gather",
            value=_ms(sdk["lag"]),
            unit="ms max",
            target="≤ 100 ms",
            met=_ms(sdk["lag"]) <= 100,
            baseline=_ms(raw["lag"]),
            ratio=sdk["lag"] / raw["lag"] if raw["lag"] > 0 else None,
            note="10 ms ticker's worst oversleep while tracking to completion",
        ),
    ]


def _pushed_back(n: int, rate: int) -> list[Figure]:
    """A server answering 429 above ``rate`` record-info per second (no Retry-After)."""
    with ServerProcess(enforce_rate_limits=True, global_rate=rate) as server:
        sdk, raw, stats = compare(server, n)
    done = len(sdk["lags"]) == n
    share = sdk["limited"] / max(1, sdk["record_info"])
    raw_share = stats["limited"] / max(1, raw["record_info"])
    return [
        Figure(
            name=f"Server limiting record-info to {rate}/s: 429 share",
            value=share * 100,
            unit="%",
            target="≤ 5 %, nothing fails",
            met=done and share <= 0.05,
            baseline=raw_share * 100,
            ratio=share / raw_share if raw_share > 0 else None,
            gate=0.5,
            note=f"{n} re-attached tasks at 1/2/3 s, all done: {done}; budget cut "
            f"{sdk['cuts']} times; wall SDK {sdk['wall']:.1f} s vs raw {raw['wall']:.1f} s; "
            f"{sdk['record_info']} record-info requests (raw {raw['record_info']}); "
            "no Retry-After sent",
        ),
    ]


def run(quick: bool) -> list[Figure]:
    figures = _reattached(1000)
    figures += _many(3000 if quick else 10_000)
    figures += _pushed_back(500 if quick else 2000, 100 if quick else 300)

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
            value=float(stats["submit"] - stats["creations"]),
            unit="429s",
            target=f"0 ({limit} per {window:g} s)",
            met=stats["creation_rate_violations"] == 0 and stats["creations"] == burst,
            note=f"{burst} submits gathered at once, created in {took:.1f} s; server-side "
            f"window violations {stats['creation_rate_violations']} (the server counts its "
            "own sliding window by arrival)",
        )
    )

    # Steady polling of tasks that never finish: lateness, lag, aclose().
    n = 1000 if quick else 10_000
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
