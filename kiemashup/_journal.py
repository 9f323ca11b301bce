"""The batch journal: an append-only JSON-lines file that lets a stopped batch resume.

One record per line, each written and fsync'ed in order by one writer thread:

```
{"journal": "kiemashup-batch", "v": 2}                               header (first line)
{"fp": "<sha256>", "n": 0, "i": 7, "ev": "intent", "key": "..."}     the POST is about to leave
{"fp": ..., "n": 0, "i": 7, "ev": "unsent"}                           cancelled before it left
{"fp": ..., "n": 0, "i": 7, "ev": "submitted", "task": "5c79...", "key": "..."}
{"fp": ..., "n": 0, "i": 7, "ev": "stage", "task": "...", "stage": "FIRST"}
{"fp": ..., "n": 0, "i": 7, "ev": "done", "task": "...", "stage": "COMPLETE", "snapshot": {...}}
{"fp": ..., "n": 0, "i": 7, "ev": "failed", "task": "...", "snapshot": {...}}   TaskFailedError
{"fp": ..., "n": 0, "i": 7, "ev": "unknown", "key": "...", "reason": "..."}    SubmitOutcomeUnknown
{"fp": ..., "n": 0, "i": 7, "ev": "rejected", "error": {...}}         the API refused the submit
{"fp": ..., "n": 0, "i": 7, "ev": "error", "task": "...", "error": {...}}   waiting failed
```

An item is identified by its content and occurrence: ``fp`` is the sha256 of its
canonical request payload without ``callBackUrl``, ``n`` counts earlier items of the
input with the same ``fp`` (so a reordered input resumes; ``i`` is informational).

Guarantees: a record whose write began reaches the disk before the batch ends, even
if the caller is cancelled (writes are never un-queued; ``close`` waits for them).
Records are ASCII JSON (``\\ud800`` escapes), so no string can make a write fail. A
torn last line (the process was killed mid-write) is cut off; anything else that is
not a journal -- another file, a blank file, a tampered record -- is a
``JournalError`` naming the path, and the file is never overwritten. Any failure to
read or write (a folder, a missing folder, read-only, disk full) is a ``JournalError``
too, naming the task id when one had been created. An exclusive ``flock`` keeps two
runs apart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import attrs

from kiemashup._core.errors import JournalError, KieError
from kiemashup._core.models import Stage, TaskSnapshot, Track
from kiemashup._core.state import make_snapshot
from kiemashup._core.wire import snapshot_json

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory lock
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("kiemashup.journal")

HEADER = {"journal": "kiemashup-batch", "v": 2}
EVENTS = frozenset(
    {"intent", "unsent", "submitted", "stage", "done", "failed", "unknown", "rejected", "error"}
)
_HEADER_LINE = json.dumps(HEADER, separators=(",", ":")).encode()
# The two system calls a record needs; module-level so tests can slow them or make them fail.
_os_write = os.write
_fsync = os.fsync
ItemKey = tuple[str, int]  # (fingerprint, occurrence)


def fingerprint(payload: dict[str, Any]) -> str:
    """sha256 of a request's canonical payload, ``callBackUrl`` left out."""
    body = {k: v for k, v in payload.items() if k != "callBackUrl"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def snapshot_record(snapshot: TaskSnapshot) -> dict[str, Any]:
    """A JSON-ready summary of a snapshot that ``snapshot_from_record`` turns back."""
    data = snapshot_json(snapshot)
    data["tracks"] = [{k: v for k, v in track.items() if v is not None} for track in data["tracks"]]
    return data


def snapshot_from_record(data: dict[str, Any], *, source: str = "journal") -> TaskSnapshot:
    """The snapshot a ``snapshot_record`` dict describes, rebuilt by ``make_snapshot``.

    A callback's claim stays a claim (``source="callback"``): the journal never turns
    Kie's unconfirmed word into a confirmed snapshot. Raises ``ValueError`` (or
    ``TypeError``/``KeyError``) when the record is not one.
    """
    task_id, status = data["task_id"], data["status"]
    if not isinstance(task_id, str) or not isinstance(status, str):
        raise TypeError("task_id and status must be strings")
    tracks = data.get("tracks", ())
    if not isinstance(tracks, list | tuple) or not all(isinstance(t, dict) for t in tracks):
        raise TypeError("tracks must be a list of objects")
    code = data.get("error_code")
    message = data.get("error_message")
    if not (code is None or (isinstance(code, int) and not isinstance(code, bool))):
        raise TypeError("error_code must be an int")
    if not (message is None or isinstance(message, str)):
        raise TypeError("error_message must be a string")
    return make_snapshot(
        task_id,
        status,
        tuple(Track(**track) for track in tracks),
        error_code=code,
        error_message=message,
        source="callback" if data.get("source") == "callback" else source,
    )


@attrs.define
class Entry:
    """What the journal knows about one item: the fold of its records."""

    fingerprint: str
    task_id: str | None = None
    event: str = ""  # the last event recorded
    stage: Stage = Stage.PENDING
    snapshot: dict[str, Any] | None = None
    reason: str | None = None
    key: str | None = None  # the per-submit key of the last submit sent

    def apply(self, record: dict[str, Any]) -> None:
        event = record["ev"]
        if event == "intent" and self.event in ("rejected", "unknown", "unsent", ""):
            self.task_id = None  # a new submit of an item that has no task
        if isinstance(record.get("task"), str):
            self.task_id = record["task"]
        if isinstance(record.get("key"), str):
            self.key = record["key"]
        if isinstance(record.get("stage"), str) and record["stage"] in Stage.__members__:
            self.stage = max(self.stage, Stage[record["stage"]])
        if isinstance(record.get("snapshot"), dict):
            self.snapshot = record["snapshot"]
        if isinstance(record.get("reason"), str):
            self.reason = record["reason"]
        self.event = event

    @property
    def unknown(self) -> bool:
        """The submit was (maybe) sent and its outcome never recorded."""
        return self.task_id is None and self.event in ("intent", "unknown")


async def finish_first(write: asyncio.Future[Any]) -> None:
    """Await a journal ``write``; a cancelled caller waits for it first, then is cancelled.

    A record is never left half-decided by a cancellation (both journals use this).
    """
    try:
        await asyncio.shield(write)
    except asyncio.CancelledError:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.shield(write)
        raise


def read_record(raw: bytes | str) -> dict[str, Any]:
    """One journal record from its JSON text; ``ValueError`` saying what it is not.

    The one reading of a record, for the file journal and the shared (Redis) one.
    """
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValueError("not valid JSON") from None
    problem = _check_record(record)
    if problem is not None:
        raise ValueError(f"not a journal record ({problem})")
    return cast(dict[str, Any], record)


def _check_record(record: Any) -> str | None:
    """Why ``record`` is not a valid journal record, or None."""
    if not isinstance(record, dict):
        return "not an object"
    fp, n, ev = record.get("fp"), record.get("n"), record.get("ev")
    if not (isinstance(fp, str) and len(fp) == 64):
        return "no valid fp"
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
        return "no valid n"
    if ev not in EVENTS:
        return "unknown event"
    for name in ("task", "key", "reason", "stage"):
        if name in record and not isinstance(record[name], str):
            return f"{name} is not a string"
    if "stage" in record and record["stage"] not in Stage.__members__:
        return "unknown stage"
    if ev in ("submitted", "stage", "done", "failed") and "task" not in record:
        return "no task"
    if "snapshot" in record:
        try:
            snapshot_from_record(record["snapshot"])
        except (KieError, ValueError, TypeError, KeyError, AttributeError):
            return "bad snapshot"
    elif ev in ("done", "failed"):
        return "no snapshot"
    return None


class Journal:
    """An open journal: ``entries`` as loaded; ``append`` writes one durable record."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.entries: dict[ItemKey, Entry] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kiemashup-journal")
        self._size = 0
        self._closed = False
        try:
            self._fd = self._open()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    def _fail(self, exc: OSError, doing: str, task_id: str | None = None) -> JournalError:
        return JournalError(self.path, f"cannot {doing}: {exc.strerror or exc}", task_id=task_id)

    def _open(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except IsADirectoryError:
            raise JournalError(self.path, "is a folder, not a journal file") from None
        except FileNotFoundError:
            raise JournalError(self.path, "its folder does not exist") from None
        except OSError as exc:
            raise self._fail(exc, "open it for writing") from None
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise JournalError(self.path, "in use by another batch run") from None
            try:
                with open(fd, "rb", closefd=False) as fh:
                    raw = fh.read()
                good = self._load(raw)
                if good < len(raw):
                    os.ftruncate(fd, good)  # cut the torn tail so the next record starts clean
                os.lseek(fd, good, os.SEEK_SET)
                self._size = good
                if good == 0:
                    self._write_line(fd, _HEADER_LINE + b"\n")
            except OSError as exc:
                raise self._fail(exc, "read or start it") from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _load(self, raw: bytes) -> int:
        """Fold the records in ``raw``; return the length of the usable prefix.

        A last line without its newline is a torn write: dropped (no record is acted
        on before its write returned, so nothing is lost).
        """
        lines = raw.split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        if not complete:
            if _HEADER_LINE.startswith(tail):
                return 0  # empty, or a torn header: start afresh
            raise JournalError(self.path, "not a kiemashup batch journal (will not overwrite it)")
        first = complete[0]
        if first != _HEADER_LINE:
            raise JournalError(self.path, self._not_a_journal(raw, first))
        offset = len(first) + 1
        for number, line in enumerate(complete[1:], 2):
            try:
                record = read_record(line)
            except ValueError as exc:
                raise JournalError(self.path, f"line {number} is {exc}") from None
            item = (record["fp"], record["n"])
            entry = self.entries.get(item)
            if entry is None:
                entry = self.entries[item] = Entry(record["fp"])
            entry.apply(record)
            offset += len(line) + 1
        return offset

    @staticmethod
    def _not_a_journal(raw: bytes, first: bytes) -> str:
        if not raw.strip():
            return "is blank, not a journal (delete it or choose another path)"
        try:
            header = json.loads(first)
        except (ValueError, RecursionError):
            header = None
        if isinstance(header, dict) and header.get("journal") == HEADER["journal"]:
            return (
                f"journal format {header.get('v')!r} is not {HEADER['v']} "
                "(finish it with the kiemashup that wrote it, or use a new journal)"
            )
        return "not a kiemashup batch journal (will not overwrite it)"

    def _write_line(self, fd: int, data: bytes) -> None:
        """Append ``data`` and fsync; on failure, cut the partial line back off."""
        start = self._size
        try:
            view = memoryview(data)
            while view:
                view = view[_os_write(fd, view) :]
            _fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
                os.lseek(fd, start, os.SEEK_SET)
            raise
        self._size = start + len(data)

    def _write(self, record: dict[str, Any]) -> None:
        """Runs in the writer thread: one record, durable, or ``JournalError``."""
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=True) + "\n"
        try:
            self._write_line(self._fd, line.encode("ascii"))
        except OSError as exc:
            raise self._fail(
                exc, f"write its {record['ev']!r} record", record.get("task")
            ) from None

    def entry(self, item: ItemKey) -> Entry | None:
        """What the journal knows about the item (fingerprint, occurrence), if anything."""
        return self.entries.get(item)

    def _queue(self, item: ItemKey, index: int, event: str, fields: dict[str, Any]) -> Any:
        if self._closed:
            raise JournalError(self.path, "closed", task_id=fields.get("task"))
        record: dict[str, Any] = {"fp": item[0], "n": item[1], "i": index, "ev": event}
        record.update({k: v for k, v in fields.items() if v is not None})
        entry = self.entries.get(item)
        if entry is None:
            entry = self.entries[item] = Entry(item[0])
        entry.apply(record)
        return self._executor.submit(self._write, record)

    async def append(self, item: ItemKey, index: int, event: str, **fields: Any) -> None:
        """Write one record and fsync it; returns once it is on disk.

        Cancelling the caller never cancels the write: it is waited for, then the
        cancellation goes on.
        """
        await finish_first(asyncio.wrap_future(self._queue(item, index, event, fields)))

    def append_soon(self, item: ItemKey, index: int, event: str, **fields: Any) -> None:
        """Queue one record without waiting (for code that cannot await: cancellation paths).

        It is on disk once ``close()`` returns; a failure is logged with the task id.
        """
        try:
            future = self._queue(item, index, event, fields)
        except JournalError as exc:
            log.error("%s", exc)
            return

        def logged(done: concurrent.futures.Future[None]) -> None:
            error = done.exception()
            if error is not None:
                log.error("%s", error)

        future.add_done_callback(logged)

    def close(self) -> None:
        """Release the lock and the file; every queued record is written first."""
        if not self._closed:
            self._closed = True
            self._executor.shutdown(wait=True)
            with contextlib.suppress(OSError):
                os.close(self._fd)
