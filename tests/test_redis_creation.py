"""One creation budget for every process of an account (kiemashup.redis, issue 14 point 3)."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path

import pytest
from redis_kit import RedisServer, redis_server
from redis_workers import KEY

from kiemashup import MashupClient, RateLimitError, RateLimits, RetryPolicy, Timeouts
from kiemashup._core.timing import CreationWindow
from kiemashup._redis.creation import _CLOSE as CLOSE
from kiemashup._redis.creation import _TAKE as TAKE
from kiemashup.redis import RedisBackend
from kiemashup.testing import FakeKieServer, Fault, Timeline

__all__ = ["redis_server"]  # the fixture, imported for pytest

WORKERS = Path(__file__).with_name("redis_workers.py")
NO_RETRY = RetryPolicy(attempts=1)


async def run_worker(*args: str) -> dict[str, object]:
    """Run one worker process to its end; its last stdout line, parsed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKERS),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(45):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    result: dict[str, object] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def test_three_processes_share_one_creation_window(redis_server: RedisServer) -> None:
    """3 processes gathering 30 submits each draw no 429 and never pass 20 per window at Kie."""
    window = 1.0
    async with FakeKieServer(
        api_key=KEY, creation_limit=20, creation_window=window, credits=10_000
    ) as server:
        start_at = str(time.time() + 1.5)  # every process past its imports before it submits
        results = await asyncio.gather(
            *(
                run_worker("submit", server.url, redis_server.url, "30", str(window), start_at)
                for _ in range(3)
            )
        )
        assert [r["errors"] for r in results] == [[], [], []]
        assert [r["submitted"] for r in results] == [30, 30, 30]
        assert server.creations == 90
        assert server.count("submit") == 90  # no submit was refused and sent again
        assert server.creation_rate_violations() == 0  # never over 20 in any window: no 429


async def test_window_rule_in_redis(redis_server: RedisServer) -> None:
    """The shared window lets one probe alone, then fills to the limit, then waits for ends."""
    limits = RateLimits(submits_per_window=3, submit_window=0.5)
    async with RedisBackend(redis_server.url, api_key=KEY) as backend:
        slots = backend.creation_slots(limits, Timeouts())
        first = await slots.take()
        with_probe_open = asyncio.ensure_future(slots.take())
        await asyncio.sleep(0.1)
        assert not with_probe_open.done()  # a fresh window: the probe is answered first
        slots.closed(first, rejected=False, retry_after=None)
        await slots.drain()
        second = await asyncio.wait_for(with_probe_open, 2)
        third = await slots.take()
        fourth = asyncio.ensure_future(slots.take())
        await asyncio.sleep(0.1)
        assert not fourth.done()  # 3 places held: the limit
        slots.abandoned(third)  # never sent: freed at once
        slots.closed(await asyncio.wait_for(fourth, 2), rejected=False, retry_after=None)
        await slots.drain()
        slots.closed(second, rejected=True, retry_after=0.3)
        await slots.drain()
        held = time.monotonic()
        fifth = await slots.take()
        assert time.monotonic() - held >= 0.25  # a 429 holds everyone back (Retry-After)
        assert fifth


async def test_a_push_back_pauses_and_caps_every_client(redis_server: RedisServer) -> None:
    """429s with Retry-After that are a real share of one client's replies pause another
    client's requests, and both take slots of one shared cap until it expires; a stray
    429 alone pauses nobody else."""
    async with (
        FakeKieServer(api_key=KEY, default_timeline=Timeline.success()) as server,
        RedisBackend(redis_server.url, api_key=KEY) as one,
        RedisBackend(redis_server.url, api_key=KEY) as other,
        MashupClient(api_key=KEY, base_url=server.url, backend=one, retry_policy=NO_RETRY) as a,
        MashupClient(api_key=KEY, base_url=server.url, backend=other) as b,
    ):
        server.inject(Fault("credits", "rate_limit", retry_after="1"))
        with pytest.raises(RateLimitError):
            await a.credits()
        await asyncio.sleep(0.1)
        assert await one.redis.pttl(one.keys.budget_pause) == -2  # a stray one: no key
        server.inject(Fault("credits", "rate_limit", retry_after="1", times=2))
        for _ in range(2):  # with the first, 3 push-backs in a second: a real one
            with pytest.raises(RateLimitError):
                await a.credits()
        await asyncio.sleep(0.1)  # the push-back reaches Redis in the background
        assert 0 < await one.redis.pttl(one.keys.budget_pause) <= 1000
        assert await one.redis.get(one.keys.budget_rate) is not None
        started = time.monotonic()
        assert await b.credits() >= 0
        assert time.monotonic() - started >= 0.5  # b waited out a's Retry-After
        assert await one.redis.zcard(one.keys.budget_sends) >= 1  # and took a shared slot


@pytest.mark.parametrize("seed", range(4))
async def test_the_lua_window_follows_creation_window_step_by_step(
    redis_server: RedisServer, seed: int
) -> None:
    """The shared window's scripts answer exactly as CreationWindow does, for random runs of
    takes, replies (accepted, 429 with and without Retry-After) and abandoned submits."""
    rng = random.Random(seed)
    limit, window = 4, 1.0
    local = CreationWindow(limit, window)
    async with RedisBackend(redis_server.url, namespace=f"diff{seed}") as backend:
        keys = list(backend.keys.creation)
        now, lease, open_places, counter = 1000.0, 500.0, [], 0
        seen: set[str] = set()  # the kinds of answer the run met
        for _ in range(300):
            now += rng.choice([0.0, 0.01, 0.05, 0.2, 0.6])
            op = rng.random()
            if op < 0.5:
                expected = local.wait(now)
                counter += 1
                args = [limit, window, local.margin, lease, f"p{counter}", 600_000, repr(now)]
                got = float(await backend.redis.eval(TAKE, 3, *keys, *args))
                seen.add("reply" if expected is None else "now" if expected == 0 else "later")
                if expected is None:
                    assert got == -1
                else:
                    assert got == pytest.approx(expected, abs=1e-6)
                if expected == 0:
                    local.opened()
                    open_places.append(f"p{counter}")
            elif open_places:
                place = open_places.pop(rng.randrange(len(open_places)))
                if op < 0.6:
                    local.abandoned()
                    await backend.redis.zrem(keys[0], place)
                    continue
                rejected = op < 0.75
                retry_after = rng.choice([None, 0.3]) if rejected else None
                local.closed(now, rejected=rejected, retry_after=retry_after)
                hold = -1.0 if retry_after is None else retry_after
                args = [window, local.margin, place, "1" if rejected else "0", hold, 600_000]
                await backend.redis.eval(CLOSE, 3, *keys, *args, repr(now))
        assert seen == {"reply", "now", "later"}
