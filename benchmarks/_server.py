"""The fake Kie server in its own process, so that client CPU figures are the client's alone.

``ServerProcess`` spawns a child that runs ``FakeKieServer`` on loopback and answers a
few commands over a pipe: create tasks server-side (no creation pacing needed for the
tracking benchmarks), and report the server's own rate-limit counters. With
``global_rate=N`` it also answers 429 to record-info above N accepted polls per
second (Kie documents no such limit; this is the push-back the client must adapt to).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import threading
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from kiemashup.testing import FakeKieServer, Fault, Timeline

API_KEY = "bench-key"


def _timeline(spec: dict[str, Any] | None) -> Timeline:
    if spec is None:
        return Timeline.success()
    if spec.get("never"):
        return Timeline.custom(steps=((1e9, "SUCCESS"),))
    return Timeline.success(
        text=spec.get("text", 0.02), first=spec.get("first", 0.04), complete=spec["complete"]
    )


def _child(conn: Connection, options: dict[str, Any]) -> None:
    asyncio.run(_serve(conn, options))


def _global_limit(server: FakeKieServer, rate: int, counts: dict[str, int]) -> Any:
    """A ``fault_for`` answering 429 to record-info above ``rate`` accepted per second."""
    accepted: deque[float] = deque()

    def fault_for(recorded: Any) -> Fault | None:
        if recorded.endpoint != "record-info":
            return None
        now = server.clock()
        while accepted and accepted[0] <= now - 1.0:
            accepted.popleft()
        if len(accepted) >= rate:
            counts["limited"] += 1
            return Fault("record-info", "rate_limit")
        accepted.append(now)
        return None

    return fault_for


def _handle(
    server: FakeKieServer,
    counts: dict[str, int],
    stop: asyncio.Event,
    command: str,
    args: dict[str, Any],
) -> Any:
    """One command from the benchmark process, run in the server's loop."""
    if command == "create":
        # Server-side creation: what submits paced at Kie's limit would leave behind,
        # without the 83 minutes 10 000 paced submits would take.
        now = server.clock()
        payload = {"uploadUrlList": ["https://a/1.mp3", "https://a/2.mp3"], "prompt": "x"}
        timeline = _timeline(args.get("timeline"))
        ids = []
        for _ in range(args["n"]):
            server.script(timeline)
            ids.append(server._create(payload, now).task_id)
        server._creation_times.clear()  # not submits: keep them out of the pacing check
        return {"ids": ids, "at": now}
    if command == "stats":
        return {
            "creation_rate_violations": server.creation_rate_violations(),
            "poll_rate_violations": server.poll_rate_violations(),
            "record_info": server.count("record-info"),
            "submit": server.count("submit"),
            "creations": server.creations,
            "limited": counts["limited"],
        }
    if command == "reset_counts":
        counts["limited"] = 0
        server.requests.clear()
        return None
    if command == "forget_requests":
        server.requests.clear()
        return None
    if command == "stop":
        stop.set()
        return None
    raise ValueError(command)


async def _serve(conn: Connection, options: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    server = FakeKieServer(
        api_key=API_KEY,
        credits=10**12,
        credits_per_task=1,
        enforce_rate_limits=options.get("enforce_rate_limits", True),
        creation_limit=options.get("creation_limit", 20),
        creation_window=options.get("creation_window", 10.0),
        default_timeline=_timeline(options.get("timeline")),
    )
    counts = {"limited": 0}
    if options.get("global_rate"):
        server.fault_for = _global_limit(server, options["global_rate"], counts)
    stop = asyncio.Event()

    def handle(command: str, args: dict[str, Any]) -> Any:
        return _handle(server, counts, stop, command, args)

    def reader() -> None:
        while True:
            try:
                command, args = conn.recv()
            except EOFError:
                loop.call_soon_threadsafe(stop.set)
                return
            future = asyncio.run_coroutine_threadsafe(_call(handle, command, args), loop)
            try:
                conn.send(("ok", future.result()))
            except Exception as exc:
                conn.send(("error", repr(exc)))
            if command == "stop":
                return

    async with server:
        conn.send(("ok", server.url))
        threading.Thread(target=reader, daemon=True).start()
        await stop.wait()


async def _call(handle: Any, command: str, args: dict[str, Any]) -> Any:
    return handle(command, args)


class ServerProcess:
    """``with ServerProcess(enforce_rate_limits=False) as server: server.url``."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.url = ""
        self._conn: Connection | None = None
        self._process: Any = None

    def __enter__(self) -> ServerProcess:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._process = ctx.Process(target=_child, args=(child, self.options), daemon=True)
        self._process.start()
        self._conn = parent
        if not parent.poll(30):
            raise RuntimeError("the fake server process did not start")
        status, url = parent.recv()
        assert status == "ok", url
        self.url = url
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(EOFError, OSError):
            self.call("stop")
        self._process.join(5)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
        assert self._conn is not None
        self._conn.close()

    def call(self, command: str, **args: Any) -> Any:
        assert self._conn is not None
        self._conn.send((command, args))
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"server command {command} failed: {value}")
        return value

    def create(self, n: int, **timeline: Any) -> list[str]:
        ids: list[str] = self.create_at(n, **timeline)[0]
        return ids

    def create_at(self, n: int, **timeline: Any) -> tuple[list[str], float]:
        """Create ``n`` tasks server-side: (their ids, the server's monotonic clock then)."""
        reply = self.call("create", n=n, timeline=timeline or None)
        return reply["ids"], reply["at"]

    def stats(self) -> dict[str, int]:
        stats: dict[str, int] = self.call("stats")
        return stats
