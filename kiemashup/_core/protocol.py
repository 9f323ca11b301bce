"""Kie's HTTP protocol without I/O: endpoint paths, the envelope, and every reply.

This module performs no I/O and reads no clock: the current time is an argument.
Submit, record-info, credits and upload replies are all read here, so the client
and the file transfer decide nothing about the wire themselves.
"""

from __future__ import annotations

import json
import math
import string
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

from kiemashup._core.errors import (
    APIError,
    AuthenticationError,
    ClientClosedError,
    InsufficientCreditsError,
    ProtocolError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    TransportError,
    UploadError,
)
from kiemashup._core.models import TaskSnapshot
from kiemashup._core.request import is_http_url
from kiemashup._core.wire import structure_tracks

SUBMIT_PATH = "/api/v1/generate/mashup"
RECORD_INFO_PATH = "/api/v1/generate/record-info"


_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")


def check_task_id(task_id: object) -> str:
    """``task_id`` if it can be sent to Kie, else ``ValueError`` saying why."""
    if not isinstance(task_id, str) or not task_id:
        raise ValueError("task_id must be a non-empty string")
    if task_id.isascii():  # Kie's ids: nothing to check (and no bytes to make)
        return task_id
    try:
        task_id.encode()
    except UnicodeEncodeError:  # a lone surrogate (bytes that were not UTF-8): unsendable
        raise ValueError("task_id must be valid text (it holds bytes that are not UTF-8)") from None
    return task_id


def record_info_query(task_id: str) -> str:
    """record-info's query string for one task, percent-encoded here (cheaper per poll
    than handing aiohttp a ``params`` mapping to encode; Kie's ids need no escaping)."""
    if _UNRESERVED.issuperset(task_id):
        return "?taskId=" + task_id
    return "?taskId=" + quote(task_id, safe="")


CREDITS_PATH = "/api/v1/chat/credit"
# The File Upload API lives on its own host (KIE-API.md §5.2); files are deleted after 3 days.
STREAM_UPLOAD_PATH = "/api/file-stream-upload"
BASE64_UPLOAD_PATH = "/api/file-base64-upload"
URL_UPLOAD_PATH = "/api/file-url-upload"
DEFAULT_UPLOAD_PATH = "kiemashup/uploads"
BASE64_MAX = 1024 * 1024  # bytes up to this size go as base64 JSON; bigger ones are streamed
# Kie requires callBackUrl; a client that only polls sends this documented placeholder.
PLACEHOLDER_CALLBACK_URL = "https://callback.invalid/kiemashup-polling-only"


# --- replies -----------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:  # "-0000" means UTC with no offset known; never local time
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def api_error(
    code: int, message: str, *, http_status: int, retry_after: float | None = None
) -> APIError:
    """The typed error for a Kie code (body code first, then HTTP status)."""
    if code == 401:
        return AuthenticationError(code, message, http_status=http_status)
    if code == 402:
        return InsufficientCreditsError(code, message, http_status=http_status)
    if code == 429:
        return RateLimitError(code, message, http_status=http_status, retry_after=retry_after)
    if code == 455:
        return ServiceUnavailableError(code, message, http_status=http_status)
    if 500 <= code <= 599:
        return ServerError(code, message, http_status=http_status)
    return APIError(code, message, http_status=http_status)


_DECODER = json.JSONDecoder()


def _json_or_none(body: bytes) -> Any:
    """The JSON value of a reply body, or None when it is not JSON.

    Kie's replies are UTF-8 (as RFC 8259 requires between systems): decoding them
    here first skips ``json.loads``'s encoding detection, a quarter of the cost of
    reading a small reply. Anything else (a BOM, UTF-16) goes through ``json.loads``.
    """
    if not body:
        return None
    try:
        return _DECODER.decode(body.decode())
    except (ValueError, RecursionError):  # ValueError covers UnicodeDecodeError
        pass
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        return None


def parse_envelope(
    http_status: int, body: bytes, *, retry_after: str | None = None, now: float = 0.0
) -> Any:
    """The ``data`` of a ``{code, msg, data}`` reply, or the typed error it stands for.

    Kie answers logical errors with HTTP 200 and a body code, and real errors with an
    HTTP status and maybe no JSON at all: fail on either, and map the body code first.
    """
    decoded = _json_or_none(body)
    envelope: dict[str, Any] = decoded if isinstance(decoded, dict) else {}
    code = envelope.get("code")
    if type(code) is int and code == 200 and http_status < 400:  # success first: the hot path
        return envelope.get("data")
    wait = parse_retry_after(retry_after, now)
    if isinstance(code, int) and not isinstance(code, bool):
        msg = envelope.get("msg")
        message = msg if isinstance(msg, str) else ""
        if code == 200:  # an HTTP error wrapped around a success code: trust the HTTP status
            code = http_status
        raise api_error(
            code, message or f"HTTP {http_status}", http_status=http_status, retry_after=wait
        )
    if http_status >= 400:
        raise api_error(
            http_status, f"HTTP {http_status}", http_status=http_status, retry_after=wait
        )
    raise ProtocolError(f"reply is not a Kie envelope (HTTP {http_status}, {len(body)} bytes)")


def parse_submit(data: Any) -> str:
    """The task id from a mashup submit's ``data``."""
    task_id = data.get("taskId") if isinstance(data, dict) else None
    if not isinstance(task_id, str) or not task_id:
        raise ProtocolError("submit reply has no taskId")
    return task_id


# --- what counts as created ----------------------------------------------------------------
#
# A submit costs credits, so the SDK must know whether a failed one created a task.
# It is *certainly not created* only when Kie said so or the request never left:
#   - a 429 (rate limit) or 455 (maintenance) reply,
#   - any other 4xx reply (validation, auth, credits...) that is not wrapped in a 5xx,
#   - a connection that never opened (``TransportError.sent`` is False), or a client
#     closed before the request left (``ClientClosedError``).
# Everything else after the request left -- a timeout, a reset, any 5xx (HTTP status or
# body code), an unreadable 2xx, a reply too deeply nested to parse -- may have created
# the task: the outcome is unknown and the submit is never repeated behind the caller.


def certainly_not_created(error: BaseException) -> bool:
    """True when a failed submit provably created no task (see the rule above)."""
    if isinstance(error, TransportError):
        return not error.sent
    if isinstance(error, RateLimitError | ServiceUnavailableError | ClientClosedError):
        return True
    if isinstance(error, APIError) and not isinstance(error, ServerError):
        return 400 <= error.code <= 499 and error.http_status < 500
    return False


def submit_may_retry(error: BaseException) -> bool:
    """A failed submit worth sending again: nothing was created and the cause is passing."""
    if isinstance(error, TransportError):
        return not error.sent
    return isinstance(error, RateLimitError | ServiceUnavailableError)


def parse_credits(data: Any) -> int:
    """Remaining credits from the credit endpoint's ``data``."""
    if isinstance(data, bool) or not isinstance(data, int | float):
        raise ProtocolError(f"credit reply is not a number: {type(data).__name__}")
    return int(data)


def optional_int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: JSON Infinity
        return None


def optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_record_info(data: Any, *, task_id: str | None = None) -> TaskSnapshot:
    """A snapshot from record-info's camelCase ``data``; lenient about absent or extra fields."""
    if not isinstance(data, dict):
        raise ProtocolError(f"record-info data is not an object: {type(data).__name__}")
    tid = optional_str(data.get("taskId")) or task_id
    if tid is None:
        raise ProtocolError("record-info data has no taskId")
    status = data.get("status")
    if not isinstance(status, str) or not status:
        status = "PENDING"  # absent status: nothing is known yet
    response = data.get("response")
    raw_tracks = response.get("sunoData") if isinstance(response, dict) else None
    return TaskSnapshot(
        tid,
        status,
        structure_tracks(raw_tracks),
        optional_int(data.get("errorCode")),
        optional_str(data.get("errorMessage")),
    )


def record_info_callback_url(data: Any) -> str | None:
    """The ``callBackUrl`` a task was submitted with, from record-info's ``param``.

    ``param`` is the request echoed as a JSON *string* (KIE-API.md §2); an object is
    accepted too. None when it is absent or unreadable.
    """
    param = data.get("param") if isinstance(data, dict) else None
    if isinstance(param, str):
        try:
            param = json.loads(param)
        except (ValueError, RecursionError):
            return None
    url = param.get("callBackUrl") if isinstance(param, dict) else None
    return url if isinstance(url, str) else None


def callback_url_key(url: str | None) -> str | None:
    """The per-submit key a keyed ``callBackUrl`` ends with (``.../<token>/<key>``), or None."""
    if not url:
        return None
    path = url.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    parts = path.split("/")
    # scheme, "", host, token, key: a keyed URL has at least two path segments.
    return parts[-1] if len(parts) >= 5 and parts[-1] else None


def parse_upload_reply(
    http_status: int, body: bytes, *, retry_after: str | None = None, now: float = 0.0
) -> str:
    """``data.downloadUrl`` from an upload reply, or the typed error it stands for.

    Codes with a finer class (401, 402, 429, 455, 5xx) keep it; any other failure,
    including ``success: false`` with code 200, becomes ``UploadError``.
    """
    try:
        data = parse_envelope(http_status, body, retry_after=retry_after, now=now)
    except APIError as exc:
        if type(exc) is APIError:
            raise UploadError(exc.code, exc.message, http_status=exc.http_status) from None
        raise
    envelope: Any = json.loads(body)
    if envelope.get("success") is False:
        msg = envelope.get("msg")
        raise UploadError(
            200, msg if isinstance(msg, str) else "upload failed", http_status=http_status
        )
    url = data.get("downloadUrl") if isinstance(data, dict) else None
    if not is_http_url(url):
        raise ProtocolError("upload reply has no downloadUrl")
    assert isinstance(url, str)
    return url
