"""The ``kiemashup`` command line (also ``python -m kiemashup``).

Commands: demo, status, wait, credits, and (in .files) submit, batch, upload,
download. Environment: KIE_API_KEY, KIE_BASE_URL, KIE_UPLOAD_BASE_URL,
KIEMASHUP_POLL_INITIAL (see .common and docs/cli.md).

Exit codes:
  0  success
  1  the task failed (TaskFailedError); ``download``: no playable track yet
  2  bad usage, an invalid request, a bad file to upload, an unusable journal
  3  the API or the network failed (APIError, TransportError, ProtocolError, DownloadError)
  4  configuration problem (no API key)
  5  the submit outcome is unknown (the task may exist; it was not resent)
  130 interrupted
``batch`` exits 0 when every item succeeded, else with the most serious item's
code, in the order 5, 3, 2, 1.
Errors print one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from kiemashup._cli.common import (
    EXIT_API,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNKNOWN,
    EXIT_USAGE,
    exit_code_for,
    make_client,
)
from kiemashup._cli.common import print_snapshot as _print_snapshot
from kiemashup._cli.files import FILE_COMMANDS, add_file_commands
from kiemashup._core.errors import KieError, TaskFailedError
from kiemashup._core.models import Stage, TaskSnapshot
from kiemashup._core.wire import snapshot_json

__all__ = [  # the names tests and users import from here
    "EXIT_API",
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNKNOWN",
    "EXIT_USAGE",
    "build_parser",
    "console_main",
    "exit_code_for",
    "main",
]


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
    demo.add_argument(
        "--no-callbacks", action="store_true", help="poll only, without the callback receiver"
    )
    demo.add_argument("--out", help="keep the downloaded tracks in this folder")

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
    add_file_commands(sub)
    return parser


async def _status(args: argparse.Namespace) -> int:
    async with make_client() as client:
        snapshot = await client.get_task(args.task_id)
    _emit(args, snapshot)
    return EXIT_FAILED if snapshot.failed else EXIT_OK


async def _wait(args: argparse.Namespace) -> int:
    async with make_client() as client:
        snapshot = await client.task(args.task_id).wait(Stage[args.stage.upper()])
    _emit(args, snapshot)
    return EXIT_OK


async def _credits(args: argparse.Namespace) -> int:
    async with make_client() as client:
        remaining = await client.credits()
    print(json.dumps({"credits": remaining}) if args.json else f"{remaining} credits")
    return EXIT_OK


def _emit(args: argparse.Namespace, snapshot: TaskSnapshot) -> None:
    if args.json:
        print(json.dumps(snapshot_json(snapshot)))
    else:
        _print_snapshot(snapshot)


async def _demo(args: argparse.Namespace) -> int:
    from kiemashup._cli.demo import run_demo  # loads the testing kit only when asked

    summary = await run_demo(
        count=args.count,
        scale=args.time_scale,
        callbacks=not args.no_callbacks,
        out_dir=args.out,
        out=sys.stderr if args.json else sys.stdout,
    )
    if args.json:
        print(json.dumps(summary))
    return EXIT_OK


COMMANDS = {
    "demo": _demo,
    "status": _status,
    "wait": _wait,
    "credits": _credits,
    **FILE_COMMANDS,
}


def public_name(exc: BaseException) -> str:
    """The name of the nearest public error class (internal subclasses stay internal)."""
    import kiemashup

    for cls in type(exc).__mro__:
        if cls.__name__ in kiemashup.__all__:
            return cls.__name__
    return type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(COMMANDS[args.command](args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TaskFailedError as exc:
        if getattr(args, "json", False):
            print(json.dumps(snapshot_json(exc.snapshot)))
        print(f"kiemashup: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KieError as exc:
        name = public_name(exc)
        first_line = str(exc).splitlines()[0] if str(exc) else name
        print(f"kiemashup: {name}: {first_line}", file=sys.stderr)
        return exit_code_for(exc)
    except OSError as exc:  # a local file or folder problem (permissions, disk full)
        print(f"kiemashup: {exc}", file=sys.stderr)
        return EXIT_USAGE


def console_main() -> None:
    """Entry point of the ``kiemashup`` console script."""
    sys.exit(main())
