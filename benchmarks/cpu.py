"""Client CPU per poll and per submit: the SDK against raw aiohttp doing the same requests.

Both sides run in this process against the fake server in another process, with the
same concurrency, interleaved in rounds (SDK, raw, SDK, raw, ...) so that drift hits
both alike; the figure is total ``time.process_time()`` over total requests.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp

from benchmarks._common import CREATIONS_UNLIMITED, Figure
from benchmarks._server import API_KEY, ServerProcess
from kiemashup import MashupClient, MashupRequest

CONCURRENCY = 8
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


async def _spread(n: int, one: Callable[[int], Awaitable[object]]) -> float:
    """Run ``one(i)`` for i < n on CONCURRENCY workers; the process CPU seconds it took."""
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await one(i)

    start = time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.process_time() - start


async def _rounds(
    sdk: Callable[[int], Awaitable[object]],
    raw: Callable[[int], Awaitable[object]],
    n: int,
    rounds: int,
) -> tuple[float, float, float]:
    """(SDK CPU per call, raw CPU per call, median of the per-round ratios)."""
    await _spread(max(50, n // 5), sdk)  # warm-up: connections, caches
    await _spread(max(50, n // 5), raw)
    sdk_cpu: list[float] = []
    raw_cpu: list[float] = []
    for _ in range(rounds):
        sdk_cpu.append(await _spread(n, sdk) / n)
        raw_cpu.append(await _spread(n, raw) / n)
    ratio = statistics.median(a / b for a, b in zip(sdk_cpu, raw_cpu, strict=True))
    return statistics.median(sdk_cpu), statistics.median(raw_cpu), ratio


def _figure(name: str, sdk: float, raw: float, ratio: float, gate: float, what: str) -> Figure:
    return Figure(
        name=name,
        value=sdk * 1e6,
        unit="µs CPU",
        target="≤ 1.15x raw aiohttp",
        met=ratio <= 1.15,
        baseline=raw * 1e6,
        ratio=ratio,
        gate=gate,
        note=what,
    )


Measure = tuple[float, float, float]  # (SDK CPU per call, raw CPU per call, median ratio)


async def _run(url: str, task_ids: list[str], n: int, rounds: int) -> tuple[Measure, Measure]:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session,
        MashupClient(API_KEY, base_url=url, rate_limits=CREATIONS_UNLIMITED) as client,
    ):
        record_info = url + "/api/v1/generate/record-info"
        submit_url = url + "/api/v1/generate/mashup"

        async def sdk_poll(i: int) -> object:
            return await client.get_task(task_ids[i % len(task_ids)])

        async def raw_poll(i: int) -> object:
            # What a careful user writes: GET, decode, check the envelope, read the status.
            params = {"taskId": task_ids[i % len(task_ids)]}
            async with session.get(record_info, params=params, headers=HEADERS) as resp:
                body = json.loads(await resp.read())
            if body.get("code") != 200:
                raise RuntimeError(body)
            data = body["data"]
            tracks = [(t["id"], t["audioUrl"]) for t in data["response"]["sunoData"]]
            return data["status"], tracks

        poll_sdk, poll_raw, poll_ratio = await _rounds(sdk_poll, raw_poll, n, rounds)

        request = MashupRequest(
            ["https://example.com/a.mp3", "https://example.com/b.mp3"], prompt="a mashup"
        )
        callback = "https://example.com/callback"

        async def sdk_submit(_i: int) -> object:
            return await client.submit(request)

        async def raw_submit(_i: int) -> object:
            payload = {
                "uploadUrlList": ["https://example.com/a.mp3", "https://example.com/b.mp3"],
                "prompt": "a mashup",
                "customMode": False,
                "model": "V5",
                "instrumental": False,
                "callBackUrl": callback,
            }
            async with session.post(submit_url, json=payload, headers=HEADERS) as resp:
                body = json.loads(await resp.read())
            if body.get("code") != 200:
                raise RuntimeError(body)
            return body["data"]["taskId"]

        client.callback_url = callback
        submit_sdk, submit_raw, submit_ratio = await _rounds(sdk_submit, raw_submit, n // 2, rounds)
    return (poll_sdk, poll_raw, poll_ratio), (submit_sdk, submit_raw, submit_ratio)


def _median_session(sessions: list[Measure]) -> Measure:
    """The session with the median ratio (its own SDK and raw figures go with it)."""
    return sorted(sessions, key=lambda m: m[2])[len(sessions) // 2]


def run(quick: bool) -> list[Figure]:
    # Each mode measures in 3 fresh sessions (server process and client each) and reports
    # the median one: on a shared machine, a whole session's ratio moves with the
    # machine's load (CPU per call and the ratio both rise when it is busy).
    n, rounds, sessions = (600, 7, 3) if quick else (1500, 15, 3)
    polls: list[Measure] = []
    submits: list[Measure] = []
    for _ in range(sessions):
        with ServerProcess(enforce_rate_limits=False) as server:
            task_ids = server.create(16, complete=0.0, first=0.0, text=0.0)
            poll, submit = asyncio.run(_run(server.url, task_ids, n, rounds))
        polls.append(poll)
        submits.append(submit)

    def spread(measures: list[Measure]) -> str:
        if len(measures) == 1:
            return ""
        ratios = ", ".join(f"{m[2]:.2f}" for m in sorted(measures, key=lambda m: m[2]))
        return f"; the median of {len(measures)} sessions (ratios {ratios})"

    poll_sdk, poll_raw, poll_ratio = _median_session(polls)
    submit_sdk, submit_raw, submit_ratio = _median_session(submits)
    return [
        _figure(
            "CPU per poll",
            poll_sdk,
            poll_raw,
            poll_ratio,
            1.5,
            f"client.get_task vs session.get + json; {CONCURRENCY} concurrent, "
            f"{rounds} interleaved rounds of {n}, medians{spread(polls)}; SUCCESS task "
            "with 2 tracks; raw reads status and each track's id and audioUrl",
        ),
        _figure(
            "CPU per submit",
            submit_sdk,
            submit_raw,
            submit_ratio,
            1.5,
            f"client.submit vs session.post + json; {CONCURRENCY} concurrent, "
            f"{rounds} interleaved rounds of {n // 2}, medians{spread(submits)}; "
            "server not rate-limiting",
        ),
    ]
