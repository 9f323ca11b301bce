"""Kie's callbacks without I/O: decode, verify the signature, and read a snapshot.

This module performs no I/O and reads no clock: the current time is an argument.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from kiemashup._core.errors import CallbackRejected, ProtocolError
from kiemashup._core.models import TaskSnapshot
from kiemashup._core.protocol import optional_int, optional_str
from kiemashup._core.state import make_snapshot
from kiemashup._core.wire import structure_tracks

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
    code = optional_int(payload.get("code"))
    msg = optional_str(payload.get("msg"))
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
            error_message=msg or optional_str(data.get("error")),
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
