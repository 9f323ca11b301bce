"""Worker processes for tests/test_redis_*.py: ``python tests/redis_workers.py COMMAND ARGS``.

Each prints one JSON line on stdout with what it saw, then exits 0. They use only the
public API, one RedisBackend each, as separate replicas of a service would.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from kiemashup import (
    CallbackReceiver,
    MashupClient,
    MashupRequest,
    PollPolicy,
    RateLimits,
    RetryPolicy,
    Stage,
    Timeouts,
)
from kiemashup.redis import RedisBackend

KEY = "sk-kiemashup-redis-workers-0001"
FAST_RETRY = RetryPolicy(attempts=4, base=0.01, cap=0.05, max_retry_after=0.2)


def request(n: int) -> MashupRequest:
    return MashupRequest(
        (f"https://example.com/a{n}.mp3", "https://example.com/b.mp3"), prompt=f"pair {n}"
    )


def client(base_url: str, backend: RedisBackend, **options: Any) -> MashupClient:
    settings: dict[str, Any] = {
        "api_key": KEY,
        "base_url": base_url,
        "retry_policy": FAST_RETRY,
        "timeouts": Timeouts(connect=2.0, read=5.0, total=10.0),
        "backend": backend,
    }
    settings.update(options)
    return MashupClient(**settings)


async def wait_until(start_at: float) -> None:
    await asyncio.sleep(max(0.0, start_at - time.time()))


async def submit(base_url: str, redis_url: str, count: str, window: str, start_at: str) -> Any:
    """Gather ``count`` submits paced by the shared window (``window`` seconds)."""
    limits = RateLimits(submits_per_window=20, submit_window=float(window))
    async with (
        RedisBackend(redis_url, api_key=KEY) as backend,
        client(base_url, backend, rate_limits=limits) as mashup,
    ):
        await wait_until(float(start_at))
        outcomes = await asyncio.gather(
            *(mashup.submit(request(i)) for i in range(int(count))), return_exceptions=True
        )
    errors = [repr(o) for o in outcomes if isinstance(o, BaseException)]
    return {"submitted": len(outcomes) - len(errors), "errors": errors}


async def receive(redis_url: str, port: str, token: str, seconds: str) -> Any:
    """A receiver process: publish every verified callback for ``seconds`` seconds."""
    async with (
        RedisBackend(redis_url, api_key=KEY) as backend,
        CallbackReceiver(port=int(port), path_token=token, backend=backend) as receiver,
    ):
        print(json.dumps({"ready": receiver.url}), flush=True)
        await asyncio.sleep(float(seconds))
        return {"accepted": receiver.accepted}


async def wait_tasks(base_url: str, redis_url: str, callback_url: str, *task_ids: str) -> Any:
    """A client process without a receiver: wait for tasks to COMPLETE, woken by callbacks."""
    slow = PollPolicy(initial=30.0, maximum=30.0, callback_probe=30.0, callback_grace=30.0)
    async with (
        RedisBackend(redis_url, api_key=KEY) as backend,
        client(base_url, backend, poll_policy=slow, callback_url=callback_url) as mashup,
    ):
        print(json.dumps({"ready": True}), flush=True)
        handles = [mashup.task(task_id) for task_id in task_ids]
        snapshots = await asyncio.gather(*(h.wait(Stage.COMPLETE) for h in handles))
        return {"stages": [s.stage.name for s in snapshots], "requests": mashup.requests_sent}


async def batch(base_url: str, redis_url: str, name: str, count: str, lease: str) -> Any:
    """Run a batch on the shared journal ``name``; print each item as it finishes."""
    items = []
    async with (
        RedisBackend(redis_url, api_key=KEY) as backend,
        client(base_url, backend, poll_policy=PollPolicy(initial=0.1, maximum=0.2)) as mashup,
    ):
        journal = backend.journal(name, lease=float(lease))
        requests = [request(i) for i in range(int(count))]
        async with mashup.run_batch(requests, journal=journal, concurrency=3) as results:
            async for item in results:
                line = {
                    "index": item.index,
                    "task": item.task_id,
                    "error": type(item.error).__name__ if item.error else None,
                    "from_journal": item.from_journal,
                }
                print(json.dumps(line), flush=True)
                items.append(line)
    return {"items": len(items)}


async def follow(base_url: str, redis_url: str, task_id: str) -> Any:
    """A client process polling one task (no callbacks) through the shared poll lease."""
    fast = PollPolicy(initial=0.2, maximum=0.5, after_first=0.2)
    async with (
        RedisBackend(redis_url, api_key=KEY) as backend,
        client(base_url, backend, poll_policy=fast) as mashup,
    ):
        handle = mashup.task(task_id)
        print(json.dumps({"ready": mashup._link.id.decode()}), flush=True)  # type: ignore[union-attr]
        snapshot = await handle.wait(Stage.COMPLETE)
        return {"stage": snapshot.stage.name, "requests": mashup.requests_sent}


COMMANDS = {
    "submit": submit,
    "receive": receive,
    "wait": wait_tasks,
    "batch": batch,
    "follow": follow,
}

if __name__ == "__main__":
    result = asyncio.run(COMMANDS[sys.argv[1]](*sys.argv[2:]))
    print(json.dumps(result), flush=True)
