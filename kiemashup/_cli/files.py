"""CLI commands for files and batches: ``submit``, ``batch``, ``upload``, ``download``.

Registered by ``_cli`` (``add_file_commands``); exit codes and environment
variables as documented there and in docs/cli.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import tempfile
from typing import Any, TextIO

import attrs

from kiemashup._batch import BatchItem
from kiemashup._cli.common import (
    EXIT_API,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNKNOWN,
    EXIT_USAGE,
    exit_code_for,
    make_client,
    print_snapshot,
)
from kiemashup._client import MashupClient
from kiemashup._core.errors import (
    KieError,
    RequestValidationError,
    SubmitOutcomeUnknown,
    TaskFailedError,
)
from kiemashup._core.filenames import track_file_name
from kiemashup._core.models import Stage, TaskSnapshot
from kiemashup._core.request import MashupRequest, is_http_url
from kiemashup._core.wire import snapshot_json

_PLACEHOLDER = "https://upload.invalid/{}.mp3"  # validates a request before any upload
_STAGES = ["text", "first", "complete"]


def add_file_commands(sub: Any) -> None:
    """Add the file and batch commands to the ``kiemashup`` sub-parsers."""
    submit = sub.add_parser("submit", help="submit one mashup of two files or URLs")
    submit.add_argument("sources", nargs=2, metavar="A_OR_URL", help="local audio file or URL")
    submit.add_argument("--prompt")
    submit.add_argument("--custom", action="store_true", help="custom mode (style, title...)")
    submit.add_argument("--model", default="V5")
    submit.add_argument("--style")
    submit.add_argument("--title")
    submit.add_argument("--instrumental", action="store_true")
    submit.add_argument("--vocal-gender", choices=["m", "f"])
    submit.add_argument("--style-weight", type=float)
    submit.add_argument("--weirdness", type=float, help="weirdness constraint, 0..1")
    submit.add_argument("--audio-weight", type=float)
    submit.add_argument("--callback-url")
    submit.add_argument("--wait", action="store_true", help="wait until complete")
    submit.add_argument("--download", metavar="DIR", help="wait, then save the tracks in DIR")
    submit.add_argument("--json", action="store_true", help="machine-readable output")

    batch = sub.add_parser("batch", help="run a JSON-lines file of mashup requests")
    batch.add_argument("file", help="one request per line (docs/batch.md)")
    batch.add_argument("--out", metavar="DIR", help="save every finished track in DIR")
    batch.add_argument("--journal", metavar="FILE", help="resumable journal (rerun to resume)")
    batch.add_argument("--concurrency", type=int, default=None, help="items in flight")
    batch.add_argument("--stage", choices=_STAGES, default="complete")
    batch.add_argument("--resubmit-unknown", action="store_true")
    batch.add_argument("--json", action="store_true", help="machine-readable output")

    upload = sub.add_parser("upload", help="upload a local audio file (or copy a URL)")
    upload.add_argument("source", help="local audio file, or an http(s) URL to copy")
    upload.add_argument("--file-name")
    upload.add_argument("--upload-path", default="kiemashup/uploads")
    upload.add_argument("--json", action="store_true", help="machine-readable output")

    download = sub.add_parser("download", help="save a task's playable tracks in a folder")
    download.add_argument("task_id")
    download.add_argument("dir")
    download.add_argument("--wait", action="store_true", help="wait until complete first")
    download.add_argument("--json", action="store_true", help="machine-readable output")


# --- submit ---------------------------------------------------------------------------------


def _request(args: argparse.Namespace, urls: tuple[str, str]) -> MashupRequest:
    return MashupRequest(
        urls,
        prompt=args.prompt,
        custom_mode=args.custom,
        model=args.model,
        style=args.style,
        title=args.title,
        instrumental=args.instrumental,
        vocal_gender=args.vocal_gender,
        style_weight=args.style_weight,
        weirdness_constraint=args.weirdness,
        audio_weight=args.audio_weight,
        callback_url=args.callback_url,
    )


async def _save_tracks(client: MashupClient, snapshot: TaskSnapshot, folder: str) -> list[str]:
    """Save the playable tracks in ``folder``; a track saved before (a rerun) is not fetched."""
    folder = os.path.join(folder, "")  # a trailing separator: always a folder, created if missing
    files = []
    for track in snapshot.playable_tracks:
        assert track.audio_url is not None
        saved = os.path.join(folder, track_file_name(track.title, track.id, track.audio_url))
        # Downloads never leave partial files under the final name: one there is complete.
        if not await asyncio.to_thread(os.path.isfile, saved):
            saved = str(await client.download(track, folder))
        files.append(saved)
    return files


def _usable_folder(folder: str) -> str | None:
    """Why ``folder`` cannot take downloads (checked before anything is paid for), or None."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return f"--out {folder}: {exc.strerror or exc}"
    return None


async def submit_cmd(args: argparse.Namespace) -> int:
    sources: list[str] = list(args.sources)
    # Validate first, so a bad option costs no upload.
    checked = [s if is_http_url(s) else _PLACEHOLDER.format(i) for i, s in enumerate(sources)]
    _request(args, (checked[0], checked[1]))
    async with make_client() as client:
        urls = [s if is_http_url(s) else await client.upload(s) for s in sources]
        handle = await client.submit(_request(args, (urls[0], urls[1])))
        if not (args.wait or args.download):
            out = {"task_id": handle.task_id, "upload_urls": urls}
            print(json.dumps(out) if args.json else handle.task_id)
            return EXIT_OK
        print(f"submitted task {handle.task_id}", file=sys.stderr)
        snapshot = await handle.wait()
        files = await _save_tracks(client, snapshot, args.download) if args.download else []
    if args.json:
        print(json.dumps({**snapshot_json(snapshot), "files": files}))
    else:
        print_snapshot(snapshot)
        for path in files:
            print(f"  saved {path}")
    return EXIT_OK


# --- upload / download ----------------------------------------------------------------------


async def upload_cmd(args: argparse.Namespace) -> int:
    async with make_client() as client:
        if is_http_url(args.source):
            url = await client.upload_url(
                args.source, file_name=args.file_name, upload_path=args.upload_path
            )
        else:
            url = await client.upload(
                args.source, file_name=args.file_name, upload_path=args.upload_path
            )
    print(json.dumps({"url": url}) if args.json else url)
    return EXIT_OK


async def download_cmd(args: argparse.Namespace) -> int:
    async with make_client() as client:
        if args.wait:
            snapshot = await client.task(args.task_id).wait()
        else:
            snapshot = await client.get_task(args.task_id)
        if snapshot.failed:
            raise TaskFailedError(snapshot)
        files = await _save_tracks(client, snapshot, args.dir)
    if args.json:
        print(json.dumps({"task_id": snapshot.task_id, "files": files}))
    else:
        for path in files:
            print(path)
    if not files:
        print(f"kiemashup: task {snapshot.task_id} has no playable track yet", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


# --- batch ----------------------------------------------------------------------------------


class BatchFileError(ValueError):
    """A line of the batch file is not a valid request."""


def read_batch_file(path: str) -> list[MashupRequest]:
    """Requests from a JSON-lines file; blank lines and ``#`` comments are skipped."""
    requests = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                fields = json.loads(line)
                if not isinstance(fields, dict):
                    raise TypeError("not a JSON object")
                urls = fields.pop("upload_urls")
                requests.append(MashupRequest(urls, **fields))
            except RequestValidationError as exc:
                raise BatchFileError(f"{path}:{number}: {exc}") from None
            except (ValueError, TypeError, KeyError) as exc:
                raise BatchFileError(f"{path}:{number}: {type(exc).__name__}: {exc}") from None
    return requests


class BatchDisplay:
    """Live progress: a bar plus counts per stage (TTY), or one plain line per item."""

    COLUMNS = ("queued", "PENDING", "TEXT", "FIRST", "done", "failed", "error", "unknown")

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.tty = stream.isatty()
        self.state: dict[int, str] = {}

    def event(self, index: int, event: str) -> None:
        self.state[index] = "PENDING" if event == "submitted" else event
        if self.tty:
            self._render()

    def finished(self, item: BatchItem, files: list[str]) -> None:
        if self.tty:
            self._render()
            return
        done = sum(1 for s in self.state.values() if s in ("done", "failed", "error", "unknown"))
        print(f"[{done}/{self.total}] item {item.index}: {_outcome(item)}", file=self.stream)

    def counts(self) -> dict[str, int]:
        counted = collections.Counter(self.state.values())
        counted["queued"] = self.total - len(self.state)
        return {name: counted[name] for name in self.COLUMNS}

    def _render(self) -> None:
        counts = self.counts()
        finished = sum(counts[k] for k in ("done", "failed", "error", "unknown"))
        width = 24
        filled = width * finished // max(self.total, 1)
        parts = " ".join(f"{k.lower()} {v}" for k, v in counts.items())
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r[{bar}] {finished}/{self.total}  {parts} ")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def _outcome(item: BatchItem) -> str:
    if item.error is None:
        assert item.snapshot is not None
        return f"{item.snapshot.stage.name.lower()} (task {item.task_id})"
    return f"{type(item.error).__name__}: {str(item.error).splitlines()[0]}"


def _item_code(item: BatchItem) -> int:
    return EXIT_OK if item.error is None else exit_code_for(item.error)


async def batch_cmd(args: argparse.Namespace) -> int:
    try:
        requests = read_batch_file(args.file)
    except (BatchFileError, OSError) as exc:
        print(f"kiemashup: {exc}".splitlines()[0], file=sys.stderr)
        return EXIT_USAGE
    unusable = _usable_folder(args.out) if args.out else None
    if unusable is not None:
        print(f"kiemashup: {unusable}", file=sys.stderr)
        return EXIT_USAGE
    display = BatchDisplay(len(requests), sys.stderr)
    rows: list[dict[str, Any]] = []
    async with make_client() as client:
        batch = client.run_batch(
            requests,
            journal=args.journal,
            concurrency=args.concurrency,
            resubmit_unknown=args.resubmit_unknown,
            stage=Stage[args.stage.upper()],
            on_progress=display.event,
        )
        try:
            async for item in batch:
                files = []
                if args.out and item.ok and item.snapshot is not None:
                    try:
                        files = await _save_tracks(client, item.snapshot, args.out)
                    except KieError as exc:  # a failed download is this item's result
                        item = attrs.evolve(item, error=exc)
                display.finished(item, files)
                rows.append(_row(item, files))
        finally:
            display.close()
    rows.sort(key=lambda row: row["index"])
    codes = {row["exit"] for row in rows}
    code = next((c for c in (EXIT_UNKNOWN, EXIT_API, EXIT_USAGE, EXIT_FAILED) if c in codes), 0)
    if args.json:
        print(json.dumps({"items": rows, "counts": display.counts(), "exit": code}))
    else:
        _print_table(rows)
    return code


def _row(item: BatchItem, files: list[str]) -> dict[str, Any]:
    return {
        "index": item.index,
        "task_id": item.task_id,
        "ok": item.ok,
        "stage": item.snapshot.stage.name if item.snapshot is not None else None,
        "status": str(item.snapshot.status) if item.snapshot is not None else None,
        "error": type(item.error).__name__ if item.error is not None else None,
        "message": str(item.error).splitlines()[0] if item.error is not None else None,
        "unknown": isinstance(item.error, SubmitOutcomeUnknown),
        "from_journal": item.from_journal,
        "files": files,
        "exit": _item_code(item),
    }


def _print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'#':>5}  {'result':<22}  {'task':<34}  files")
    for row in rows:
        result = row["stage"].lower() if row["ok"] else row["error"]
        print(f"{row['index']:>5}  {result:<22}  {row['task_id'] or '-':<34}  {len(row['files'])}")
    ok = sum(row["ok"] for row in rows)
    print(f"{ok}/{len(rows)} succeeded, {len(rows) - ok} did not")


FILE_COMMANDS = {
    "submit": submit_cmd,
    "batch": batch_cmd,
    "upload": upload_cmd,
    "download": download_cmd,
}
