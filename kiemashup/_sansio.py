"""The Kie protocol without I/O: replies, callbacks, signatures and timing rules.

This module performs no I/O and reads no clock, environment or randomness: the
current time and random numbers are arguments. Everything the client and the
receiver decide about the wire is decided here, so it is tested without a loop.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
from collections import deque
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

from kiemashup._errors import (
    APIError,
    AuthenticationError,
    CallbackRejected,
    InsufficientCreditsError,
    ProtocolError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
)
from kiemashup._models import Stage, TaskSnapshot
from kiemashup._policy import PollPolicy, RetryPolicy
from kiemashup._state import make_snapshot
from kiemashup._wire import structure_tracks

SUBMIT_PATH = "/api/v1/generate/mashup"
RECORD_INFO_PATH = "/api/v1/generate/record-info"
CREDITS_PATH = "/api/v1/chat/credit"
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


def parse_envelope(
    http_status: int, body: bytes, *, retry_after: str | None = None, now: float = 0.0
) -> Any:
    """The ``data`` of a ``{code, msg, data}`` reply, or the typed error it stands for.

    Kie answers logical errors with HTTP 200 and a body code, and real errors with an
    HTTP status and maybe no JSON at all: fail on either, and map the body code first.
    """
    wait = parse_retry_after(retry_after, now)
    try:
        decoded = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        decoded = None
    envelope: dict[str, Any] = decoded if isinstance(decoded, dict) else {}
    code = envelope.get("code")
    if isinstance(code, int) and not isinstance(code, bool):
        if code == 200 and http_status < 400:
            return envelope.get("data")
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


def parse_credits(data: Any) -> int:
    """Remaining credits from the credit endpoint's ``data``."""
    if isinstance(data, bool) or not isinstance(data, int | float):
        raise ProtocolError(f"credit reply is not a number: {type(data).__name__}")
    return int(data)


def _optional_int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: JSON Infinity
        return None


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_record_info(data: Any, *, task_id: str | None = None) -> TaskSnapshot:
    """A snapshot from record-info's camelCase ``data``; lenient about absent or extra fields."""
    if not isinstance(data, dict):
        raise ProtocolError(f"record-info data is not an object: {type(data).__name__}")
    tid = _optional_str(data.get("taskId")) or task_id
    if tid is None:
        raise ProtocolError("record-info data has no taskId")
    status = data.get("status")
    if not isinstance(status, str) or not status:
        status = "PENDING"  # absent status: nothing is known yet
    response = data.get("response")
    raw_tracks = response.get("sunoData") if isinstance(response, dict) else None
    return make_snapshot(
        tid,
        status,
        structure_tracks(raw_tracks),
        error_code=_optional_int(data.get("errorCode")),
        error_message=_optional_str(data.get("errorMessage")),
    )


# --- callbacks -----------------------------------------------------------------------------

CALLBACK_STATUS = {
    "text": "TEXT_SUCCESS",
    "first": "FIRST_SUCCESS",
    "complete": "SUCCESS",
    "error": "GENERATE_AUDIO_FAILED",
    "failed": "GENERATE_AUDIO_FAILED",
}


def callback_task_id(payload: Any) -> str | None:
    """The task id in a callback body (``data.task_id``, or ``taskId`` as other families send)."""
    if not isinstance(payload, dict):
        return None
    data = payload.get("data")
    if isinstance(data, dict):
        for key in ("task_id", "taskId"):
            value = data.get(key)
            if isinstance(value, str) and value:
                return value
    for key in ("task_id", "taskId"):
        value = payload.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def decode_callback_body(body: bytes) -> dict[str, Any]:
    """The JSON object of a callback body, or ``CallbackRejected``."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CallbackRejected("body is not JSON", http_status=400) from exc
    if not isinstance(payload, dict):
        raise CallbackRejected("body is not a JSON object", http_status=400)
    return payload


def snapshot_from_callback(payload: dict[str, Any]) -> TaskSnapshot:
    """The same ``TaskSnapshot`` a poll would give, from a snake_case callback payload."""
    task_id = callback_task_id(payload)
    if task_id is None:
        raise CallbackRejected("no task id in body", http_status=400)
    data = payload.get("data")
    data = data if isinstance(data, dict) else {}
    kind = data.get("callbackType", data.get("callback_type"))
    kind = kind.lower() if isinstance(kind, str) else ""
    code = _optional_int(payload.get("code"))
    msg = _optional_str(payload.get("msg"))
    try:
        tracks = structure_tracks(data.get("data") if isinstance(data.get("data"), list) else None)
    except ProtocolError as exc:
        raise CallbackRejected(f"tracks cannot be read: {exc}", http_status=400) from exc
    failed = kind in ("error", "failed") or (code is not None and code != 200)
    if failed:
        return make_snapshot(
            task_id,
            "GENERATE_AUDIO_FAILED",
            tracks,
            error_code=code,
            error_message=msg or _optional_str(data.get("error")),
            source="callback",
        )
    # An unknown type is kept under a name that can never collide with a real status.
    status = CALLBACK_STATUS.get(kind, f"UNKNOWN_CALLBACK_{kind.upper()}")
    return make_snapshot(task_id, status, tracks, source="callback")


def sign(task_id: str, timestamp: str, key: str) -> str:
    """Kie's webhook signature: base64(HMAC-SHA256(task_id + "." + timestamp, key))."""
    mac = hmac.new(key.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # plain dicts are case-sensitive; multidicts are not
        lowered = name.lower()
        for key, candidate in headers.items():
            if key.lower() == lowered:
                return candidate
    return value


def verify_signature(
    headers: Mapping[str, str], task_id: str, key: str, *, now: float, window: float = 300.0
) -> None:
    """Check ``X-Webhook-Signature`` and ``X-Webhook-Timestamp``; raise ``CallbackRejected``."""
    timestamp = _header(headers, "X-Webhook-Timestamp")
    signature = _header(headers, "X-Webhook-Signature")
    if not timestamp or not signature:
        raise CallbackRejected("missing signature headers", http_status=401)
    try:
        ts = int(timestamp.strip())
    except ValueError as exc:
        raise CallbackRejected("timestamp is not an integer", http_status=401) from exc
    if abs(now - ts) > window:
        raise CallbackRejected("timestamp outside the allowed window", http_status=401)
    expected = sign(task_id, timestamp.strip(), key)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        raise CallbackRejected("signature does not match", http_status=401)


def parse_callback_at(
    headers: Mapping[str, str],
    body: bytes,
    *,
    hmac_key: str | None,
    now: float,
    window: float = 300.0,
) -> TaskSnapshot:
    """Verify (when a key is given) and parse one callback delivery at time ``now``."""
    payload = decode_callback_body(body)
    if hmac_key is not None:
        task_id = callback_task_id(payload)
        if task_id is None:
            raise CallbackRejected("no task id in body", http_status=400)
        verify_signature(headers, task_id, hmac_key, now=now, window=window)
    return snapshot_from_callback(payload)


# --- timing --------------------------------------------------------------------------------


def backoff_delay(attempt: int, policy: RetryPolicy, rand: float) -> float:
    """Full-jitter capped exponential backoff before retry number ``attempt`` (1-based)."""
    ceiling = min(policy.cap, policy.base * 2.0 ** min(attempt - 1, 64))  # no float overflow
    return float(ceiling * rand)


def retry_delay(error: Exception, attempt: int, policy: RetryPolicy, rand: float) -> float:
    """How long to wait before retrying after ``error``; Retry-After wins when given."""
    if isinstance(error, RateLimitError) and error.retry_after is not None:
        return min(error.retry_after, policy.max_retry_after)
    return backoff_delay(attempt, policy, rand)


def poll_interval(stage: Stage, age: float, policy: PollPolicy, rand: float) -> float:
    """Seconds until the next poll of a task ``age`` seconds old at ``stage``.

    ``rand`` is uniform in [0, 1); it spreads polls by ``policy.jitter`` either way.
    """
    base = min(policy.maximum, policy.initial + policy.growth * max(0.0, age))
    if stage >= Stage.FIRST:
        base = min(base, policy.after_first)
    jittered = base * (1.0 + policy.jitter * (2.0 * rand - 1.0))
    return max(policy.min_interval, jittered)


def outage_interval(failures: int, policy: PollPolicy, rand: float) -> float:
    """Backoff for a task whose polls keep failing: grows to ``outage_maximum``, jittered."""
    base = min(policy.outage_maximum, policy.initial * 2.0 ** min(failures, 16))
    return float(max(policy.min_interval, base * (0.5 + 0.5 * rand)))


class SlidingWindow:
    """At most ``limit`` events in any ``window`` seconds; time is passed in."""

    __slots__ = ("_times", "limit", "window")

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._times: deque[float] = deque()

    def delay(self, now: float) -> float:
        """Seconds to wait before one more event is allowed (0 when allowed now)."""
        times = self._times
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) < self.limit:
            return 0.0
        # Times may include reservations in the future; the limit-th latest one decides.
        return max(0.0, times[-self.limit] + self.window - now)

    def record(self, now: float) -> None:
        self._times.append(now)
