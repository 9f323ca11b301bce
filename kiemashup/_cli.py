"""The ``kiemashup`` command line (also ``python -m kiemashup``).

Exit codes:
  0  success
  1  the task failed (TaskFailedError)
  2  bad usage or an invalid request
  3  the API or the network failed (APIError, TransportError, ProtocolError)
  4  configuration problem (no API key)
  5  the submit outcome is unknown (the task may exist; it was not resent)
  130 interrupted
Errors print one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

import attrs

from kiemashup._client import MashupClient
from kiemashup._errors import (
    APIError,
    KieError,
    ProtocolError,
    RequestValidationError,
    SubmitOutcomeUnknown,
    TaskFailedError,
    TransportError,
)
from kiemashup._models import Stage, TaskSnapshot

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_API, EXIT_CONFIG, EXIT_UNKNOWN = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130


def snapshot_dict(snapshot: TaskSnapshot) -> dict[str, Any]:
    """A JSON-ready view of a snapshot."""
    data = attrs.asdict(snapshot, recurse=True)
    data["status"] = str(snapshot.status)
    data["stage"] = snapshot.stage.name
    return data


def _print_snapshot(snapshot: TaskSnapshot) -> None:
    print(f"task {snapshot.task_id}: {snapshot.status} (stage {snapshot.stage.name})")
    if snapshot.failed:
        print(f"  error {snapshot.error_code}: {snapshot.error_message}")
    for track in snapshot.tracks:
        print(
            f"  - {track.title or track.id} [{track.duration}s] {track.audio_url or '(not ready)'}"
        )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiemashup", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run mashups end to end against an embedded fake Kie API")
    demo.add_argument("--count", type=_positive_int, default=4, help="how many mashups (default 4)")
    demo.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    demo.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="stretch (>1) or shrink (<1) the fake timelines",
    )

    for name, help_text in (
        ("status", "show a task's current state (one poll)"),
        ("wait", "wait for a task to reach a stage"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("task_id")
        cmd.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "wait":
            cmd.add_argument("--stage", choices=["text", "first", "complete"], default="complete")

    credits = sub.add_parser("credits", help="show the account's remaining credits")
    credits.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


async def _status(args: argparse.Namespace) -> int:
    async with MashupClient() as client:
        snapshot = await client.get_task(args.task_id)
    _emit(args, snapshot)
    return EXIT_FAILED if snapshot.failed else EXIT_OK


async def _wait(args: argparse.Namespace) -> int:
    async with MashupClient() as client:
        snapshot = await client.task(args.task_id).wait(Stage[args.stage.upper()])
    _emit(args, snapshot)
    return EXIT_OK


async def _credits(args: argparse.Namespace) -> int:
    async with MashupClient() as client:
        remaining = await client.credits()
    print(json.dumps({"credits": remaining}) if args.json else f"{remaining} credits")
    return EXIT_OK


def _emit(args: argparse.Namespace, snapshot: TaskSnapshot) -> None:
    if args.json:
        print(json.dumps(snapshot_dict(snapshot)))
    else:
        _print_snapshot(snapshot)


async def _demo(args: argparse.Namespace) -> int:
    from kiemashup._demo import run_demo  # loads the testing kit only when asked

    summary = await run_demo(
        count=args.count, scale=args.time_scale, out=sys.stderr if args.json else sys.stdout
    )
    if args.json:
        print(json.dumps(summary))
    return EXIT_OK


COMMANDS = {"demo": _demo, "status": _status, "wait": _wait, "credits": _credits}


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code for an error."""
    if isinstance(exc, TaskFailedError):
        return EXIT_FAILED
    if isinstance(exc, RequestValidationError):
        return EXIT_USAGE
    if isinstance(exc, SubmitOutcomeUnknown):
        return EXIT_UNKNOWN
    if isinstance(exc, APIError | TransportError | ProtocolError):
        return EXIT_API
    return EXIT_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(COMMANDS[args.command](args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TaskFailedError as exc:
        if getattr(args, "json", False):
            print(json.dumps(snapshot_dict(exc.snapshot)))
        print(f"kiemashup: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KieError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"kiemashup: {type(exc).__name__}: {first_line}", file=sys.stderr)
        return exit_code_for(exc)


def console_main() -> None:
    """Entry point of the ``kiemashup`` console script."""
    sys.exit(main())
