"""What every CLI command shares: exit codes, the environment, argument types, errors.

The tables ``EXIT_CODES`` and ``ENVIRONMENT`` are the single source of what
``kiemashup --help`` prints and what docs/cli.md lists (tests/test_cli.py checks both).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from kiemashup._client import MashupClient
from kiemashup._core.errors import (
    APIError,
    DownloadError,
    FileValidationError,
    JournalError,
    KieError,
    ProtocolError,
    RequestValidationError,
    SubmitOutcomeUnknown,
    TaskFailedError,
    TransportError,
)
from kiemashup._core.models import TaskSnapshot
from kiemashup._core.policy import PollPolicy
from kiemashup._core.request import is_http_url
from kiemashup._core.wire import snapshot_json

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_API, EXIT_CONFIG, EXIT_UNKNOWN = 0, 1, 2, 3, 4, 5
EXIT_NOT_FOUND, EXIT_TIMEOUT = 6, 7
EXIT_INTERRUPTED = 130

#: (code, meaning): printed by ``--help`` and listed in docs/cli.md.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (EXIT_FAILED, "the task failed; download: no playable track yet"),
    (EXIT_USAGE, "bad usage: an invalid option, request, batch line, file or journal"),
    (EXIT_API, "the API or the network failed"),
    (EXIT_CONFIG, "configuration problem: a missing or invalid environment variable"),
    (EXIT_UNKNOWN, "the submit outcome is unknown (the task may exist; it was not resent)"),
    (EXIT_NOT_FOUND, "no such task (Kie answered 404)"),
    (EXIT_TIMEOUT, "--timeout passed before the task got there (it keeps running)"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
)

#: (name, meaning): printed by ``--help`` and listed in docs/cli.md.
ENVIRONMENT: tuple[tuple[str, str], ...] = (
    ("KIE_API_KEY", "your API key (required by every command but demo)"),
    ("KIE_BASE_URL", "API host, default https://api.kie.ai"),
    ("KIE_UPLOAD_BASE_URL", "File Upload API host, default https://kieai.redpandaai.co"),
    ("KIEMASHUP_POLL_INITIAL", "seconds between polls (default: the SDK's policy, from 2 s)"),
)

_POLL_INITIAL_MAX = 3600.0


class CliError(Exception):
    """A problem the command line reports itself: one summary line, detail lines, a code."""

    def __init__(
        self, code: int, message: str, details: tuple[str, ...] = (), *, kind: str = ""
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.kind = kind or {EXIT_CONFIG: "ConfigError", EXIT_TIMEOUT: "Timeout"}.get(
            code, "UsageError"
        )


class UsageError(CliError):
    """Bad command-line usage (argparse's complaints, bad option values)."""

    def __init__(self, message: str, details: tuple[str, ...] = ()) -> None:
        super().__init__(EXIT_USAGE, message, details)


# --- the environment ------------------------------------------------------------------------


@attrs.frozen
class Config:
    """The environment, checked: what ``make_client`` builds a client from."""

    api_key: str | None
    base_url: str | None
    upload_base_url: str | None
    poll_initial: float | None


def read_environment(environ: Mapping[str, str] | None = None, *, need_key: bool = True) -> Config:
    """The environment variables, every problem with them raised at once (``CliError``)."""
    env = os.environ if environ is None else environ
    problems: list[str] = []
    key = env.get("KIE_API_KEY")
    if need_key and key is not None and not key.strip():
        problems.append("KIE_API_KEY is blank (export KIE_API_KEY=<your key>)")
    elif need_key and key is None:
        problems.append("KIE_API_KEY is not set (export KIE_API_KEY=<your key>)")
    key = key.strip() if key and key.strip() else None
    urls = {}
    for name in ("KIE_BASE_URL", "KIE_UPLOAD_BASE_URL"):
        value = env.get(name) or None
        if value is not None and not is_http_url(value.strip()):
            example = "https://kieai.redpandaai.co" if "UPLOAD" in name else "https://api.kie.ai"
            problems.append(f"{name} must be an http(s) URL such as {example}")
        urls[name] = value.strip() if value else None
    poll = env.get("KIEMASHUP_POLL_INITIAL") or None
    seconds: float | None = None
    if poll is not None:
        try:
            seconds = float(poll)
        except ValueError:
            seconds = math.nan
        if not 0 < seconds <= _POLL_INITIAL_MAX:  # also false for NaN
            problems.append(
                f"KIEMASHUP_POLL_INITIAL must be a number of seconds above 0 and at most "
                f"{_POLL_INITIAL_MAX:g}, got {poll!r}"
            )
    if problems:
        summary = problems[0] if len(problems) == 1 else "the environment has problems:"
        raise CliError(EXIT_CONFIG, summary, () if len(problems) == 1 else tuple(problems))
    return Config(key, urls["KIE_BASE_URL"], urls["KIE_UPLOAD_BASE_URL"], seconds)


def make_client(config: Config | None = None) -> MashupClient:
    """A client configured from the (checked) environment."""
    config = config or read_environment()
    options: dict[str, Any] = {}
    if config.poll_initial is not None:
        seconds = config.poll_initial
        options["poll_policy"] = PollPolicy(
            initial=seconds, growth=0.0, maximum=max(seconds, 0.05), after_first=seconds
        )
    return MashupClient(
        config.api_key,
        base_url=config.base_url,
        upload_base_url=config.upload_base_url,
        **options,
    )


# --- argument types (each rejects NaN, infinities and out-of-range values) -----------------


def task_id(text: str) -> str:
    """An argparse type: a task id (non-empty; sent to Kie as it is)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    try:
        text.encode()
    except UnicodeEncodeError:  # bytes from the shell that are not UTF-8
        raise argparse.ArgumentTypeError("must be UTF-8 text") from None
    return text


task_id.__name__ = "task id"


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value

    parse.__name__ = "whole number"  # argparse names the type in some messages
    return parse


def seconds_in(low: float, high: float, *, low_included: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number above ``low`` (or from it) and at most ``high``."""

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if not (low <= value if low_included else low < value) or value > high:
            bound = f"from {low:g} to" if low_included else f"above {low:g} and at most"
            raise argparse.ArgumentTypeError(f"must be {bound} {high:g}, got {value:g}")
        return value

    parse.__name__ = "number"
    return parse


def weight(text: str) -> float:
    """An argparse type for the 0..1 weights (the request checks range and decimals)."""
    try:
        value = float(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}")
    return value


weight.__name__ = "number"


# --- errors ---------------------------------------------------------------------------------

#: How ``MashupRequest`` fields are spelled on the ``submit`` command line.
SUBMIT_FLAGS: dict[str, str] = {
    "upload_urls": "A_OR_URL",
    "prompt": "--prompt",
    "custom_mode": "--custom",
    "model": "--model",
    "style": "--style",
    "title": "--title",
    "instrumental": "--instrumental",
    "vocal_gender": "--vocal-gender",
    "style_weight": "--style-weight",
    "weirdness_constraint": "--weirdness",
    "audio_weight": "--audio-weight",
    "callback_url": "--callback-url",
}


def problem_lines(exc: RequestValidationError, names: Mapping[str, str] | None = None) -> list[str]:
    """One line per broken rule, the field spelled as the user spelled it (``names``)."""
    lines = []
    for problem in exc.problems:
        base, bracket, rest = problem.field.partition("[")
        field = (names or {}).get(base, base) + bracket + rest
        actual = "nothing" if problem.actual == "None" else problem.actual
        lines.append(f"{field}: {problem.rule} (got {actual})")
    return lines


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code for an error."""
    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, TaskFailedError):
        return EXIT_FAILED
    if isinstance(exc, RequestValidationError | FileValidationError | JournalError):
        return EXIT_USAGE
    if isinstance(exc, SubmitOutcomeUnknown):
        return EXIT_UNKNOWN
    if isinstance(exc, APIError) and exc.code == 404:
        return EXIT_NOT_FOUND
    if isinstance(exc, APIError | TransportError | ProtocolError | DownloadError):
        return EXIT_API
    return EXIT_CONFIG


def describe_error(exc: BaseException, flags: Mapping[str, str] | None = None) -> CliError:
    """Any error the CLI reports, as one summary line plus detail lines and an exit code."""
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, RequestValidationError):
        lines = tuple(problem_lines(exc, flags))
        count = len(lines)
        return CliError(EXIT_USAGE, f"invalid request ({count} problem{'s' * (count > 1)}):", lines)
    if isinstance(exc, TaskFailedError):
        return CliError(EXIT_FAILED, str(exc))
    if isinstance(exc, KieError):
        text = str(exc).splitlines()
        summary = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
        return CliError(exit_code_for(exc), summary, tuple(t.strip() for t in text[1:] if t))
    return CliError(EXIT_USAGE, str(exc))  # OSError and friends: a local file problem


def report(error: CliError, *, as_json: bool, source: BaseException | None = None) -> int:
    """Print ``error``: lines on stderr, and a JSON object on stdout with ``as_json``."""
    print(f"kiemashup: {error.message}", file=sys.stderr)
    for line in error.details:
        print(f"  {line}", file=sys.stderr)
    if as_json:
        body: dict[str, Any] = {}
        if isinstance(source, TaskFailedError):
            body.update(snapshot_json(source.snapshot))
        name = type(source).__name__ if isinstance(source, KieError | OSError) else error.kind
        body.update(
            {"error": name, "message": error.message, "details": list(error.details)},
            exit=error.code,
        )
        print(json.dumps(body))
    return error.code


# --- output ---------------------------------------------------------------------------------


def print_snapshot(snapshot: TaskSnapshot) -> None:
    """A snapshot for humans: status line, error, one line per track."""
    print(f"task {snapshot.task_id}: {snapshot.status} (stage {snapshot.stage.name})")
    if snapshot.failed:
        print(f"  error {snapshot.error_code}: {snapshot.error_message}")
    for track in snapshot.tracks:
        duration = f"{track.duration}s" if track.duration is not None else "?s"
        print(f"  - {track.title or track.id} [{duration}] {track.audio_url or '(not ready)'}")


def plural(count: int, word: str) -> str:
    """``1 mashup``, ``2 mashups``."""
    return f"{count} {word}{'' if count == 1 else 's'}"
