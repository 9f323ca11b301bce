"""Every error kiemashup raises. This module performs no I/O.

```
KieError
├── RequestValidationError (also ValueError)   .problems
├── TransportError        network failure or timeout; .sent; __cause__ is the aiohttp error
├── APIError              .code, .message, .http_status
│   ├── AuthenticationError        401
│   ├── InsufficientCreditsError   402
│   ├── RateLimitError             429, .retry_after
│   ├── ServiceUnavailableError    455
│   ├── ServerError                5xx
│   └── UploadError                the upload host refused a file (``success: false``, other codes)
├── ProtocolError         the API sent something that cannot be understood
├── CallbackRejected      bad signature, bad JSON, oversized body  (.reason, .http_status)
├── SubmitOutcomeUnknown  the submit may or may not have been created  (.request, .key)
├── TaskFailedError       .snapshot (status, error_code, error_message)
├── FileValidationError (also ValueError)  a local file or URL unfit to upload  (.path, .reason)
├── DownloadError         a download failed for good  (.url, .reason, .http_status, .path)
├── JournalError          a batch journal is unusable  (.path, .reason, .task_id)
│   └── JournalMismatchError (also ValueError)  the input changed since the journal  (.index)
├── BackendError          the shared backend (Redis) cannot be reached  (.url, .reason)
└── ClientClosedError     the client was closed while a call waited
```

Every error carries its data as attributes. No message ever contains the API key:
messages are built from codes and server text only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from kiemashup._core.models import TaskSnapshot


class KieError(Exception):
    """Base class of every kiemashup error."""


@attrs.frozen(slots=True)
class Problem:
    """One broken request rule: the field, what the rule demands, and what was given."""

    field: str
    rule: str
    actual: str

    def __str__(self) -> str:
        return f"{self.field}: {self.rule} (got {self.actual})"


class RequestValidationError(KieError, ValueError):
    """A request broke one or more rules; ``problems`` lists every one of them."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid mashup request ({len(self.problems)} problem(s)):\n{lines}")


class TransportError(KieError):
    """The request never got a usable HTTP reply (connection failure or timeout).

    ``sent`` is False only when the request provably never left (the connection was
    never opened); a submit is retried only then.
    """

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class APIError(KieError):
    """Kie answered with an error code (in the HTTP status or the body ``code``)."""

    def __init__(self, code: int, message: str, *, http_status: int = 200) -> None:
        self.code = code
        self.message = message
        self.http_status = http_status
        super().__init__(f"Kie API error {code}: {message} (HTTP {http_status})")


class AuthenticationError(APIError):
    """401: the API key is missing, wrong or not allowed here."""


class InsufficientCreditsError(APIError):
    """402: the account has too few credits."""


class RateLimitError(APIError):
    """429: too many requests. ``retry_after`` is in seconds when Kie said so."""

    def __init__(
        self, code: int, message: str, *, http_status: int = 200, retry_after: float | None = None
    ) -> None:
        super().__init__(code, message, http_status=http_status)
        self.retry_after = retry_after


class ServiceUnavailableError(APIError):
    """455: Kie is in maintenance."""


class ServerError(APIError):
    """5xx: Kie failed on its side."""


class ProtocolError(KieError):
    """Kie sent something that cannot be understood (not JSON, wrong shape)."""


class CallbackRejected(KieError):
    """A callback delivery was refused: bad signature, bad JSON, oversized body."""

    def __init__(self, reason: str, *, http_status: int = 400) -> None:
        self.reason = reason
        self.http_status = http_status
        super().__init__(f"callback rejected: {reason}")


class SubmitOutcomeUnknown(KieError):
    """The submit was sent but no usable reply came: the task may or may not exist.

    kiemashup never sends the same submit twice on its own, because a second
    POST could cost credits twice. ``request`` is the request that was sent;
    ``key`` names this one submit (it rides in the ``callBackUrl`` when the client
    has a receiver, so ``client.recover(exc)`` can find the task it created).
    """

    def __init__(self, request: object, reason: str, *, key: str | None = None) -> None:
        self.request = request
        self.reason = reason
        self.key = key
        super().__init__(f"submit outcome unknown ({reason}); not retried to avoid paying twice")


class TaskFailedError(KieError):
    """The task ended in a failure status; ``snapshot`` has the details."""

    def __init__(self, snapshot: TaskSnapshot) -> None:
        self.snapshot = snapshot
        super().__init__(
            f"task {snapshot.task_id} failed: {snapshot.status}"
            f" (error {snapshot.error_code}: {snapshot.error_message})"
        )


class UploadError(APIError):
    """The upload host refused the file (``success: false`` or a code with no finer class)."""


class FileValidationError(KieError, ValueError):
    """A local file (or URL) cannot be uploaded: missing, empty, not audio, or not http(s)."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class DownloadError(KieError):
    """A download failed for good (HTTP error, or still broken after retries).

    ``http_status`` is set when the server answered with an error status; a
    transient cause is kept as ``__cause__``.
    """

    def __init__(
        self,
        url: str,
        reason: str,
        *,
        http_status: int | None = None,
        path: object | None = None,
    ) -> None:
        self.url = url
        self.reason = reason
        self.http_status = http_status
        self.path = path  # the destination, when the failure is about it (exists, unwritable)
        super().__init__(f"download of {url.split('?')[0]} failed: {reason}")


class JournalError(KieError):
    """A batch journal cannot be used (unreadable, unwritable, locked, not a journal).

    ``task_id`` is set when a task had been created but its record could not be
    written: note it, it is the only place that id is left.
    """

    def __init__(self, path: object, reason: str, *, task_id: str | None = None) -> None:
        self.path = path
        self.reason = reason
        self.task_id = task_id
        created = f" (task {task_id} was created: note its id)" if task_id else ""
        super().__init__(f"journal {path}: {reason}{created}")


class JournalMismatchError(JournalError, ValueError):
    """Item ``index`` differs from the request the journal recorded (the input changed)."""

    def __init__(self, path: object, index: int, reason: str) -> None:
        self.index = index
        super().__init__(path, reason)


class BackendError(KieError):
    """The shared backend (``kiemashup.redis``) cannot be used: unreachable, refused.

    ``url`` is the backend's address without any password; ``reason`` says what failed.
    """

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"backend {url}: {reason}")


class ClientClosedError(KieError):
    """The client was closed while this call was waiting (or before it started)."""
