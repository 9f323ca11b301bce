"""The ``kiemashup`` command line (also ``python -m kiemashup``): parser and entry point.

One module per command group: ``tasks`` (submit, status, wait, credits), ``files``
(upload, download), ``batch``, ``demo``; ``display`` is the one live terminal
display they share; ``common`` holds exit codes, the environment, argument types
and error reporting. Every error prints one clear line (plus one line per detail)
on stderr, never a traceback; with ``--json`` it is also a JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

from kiemashup._cli.batch import BATCH_COMMANDS, add_batch_command
from kiemashup._cli.common import (
    ENVIRONMENT,
    EXIT_API,
    EXIT_CODES,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNKNOWN,
    EXIT_USAGE,
    SUBMIT_FLAGS,
    CliError,
    UsageError,
    describe_error,
    exit_code_for,
    report,
)
from kiemashup._cli.demo import add_demo_command, demo_cmd
from kiemashup._cli.files import FILE_COMMANDS, add_file_commands
from kiemashup._cli.tasks import TASK_COMMANDS, add_task_commands
from kiemashup._core.errors import KieError

__all__ = [  # the names tests and users import from here
    "EXIT_API",
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_UNKNOWN",
    "EXIT_USAGE",
    "build_parser",
    "console_main",
    "exit_code_for",
    "main",
]

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
COMMANDS: dict[str, Command] = {
    "demo": demo_cmd,
    **TASK_COMMANDS,
    **FILE_COMMANDS,
    **BATCH_COMMANDS,
}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose complaints are ``UsageError``s (one line, exit 2, --json)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, (f"see: {self.prog} --help",))


def _epilog() -> str:
    env = "\n".join(f"  {name:<24}{meaning}" for name, meaning in ENVIRONMENT)
    codes = "\n".join(f"  {code:<5}{meaning}" for code, meaning in EXIT_CODES)
    return (
        f"environment variables:\n{env}\n\nexit codes:\n{codes}\n\n"
        "Errors print one line on stderr; with --json, also a JSON object on stdout.\n"
        "Try it offline: kiemashup demo (or: python -m kiemashup.testing serve)."
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kiemashup")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The ``kiemashup`` argument parser."""
    parser = _Parser(
        prog="kiemashup",
        description="Run Kie.ai Suno mashups from the command line.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kiemashup {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_demo_command(sub)
    add_task_commands(sub)
    add_file_commands(sub)
    add_batch_command(sub)
    for command in sub.choices.values():
        command.epilog = parser.epilog
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def _wants_json(argv: Sequence[str]) -> bool:
    return "--json" in argv


def _check_no_lost_values(args: argparse.Namespace) -> None:
    """argparse turns an option's value ``--`` (``--count=--``) into ``[]`` unchecked."""
    lost = sorted(name for name, value in vars(args).items() if value == [])
    if lost:
        raise UsageError(f"--{lost[0].replace('_', '-')}: a value is required, not '--'")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (never raises, never prints a traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        _check_no_lost_values(args)
    except UsageError as exc:
        return report(exc, as_json=_wants_json(argv))
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    as_json = bool(getattr(args, "json", False))
    flags = SUBMIT_FLAGS if args.command == "submit" else None
    try:
        return asyncio.run(COMMANDS[args.command](args))
    except KeyboardInterrupt:
        print("kiemashup: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CliError, KieError, OSError) as exc:
        return report(describe_error(exc, flags), as_json=as_json, source=exc)


def console_main() -> None:
    """Entry point of the ``kiemashup`` console script."""
    sys.exit(main())
