"""Redis backend: wake latency added by Redis at 500 callbacks/s (docs/scaling.md).

A publisher process hands callbacks to ``RedisBackend.publish`` at a steady rate, as a
receiver in another replica would after verifying them; this process holds a
``MashupClient(backend=...)`` whose handles wait for TEXT. Latency is the time from
just before ``publish`` to the handle's wake (both ``time.monotonic()``, one clock for
every process on Linux). The baseline is the same wake through ``client.feed`` in one
process: what a local receiver costs. A real ``redis-server`` is started on a free
port (it must be installed).

Run alone: ``python -m benchmarks.redis_wake [--quick]`` (not part of the default suite).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection

from benchmarks._common import Figure, percentile
from kiemashup import MashupClient, PollPolicy, Stage
from kiemashup._core.state import make_snapshot
from kiemashup.redis import RedisBackend

KEY = "bench-redis-key"
RATE = 500.0
#: No poll ever comes during the run: only the published callbacks wake handles.
QUIET = PollPolicy(initial=600.0, maximum=600.0, callback_probe=600.0, callback_grace=600.0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_redis() -> tuple[subprocess.Popen[bytes], str, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port, folder = _free_port(), tempfile.mkdtemp(prefix="kiemashup-bench-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", folder],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(500):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            time.sleep(0.01)
    return proc, f"redis://127.0.0.1:{port}/0", folder


def _publisher(url: str, count: int, conn: Connection) -> None:
    async def main() -> None:
        sent: list[float] = []
        async with RedisBackend(url, api_key=KEY) as backend:
            conn.recv()  # the client is subscribed
            start = time.monotonic()
            for i in range(count):
                due = start + i / RATE
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent.append(time.monotonic())
                await backend.publish(
                    make_snapshot(f"t{i}", "TEXT_SUCCESS", source="callback"), None
                )
        conn.send(sent)

    asyncio.run(main())


async def _through_redis(url: str, count: int) -> list[float]:
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=_publisher, args=(url, count, child))
    proc.start()
    woke = [0.0] * count
    async with (
        RedisBackend(url, api_key=KEY) as backend,
        MashupClient(
            api_key=KEY,
            base_url="http://127.0.0.1:9",
            poll_policy=QUIET,
            callback_url="http://127.0.0.1:9/cb",
            backend=backend,
        ) as client,
    ):
        handles = [client.task(f"t{i}") for i in range(count)]

        async def wait(i: int) -> None:
            await handles[i].wait(Stage.TEXT)
            woke[i] = time.monotonic()

        waits = [asyncio.ensure_future(wait(i)) for i in range(count)]
        await asyncio.sleep(0.2)  # the kept-list reads of the new handles are done
        parent.send("go")
        await asyncio.gather(*waits)
        sent: list[float] = await asyncio.to_thread(parent.recv)
    proc.join()
    return [w - s for w, s in zip(woke, sent, strict=True)]


async def _local(count: int) -> list[float]:
    """The baseline: the same wakes fed in-process, as a local receiver does."""
    async with MashupClient(
        api_key=KEY,
        base_url="http://127.0.0.1:9",
        poll_policy=QUIET,
        callback_url="http://127.0.0.1:9/cb",
    ) as client:
        handles = [client.task(f"t{i}") for i in range(count)]
        woke = [0.0] * count

        async def wait(i: int) -> None:
            await handles[i].wait(Stage.TEXT)
            woke[i] = time.monotonic()

        waits = [asyncio.ensure_future(wait(i)) for i in range(count)]
        await asyncio.sleep(0)
        sent = []
        start = time.monotonic()
        for i in range(count):
            delay = start + i / RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent.append(time.monotonic())
            client.feed(make_snapshot(f"t{i}", "TEXT_SUCCESS", source="callback"))
        await asyncio.gather(*waits)
    return [w - s for w, s in zip(woke, sent, strict=True)]


def run(quick: bool) -> list[Figure]:
    count = 1000 if quick else 5000
    proc, url, folder = _start_redis()
    try:
        redis_lat = asyncio.run(_through_redis(url, count))
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)
    local_lat = asyncio.run(_local(count))
    p99, base = percentile(redis_lat, 99) * 1000, percentile(local_lat, 99) * 1000
    return [
        Figure(
            "Wake latency through Redis, p99 (500 callbacks/s)",
            p99,
            "ms",
            "added <= 20 ms",
            p99 - base <= 20.0,
            baseline=base,
            ratio=None,
            note=f"p50 {percentile(redis_lat, 50) * 1000:.2f} ms; {count} callbacks; "
            "baseline: fed in-process",
        )
    ]


if __name__ == "__main__":
    for figure in run("--quick" in sys.argv):
        print(
            f"{figure.name}: {figure.value:.2f} {figure.unit} (baseline {figure.baseline:.2f}"
            f" {figure.unit}; target {figure.target}; met {figure.met}) -- {figure.note}"
        )
