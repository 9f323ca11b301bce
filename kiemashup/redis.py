"""``RedisBackend``: many processes, one account (``pip install 'kiemashup[redis]'``).

Processes that use one Kie account share, through one Redis, what Kie counts per
account: the creation window (20 per 10 s, counted by arrival), Kie's push-back (a
shared pause and cap of the request budget), callbacks (a receiver in any process wakes
handles in every process), one poll per task, per-submit keys for ``recover()``, and
batch journals (``journal(name)``). See docs/scaling.md.

This module and ``kiemashup._redis`` are the only ones that import redis;
``import kiemashup`` never does.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from types import TracebackType

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError as exc:  # the extra is not installed: say how to get it
    raise ImportError(
        "kiemashup.redis needs the redis client: pip install 'kiemashup[redis]'"
    ) from exc

from kiemashup._core.errors import BackendError, KieError
from kiemashup._core.models import TaskSnapshot
from kiemashup._core.policy import PollPolicy, RateLimits, Timeouts
from kiemashup._redis.budget import SharedRequestBudget
from kiemashup._redis.callbacks import RedisLink, publish_callback
from kiemashup._redis.creation import SharedCreationSlots
from kiemashup._redis.journal import DEFAULT_LEASE, RedisJournal
from kiemashup._redis.keys import Keys, namespace_for, redact

__all__ = ["RedisBackend"]

#: Seconds to wait for Redis to answer the first PING.
CONNECT_TIMEOUT = 5.0


class RedisBackend:
    """One Redis shared by every process of one Kie account. ``async with`` it.

    ``redis`` is a URL (``redis://host:6379/0``, ``rediss://``, ``unix://``) or an existing
    ``redis.asyncio.Redis`` (borrowed: never closed here; it must not decode responses).
    Keys live under ``namespace``, by default ``kiemashup:`` and the first 16 hex digits
    of the sha256 of ``api_key`` (default: ``KIE_API_KEY``), so processes of one
    account share and two accounts never do. Entering checks that Redis answers, else
    ``BackendError`` naming the URL (without its password).
    """

    def __init__(
        self,
        redis: str | aioredis.Redis,
        *,
        namespace: str | None = None,
        api_key: str | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("KIE_API_KEY")
        if namespace is None:
            if not key:
                raise KieError(
                    "RedisBackend needs the API key to name its namespace: pass api_key=, "
                    "namespace= or set KIE_API_KEY"
                )
            namespace = namespace_for(key)
        self._derived = namespace_for(key) if key else None
        self.namespace = namespace
        self.keys = Keys(namespace)
        if isinstance(redis, str):
            self.url = redact(redis)
            self.redis: aioredis.Redis = aioredis.Redis.from_url(redis, decode_responses=False)
            self._owns = True
        else:
            kwargs = redis.connection_pool.connection_kwargs
            if kwargs.get("decode_responses"):
                raise KieError("RedisBackend needs a client made with decode_responses=False")
            where = kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
            self.url = f"redis://{where}/{kwargs.get('db', 0)}"
            self.redis = redis
            self._owns = False

    def __repr__(self) -> str:
        return f"<RedisBackend {self.url} {self.namespace}>"

    async def __aenter__(self) -> RedisBackend:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Check that Redis answers; ``BackendError`` (naming the URL) when it does not."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self.redis.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            if self._owns:
                await self.redis.aclose()
            reason = "no answer" if isinstance(exc, TimeoutError) else type(exc).__name__
            raise BackendError(self.url, f"Redis is unreachable ({reason})") from None

    async def aclose(self) -> None:
        """Close the connection (only one made here); close clients and receivers first."""
        if self._owns:
            await self.redis.aclose()

    # --- for MashupClient and CallbackReceiver (kiemashup._backend's protocols) ---------------

    def check_api_key(self, api_key: str) -> None:
        """Refuse a client of another account on a namespace derived from an API key."""
        if self._derived == self.namespace and namespace_for(api_key) != self.namespace:
            raise KieError(
                "this RedisBackend's namespace belongs to another API key: pass the "
                "client's api_key= to RedisBackend (or an explicit namespace=)"
            )

    def creation_slots(self, limits: RateLimits, timeouts: Timeouts) -> SharedCreationSlots:
        """The account's creation window, shared by every client of the namespace."""
        return SharedCreationSlots(self, limits, timeouts)

    def request_budget(self) -> SharedRequestBudget:
        """The account's request budget after a push-back, shared through Redis."""
        return SharedRequestBudget(self)

    def link(
        self,
        feed: Callable[[TaskSnapshot], object],
        policy: PollPolicy,
        on_key: Callable[[str, str], object] | None = None,
    ) -> RedisLink:
        """A client's subscription: callbacks to ``feed``, keyed ones to ``on_key``, and
        one poll per task."""
        return RedisLink(self, feed, policy, on_key)

    async def publish(self, snapshot: TaskSnapshot, key: str | None) -> None:
        """Publish one verified callback to every client of the namespace, and keep it."""
        await publish_callback(self, snapshot, key)

    def journal(self, name: str, *, lease: float = DEFAULT_LEASE) -> RedisJournal:
        """A batch journal several processes run at once: ``run_batch(journal=...)``.

        Each item is claimed with a ``lease`` (seconds, renewed while worked on), so
        processes split the items and each is submitted once; see docs/scaling.md.
        """
        return RedisJournal(self, name, lease=lease)
