"""``run_batch``: many mashups through one client, results as they finish, resumable.

A fixed pool of ``concurrency`` workers pulls items from the (possibly lazy)
iterable, so 10 000 requests never become 10 000 coroutines; the client's own
caps (creation pacing, poll scheduler, requests in flight) bound the I/O below
that. One item's failure is that item's result, never the batch's end. With a
journal (``_journal``), a rerun after a crash re-attaches to tasks it knows,
yields finished items without I/O, and never resubmits an item whose submit
outcome is unknown unless ``resubmit_unknown=True``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Protocol

import attrs

from kiemashup._core.errors import KieError, SubmitOutcomeUnknown, TaskFailedError
from kiemashup._core.models import Stage, TaskSnapshot
from kiemashup._core.request import MashupRequest
from kiemashup._handle import TaskHandle
from kiemashup._journal import Entry, Journal, fingerprint, snapshot_from_record, snapshot_record

DEFAULT_CONCURRENCY = 100

#: ``on_progress(index, event)``: "submitted", a stage name ("TEXT", "FIRST", ...), or
#: the item's outcome ("done", "failed", "unknown", "error").
OnProgress = Callable[[int, str], None]


class BatchClient(Protocol):
    """What a batch needs from a client (``MashupClient`` has it)."""

    async def submit(self, request: MashupRequest) -> TaskHandle: ...

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


class _Run:
    """One call of ``run_batch``: the shared iterator, the journal and the results queue."""

    def __init__(
        self,
        client: BatchClient,
        journal: Journal | None,
        *,
        stage: Stage,
        resubmit_unknown: bool,
        on_progress: OnProgress | None,
        queue: asyncio.Queue[BatchItem | _Stop],
    ) -> None:
        self.client = client
        self.journal = journal
        self.stage = stage
        self.resubmit_unknown = resubmit_unknown
        self.on_progress = on_progress
        self.queue = queue

    def _note(self, index: int, event: str) -> None:
        if self.on_progress is not None:
            self.on_progress(index, event)

    async def _log(self, index: int, fp: str, event: str, **fields: Any) -> None:
        if self.journal is not None:
            await self.journal.append(index, fp, event, **fields)

    async def worker(self, items: Iterator[tuple[int, MashupRequest]]) -> None:
        try:
            for index, request in items:  # next() is synchronous: workers never race on it
                await self.queue.put(await self.run_item(index, request))
        except Exception as exc:  # a bug or a journal problem: stop the batch, loudly
            await self.queue.put(_Stop(exc))
            return
        await self.queue.put(_Stop(None))

    async def run_item(self, index: int, request: MashupRequest) -> BatchItem:
        if not isinstance(request, MashupRequest):
            raise TypeError(f"item {index} is a {type(request).__name__}, not a MashupRequest")
        fp = fingerprint(index, request.to_payload())
        entry = self.journal.check(index, fp) if self.journal is not None else None
        if entry is not None:
            replayed = self._replay(index, request, entry)
            if replayed is not None:
                return replayed
            if entry.task_id is not None:
                self._note(index, "submitted")
                return await self._wait(index, request, fp, self.client.task(entry.task_id))
        await self._log(index, fp, "intent")
        try:
            handle = await self.client.submit(request)
        except SubmitOutcomeUnknown as exc:
            await self._log(index, fp, "unknown", reason=exc.reason)
            self._note(index, "unknown")
            return BatchItem(index, request, None, error=exc)
        except KieError as exc:  # the API refused: nothing was created, a rerun may retry
            await self._log(index, fp, "rejected", error=_error_record(exc))
            self._note(index, "error")
            return BatchItem(index, request, None, error=exc)
        await self._log(index, fp, "submitted", task=handle.task_id)
        self._note(index, "submitted")
        return await self._wait(index, request, fp, handle)

    def _replay(self, index: int, request: MashupRequest, entry: Entry) -> BatchItem | None:
        """The result a journal entry already holds, or None when there is work to do."""
        snap = snapshot_from_record(entry.snapshot) if entry.snapshot is not None else None
        if entry.event == "failed" and snap is not None:
            self._note(index, "failed")
            return BatchItem(index, request, entry.task_id, snap, TaskFailedError(snap), True)
        if entry.event == "done" and snap is not None and snap.stage >= self.stage:
            self._note(index, "done")
            return BatchItem(index, request, entry.task_id, snap, None, True)
        if entry.unknown and not self.resubmit_unknown:
            reason = entry.reason or "a previous run stopped after sending the submit"
            self._note(index, "unknown")
            return BatchItem(
                index, request, None, error=SubmitOutcomeUnknown(request, reason), from_journal=True
            )
        return None

    async def _wait(
        self, index: int, request: MashupRequest, fp: str, handle: TaskHandle
    ) -> BatchItem:
        task_id = handle.task_id
        try:
            snapshot = handle.latest
            if snapshot is None or not (snapshot.stage >= self.stage or snapshot.is_terminal):
                updates = handle.updates()
                try:
                    async for snapshot in updates:
                        if snapshot.stage >= self.stage or snapshot.is_terminal:
                            break
                        if snapshot.stage > Stage.PENDING:
                            stage = snapshot.stage.name
                            await self._log(index, fp, "stage", task=task_id, stage=stage)
                            self._note(index, stage)
                finally:
                    close = getattr(updates, "aclose", None)
                    if close is not None:
                        await close()
            assert snapshot is not None
            if snapshot.failed:
                raise TaskFailedError(snapshot)
        except TaskFailedError as exc:
            await self._log(
                index, fp, "failed", task=task_id, snapshot=snapshot_record(exc.snapshot)
            )
            self._note(index, "failed")
            return BatchItem(index, request, task_id, exc.snapshot, exc)
        except KieError as exc:  # waiting broke (network, auth...): a rerun re-attaches
            await self._log(index, fp, "error", task=task_id, error=_error_record(exc))
            self._note(index, "error")
            return BatchItem(index, request, task_id, handle.latest, exc)
        await self._log(
            index,
            fp,
            "done",
            task=task_id,
            stage=snapshot.stage.name,
            snapshot=snapshot_record(snapshot),
        )
        self._note(index, "done")
        return BatchItem(index, request, task_id, snapshot)


async def run_batch(
    client: BatchClient,
    requests: Iterable[MashupRequest],
    *,
    journal: str | os.PathLike[str] | None = None,
    concurrency: int | None = None,
    resubmit_unknown: bool = False,
    stage: Stage = Stage.COMPLETE,
    on_progress: OnProgress | None = None,
) -> AsyncIterator[BatchItem]:
    """Yield a ``BatchItem`` per request, in completion order (see the module docstring)."""
    limit = DEFAULT_CONCURRENCY if concurrency is None else concurrency
    if limit < 1:
        raise ValueError(f"concurrency must be >= 1 (got {limit})")
    opened = await asyncio.to_thread(Journal, journal) if journal is not None else None
    queue: asyncio.Queue[BatchItem | _Stop] = asyncio.Queue(maxsize=limit)
    run = _Run(
        client,
        opened,
        stage=Stage(stage),
        resubmit_unknown=resubmit_unknown,
        on_progress=on_progress,
        queue=queue,
    )
    items = iter(enumerate(requests))
    workers = [asyncio.create_task(run.worker(items)) for _ in range(limit)]
    try:
        running = len(workers)
        while running:
            got = await queue.get()
            if isinstance(got, _Stop):
                running -= 1
                if got.error is not None:
                    raise got.error
                continue
            yield got
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        if opened is not None:
            await asyncio.to_thread(opened.close)
