"""CLI command ``batch``: run a JSON-lines file of mashup requests, resumably."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from typing import Any

import attrs

from kiemashup._batch import BatchItem
from kiemashup._cli.common import (
    EXIT_API,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNKNOWN,
    EXIT_USAGE,
    UsageError,
    exit_code_for,
    int_in,
    make_client,
    plural,
    problem_lines,
    read_environment,
)
from kiemashup._cli.display import FINISHED, Display
from kiemashup._cli.files import check_out_folder, save_tracks
from kiemashup._core.errors import KieError, RequestValidationError, SubmitOutcomeUnknown
from kiemashup._core.models import Stage
from kiemashup._core.request import MashupRequest

_STAGES = ["text", "first", "complete"]
#: Why items wait before they are created (shown while some are queued).
QUEUED_NOTE = (
    "queued: not submitted yet. Kie creates at most 20 tasks per 10 s, and at most "
    "--concurrency items run at once; the rest wait their turn."
)
#: The batch's progress events, as display states (outcomes come with their item).
_EVENT_STATES = {"submitted": "pending", "PENDING": "pending", "TEXT": "text", "FIRST": "first"}


def add_batch_command(sub: Any) -> None:
    """Add ``batch`` to the ``kiemashup`` sub-parsers."""
    batch = sub.add_parser("batch", help="run a JSON-lines file of mashup requests")
    batch.add_argument("file", help="one request per line (docs/batch.md)")
    batch.add_argument("--out", metavar="DIR", help="save every finished track in DIR")
    batch.add_argument("--journal", metavar="FILE", help="resumable journal (rerun to resume)")
    batch.add_argument(
        "--concurrency", type=int_in(1, 10_000), default=None, help="items in flight (default 100)"
    )
    batch.add_argument("--stage", choices=_STAGES, default="complete", help="default: complete")
    batch.add_argument(
        "--resubmit-unknown", action="store_true", help="resend items whose outcome is unknown"
    )
    batch.add_argument("--json", action="store_true", help="machine-readable output")


class BatchFileError(UsageError):
    """A line of the batch file is not a valid request (or the file cannot be read)."""


#: The keys a batch line may have: MashupRequest's fields.
REQUEST_FIELDS = tuple(field.name for field in attrs.fields(MashupRequest))


def read_batch_file(path: str) -> list[MashupRequest]:
    """Requests from a JSON-lines file; blank lines and ``#`` comments are skipped.

    Every line is checked before anything is submitted, and every bad line is reported
    (``BatchFileError`` with one detail per problem, ``line N: ...``).
    """
    try:
        with open(path, encoding="utf-8") as fh:
            lines = list(fh)
    except UnicodeDecodeError as exc:
        raise BatchFileError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise BatchFileError(f"{path}: {exc.strerror or exc}") from None
    requests: list[MashupRequest] = []
    problems: list[str] = []
    bad_lines = 0
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        found = _line_problems(line, requests)
        if found:
            bad_lines += 1
            problems.extend(f"line {number}: {problem}" for problem in found)
    if problems:
        raise BatchFileError(
            f"{path}: {bad_lines} bad line(s), nothing was submitted:", tuple(problems)
        )
    return requests


def _line_problems(line: str, requests: list[MashupRequest]) -> list[str]:
    """What is wrong with one batch line (none: its request is appended to ``requests``)."""
    try:
        fields = json.loads(line)
    except ValueError as exc:
        return [f"not valid JSON ({exc})"]
    if not isinstance(fields, dict):
        return ['not a JSON object (one request per line: {"upload_urls": [...], ...})']
    unknown = sorted(key for key in fields if key not in REQUEST_FIELDS)
    if unknown:
        return [_unknown_field(key) for key in unknown]
    if "upload_urls" not in fields:
        return ["upload_urls is required"]
    urls = fields.pop("upload_urls")
    try:
        requests.append(MashupRequest(urls, **fields))
    except RequestValidationError as exc:
        return problem_lines(exc)
    except (ValueError, TypeError) as exc:  # a value of the wrong kind the checks missed
        return [str(exc)]
    return []


def _unknown_field(key: object) -> str:
    close = difflib.get_close_matches(str(key), REQUEST_FIELDS, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown field {key!r}{hint} (fields: {', '.join(REQUEST_FIELDS)})"


def _outcome(item: BatchItem) -> tuple[str, str]:
    """The display state and detail of a finished item."""
    if item.error is None:
        assert item.snapshot is not None
        stage = item.snapshot.stage
        reached = "" if stage is Stage.COMPLETE else f"{stage.name.lower()} reached, "
        return "done", f"{reached}task {item.task_id}"
    state = {EXIT_FAILED: "failed", EXIT_UNKNOWN: "unknown"}.get(_item_code(item), "error")
    return state, f"{type(item.error).__name__}: {str(item.error).splitlines()[0]}"


def _item_code(item: BatchItem) -> int:
    return EXIT_OK if item.error is None else exit_code_for(item.error)


async def batch_cmd(args: argparse.Namespace) -> int:
    requests = read_batch_file(args.file)
    config = read_environment()
    if args.out:
        check_out_folder(args.out)
    display = Display(
        sys.stderr,
        [f"item {i}" for i in range(len(requests))],
        title=plural(len(requests), "item"),
        note=QUEUED_NOTE,
        plain_states=FINISHED,
    )

    def progress(index: int, event: str) -> None:
        state = _EVENT_STATES.get(event)
        if state is not None and display.states[index] not in FINISHED:
            display.set(index, state)

    rows: list[dict[str, Any]] = []
    async with make_client(config) as client, display:
        batch = client.run_batch(
            requests,
            journal=args.journal,
            concurrency=args.concurrency,
            resubmit_unknown=args.resubmit_unknown,
            stage=Stage[args.stage.upper()],
            on_progress=progress,
        )
        async with batch as items:  # leaving (Ctrl-C, an error) stops all submitting
            async for item in items:
                files = []
                if args.out and item.ok and item.snapshot is not None:
                    try:
                        files = await save_tracks(client, item.snapshot, args.out)
                    except KieError as exc:  # a failed download is this item's result
                        item = attrs.evolve(item, error=exc)
                display.set(item.index, *_outcome(item))
                rows.append(_row(item, files))
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


BATCH_COMMANDS = {"batch": batch_cmd}
