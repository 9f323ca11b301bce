"""Callbacks on any replica, and one poll per task, through Redis.

A receiver publishes each verified callback on the namespace's channel and keeps the
last few of each task in a short list (bounded, expiring), so a client that learns of
a task late still hears them. Each client subscribes in one background task and hands
the callbacks of tasks it knows to its own ``feed`` -- the same trust rule as a local
callback: a final one is confirmed by a poll.

Polls are shared: a short lease per task (``SET NX PX``) names the one client that
polls it; its result is published to every client waiting on the task. When the
holder stops polling (it died, or stopped waiting), the lease lapses within one poll
interval and another client takes over. With Redis away, every client polls for
itself: waits keep working.

Messages are JSON (never pickle): ``{"kind": "callback" | "poll", "snapshot": {...},
"key": ...}``, the snapshot written by ``_journal.snapshot_record``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from kiemashup._core.models import TaskSnapshot
from kiemashup._core.policy import PollPolicy
from kiemashup._journal import snapshot_from_record, snapshot_record
from kiemashup._redis.creation import RedisWaiter

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub

    from kiemashup.redis import RedisBackend

log = logging.getLogger("kiemashup.redis")

KEPT = 8  # callbacks kept per task for late subscribers
KEPT_TTL_MS = 600_000  # and for how long (Kie's whole run of a task fits easily)
CLAIMS_TTL_MS = 86_400_000  # how long a per-submit key's task ids are kept (a day)
INTEREST_MAX = 100_000  # task ids a client listens for, at most (oldest forgotten)
SUBSCRIBE_WAIT = 2.0  # start() waits this long for the subscription, then goes on


def encode(kind: str, snapshot: TaskSnapshot, key: str | None = None) -> bytes:
    """One channel message."""
    body: dict[str, Any] = {"kind": kind, "snapshot": snapshot_record(snapshot)}
    if key:
        body["key"] = key
    return json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def decode(raw: bytes | str) -> tuple[str, TaskSnapshot, str | None]:
    """``(kind, snapshot, key)`` of one channel message; ``ValueError`` when it is not one."""
    try:
        body = json.loads(raw)
        kind = body["kind"]
        if kind not in ("callback", "poll"):
            raise ValueError(f"unknown kind {kind!r}")
        key = body.get("key")
        if key is not None and not isinstance(key, str):
            raise TypeError("key")
        return kind, snapshot_from_record(body["snapshot"], source=kind), key
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a kiemashup message ({type(exc).__name__})") from None


async def publish_callback(backend: RedisBackend, snapshot: TaskSnapshot, key: str | None) -> None:
    """Keep ``snapshot`` in its task's list and publish it, in one transaction."""
    message = encode("callback", snapshot, key)
    kept = backend.keys.kept(snapshot.task_id)
    async with backend.redis.pipeline(transaction=True) as pipe:
        pipe.rpush(kept, message)
        pipe.ltrim(kept, -KEPT, -1)
        pipe.pexpire(kept, KEPT_TTL_MS)
        if key:  # recover() in any process finds the task its submit created
            claims = backend.keys.claims(key)
            pipe.lrem(claims, 0, snapshot.task_id)
            pipe.rpush(claims, snapshot.task_id)
            pipe.ltrim(claims, -KEPT, -1)
            pipe.pexpire(claims, CLAIMS_TTL_MS)
        pipe.publish(backend.keys.channel, message)
        await pipe.execute()


_DROP_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


class RedisLink:
    """One client's subscription (``BackendLink``): callbacks in, polls shared."""

    def __init__(
        self,
        backend: RedisBackend,
        feed: Callable[[TaskSnapshot], object],
        policy: PollPolicy,
        on_key: Callable[[str, str], object] | None = None,
    ) -> None:
        self._backend = backend
        self._feed = feed
        self._on_key = on_key
        self.id = secrets.token_hex(8).encode()
        # One poll interval at most: a dead holder's tasks are taken over that soon.
        self.lease = max(2 * policy.min_interval, policy.maximum)
        self._interest: OrderedDict[str, None] = OrderedDict()
        self._polls: dict[str, list[asyncio.Future[TaskSnapshot]]] = {}
        self._runner: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._waiter = RedisWaiter(backend.url, "callbacks from other replicas wait; polls go on")
        self.delivered = 0  # callbacks handed to the client's feed

    async def start(self) -> None:
        """Subscribe in the background; the first call waits briefly until it holds."""
        if self._runner is not None:
            return
        self._start_runner()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SUBSCRIBE_WAIT):
                await self._subscribed.wait()

    def _start_runner(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run())
        for task_id in self._interest:  # tasks it learnt of before a loop ran
            self._spawn(self._read_kept(task_id))

    def interest(self, task_id: str) -> None:
        """Listen for ``task_id`` from now on, and read the callbacks kept for it."""
        interest = self._interest
        if task_id in interest:
            return
        interest[task_id] = None
        while len(interest) > INTEREST_MAX:
            interest.popitem(last=False)
        if self._runner is not None:
            self._spawn(self._read_kept(task_id))
            return
        with contextlib.suppress(RuntimeError):  # no loop yet: start() will do it
            asyncio.get_running_loop()
            self._start_runner()  # a client used without ``async with``

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _read_kept(self, task_id: str) -> None:
        await self._subscribed.wait()  # after subscribing: nothing falls between the two
        try:
            kept = await self._backend.redis.lrange(self._backend.keys.kept(task_id), 0, -1)
        except (RedisError, OSError):
            return  # polls still find the task's news
        for raw in kept:
            self._handle(raw)

    async def _reread(self) -> None:
        """After an outage: the kept callbacks of every task listened for, 500 at a time."""
        task_ids = list(self._interest)
        keys = self._backend.keys
        for start in range(0, len(task_ids), 500):
            try:
                async with self._backend.redis.pipeline(transaction=False) as pipe:
                    for task_id in task_ids[start : start + 500]:
                        pipe.lrange(keys.kept(task_id), 0, -1)
                    lists = await pipe.execute()
            except (RedisError, OSError):
                return  # away again: the next recovery reads them
            for kept in lists:
                for raw in kept:
                    self._handle(raw)

    async def _run(self) -> None:
        """Subscribe, hand messages over; on Redis trouble, resubscribe and reread kept lists."""
        while True:
            pubsub: PubSub | None = None
            try:
                pubsub = self._backend.redis.pubsub()
                await pubsub.subscribe(self._backend.keys.channel)
                self._subscribed.set()
                if self._waiter.failures:
                    self._waiter.recovered()
                    self._spawn(self._reread())  # what was missed while away
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message["type"] == "message":
                        self._handle(message["data"])
            except (RedisError, OSError) as exc:
                self._subscribed.clear()
                await self._waiter.failed(exc)
            except Exception:  # a bug: logged, and the subscription goes on
                log.exception("the Redis subscription failed; subscribing again")
                self._subscribed.clear()
                await self._waiter.failed(RuntimeError("subscription error"))
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()

    def _handle(self, raw: bytes | str) -> None:
        try:
            kind, snapshot, key = decode(raw)
        except ValueError as exc:
            log.warning("ignored a message on %s: %s", self._backend.keys.channel, exc)
            return
        task_id = snapshot.task_id
        if key and self._on_key is not None:
            self._on_key(key, task_id)
        if kind == "poll":
            for waiter in self._polls.pop(task_id, ()):
                if not waiter.done():
                    waiter.set_result(snapshot)
            return
        if task_id in self._interest:
            self.delivered += 1
            try:
                self._feed(snapshot)
            except Exception:  # a feed bug must not end the subscription
                log.exception("feeding a callback for task %s failed", task_id)

    async def poll(
        self, task_id: str, fetch: Callable[[], Awaitable[TaskSnapshot]]
    ) -> TaskSnapshot:
        """One poll for every process waiting on ``task_id`` (see the module docstring)."""
        redis = self._backend.redis
        lease_key = self._backend.keys.poll_lease(task_id)
        lease_ms = int(self.lease * 1000)
        while True:
            try:
                mine = await redis.set(lease_key, self.id, nx=True, px=lease_ms)
                if not mine and await redis.get(lease_key) == self.id:
                    mine = await redis.set(lease_key, self.id, px=lease_ms)  # renew ours
            except (RedisError, OSError):
                return await fetch()  # Redis away: poll for ourselves
            if mine:
                snapshot = await fetch()
                with contextlib.suppress(RedisError, OSError):
                    await redis.publish(self._backend.keys.channel, encode("poll", snapshot))
                    if snapshot.is_terminal:  # nobody needs to poll it any more
                        await redis.eval(_DROP_LEASE, 1, lease_key, self.id)
                return snapshot
            waiter: asyncio.Future[TaskSnapshot] = asyncio.get_running_loop().create_future()
            self._polls.setdefault(task_id, []).append(waiter)
            try:
                async with asyncio.timeout(self.lease):
                    return await waiter
            except TimeoutError:
                continue  # the holder went quiet: try to take the lease
            finally:
                waiters = self._polls.get(task_id, [])
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    self._polls.pop(task_id, None)

    async def claims(self, key: str) -> list[str]:
        """Task ids keyed callbacks named for ``key`` (empty when Redis is away)."""
        try:
            found = await self._backend.redis.lrange(self._backend.keys.claims(key), 0, -1)
        except (RedisError, OSError):
            return []
        return [raw.decode() if isinstance(raw, bytes) else str(raw) for raw in found]

    async def aclose(self) -> None:
        """Stop listening."""
        runner, self._runner = self._runner, None
        for task in [runner, *self._background]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
