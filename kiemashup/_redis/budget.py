"""Kie's push-back, shared by every client of one account (``SharedBudget``).

A client's ``RequestBudget`` adapts to Kie's 429 and 455 on its own; with a backend,
what one client learns holds every client back too (see ``SharedRequestBudget``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from kiemashup._redis.creation import MAX_SLEEP

if TYPE_CHECKING:
    from kiemashup.redis import RedisBackend

log = logging.getLogger("kiemashup.redis")

_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window * 2000))
  return '0'
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tostring(tonumber(first[2]) + window - now)
"""

_LOWER = """
local current = redis.call('GET', KEYS[1])
if current and tonumber(current) <= tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
"""


class SharedRequestBudget:
    """``SharedBudget``: Kie's push-back slows every client of the account, not just one.

    A 429 (or 455) sets a shared pause (its Retry-After) and, for a 429, a shared cap:
    the rate the pushed-back client cut itself to (``RequestBudget``), kept for
    ``RECOVER`` seconds after the last push-back. While the cap is in force every
    request of every client takes a slot of one sliding window in Redis (at most
    ``rate`` per second); without it, a request costs no Redis call at all (the
    pause and cap are looked up at most every ``CHECK`` seconds). The adaptive growth
    between push-backs stays per client. Redis away: each client's own budget applies.
    """

    CHECK = 0.05
    RECOVER = 60.0
    WINDOW = 1.0

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._pause_key = backend.keys.budget_pause
        self._rate_key = backend.keys.budget_rate
        self._sends_key = backend.keys.budget_sends
        self._until = 0.0  # loop time before which a pause is known to hold
        self._rate: float | None = None  # the shared cap, as last read
        self._checked = float("-inf")
        self._slot = backend.redis.register_script(_SLOT)
        self._writes: set[asyncio.Task[None]] = set()

    async def _refresh(self, now: float) -> None:
        self._checked = now
        try:
            async with self._backend.redis.pipeline(transaction=False) as pipe:
                pipe.pttl(self._pause_key)
                pipe.get(self._rate_key)
                ttl, rate = await pipe.execute()
        except (RedisError, OSError):
            self._rate = None  # the local budget still paces this process
            return
        if ttl > 0:
            self._until = max(self._until, now + ttl / 1000)
        self._rate = float(rate) if rate is not None else None

    async def wait(self) -> None:
        """Sleep out a shared pause; under a shared cap, take a slot of its window."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            if now - self._checked >= self.CHECK:
                await self._refresh(now)
            if self._until > now:
                await asyncio.sleep(self._until - now)
                continue
            rate = self._rate
            if rate is None:
                return
            try:
                wait = float(
                    await self._slot(
                        keys=[self._sends_key],
                        args=[max(1, int(rate * self.WINDOW)), self.WINDOW, secrets.token_hex(6)],
                    )
                )
            except (RedisError, OSError):
                return
            if wait <= 0:
                return
            await asyncio.sleep(min(wait, MAX_SLEEP))

    def pushed_back(self, pause: float | None, rate: float | None) -> None:
        """Share a pause of ``pause`` seconds and a cap of ``rate`` requests a second."""
        loop = asyncio.get_running_loop()
        if pause is not None and pause > 0:
            self._until = max(self._until, loop.time() + pause)
        task = loop.create_task(self._write(pause, rate))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, pause: float | None, rate: float | None) -> None:
        redis = self._backend.redis
        try:  # never shortens a longer pause, never raises a lower cap
            async with redis.pipeline(transaction=True) as pipe:
                if pause is not None and pause > 0:
                    ms = max(1, int(pause * 1000))
                    pipe.set(self._pause_key, b"1", px=ms, nx=True)
                    pipe.pexpire(self._pause_key, ms, gt=True)
                if rate is not None:
                    pipe.eval(_LOWER, 1, self._rate_key, rate, int(self.RECOVER * 1000))
                await pipe.execute()
        except (RedisError, OSError):
            log.debug("shared push-back not written (Redis away)")
