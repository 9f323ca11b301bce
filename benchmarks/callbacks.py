"""Callbacks: wake-up latency at 500/s, a burst of 1 000 confirmed final callbacks,
verified throughput, polls per task with callbacks.

A sender in another process POSTs signed callbacks over loopback to a real
``CallbackReceiver`` in this process; a hand-written aiohttp endpoint (parse JSON,
check the HMAC, resolve a future) is the baseline. Send and wake times are both
``time.monotonic()`` (one system-wide clock on Linux).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import multiprocessing as mp
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
from aiohttp import web

from benchmarks._common import CREATIONS_UNLIMITED, Figure, percentile
from benchmarks._server import API_KEY, ServerProcess
from kiemashup import (
    CallbackReceiver,
    CallbackRejected,
    MashupClient,
    MashupRequest,
    PollPolicy,
    Stage,
    parse_callback,
)
from kiemashup._core.callbacks import sign

HMAC_KEY = "bench-hmac-key"


def _body(task_id: str, kind: str) -> bytes:
    tracks = (
        []
        if kind == "text"
        else [
            {
                "id": f"{task_id}-{i}",
                "audio_url": f"https://e.com/{task_id}/{i}.mp3",
                "stream_audio_url": f"https://e.com/{task_id}/{i}-s.mp3",
                "title": "t",
                "duration": 150.0,
            }
            for i in range(2)
        ]
    )
    return json.dumps(
        {
            "code": 200,
            "msg": "ok",
            "data": {"callbackType": kind, "task_id": task_id, "data": tracks},
        }
    ).encode()


# --- the sender process ----------------------------------------------------------------------


def _sender(
    conn: Connection, url: str, ids: list[str], kind: str, rate: float | None, conc: int
) -> None:
    conn.send(asyncio.run(_send_all(url, ids, kind, rate, conc)))


async def _send_all(
    url: str, ids: list[str], kind: str, rate: float | None, conc: int
) -> dict[str, Any]:
    bodies = [_body(task_id, kind) for task_id in ids]
    sent: dict[str, float] = {}
    failures = 0
    counter = iter(range(len(ids)))
    start = time.monotonic()

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        for i in counter:
            if rate is not None:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            ts = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "X-Webhook-Timestamp": ts,
                "X-Webhook-Signature": sign(ids[i], ts, HMAC_KEY),
            }
            sent[ids[i]] = time.monotonic()
            async with session.post(url, data=bodies[i], headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    failures += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as session:
        await asyncio.gather(*(worker(session) for _ in range(conc)))
    return {"sent": sent, "wall": time.monotonic() - start, "failures": failures}


async def _send_from_process(
    url: str, ids: list[str], kind: str, rate: float | None, conc: int
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_sender, args=(child, url, ids, kind, rate, conc), daemon=True)
    process.start()
    loop = asyncio.get_running_loop()
    # Wait in a thread so this loop keeps serving the sender's callbacks.
    result: dict[str, Any] = await loop.run_in_executor(None, parent.recv)
    process.join(5)
    return result


# --- the receiving side: SDK and baseline ----------------------------------------------------


RARE = PollPolicy(initial=600.0, maximum=600.0)


async def _sdk_side(
    url: str, ids: list[str], kind: str, rate: float | None, conc: int
) -> dict[str, Any]:
    """Re-attached waits for TEXT (the stage a callback may bring alone), woken by callbacks.

    The server process holds the tasks at PENDING: each re-attached task's first poll
    happens before the callbacks are sent, and no wait can end by a poll.
    """
    woke: dict[str, float] = {}
    async with (
        CallbackReceiver(port=0, hmac_key=HMAC_KEY, public_url=None) as receiver,
        # Re-attached tasks are polled at the normal cadence; polls 10 min apart keep
        # this figure about callbacks (each task's one re-attach poll comes first).
        MashupClient(API_KEY, base_url=url, receiver=receiver, poll_policy=RARE) as client,
    ):
        handles = [client.task(task_id) for task_id in ids]
        loop = asyncio.get_running_loop()

        def waiter(task_id: str) -> Callable[[Any], None]:
            return lambda _f: woke.__setitem__(task_id, time.monotonic())

        waits = []
        for handle in handles:
            wait = loop.create_task(handle.wait(Stage.TEXT))
            wait.add_done_callback(waiter(handle.task_id))
            waits.append(wait)
        async with asyncio.timeout(60):  # every re-attached task's first poll is answered
            while True:
                if client.requests_sent >= len(ids):
                    break
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        cpu = time.process_time()
        sent = await _send_from_process(receiver.url, ids, kind, rate, conc)
        cpu = time.process_time() - cpu
        async with asyncio.timeout(30):
            done = await asyncio.gather(*waits)
        assert all(snapshot.source == "callback" for snapshot in done)
    return {"woke": woke, "cpu": cpu, **sent}


async def _raw_side(ids: list[str], kind: str, rate: float | None, conc: int) -> dict[str, Any]:
    """A careful hand-written endpoint: read, parse, check the HMAC, resolve the future."""
    loop = asyncio.get_running_loop()
    futures = {task_id: loop.create_future() for task_id in ids}
    woke: dict[str, float] = {}
    key = HMAC_KEY.encode()

    async def handle(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        task_id = body["data"]["task_id"]
        ts = request.headers["X-Webhook-Timestamp"]
        mac = hmac.new(key, f"{task_id}.{ts}".encode(), hashlib.sha256).digest()
        import base64

        if not hmac.compare_digest(
            base64.b64encode(mac).decode(), request.headers["X-Webhook-Signature"]
        ):
            return web.json_response({"status": "rejected"}, status=401)
        future = futures.get(task_id)
        if future is not None and not future.done():
            future.set_result(body)
        return web.json_response({"status": "received"})

    app = web.Application()
    app.router.add_post("/cb", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    for task_id, future in futures.items():
        future.add_done_callback(lambda _f, t=task_id: woke.__setitem__(t, time.monotonic()))
    try:
        cpu = time.process_time()
        sent = await _send_from_process(f"http://127.0.0.1:{port}/cb", ids, kind, rate, conc)
        cpu = time.process_time() - cpu
        async with asyncio.timeout(30):
            await asyncio.gather(*futures.values())
    finally:
        await runner.cleanup()
    return {"woke": woke, "cpu": cpu, **sent}


# --- a burst of final callbacks, each confirmed by a poll ----------------------------------------


async def _burst_sdk(url: str, ids: list[str], complete_at: float) -> dict[str, Any]:
    """Waits whose text callbacks came; then every complete callback in one second.

    Shipped defaults (RateLimits(), PollPolicy()): each final callback wakes its wait
    only after its confirming poll to the server process.
    """
    woke: dict[str, float] = {}
    async with (
        CallbackReceiver(port=0, hmac_key=HMAC_KEY) as receiver,
        MashupClient(API_KEY, base_url=url, receiver=receiver) as client,
    ):
        handles = [client.task(task_id) for task_id in ids]
        for handle in handles:  # callbacks flow for these tasks: polls are only a safety net
            client.feed(parse_callback({}, _body(handle.task_id, "text")))
        loop = asyncio.get_running_loop()
        waits = []
        for handle in handles:
            wait = loop.create_task(handle.wait())
            wait.add_done_callback(
                lambda _f, t=handle.task_id: woke.__setitem__(t, time.monotonic())
            )
            waits.append(wait)
        await asyncio.sleep(max(0.0, complete_at - time.monotonic()) + 0.05)
        before = client.requests_sent
        sent = await _send_from_process(receiver.url, ids, "complete", float(len(ids)), 16)
        async with asyncio.timeout(60):
            done = await asyncio.gather(*waits)
        assert all(s.status == "SUCCESS" for s in done)
        polls = client.requests_sent - before
    return {"woke": woke, "polls": polls, **sent}


async def _burst_raw(url: str, ids: list[str], complete_at: float) -> dict[str, Any]:
    """A hand-written endpoint: check the HMAC, one record-info GET, resolve the future."""
    loop = asyncio.get_running_loop()
    futures = {task_id: loop.create_future() for task_id in ids}
    woke: dict[str, float] = {}
    key = HMAC_KEY.encode()
    record_info = url + "/api/v1/generate/record-info"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    pending: set[asyncio.Task[None]] = set()

    async def handle(request: web.Request) -> web.Response:
        import base64

        body = json.loads(await request.read())
        task_id = body["data"]["task_id"]
        ts = request.headers["X-Webhook-Timestamp"]
        mac = hmac.new(key, f"{task_id}.{ts}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(
            base64.b64encode(mac).decode(), request.headers["X-Webhook-Signature"]
        ):
            return web.json_response({"status": "rejected"}, status=401)
        confirming = loop.create_task(confirm(task_id))
        pending.add(confirming)
        confirming.add_done_callback(pending.discard)
        return web.json_response({"status": "received"})

    async def confirm(task_id: str) -> None:
        async with session.get(record_info, params={"taskId": task_id}, headers=headers) as resp:
            reply = await resp.json()
        future = futures[task_id]
        if reply["data"]["status"] == "SUCCESS" and not future.done():
            future.set_result(reply)

    app = web.Application()
    app.router.add_post("/cb", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    for task_id, future in futures.items():
        future.add_done_callback(lambda _f, t=task_id: woke.__setitem__(t, time.monotonic()))
    try:
        await asyncio.sleep(max(0.0, complete_at - time.monotonic()) + 0.05)
        cb = f"http://127.0.0.1:{port}/cb"
        sent = await _send_from_process(cb, ids, "complete", float(len(ids)), 16)
        async with asyncio.timeout(60):
            await asyncio.gather(*futures.values())
    finally:
        await runner.cleanup()
        await session.close()
    return {"woke": woke, **sent}


def _burst(n: int) -> Figure:
    with ServerProcess(enforce_rate_limits=True) as server:
        ids, at = server.create_at(n, text=0.1, first=0.2, complete=0.3)
        sdk = asyncio.run(_burst_sdk(server.url, ids, at + 0.3))
        raw_ids, raw_at = server.create_at(n, text=0.1, first=0.2, complete=0.3)
        raw = asyncio.run(_burst_raw(server.url, raw_ids, raw_at + 0.3))
        stats = server.stats()
    lat, raw_lat = _latencies(sdk), _latencies(raw)
    p99, raw_p99 = percentile(lat, 99), percentile(raw_lat, 99)
    p50, raw_p50 = percentile(lat, 50) * 1000, percentile(raw_lat, 50) * 1000
    return Figure(
        name=f"{n} complete callbacks in 1 s, confirmed: wake p99",
        value=p99 * 1000,
        unit="ms",
        target="≤ 750 ms",
        met=p99 * 1000 <= 750 and len(lat) == n,
        baseline=raw_p99 * 1000,
        ratio=p99 / raw_p99,
        gate=4.0,
        # Both sides wake in 2-10 ms, where one GC pause moves the ratio fivefold (either
        # way, at any commit); what must never come back is wakes queued for seconds.
        floor=75.0,
        note=f"shipped defaults: each wake waits for its confirming "
        f"poll; p50 {p50:.0f} ms (raw {raw_p50:.0f}); "
        f"confirming polls {sdk['polls']}; per-task violations "
        f"{stats['poll_rate_violations']}; raw: HMAC check + one GET per callback",
    )


def _largest_bodies() -> dict[str, bytes]:
    """The largest body the receiver accepts, and hostile ones of the same size."""
    limit = 256 * 1024
    lyrics = "[Verse] {neon} rain " * 2_000
    track = {"id": "e231", "audio_url": "https://e.com/a.mp3", "prompt": lyrics}
    payload = {"code": 200, "msg": "ok",
               "data": {"callbackType": "complete", "task_id": "t" * 32,
                        "data": [track] * 8}}  # fmt: skip
    body = json.dumps(payload).encode()
    while len(body) > limit:  # trim the lyrics until the body just fits
        track["prompt"] = track["prompt"][: -len(track["prompt"]) // 20]
        body = json.dumps(payload).encode()
    return {
        "accepted": body,
        "deep": b"[" * (limit // 2) + b"]" * (limit // 2),
        "array": b'{"data":{"data":[' + b",".join([b"{}"] * (limit // 3 - 10)) + b"]}}",
    }


def _parse_budget() -> Figure:
    """CPU to read the largest accepted body (and to refuse hostile ones), vs json.loads."""
    bodies = _largest_bodies()
    stamp = str(int(time.time()))
    headers = {"X-Webhook-Timestamp": stamp, "X-Webhook-Signature": sign("t" * 32, stamp, "k")}

    def best(call: Callable[[], object], rounds: int = 60) -> float:
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        return percentile(times, 99)

    sdk = best(lambda: parse_callback(headers, bodies["accepted"], hmac_key="k"))
    raw = best(lambda: json.loads(bodies["accepted"]))

    def refused(body: bytes) -> Callable[[], object]:
        def call() -> object:
            try:
                return parse_callback({}, body)
            except CallbackRejected:
                return None

        return call

    hostile = max(best(refused(bodies["deep"])), best(refused(bodies["array"])))
    return Figure(
        name="Parse of the largest accepted callback body (256 KiB), p99",
        value=sdk * 1000,
        unit="ms",
        target="≤ 5 ms",
        met=sdk * 1000 <= 5 and hostile * 1000 <= 5,
        baseline=raw * 1000,
        ratio=sdk / raw,
        gate=12.0,  # the target is the 5 ms budget; the ratio only guards regressions
        note=f"{len(bodies['accepted'])} B, 8 tracks of bracket-heavy lyrics, signed; "
        f"refusing 256 KiB of nesting or of empty objects: {hostile * 1000:.2f} ms p99; "
        "baseline: json.loads of the same body",
    )


def _latencies(result: dict[str, Any]) -> list[float]:
    sent, woke = result["sent"], result["woke"]
    return [woke[t] - sent[t] for t in sent if t in woke]


# --- polls per task with callbacks, in compressed time -----------------------------------------

SCALE = 0.01  # 150 s become 1.5 s


async def _polls_with_callbacks(url: str, n: int) -> float:
    d = PollPolicy()
    policy = PollPolicy(
        initial=d.initial * SCALE,
        growth=d.growth,
        maximum=d.maximum * SCALE,
        after_first=d.after_first * SCALE,
        min_interval=d.min_interval * SCALE,
        callback_grace=d.callback_grace * SCALE,
        callback_probe=d.callback_probe * SCALE,
        outage_maximum=d.outage_maximum * SCALE,
    )
    request = MashupRequest(["https://e.com/a.mp3", "https://e.com/b.mp3"], prompt="x")
    async with MashupClient(
        API_KEY,
        base_url=url,
        callback_url="https://e.com/cb",
        poll_policy=policy,
        rate_limits=CREATIONS_UNLIMITED,
    ) as client:
        handles = [await client.submit(request) for _ in range(n)]
        before = client.requests_sent

        async def deliver() -> None:
            # Kie's callbacks, on time: text at 20 s, first at 110 s, complete at 150 s.
            start = time.monotonic()
            for at, kind in ((20.0, "text"), (110.0, "first"), (150.0, "complete")):
                await asyncio.sleep(max(0.0, start + at * SCALE - time.monotonic()))
                for handle in handles:
                    client.feed(parse_callback({}, _body(handle.task_id, kind)))

        await asyncio.gather(deliver(), *(h.wait() for h in handles))
        return (client.requests_sent - before) / n


def run(quick: bool) -> list[Figure]:
    n_latency = 1000 if quick else 5000
    n_throughput = 3000 if quick else 20000
    rate = 500.0
    with ServerProcess(enforce_rate_limits=False) as server:  # tasks PENDING all along
        ids, _at = server.create_at(
            max(n_latency, n_throughput), text=600.0, first=700.0, complete=800.0
        )
        sdk = asyncio.run(_sdk_side(server.url, ids[:n_latency], "text", rate, 16))
        sdk_t = asyncio.run(_sdk_side(server.url, ids[:n_throughput], "text", None, 32))
    raw = asyncio.run(_raw_side(ids[:n_latency], "text", rate, 16))
    lat, raw_lat = _latencies(sdk), _latencies(raw)
    p99, raw_p99 = percentile(lat, 99), percentile(raw_lat, 99)
    raw_t = asyncio.run(_raw_side(ids[:n_throughput], "text", None, 32))
    per_s, raw_per_s = n_throughput / sdk_t["wall"], n_throughput / raw_t["wall"]
    # The server's tasks follow the same compressed timeline as the callbacks sent.
    stages = {"text": 20.0 * SCALE, "first": 110.0 * SCALE, "complete": 150.0 * SCALE}
    with ServerProcess(enforce_rate_limits=False, timeline=stages) as server:
        polls = asyncio.run(_polls_with_callbacks(server.url, 20))
    burst = _burst(1000)
    return [
        burst,
        _parse_budget(),
        Figure(
            name="Callback → waiter wake-up p99 at 500/s",
            value=p99 * 1000,
            unit="ms",
            target="≤ 10 ms",
            met=p99 * 1000 <= 10,
            baseline=raw_p99 * 1000,
            ratio=p99 / raw_p99,
            note=f"{len(lat)} signed text callbacks from another process, {n_latency} "
            f"re-attached waits for TEXT (a callback's stage needs no poll; polls 10 min "
            f"apart); max "
            f"{max(lat) * 1000:.1f} ms "
            f"(raw {max(raw_lat) * 1000:.1f})",
        ),
        Figure(
            name="Receiver throughput (HMAC verified)",
            value=per_s,
            unit="callbacks/s",
            target="≥ 2000/s",
            met=per_s >= 2000 and sdk_t["failures"] == 0,
            baseline=raw_per_s,
            ratio=raw_per_s / per_s,  # > 1 means the SDK is slower
            gate=2.0,
            ceiling=4000.0,  # twice the target: the senders, not the receiver, set the pace
            note=f"{n_throughput} callbacks, 32 concurrent senders in another process, each "
            f"waking a wait; receiver CPU {sdk_t['cpu'] / n_throughput * 1e6:.0f} µs/callback "
            f"(raw {raw_t['cpu'] / n_throughput * 1e6:.0f}); ratio = raw rate / SDK rate",
        ),
        Figure(
            name="Polls per task (callbacks on time, measured)",
            value=polls,
            unit="polls",
            target="≤ 2",
            met=polls <= 2,
            baseline=50.0,
            ratio=polls / 50.0,
            note="real client and scheduler in time compressed 100x, shipped defaults; "
            "a fresh client probes once at callback_probe (15 s) before the text callback "
            "(20 s), then only confirms; baseline: fixed 3 s polling of a 150 s task",
        ),
    ]
