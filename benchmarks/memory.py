"""100 000 pending handles fed by callbacks: memory per handle and feed throughput.

No network: handles are re-attached with ``client.task(id)``, a parsed "text" callback
is fed to each (callbacks flow, so polling is only a safety net 150 s away), one
``wait()`` per handle is started, then a polled SUCCESS snapshot is fed to each (a
callback alone ends no wait; another process's poll would relay such snapshots).
RSS comes from /proc/self/statm after ``gc.collect()``.
The baseline is what a hand-written client keeps per pending task: one coroutine
polling at a fixed interval (an asyncio task asleep in ``asyncio.sleep``).
"""

from __future__ import annotations

import asyncio
import gc
import time

from benchmarks._common import Figure, settled_rss
from kiemashup import MashupClient, Track, parse_callback
from kiemashup._core.state import make_snapshot


def _callback(task_id: str, kind: str) -> bytes:
    tracks = (
        ""
        if kind == "text"
        else ",".join(
            f'{{"id":"{task_id}-{i}","audio_url":"https://e.com/{task_id}/{i}.mp3",'
            f'"duration":150.0}}'
            for i in range(2)
        )
    )
    return (
        f'{{"code":200,"msg":"ok","data":{{"callbackType":"{kind}",'
        f'"task_id":"{task_id}","data":[{tracks}]}}}}'
    ).encode()


async def _sdk(n: int) -> dict[str, float]:
    ids = [f"{i:032x}" for i in range(n)]  # 32-char ids like Kie's
    text_bodies = [_callback(t, "text") for t in ids]
    # Polled snapshots (as another process's poll relays them): a callback alone ends no wait.
    completes = [
        make_snapshot(t, "SUCCESS", (Track(audio_url="a"), Track(audio_url="b"))) for t in ids
    ]
    gc.collect()
    base = settled_rss()
    texts = [parse_callback({}, body) for body in text_bodies]  # kept by the handles: counted
    async with MashupClient("key", base_url="http://127.0.0.1:9") as client:
        handles = [client.task(task_id) for task_id in ids]
        for snapshot in texts:
            client.feed(snapshot)
        del texts
        after_handles = settled_rss()
        loop = asyncio.get_running_loop()
        waits = [loop.create_task(handle.wait()) for handle in handles]
        await asyncio.sleep(0)  # every wait registers its future and is watched
        after_waits = settled_rss()
        started = time.perf_counter()
        for snapshot in completes:
            client.feed(snapshot)
        results = await asyncio.gather(*waits)
        fed = time.perf_counter() - started
        assert all(r.status == "SUCCESS" for r in results)
        assert client.requests_sent == 0
    return {
        "handle": (after_handles - base) / n,
        "pending": (after_waits - base) / n,
        "feed_rate": n / fed,
    }


async def _raw(n: int) -> float:
    ids = [f"{i:032x}" for i in range(n)]
    gc.collect()
    base = settled_rss()

    async def poller(_task_id: str) -> None:
        latest: dict[str, object] | None = None
        for _ in range(1_000_000):  # until done (a GET and a check would go here)
            await asyncio.sleep(3.0)
        del latest

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(poller(task_id)) for task_id in ids]
    await asyncio.sleep(0)
    per_task = (settled_rss() - base) / n
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return per_task


def run(quick: bool) -> list[Figure]:
    n = 20_000 if quick else 100_000
    raw = asyncio.run(_raw(n))
    sdk = asyncio.run(_sdk(n))
    return [
        Figure(
            name=f"Memory per pending handle ({n} handles)",
            value=sdk["handle"],
            unit="B RSS",
            target="≤ 1024 B",
            met=sdk["handle"] <= 1024,
            baseline=raw,
            ratio=sdk["handle"] / raw,
            gate=1.6,
            note="client.task(id) plus its fed callback (TaskState, snapshot kept); baseline: one "
            "sleeping poll coroutine per task",
        ),
        Figure(
            name=f"Memory per pending handle with a wait() task ({n})",
            value=sdk["pending"],
            unit="B RSS",
            target="(informational)",
            met=None,
            baseline=raw,
            ratio=sdk["pending"] / raw,
            note="the above plus an asyncio task awaiting handle.wait() (the task and coroutine "
            "frame are the caller's; the SDK adds one future and the heap entry)",
        ),
        Figure(
            name=f"Polled snapshots fed to {n} pending waits",
            value=sdk["feed_rate"],
            unit="callbacks/s",
            target="all woken, no network",
            met=True,
            note="client.feed of polled SUCCESS snapshots (as another process's poll would "
            "relay them), until every wait returned",
        ),
    ]
