"""The batch journal: an append-only JSON-lines file that lets a crashed batch resume.

One record per line, each written and fsync'ed before the call returns, in order:

```
{"journal": "kiemashup-batch", "v": 1}                        header (first line)
{"i": 7, "fp": "<sha256>", "ev": "intent"}                    about to POST item 7
{"i": 7, "fp": "...", "ev": "submitted", "task": "5c79..."}   the POST returned a task id
{"i": 7, "fp": "...", "ev": "stage", "task": "...", "stage": "FIRST"}
{"i": 7, "fp": "...", "ev": "done", "task": "...", "stage": "COMPLETE", "snapshot": {...}}
{"i": 7, "fp": "...", "ev": "failed", "task": "...", "snapshot": {...}}   TaskFailedError
{"i": 7, "fp": "...", "ev": "unknown", "reason": "..."}      SubmitOutcomeUnknown
{"i": 7, "fp": "...", "ev": "rejected", "error": {...}}       the API refused the submit
{"i": 7, "fp": "...", "ev": "error", "task": "...", "error": {...}}   waiting failed
```

``fp`` is the sha256 of the item index and its canonical request payload without
``callBackUrl``; a rerun whose item differs fails with ``JournalMismatchError``.
A torn last line (the process was killed mid-write) is ignored and cut off; any
other unreadable line is an error. An exclusive ``flock`` keeps two runs apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs

from kiemashup._core.errors import JournalError, JournalMismatchError
from kiemashup._core.models import Stage, TaskSnapshot, Track
from kiemashup._core.state import make_snapshot
from kiemashup._core.wire import snapshot_json

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory lock
    fcntl = None  # type: ignore[assignment]

HEADER = {"journal": "kiemashup-batch", "v": 1}
FINAL_EVENTS = frozenset({"done", "failed"})
_HEADER_LINE = json.dumps(HEADER, separators=(",", ":")).encode()


def fingerprint(index: int, payload: dict[str, Any]) -> str:
    """sha256 of the item index and its canonical payload, ``callBackUrl`` left out."""
    body = {k: v for k, v in payload.items() if k != "callBackUrl"}
    canonical = json.dumps({"i": index, "payload": body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def snapshot_record(snapshot: TaskSnapshot) -> dict[str, Any]:
    """A JSON-ready summary of a snapshot that ``snapshot_from_record`` turns back."""
    data = snapshot_json(snapshot)
    data["tracks"] = [{k: v for k, v in track.items() if v is not None} for track in data["tracks"]]
    return data


def snapshot_from_record(data: dict[str, Any]) -> TaskSnapshot:
    """The snapshot a ``snapshot_record`` dict describes."""
    return make_snapshot(
        data["task_id"],
        data["status"],
        tuple(Track(**track) for track in data.get("tracks", ())),
        error_code=data.get("error_code"),
        error_message=data.get("error_message"),
        source="journal",
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

    def apply(self, record: dict[str, Any]) -> None:
        event = record["ev"]
        if isinstance(record.get("task"), str):
            self.task_id = record["task"]
        if isinstance(record.get("stage"), str) and record["stage"] in Stage.__members__:
            self.stage = max(self.stage, Stage[record["stage"]])
        if isinstance(record.get("snapshot"), dict):
            self.snapshot = record["snapshot"]
        if isinstance(record.get("reason"), str):
            self.reason = record["reason"]
        if event == "intent" and self.event in ("rejected", "unknown", ""):
            self.task_id = None
        self.event = event

    @property
    def unknown(self) -> bool:
        """The submit was (maybe) sent and its outcome never recorded."""
        return self.task_id is None and self.event in ("intent", "unknown")


class Journal:
    """An open journal: ``entries`` as loaded, ``append`` writes one durable record."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.entries: dict[int, Entry] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kiemashup-journal")
        self._fd = self._open()

    def _open(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise JournalError(self.path, "in use by another batch run") from None
            with open(fd, "rb", closefd=False) as fh:
                raw = fh.read()
            good = self._load(raw)
            if good < len(raw):
                os.ftruncate(fd, good)  # cut the torn tail so the next record starts clean
            os.lseek(fd, 0, os.SEEK_END)
            if not self.entries and good == 0:
                self._write(fd, HEADER)
        except BaseException:
            os.close(fd)
            self._executor.shutdown(wait=False)
            raise
        return fd

    def _load(self, raw: bytes) -> int:
        """Fold the records in ``raw``; return the length of the usable prefix.

        A last line without its newline is a torn write: dropped (nothing acted on a
        record before its write returned, so nothing is lost).
        """
        lines = raw.split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        offset = 0
        header = False
        for number, line in enumerate(complete, 1):
            offset += len(line) + 1
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                if number == len(complete) and not tail:
                    return offset - len(line) - 1  # torn, then a stray newline
                raise JournalError(self.path, f"line {number} is not valid JSON") from None
            if not header:
                if record != HEADER:
                    raise JournalError(self.path, "not a kiemashup batch journal")
                header = True
            else:
                self._fold(record, number)
        if not header and tail and not _HEADER_LINE.startswith(tail):
            raise JournalError(self.path, "not a kiemashup batch journal")
        return offset

    def _fold(self, record: Any, number: int) -> None:
        if not (
            isinstance(record, dict)
            and isinstance(record.get("i"), int)
            and isinstance(record.get("fp"), str)
            and isinstance(record.get("ev"), str)
        ):
            raise JournalError(self.path, f"line {number} is not a journal record")
        entry = self.entries.get(record["i"])
        if entry is None:
            entry = self.entries[record["i"]] = Entry(record["fp"])
        elif entry.fingerprint != record["fp"]:
            raise JournalError(self.path, f"line {number}: item {record['i']} changed fingerprint")
        entry.apply(record)

    @staticmethod
    def _write(fd: int, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"
        data = line.encode()
        while data:
            written = os.write(fd, data)
            data = data[written:]
        os.fsync(fd)

    def check(self, index: int, fp: str) -> Entry | None:
        """The entry for ``index``; ``JournalMismatchError`` if it was another request."""
        entry = self.entries.get(index)
        if entry is not None and entry.fingerprint != fp:
            raise JournalMismatchError(
                self.path,
                index,
                f"item {index} is not the request this journal recorded "
                "(the input changed since the journal was written; use a new journal)",
            )
        return entry

    async def append(self, index: int, fp: str, event: str, **fields: Any) -> None:
        """Write one record and fsync it; returns once it is on disk."""
        if self._fd < 0:
            raise JournalError(self.path, "closed")
        record: dict[str, Any] = {"i": index, "fp": fp, "ev": event}
        record.update({k: v for k, v in fields.items() if v is not None})
        entry = self.entries.get(index)
        if entry is None:
            entry = self.entries[index] = Entry(fp)
        entry.apply(record)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._write, self._fd, record)

    def close(self) -> None:
        """Release the lock and the file (pending appends finish first)."""
        if self._fd >= 0:
            self._executor.shutdown(wait=True)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
