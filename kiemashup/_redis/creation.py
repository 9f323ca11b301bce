"""Kie's creation window, shared by every client of one account.

The rule is ``_core.timing.CreationWindow``'s, run atomically inside Redis by Lua
scripts on Redis's own clock (so processes on different machines agree on time):
each submit holds a place from before it is sent until ``window + margin`` seconds
after its reply; no more than ``limit`` places are held at once; a fresh (or just
refused) window lets one submit probe alone until it is answered; a 429 holds every
submit back until its ``Retry-After`` (else a full window). A place whose process
died before handing it back counts as sent at the end of its lease (the request
timeout), so a crash never frees a place early.

While Redis is unreachable, submits wait for it (they never fall back to a local,
per-process window: N processes would send N times the limit).
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from kiemashup._core.policy import RateLimits, Timeouts

if TYPE_CHECKING:
    from kiemashup.redis import RedisBackend

log = logging.getLogger("kiemashup.redis")

#: How often a submit asks again while a reply it waits for is outstanding elsewhere.
RECHECK = 0.02
#: The longest a submit sleeps before asking again (a place may free up sooner).
MAX_SLEEP = 0.5

# ARGV[7] (take) and ARGV[7] (close), when given, replace Redis's clock: tests compare
# the scripts step by step with CreationWindow (tests/test_redis_creation.py).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if ARGV[7] then now = tonumber(ARGV[7]) end
now = now + 0.000000001
local limit, window, margin = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local lease, id, ttl = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES')
for i = 1, #dead, 2 do
  redis.call('ZADD', KEYS[2], tonumber(dead[i + 1]) + window + margin, dead[i])
  redis.call('ZREM', KEYS[1], dead[i])
end
local nb = tonumber(redis.call('HGET', KEYS[3], 'not_before') or '0')
if now < nb then return tostring(nb - now) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local open = redis.call('ZCARD', KEYS[1])
local ended = redis.call('ZCARD', KEYS[2])
local probing = redis.call('HGET', KEYS[3], 'probing') ~= '0'
if probing and open > 0 then return '-1' end
if open + ended < limit then
  redis.call('ZADD', KEYS[1], now + lease, id)
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
  return '0'
end
if ended > 0 then
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return tostring(tonumber(first[2]) - now)
end
return '-1'
"""

_CLOSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if ARGV[7] then now = tonumber(ARGV[7]) end
local window, margin, id = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local rejected, retry_after, ttl = ARGV[4] == '1', tonumber(ARGV[5]), tonumber(ARGV[6])
redis.call('ZREM', KEYS[1], id)
redis.call('ZADD', KEYS[2], now + window + margin, id)
if rejected then
  local hold = window + margin
  if retry_after >= 0 then hold = retry_after end
  local nb = tonumber(redis.call('HGET', KEYS[3], 'not_before') or '0')
  if now + hold > nb then redis.call('HSET', KEYS[3], 'not_before', tostring(now + hold)) end
  redis.call('HSET', KEYS[3], 'probing', '1')
else
  redis.call('HSET', KEYS[3], 'probing', '0')
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
return 1
"""


class RedisWaiter:
    """Backoff while Redis is unreachable, with one warning per outage."""

    def __init__(self, url: str, what: str) -> None:
        self.url = url
        self.what = what
        self.failures = 0

    async def failed(self, exc: BaseException) -> None:
        if self.failures == 0:
            log.warning("kiemashup: Redis at %s unreachable (%s); %s", self.url, exc, self.what)
        self.failures += 1
        await asyncio.sleep(min(2.0, 0.05 * 2 ** min(self.failures, 6)) * (0.5 + random.random()))

    def recovered(self) -> None:
        if self.failures:
            log.warning("kiemashup: Redis at %s is back", self.url)
        self.failures = 0


class SharedCreationSlots:
    """``CreationSlots`` for every client of one namespace (see the module docstring)."""

    def __init__(self, backend: RedisBackend, limits: RateLimits, timeouts: Timeouts) -> None:
        self._backend = backend
        self._keys = list(backend.keys.creation)
        self.limit = limits.submits_per_window
        self.window = limits.submit_window
        self.margin = 0.02 * self.window + 0.05  # CreationWindow's default margin
        self.lease = timeouts.total + timeouts.connect + 5.0  # a submit can take this long
        self._ttl_ms = int((self.lease + 2 * self.window + 60.0) * 1000)
        self._take = backend.redis.register_script(_TAKE)
        self._close = backend.redis.register_script(_CLOSE)
        self._writes: set[asyncio.Task[None]] = set()
        self._waiter = RedisWaiter(backend.url, "submits wait for the shared creation window")

    async def take(self) -> object:
        """Wait for a place in the account's creation window and take it."""
        place = secrets.token_hex(8)
        args: list[str | float] = [
            self.limit,
            self.window,
            self.margin,
            self.lease,
            place,
            self._ttl_ms,
        ]
        while True:
            try:
                answer = float(await self._take(keys=self._keys, args=args))
            except (RedisError, OSError) as exc:
                await self._waiter.failed(exc)
                continue
            except asyncio.CancelledError:  # the script may have taken the place: free it
                self.abandoned(place)
                raise
            self._waiter.recovered()
            if answer == 0:
                return place
            await asyncio.sleep(RECHECK if answer < 0 else min(answer, MAX_SLEEP))

    def closed(self, place: object, *, rejected: bool, retry_after: float | None) -> None:
        """Hand the place back: it frees up ``window + margin`` after now (Redis's clock)."""
        args: list[str | float] = [
            self.window,
            self.margin,
            str(place),
            "1" if rejected else "0",
            -1.0 if retry_after is None else retry_after,
            self._ttl_ms,
        ]
        self._spawn(self._close_place(args))

    def abandoned(self, place: object) -> None:
        """Free a place whose submit never left."""
        self._spawn(self._abandon(str(place)))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _close_place(self, args: list[str | float]) -> None:
        for _ in range(20):  # a lost reply still frees the place at its lease end
            try:
                await self._close(keys=self._keys, args=args)
                return
            except (RedisError, OSError) as exc:
                await self._waiter.failed(exc)
        log.warning("kiemashup: a creation place is freed only at its lease end (Redis away)")

    async def _abandon(self, place: str) -> None:
        try:
            await self._backend.redis.zrem(self._keys[0], place)
        except (RedisError, OSError):
            log.debug("abandoned creation place %s left to its lease", place)

    async def drain(self) -> None:
        """Wait (at most 2 s) for the places being handed back to reach Redis."""
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=2.0)

    async def aclose(self) -> None:
        """Wait (briefly) for places still being handed back."""
        await self.drain()
