"""``run_batch``: many mashups through one client, results as they finish, resumable.

A fixed pool of ``concurrency`` workers pulls items from the (possibly lazy)
iterable, so 10 000 requests never become 10 000 coroutines; the client's own
caps (creation pacing, poll scheduler, requests in flight) bound the I/O below
that. One item's failure is that item's result, never the batch's end.

With a journal (``_journal``) the batch is resumable and never pays twice: the
``intent`` record is written once the creation slot and the client's request caps
are held, just before the POST leaves; a submit whose POST left is finished and
journaled whatever cancels the batch; a rerun re-attaches to tasks it knows,
yields finished items without I/O, and never resubmits an item whose submit
outcome is unknown unless ``resubmit_unknown=True``. Unknown items are recovered
through their per-submit key when the client has a receiver (``MashupClient.recover``).

``run_batch`` returns a ``Batch``: iterate it directly, or better, use it as
``async with client.run_batch(...) as items`` -- leaving the block stops all
submitting at once. A plain ``async for`` stops when the ``Batch`` is closed or
dropped (right after ``break`` in CPython).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Protocol

import attrs

from kiemashup._core.errors import JournalError, KieError, SubmitOutcomeUnknown, TaskFailedError
from kiemashup._core.models import Stage, TaskSnapshot
from kiemashup._core.request import MashupRequest
from kiemashup._core.state import reached, trusted_stage
from kiemashup._handle import TaskHandle
from kiemashup._journal import (
    Entry,
    ItemKey,
    Journal,
    fingerprint,
    snapshot_from_record,
    snapshot_record,
)
from kiemashup._transport import OnOrphan, OrphanedSubmit, new_submit_key

DEFAULT_CONCURRENCY = 100
#: Seconds a batch waits for an unknown submit's first callback before leaving it unknown.
RECOVER_WAIT = 300.0

#: ``on_progress(index, event)``: "submitted", a stage name ("TEXT", "FIRST", ...), or
#: the item's outcome ("done", "failed", "unknown", "error").
OnProgress = Callable[[int, str], None]


class SharedJournal(Protocol):
    """A journal several processes run at once (``RedisBackend.journal(name)``).

    Besides the file journal's ``entry``/``append``/``append_soon``, each item is
    claimed with a lease before a worker touches it: ``claim`` answers "mine" (the
    entry is loaded and the lease held), "held" (another process works on it: try
    again later) or "settled" (another process of this run yielded it: skip it).
    ``release`` ends the lease of an item whose result was yielded.
    """

    async def open(self) -> None: ...

    async def claim(self, item: ItemKey) -> str: ...

    async def release(self, item: ItemKey) -> None: ...

    def entry(self, item: ItemKey) -> Entry | None: ...

    async def append(self, item: ItemKey, index: int, event: str, **fields: Any) -> None: ...

    def append_soon(self, item: ItemKey, index: int, event: str, **fields: Any) -> None: ...

    async def aclose(self) -> None: ...


#: How long a worker waits before asking again for an item another process holds.
HELD_RETRY = 0.5


class BatchClient(Protocol):
    """What a batch needs from a client (``MashupClient`` has it)."""

    async def _submit_tracked(
        self,
        request: MashupRequest,
        *,
        key: str | None = None,
        before_send: Callable[[], Awaitable[None]] | None = None,
        on_orphan: OnOrphan | None = None,
        on_sent: Callable[[asyncio.Future[str]], None] | None = None,
    ) -> TaskHandle: ...

    async def recover(self, error: SubmitOutcomeUnknown) -> TaskHandle: ...

    def task(self, task_id: str) -> TaskHandle: ...


@attrs.frozen
class BatchItem:
    """One finished item: its snapshot, or the typed error that ended it.

    ``from_journal`` is True when a rerun found it finished in the journal (no I/O).
    """

    index: int
    request: MashupRequest
    task_id: str | None
    snapshot: TaskSnapshot | None = None
    error: KieError | None = None
    from_journal: bool = False

    @property
    def ok(self) -> bool:
        """True when the item reached the requested stage."""
        return self.error is None


class _Stop:
    """Sentinel: a worker finished (or broke with ``error``)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


def _error_record(exc: BaseException) -> dict[str, Any]:
    return {"type": type(exc).__name__, "message": str(exc).splitlines()[0] if str(exc) else ""}


@attrs.define
class _Work:
    """One item as a worker sees it."""

    index: int
    request: MashupRequest
    item: ItemKey


def _numbered(requests: Iterable[MashupRequest]) -> Iterator[_Work]:
    """Items with their journal identity: (fingerprint, occurrence of that fingerprint)."""
    seen: dict[str, int] = {}
    for index, request in enumerate(requests):
        if not isinstance(request, MashupRequest):
            raise TypeError(f"item {index} is a {type(request).__name__}, not a MashupRequest")
        fp = fingerprint(request.to_payload())
        n = seen.get(fp, 0)
        seen[fp] = n + 1
        yield _Work(index, request, (fp, n))


class _Run:
    """One call of ``run_batch``: the shared iterator, the journal and the results queue."""

    def __init__(
        self,
        client: BatchClient,
        journal: Journal | SharedJournal | None,
        *,
        stage: Stage,
        resubmit_unknown: bool,
        recover_wait: float,
        on_progress: OnProgress | None,
        queue: asyncio.Queue[BatchItem | _Stop],
    ) -> None:
        self.client = client
        self.journal = journal
        self.stage = stage
        self.resubmit_unknown = resubmit_unknown
        self.recover_wait = recover_wait
        self.on_progress = on_progress
        self.queue = queue
        # A shared journal: items other processes hold, to try again at the end.
        self.shared = journal if not isinstance(journal, Journal | None) else None
        self.held: list[_Work] = []

    def _note(self, index: int, event: str) -> None:
        if self.on_progress is not None:
            self.on_progress(index, event)

    async def _log(self, work: _Work, event: str, **fields: Any) -> None:
        if self.journal is not None:
            await self.journal.append(work.item, work.index, event, **fields)

    def _log_soon(self, work: _Work, event: str, **fields: Any) -> None:
        if self.journal is not None:
            self.journal.append_soon(work.item, work.index, event, **fields)

    async def worker(self, items: Iterator[_Work]) -> None:
        try:
            for work in items:  # next() is synchronous: workers never race on it
                await self._claimed(work)
            while self.held:  # items other processes held: theirs until their lease ends
                await self._claimed(self.held.pop(0), retry=True)
        except Exception as exc:  # a bug or a journal problem: stop the batch, loudly
            await self.queue.put(_Stop(exc))
            return
        await self.queue.put(_Stop(None))

    async def _claimed(self, work: _Work, *, retry: bool = False) -> None:
        """Run ``work`` if this process may (always, without a shared journal)."""
        shared = self.shared
        if shared is None:
            await self.queue.put(await self.run_item(work))
            return
        claim = await shared.claim(work.item)
        if claim == "held":
            if retry:
                await asyncio.sleep(HELD_RETRY)
            self.held.append(work)
            return
        if claim == "settled":
            return
        result = await self.run_item(work)
        await shared.release(work.item)
        await self.queue.put(result)

    async def run_item(self, work: _Work) -> BatchItem:
        entry = self.journal.entry(work.item) if self.journal is not None else None
        if entry is not None:
            replayed = self._replay(work, entry)
            if replayed is not None:
                return replayed
            if entry.task_id is not None:
                self._note(work.index, "submitted")
                return await self._wait(work, self.client.task(entry.task_id))
            if entry.unknown and entry.key and not self.resubmit_unknown:
                error = SubmitOutcomeUnknown(work.request, self._reason(entry), key=entry.key)
                return await self._unknown(work, error, from_journal=True)
        return await self._submit(work)

    @staticmethod
    def _reason(entry: Entry) -> str:
        return entry.reason or "a previous run stopped after sending the submit"

    async def _submit(self, work: _Work) -> BatchItem:
        key = new_submit_key()
        exchange: asyncio.Future[str] | None = None  # the last POST sent, if any
        orphan_seen = False

        async def before_send() -> None:
            await self._log(work, "intent", key=key)

        def sent(future: asyncio.Future[str]) -> None:
            nonlocal exchange
            exchange = future

        def orphaned(orphan: OrphanedSubmit) -> None:
            # The batch was cancelled after the POST left; the exchange was finished.
            nonlocal orphan_seen
            orphan_seen = True
            if orphan.task_id is not None:
                self._log_soon(work, "submitted", task=orphan.task_id, key=key)
            elif isinstance(orphan.error, SubmitOutcomeUnknown):
                self._log_soon(work, "unknown", key=key, reason=orphan.error.reason)
            elif orphan.error is not None:
                self._log_soon(work, "rejected", error=_error_record(orphan.error))

        try:
            handle = await self.client._submit_tracked(
                work.request, key=key, before_send=before_send, on_orphan=orphaned, on_sent=sent
            )
        except SubmitOutcomeUnknown as exc:
            await self._log(work, "unknown", key=key, reason=exc.reason)
            return await self._unknown(work, exc)
        except JournalError:
            raise  # the journal is unusable: the batch stops (the error names any task id)
        except KieError as exc:  # the API refused: nothing was created, a rerun may retry
            await self._log(work, "rejected", error=_error_record(exc))
            self._note(work.index, "error")
            return BatchItem(work.index, work.request, None, error=exc)
        except asyncio.CancelledError:
            # Not sent now, and any earlier attempt was refused (429/455): nothing was
            # created. A POST still in flight (a second cancellation) is left as intent.
            entry = self.journal.entry(work.item) if self.journal is not None else None
            in_flight = exchange is not None and not exchange.done()
            if not (orphan_seen or in_flight) and entry is not None and entry.event == "intent":
                self._log_soon(work, "unsent")
            raise
        await self._log(work, "submitted", task=handle.task_id, key=key)
        self._note(work.index, "submitted")
        return await self._wait(work, handle)

    async def _unknown(
        self, work: _Work, exc: SubmitOutcomeUnknown, *, from_journal: bool = False
    ) -> BatchItem:
        """Recover an unknown submit through its key, or yield it as unknown."""
        try:
            async with asyncio.timeout(self.recover_wait):
                handle = await self.client.recover(exc)
        except (TimeoutError, KieError) as why:
            error = why if isinstance(why, SubmitOutcomeUnknown) else exc
            self._note(work.index, "unknown")
            return BatchItem(work.index, work.request, None, error=error, from_journal=from_journal)
        await self._log(work, "submitted", task=handle.task_id, key=exc.key)
        self._note(work.index, "submitted")
        return await self._wait(work, handle)

    def _replay(self, work: _Work, entry: Entry) -> BatchItem | None:
        """The result a journal entry already holds, or None when there is work to do."""
        index, request = work.index, work.request
        snap = snapshot_from_record(entry.snapshot) if entry.snapshot is not None else None
        if entry.event == "failed" and snap is not None:
            self._note(index, "failed")
            return BatchItem(index, request, entry.task_id, snap, TaskFailedError(snap), True)
        if entry.event == "done" and snap is not None and reached(snap, self.stage):
            self._note(index, "done")
            return BatchItem(index, request, entry.task_id, snap, None, True)
        if entry.unknown and not self.resubmit_unknown and not entry.key:
            self._note(index, "unknown")
            error = SubmitOutcomeUnknown(request, self._reason(entry))
            return BatchItem(index, request, None, error=error, from_journal=True)
        return None

    async def _wait(self, work: _Work, handle: TaskHandle) -> BatchItem:
        index, request = work.index, work.request
        task_id = handle.task_id
        try:
            snapshot = handle.latest
            # reached(): a callback's FIRST is not a FIRST until a poll agrees (rule 6).
            if snapshot is None or not (reached(snapshot, self.stage) or snapshot.is_terminal):
                updates = handle.updates()
                try:
                    async for snapshot in updates:
                        if reached(snapshot, self.stage) or snapshot.is_terminal:
                            break
                        if snapshot.stage > Stage.PENDING:
                            stage = snapshot.stage.name
                            await self._log(work, "stage", task=task_id, stage=stage)
                            self._note(index, stage)
                finally:
                    close = getattr(updates, "aclose", None)
                    if close is not None:
                        await close()
            assert snapshot is not None
            if snapshot.failed:
                raise TaskFailedError(snapshot)
        except JournalError:
            raise
        except TaskFailedError as exc:
            await self._log(work, "failed", task=task_id, snapshot=snapshot_record(exc.snapshot))
            self._note(index, "failed")
            return BatchItem(index, request, task_id, exc.snapshot, exc)
        except KieError as exc:  # waiting broke (network, auth...): a rerun re-attaches
            await self._log(work, "error", task=task_id, error=_error_record(exc))
            self._note(index, "error")
            return BatchItem(index, request, task_id, handle.latest, exc)
        await self._log(
            work,
            "done",
            task=task_id,
            stage=trusted_stage(snapshot).name,
            snapshot=snapshot_record(snapshot),
        )
        self._note(index, "done")
        return BatchItem(index, request, task_id, snapshot)


class Batch:
    """A running batch: an async iterator of ``BatchItem`` and an async context manager.

    ``async with client.run_batch(...) as items: async for item in items: ...`` stops
    all submitting the moment the block is left (``break``, an error, a cancellation);
    submits whose POST had left are finished and journaled first. Iterated without
    ``async with``, it stops when closed (``aclose()``) or dropped.
    """

    def __init__(
        self,
        client: BatchClient,
        requests: Iterable[MashupRequest],
        *,
        journal: str | os.PathLike[str] | SharedJournal | None,
        concurrency: int,
        resubmit_unknown: bool,
        recover_wait: float,
        stage: Stage,
        on_progress: OnProgress | None,
    ) -> None:
        self._client = client
        self._requests = requests
        self._journal_path = journal
        self._limit = concurrency
        self._options = (Stage(stage), resubmit_unknown, recover_wait, on_progress)
        self._queue: asyncio.Queue[BatchItem | _Stop] = asyncio.Queue(maxsize=concurrency)
        self._journal: Journal | SharedJournal | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._running = 0
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<Batch workers={len(self._workers)} closed={self._closed}>"

    async def _start(self) -> None:
        if self._started:
            return
        self._started = True
        if isinstance(self._journal_path, str | os.PathLike):
            self._journal = await asyncio.to_thread(Journal, self._journal_path)
        elif self._journal_path is not None:
            await self._journal_path.open()
            self._journal = self._journal_path
        stage, resubmit_unknown, recover_wait, on_progress = self._options
        run = _Run(
            self._client,
            self._journal,
            stage=stage,
            resubmit_unknown=resubmit_unknown,
            recover_wait=recover_wait,
            on_progress=on_progress,
            queue=self._queue,
        )
        items = _numbered(self._requests)
        self._workers = [asyncio.create_task(run.worker(items)) for _ in range(self._limit)]
        self._running = len(self._workers)

    async def __aenter__(self) -> Batch:
        await self._start()  # an unusable journal fails here, before anything is paid for
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Batch:
        return self

    async def __anext__(self) -> BatchItem:
        if self._closed:
            raise StopAsyncIteration
        await self._start()
        try:
            while self._running:
                got = await self._queue.get()
                if isinstance(got, _Stop):
                    self._running -= 1
                    if got.error is not None:
                        raise got.error
                    continue
                return got
        except BaseException:
            await asyncio.shield(self.aclose())
            raise
        await self.aclose()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop submitting now; finish submits in flight, write their records, close."""
        if self._closed:
            return
        self._closed = True
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        await _close(self._journal)

    def __del__(self) -> None:
        # Dropped unclosed (``break`` out of a plain ``async for``): stop submitting at
        # once, and close the journal once the workers have finished.
        if self._closed or not self._workers:
            return
        self._closed = True
        for task in self._workers:
            task.cancel()
        loop = self._workers[0].get_loop()
        if loop.is_closed():  # nothing can run any more (and no coroutine is left unawaited)
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            finishing = loop.create_task(_finish(self._workers, self._journal))
            _FINISHING.add(finishing)  # the loop keeps only a weak reference to tasks
            finishing.add_done_callback(_FINISHING.discard)


#: Clean-ups of batches dropped unclosed, kept alive until they are done.
_FINISHING: set[asyncio.Task[None]] = set()


async def _finish(
    workers: list[asyncio.Task[None]], journal: Journal | SharedJournal | None
) -> None:
    await asyncio.gather(*workers, return_exceptions=True)
    await _close(journal)


async def _close(journal: Journal | SharedJournal | None) -> None:
    if isinstance(journal, Journal):
        await asyncio.to_thread(journal.close)
    elif journal is not None:
        await journal.aclose()


def run_batch(
    client: BatchClient,
    requests: Iterable[MashupRequest],
    *,
    journal: str | os.PathLike[str] | SharedJournal | None = None,
    concurrency: int | None = None,
    resubmit_unknown: bool = False,
    stage: Stage = Stage.COMPLETE,
    on_progress: OnProgress | None = None,
    recover_wait: float = RECOVER_WAIT,
) -> Batch:
    """A ``Batch`` yielding a ``BatchItem`` per request, in completion order."""
    limit = DEFAULT_CONCURRENCY if concurrency is None else concurrency
    if limit < 1:
        raise ValueError(f"concurrency must be >= 1 (got {limit})")
    return Batch(
        client,
        requests,
        journal=journal,
        concurrency=limit,
        resubmit_unknown=resubmit_unknown,
        recover_wait=recover_wait,
        stage=stage,
        on_progress=on_progress,
    )
