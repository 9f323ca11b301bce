"""Kie's callbacks without I/O: bound, decode, verify the signature, and read a claim.

Trust (``_core.state`` rule 6): Kie signs the task id and a timestamp, not the body, so
a callback's snapshot is a claim: never terminal or failed, at most FIRST, no tracks.
Bounds: every body is refused before any recursion or per-track work when it holds more
than ``MAX_CONTAINERS`` JSON objects and arrays (which bounds nesting too), more than
``MAX_TRACKS`` tracks, a task id over ``MAX_TASK_ID`` characters, or a ``callbackType``
Kie does not send. This module performs no I/O and reads no clock: ``now`` is an argument.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, NamedTuple

from kiemashup._core.errors import CallbackRejected
from kiemashup._core.models import TaskSnapshot
from kiemashup._core.protocol import optional_int, optional_str
from kiemashup._core.state import make_snapshot

#: Kie's callbackType values and the status each one claims.
CALLBACK_STATUS = {
    "text": "TEXT_SUCCESS",
    "first": "FIRST_SUCCESS",
    "complete": "SUCCESS",
    "error": "GENERATE_AUDIO_FAILED",
    "failed": "GENERATE_AUDIO_FAILED",
}
MAX_TRACKS = 8  # Kie sends 2; a callback's tracks are never read (rule 6), only counted
MAX_CONTAINERS = 256  # JSON objects + arrays in one body (Kie's has about 6)
MAX_STRINGS = 4_096  # JSON strings in a body with many brackets (Kie's has about 60)
MAX_TASK_ID = 128  # Kie's task ids are 32 characters
MAX_MESSAGE = 1_000  # characters of ``msg`` kept
# A JSON string literal once its escaped backslashes and quotes are gone, or an unclosed
# one to the end of the body: the closing quote is optional so that a quote with no
# partner is one linear pass, never a scan retried from every later quote (quadratic:
# 64 KiB of them took 12 s).
_STRING = re.compile(rb'"[^"]*"?')


def callback_task_id(payload: Any) -> str | None:
    """The task id in a callback body (``data.task_id``, or ``taskId`` as other families send)."""
    if not isinstance(payload, dict):
        return None
    data = payload.get("data")
    for where in (data, payload):
        if isinstance(where, dict):
            for key in ("task_id", "taskId"):
                value = where.get(key)
                if isinstance(value, str) and value:
                    return value
    return None


def count_containers(body: bytes) -> int:
    """How many JSON objects and arrays ``body`` opens, string contents aside (C-speed scans).

    Counting every bracket is nearly free and never undercounts; only a body over the
    limit that way (lyrics full of ``[Verse]``, say) pays for stripping its strings.
    """
    rough = body.count(b"{") + body.count(b"[")
    if rough <= MAX_CONTAINERS:
        return rough
    # Escaped backslashes first (so "\\" before a quote leaves a real quote), then
    # escaped quotes: what is left between quotes is string content. All C-speed, and
    # at most MAX_STRINGS regex matches (a body with more strings counts as too many).
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    if unescaped.count(b'"') > 2 * MAX_STRINGS:
        return rough
    bare = _STRING.sub(b"", unescaped)
    return bare.count(b"{") + bare.count(b"[")


def decode_callback_body(body: bytes) -> dict[str, Any]:
    """The JSON object of a callback body, or ``CallbackRejected`` (400).

    The body must be UTF-8 (``json.loads`` would also guess UTF-16 and UTF-32, whose
    bytes the bracket count cannot read). The container count is checked before
    decoding: it bounds nesting depth, so no body can drive the JSON decoder into deep
    recursion, and a huge array of objects is refused before it is built.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CallbackRejected("body is not UTF-8", http_status=400) from exc
    if count_containers(body) > MAX_CONTAINERS:
        raise CallbackRejected(
            "body too deeply nested, or too many objects or strings", http_status=400
        )
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CallbackRejected("body is not JSON", http_status=400) from exc
    if not isinstance(payload, dict):
        raise CallbackRejected("body is not a JSON object", http_status=400)
    return payload


def _claimed_status(data: dict[str, Any], code: int | None) -> str:
    kind = data.get("callbackType", data.get("callback_type"))
    status = CALLBACK_STATUS.get(kind.lower()) if isinstance(kind, str) else None
    if status is not None:
        return status
    if kind is None and code is not None and code != 200:
        return "GENERATE_AUDIO_FAILED"  # an error reply without its type: ask a poll
    raise CallbackRejected("unknown callbackType", http_status=400)


def snapshot_from_callback(payload: dict[str, Any]) -> TaskSnapshot:
    """The claim a callback payload makes, as a ``TaskSnapshot`` (``confirmed`` False)."""
    task_id = callback_task_id(payload)
    if task_id is None:
        raise CallbackRejected("no task id in body", http_status=400)
    if len(task_id) > MAX_TASK_ID:
        raise CallbackRejected("task id too long", http_status=400)
    if not task_id.isascii():  # Kie's ids are hex; this also keeps kept claims small in bytes
        raise CallbackRejected("task id is not ASCII", http_status=400)
    data = payload.get("data")
    data = data if isinstance(data, dict) else {}
    tracks = data.get("data")
    if isinstance(tracks, list) and len(tracks) > MAX_TRACKS:
        raise CallbackRejected(f"more than {MAX_TRACKS} tracks", http_status=400)
    code = optional_int(payload.get("code"))
    status = _claimed_status(data, code)
    message = optional_str(payload.get("msg")) or optional_str(data.get("error"))
    failed = status == "GENERATE_AUDIO_FAILED" or (code is not None and code != 200)
    return make_snapshot(
        task_id,
        "GENERATE_AUDIO_FAILED" if failed else status,
        error_code=code if failed else None,
        error_message=message[:MAX_MESSAGE] if failed and message else None,
        source="callback",
    )


def sign(task_id: str, timestamp: str, key: str) -> str:
    """Kie's webhook signature: base64(HMAC-SHA256(task_id + "." + timestamp, key))."""
    mac = hmac.new(key.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """One header's value; None when absent or not text (treated as missing)."""
    if not isinstance(headers, Mapping):
        return None
    value = headers.get(name)
    if value is None:  # plain dicts are case-sensitive; multidicts are not
        lowered = name.lower()
        for key, candidate in headers.items():
            if isinstance(key, str) and key.lower() == lowered:
                value = candidate
                break
    return value if isinstance(value, str) else None


def body_bytes(body: object) -> bytes:
    """A delivery's body as bytes (``str`` is taken as UTF-8), or ``CallbackRejected``."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    if isinstance(body, str):
        try:
            return body.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate
            raise CallbackRejected("body is not UTF-8", http_status=400) from exc
    raise CallbackRejected("body is not bytes or text", http_status=400)


def _timestamp(raw: str) -> str:
    """The timestamp header as Kie signs it: ASCII digits, HTTP's own spaces trimmed.

    One normal form for the signature and the replay key alike: ``str.strip`` and
    ``int`` would accept Unicode spaces and digits, so an NBSP appended to a captured
    header would make an old delivery look new.
    """
    text = raw.strip(" \t")
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        raise CallbackRejected("timestamp is not an integer", http_status=401)
    return text


def verify_signature(
    headers: Mapping[str, str], task_id: str, key: str, *, now: float, window: float = 300.0
) -> str:
    """Check ``X-Webhook-Signature`` and ``X-Webhook-Timestamp``; the normalised timestamp.

    Raises ``CallbackRejected`` (401) for a missing, stale or wrong signature.
    """
    raw_timestamp = _header(headers, "X-Webhook-Timestamp")
    signature = _header(headers, "X-Webhook-Signature")
    if not raw_timestamp or not signature:
        raise CallbackRejected("missing signature headers", http_status=401)
    timestamp = _timestamp(raw_timestamp)
    if abs(now - int(timestamp)) > window:
        raise CallbackRejected("timestamp outside the allowed window", http_status=401)
    expected = sign(task_id, timestamp, key)
    given = signature.strip(" \t")
    if not given.isascii() or not hmac.compare_digest(expected.encode(), given.encode()):
        raise CallbackRejected("signature does not match", http_status=401)
    return timestamp


class Delivery(NamedTuple):
    """One callback read: its claim, and the signed timestamp (None when unsigned)."""

    snapshot: TaskSnapshot
    timestamp: str | None


def read_callback(
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    hmac_key: str | None,
    now: float,
    window: float = 300.0,
) -> Delivery:
    """Bound, decode, verify (when a key is given) and parse one callback delivery."""
    payload = decode_callback_body(body_bytes(body))
    timestamp = None
    if hmac_key is not None:
        task_id = callback_task_id(payload)
        if task_id is None:
            raise CallbackRejected("no task id in body", http_status=400)
        timestamp = verify_signature(headers, task_id, hmac_key, now=now, window=window)
    return Delivery(snapshot_from_callback(payload), timestamp)


def parse_callback_at(
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    hmac_key: str | None,
    now: float,
    window: float = 300.0,
) -> TaskSnapshot:
    """Verify (when a key is given) and parse one callback delivery at time ``now``."""
    return read_callback(headers, body, hmac_key=hmac_key, now=now, window=window).snapshot


class ReplayGuard:
    """Signed deliveries seen before, by (task, normalised timestamp, claimed status).

    Not keyed on the signature alone: it covers only task id and timestamp, so two
    genuine stages sent within one second carry the same one. Bounded: the oldest
    are forgotten first (a delivery older than the signature window is refused anyway).
    """

    __slots__ = ("_seen", "size")

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()

    def replayed(self, delivery: Delivery) -> bool:
        """True when ``delivery`` was seen before; otherwise remember it."""
        if delivery.timestamp is None:
            return False  # unsigned: nothing to tell a replay from a repeat by
        snapshot = delivery.snapshot
        key = (snapshot.task_id, delivery.timestamp, str(snapshot.status))
        if key in self._seen:
            return True
        self._seen[key] = None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return False
