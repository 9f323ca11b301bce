"""The fake server's canned replies: envelopes, injected faults, hang-ups."""

from __future__ import annotations

import json

from aiohttp import web

from kiemashup.testing._faults import Fault

__all__ = ["envelope", "fault_response", "hang_up", "mangle", "mangle_data", "redact"]

_REDACTED = "<redacted>"
_CODE_MESSAGES = {
    401: "You do not have access permissions",
    402: "The current credits are insufficient. Please top up.",
    404: "Not found",
    422: "Validation error",
    429: "rate limited",
    451: "Failed to fetch the file",
    455: "Service unavailable: maintenance",
    500: "Server error",
    501: "Generation failed",
    503: "Service unavailable",
    505: "Feature disabled",
}


def envelope(
    code: int,
    msg: str | None = None,
    data: object = None,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A ``{code, msg, data}`` JSON envelope; ``msg`` defaults to the code's usual wording."""
    body = {"code": code, "msg": msg or _CODE_MESSAGES.get(code, "error"), "data": data}
    return web.json_response(body, status=status, headers=headers)


def hang_up(request: web.Request) -> web.Response:
    """Close the connection so the client gets no reply at all."""
    if request.transport is not None:
        request.transport.close()
    return web.Response()  # never sent: the transport is closing


def redact(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` with the Authorization value (the API key) replaced."""
    return {k: _REDACTED if k.lower() == "authorization" else v for k, v in headers.items()}


def fault_response(fault: Fault, request: web.Request) -> web.StreamResponse:
    """The reply (or hang-up) for a fault that replaces normal handling."""
    if fault.kind == "http_500":
        return envelope(500, status=500)
    if fault.kind == "http_503":
        return envelope(503, status=503)
    if fault.kind == "body_code":
        assert fault.code is not None
        return envelope(fault.code)
    if fault.kind == "rate_limit":
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
        return envelope(429, status=429, headers=headers)
    if fault.kind == "maintenance":
        return envelope(455)
    if fault.kind == "invalid_json":
        return web.Response(text='{"code":200,"msg":', content_type="application/json")
    return hang_up(request)  # "reset"


# --- "mangle" (tests/test_soak.py): the API's fields drift ----------------------------------

#: record-info fields a "mangle" fault drops, renames (old -> new) and adds.
_MANGLE_DROP = ("param", "parentMusicId", "operationType", "errorMessage")
_MANGLE_RENAME = {"type": "taskType", "errorCode": "error_code"}
_MANGLE_TRACK_DROP = ("imageUrl", "tags", "prompt")
_MANGLE_TRACK_RENAME = {"duration": "durationSeconds", "modelName": "model_name"}


def mangle_data(data: object) -> object:
    """``data`` with optional fields dropped, renamed and unknown ones added (tracks too).

    ``taskId``, ``status`` and the tracks' ids and URLs survive: a lenient client
    still follows the task, it only loses the details.
    """
    if not isinstance(data, dict):
        return data
    out = {_MANGLE_RENAME.get(k, k): v for k, v in data.items() if k not in _MANGLE_DROP}
    out["futureField"] = {"added": True, "list": [1, 2, 3]}
    response = out.get("response")
    if isinstance(response, dict) and isinstance(response.get("sunoData"), list):
        tracks = []
        for track in response["sunoData"]:
            if isinstance(track, dict):
                track = {
                    _MANGLE_TRACK_RENAME.get(k, k): v
                    for k, v in track.items()
                    if k not in _MANGLE_TRACK_DROP
                }
                track["lyricsUrl"] = None
            tracks.append(track)
        out["response"] = {**response, "sunoData": tracks, "extra": "unknown"}
    return out


def mangle(response: web.StreamResponse) -> web.StreamResponse:
    """The same JSON envelope reply with its ``data`` passed through ``mangle_data``."""
    body = response.body if isinstance(response, web.Response) else None
    if not isinstance(body, bytes):
        return response
    try:
        decoded = json.loads(body)
    except ValueError:
        return response
    if isinstance(decoded, dict) and "data" in decoded:
        decoded["data"] = mangle_data(decoded["data"])
    return web.json_response(decoded, status=response.status)
