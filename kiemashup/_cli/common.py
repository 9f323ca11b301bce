"""What every CLI command shares: exit codes, client construction, snapshot output.

Environment variables (docs/cli.md):
  KIE_API_KEY              the API key (required except for ``demo``)
  KIE_BASE_URL             the API host (default https://api.kie.ai)
  KIE_UPLOAD_BASE_URL      the File Upload API host (default https://kieai.redpandaai.co)
  KIEMASHUP_POLL_INITIAL   first poll interval in seconds (default 2; tests use ~0.02)
"""

from __future__ import annotations

import os
from typing import Any

from kiemashup._client import MashupClient
from kiemashup._core.errors import (
    APIError,
    DownloadError,
    FileValidationError,
    JournalError,
    ProtocolError,
    RequestValidationError,
    SubmitOutcomeUnknown,
    TaskFailedError,
    TransportError,
)
from kiemashup._core.models import TaskSnapshot
from kiemashup._core.policy import PollPolicy

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_API, EXIT_CONFIG, EXIT_UNKNOWN = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130


def make_client() -> MashupClient:
    """A client configured from the environment (see the module docstring)."""
    options: dict[str, Any] = {}
    initial = os.environ.get("KIEMASHUP_POLL_INITIAL")
    if initial:
        seconds = float(initial)
        options["poll_policy"] = PollPolicy(
            initial=seconds,
            growth=0.0,
            maximum=max(seconds, 0.05),
            after_first=seconds,
        )
    return MashupClient(**options)


def print_snapshot(snapshot: TaskSnapshot) -> None:
    """A snapshot for humans: status line, error, one line per track."""
    print(f"task {snapshot.task_id}: {snapshot.status} (stage {snapshot.stage.name})")
    if snapshot.failed:
        print(f"  error {snapshot.error_code}: {snapshot.error_message}")
    for track in snapshot.tracks:
        print(
            f"  - {track.title or track.id} [{track.duration}s] {track.audio_url or '(not ready)'}"
        )


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code for an error."""
    if isinstance(exc, TaskFailedError):
        return EXIT_FAILED
    if isinstance(exc, RequestValidationError | FileValidationError | JournalError):
        return EXIT_USAGE
    if isinstance(exc, SubmitOutcomeUnknown):
        return EXIT_UNKNOWN
    if isinstance(exc, APIError | TransportError | ProtocolError | DownloadError):
        return EXIT_API
    return EXIT_CONFIG
