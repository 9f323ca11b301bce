"""A batch journal in Redis that several processes run at once (``RedisBackend.journal``).

The same records as the file journal (``_journal``: intent, unsent, submitted, stage,
done, failed, unknown, rejected, error) folded by the same ``Entry``, so "what counts
as created" is one rule. Per item (fingerprint, occurrence) under
``<ns>:journal:<name>``:

```
:rec:<fp>:<n>     list   the item's records, JSON, in order
:lease:<fp>:<n>   str    the process working on it now (PX lease, renewed while it works)
:done:<fp>:<n>    str    when a process yielded its result (Redis's clock)
```

A worker claims an item atomically before touching it (``claim``), and every record
is written only while its lease is still held (checked in the same script), so a
process that lost its lease can never send a submit: the intent record that guards
each POST would fail first. A process killed mid-run loses nothing: its unclaimed
items are taken by the others at once, its claimed ones when the lease lapses; one
whose intent was written and outcome not is unknown to the next holder, and the
batch recovers it by its callback key or leaves it unknown -- never resubmitted
unless ``resubmit_unknown=True``. Redis away: writes fail with ``JournalError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from kiemashup._core.errors import JournalError
from kiemashup._journal import Entry, ItemKey, finish_first, read_record

if TYPE_CHECKING:
    from kiemashup.redis import RedisBackend

log = logging.getLogger("kiemashup.redis")

#: Seconds an item stays claimed by a process that stopped renewing (it died).
DEFAULT_LEASE = 30.0

_TIME = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

_CLAIM = (
    _TIME
    + """
local done = redis.call('GET', KEYS[3])
if done and tonumber(done) >= tonumber(ARGV[3]) then return {'settled'} end
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return {'held'} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local records = redis.call('LRANGE', KEYS[2], 0, -1)
table.insert(records, 1, 'mine')
return records
"""
)

_APPEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

_RELEASE = (
    _TIME
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], tostring(now))
redis.call('DEL', KEYS[1])
return 1
"""
)

_GIVE_BACK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


class RedisJournal:
    """``SharedJournal``: pass it as ``run_batch(journal=backend.journal(name))``."""

    def __init__(self, backend: RedisBackend, name: str, *, lease: float = DEFAULT_LEASE) -> None:
        if not name or any(c in name for c in " \n\r\t"):
            raise ValueError(f"a journal name is a non-empty word, not {name!r}")
        self._backend = backend
        self.name = name
        self.path = f"redis {backend.url} {backend.keys.journal(name)}"  # for JournalError
        self.lease = lease
        self._prefix = backend.keys.journal(name)
        self._me = secrets.token_hex(8)
        self.entries: dict[ItemKey, Entry] = {}
        self._held: set[ItemKey] = set()
        self._writes: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._opened_at = 0.0
        redis = backend.redis
        self._claim = redis.register_script(_CLAIM)
        self._append = redis.register_script(_APPEND)
        self._release = redis.register_script(_RELEASE)
        self._renew = redis.register_script(_RENEW)

    def __repr__(self) -> str:
        return f"<RedisJournal {self.name!r} {self._backend.url}>"

    def _keys(self, item: ItemKey) -> tuple[str, str, str]:
        suffix = f"{item[0]}:{item[1]}"
        prefix = self._prefix
        return f"{prefix}:lease:{suffix}", f"{prefix}:rec:{suffix}", f"{prefix}:done:{suffix}"

    def _fail(self, exc: BaseException, doing: str, task_id: str | None = None) -> JournalError:
        return JournalError(self.path, f"cannot {doing}: {type(exc).__name__}", task_id=task_id)

    async def open(self) -> None:
        """Check Redis and note when this run began (items yielded since are others')."""
        try:
            seconds, micros = await self._backend.redis.time()
        except (RedisError, OSError) as exc:
            raise self._fail(exc, "open it (Redis is unreachable)") from None
        self._opened_at = seconds + micros / 1e6
        if self._renewer is None:
            self._renewer = asyncio.get_running_loop().create_task(self._keep_leases())

    async def claim(self, item: ItemKey) -> str:
        """Claim ``item``: "mine" (entry loaded, lease held), "held" or "settled"."""
        lease, records, done = self._keys(item)
        try:
            answer = await self._claim(
                keys=[lease, records, done],
                args=[self._me, int(self.lease * 1000), self._opened_at],
            )
        except (RedisError, OSError) as exc:
            raise self._fail(exc, "claim an item") from None
        verdict = answer[0].decode() if isinstance(answer[0], bytes) else str(answer[0])
        if verdict != "mine":
            return verdict
        self._held.add(item)
        entry = None
        for number, raw in enumerate(answer[1:], 1):
            try:
                record = read_record(raw)
            except ValueError as exc:
                raise JournalError(self.path, f"record {number} of an item is {exc}") from None
            if entry is None:
                entry = Entry(record["fp"])
            entry.apply(record)
        if entry is not None:
            self.entries[item] = entry
        else:
            self.entries.pop(item, None)
        return verdict

    async def release(self, item: ItemKey) -> None:
        """The item's result was yielded here: mark it settled and end the lease."""
        self._held.discard(item)
        lease, _, done = self._keys(item)
        try:
            await self._release(keys=[lease, done], args=[self._me])
        except (RedisError, OSError) as exc:
            raise self._fail(exc, "release an item") from None

    def entry(self, item: ItemKey) -> Entry | None:
        """What the journal knew about the item when it was claimed, plus this run's records."""
        return self.entries.get(item)

    def _record(self, item: ItemKey, index: int, event: str, fields: dict[str, Any]) -> str:
        record: dict[str, Any] = {"fp": item[0], "n": item[1], "i": index, "ev": event}
        record.update({k: v for k, v in fields.items() if v is not None})
        entry = self.entries.get(item)
        if entry is None:
            entry = self.entries[item] = Entry(item[0])
        entry.apply(record)
        return json.dumps(record, separators=(",", ":"), ensure_ascii=True)

    async def _write(self, item: ItemKey, line: str, event: str, task_id: str | None) -> None:
        lease, records, _ = self._keys(item)
        try:
            written = await self._append(
                keys=[lease, records], args=[self._me, line, int(self.lease * 1000)]
            )
        except (RedisError, OSError) as exc:
            raise self._fail(exc, f"write its {event!r} record", task_id) from None
        if not written:
            raise JournalError(
                self.path,
                f"cannot write its {event!r} record: the item's lease was lost",
                task_id=task_id,
            )

    async def append(self, item: ItemKey, index: int, event: str, **fields: Any) -> None:
        """Write one record while this process holds the item; ``JournalError`` otherwise.

        Cancelling the caller never cancels the write: it is waited for first.
        """
        line = self._record(item, index, event, fields)
        await finish_first(
            asyncio.ensure_future(self._write(item, line, event, fields.get("task")))
        )

    def append_soon(self, item: ItemKey, index: int, event: str, **fields: Any) -> None:
        """Queue one record (cancellation paths); written before ``aclose`` returns."""
        line = self._record(item, index, event, fields)
        task = asyncio.ensure_future(self._write(item, line, event, fields.get("task")))
        self._writes.add(task)

        def logged(done: asyncio.Task[None]) -> None:
            self._writes.discard(done)
            if not done.cancelled() and done.exception() is not None:
                log.error("%s", done.exception())

        task.add_done_callback(logged)

    async def _keep_leases(self) -> None:
        """Renew the leases of the items this process works on, three times a lease."""
        while True:
            await asyncio.sleep(self.lease / 3)
            for item in list(self._held):
                lease, _, _ = self._keys(item)
                try:
                    kept = await self._renew(keys=[lease], args=[self._me, int(self.lease * 1000)])
                except (RedisError, OSError):
                    continue  # the writes guarded by the lease will say so
                if not kept:
                    self._held.discard(item)
                    log.warning(
                        "journal %s: lost the lease of an item to another process", self.name
                    )

    async def aclose(self) -> None:
        """Write queued records, then hand unfinished items back to the other processes.

        Called once the batch's workers are done (submits in flight finished and
        journaled), so another process may take them at once.
        """
        if self._writes:
            await asyncio.wait(list(self._writes))
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        held, self._held = self._held, set()
        for item in held:
            lease, _, _ = self._keys(item)
            try:
                await self._backend.redis.eval(_GIVE_BACK, 1, lease, self._me)
            except (RedisError, OSError):
                log.warning(
                    "journal %s: an unfinished item waits for its lease to lapse", self.name
                )
