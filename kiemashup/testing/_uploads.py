"""The fake File Upload API (KIE-API.md §5.2) and the body faults of file downloads.

``UploadStore`` answers the three upload endpoints with Kie's envelope plus
``success``, keeps the bytes in memory and serves them back at their
``downloadUrl`` on the same fake server (``/uploads/<uploadPath>/<fileName>``;
the same name overwrites, as on Kie). The URL upload fetches loopback URLs only
(the fake itself, say) and fails with code 451 for anything else.

``body_fault`` plays the download faults on any reply: ``reset_mid_body`` sends
the headers and half the body, then aborts the connection; ``drip`` sends the
body in 8 pieces ``delay`` seconds apart.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import mimetypes
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp import web

from kiemashup.testing._faults import Fault

__all__ = ["BODY_FAULT_KINDS", "StoredFile", "UploadStore", "body_fault"]

BODY_FAULT_KINDS: tuple[str, ...] = ("reset_mid_body", "drip")
_DRIP_PIECES = 8
_FETCH_TIMEOUT = 30.0  # Kie's documented limit for URL uploads


@dataclass(frozen=True)
class StoredFile:
    """One uploaded file as the fake keeps it."""

    file_path: str
    data: bytes
    mime_type: str
    uploaded_at: str


def _reply(code: int, msg: str, data: object = None, *, status: int = 200) -> web.Response:
    body = {"success": code == 200, "code": code, "msg": msg, "data": data}
    return web.json_response(body, status=status)


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class UploadStore:
    """Uploaded files by path, and the handlers that fill and serve them."""

    def __init__(self, base_url: Callable[[], str]) -> None:
        self._base_url = base_url
        self.files: dict[str, StoredFile] = {}

    def _store(self, data: bytes, upload_path: str, file_name: str | None) -> web.Response:
        if not data:
            return _reply(400, "file is empty")
        name = (file_name or "").strip().replace("/", "_") or f"{uuid.uuid4().hex}.bin"
        folder = upload_path.strip("/") or "uploads"
        file_path = f"{folder}/{name}"
        mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        self.files[file_path] = StoredFile(file_path, data, mime, stamp)
        download_url = f"{self._base_url()}/uploads/{quote(file_path)}"
        return _reply(
            200,
            "File uploaded successfully",
            {
                "fileName": name,
                "filePath": file_path,
                "downloadUrl": download_url,
                "fileSize": len(data),
                "mimeType": mime,
                "uploadedAt": stamp,
            },
        )

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """POST /api/file-stream-upload: multipart ``file``, ``uploadPath``, ``fileName``."""
        if not request.content_type.startswith("multipart/"):
            return _reply(400, "expected multipart/form-data")
        boundary = _boundary(request.headers.get("Content-Type", ""))
        if boundary is None:
            return _reply(400, "multipart body has no boundary")
        fields: dict[str, str] = {}
        data: bytes | None = None
        part_name: str | None = None
        for headers, content in _parts(await request.read(), boundary):
            disposition = headers.get("content-disposition", "")
            name, filename = _param(disposition, "name"), _param(disposition, "filename")
            if name == "file":
                data, part_name = content, filename
            elif name:
                fields[name] = content.decode("utf-8", "replace")
        if data is None:
            return _reply(400, "file: required")
        return self._store(data, fields.get("uploadPath", ""), fields.get("fileName") or part_name)

    async def base64(self, request: web.Request) -> web.StreamResponse:
        """POST /api/file-base64-upload: JSON ``{base64Data, uploadPath, fileName}``."""
        body = await _json(request)
        raw = body.get("base64Data") if body is not None else None
        if not isinstance(raw, str) or not raw:
            return _reply(400, "base64Data: required")
        if raw.startswith("data:"):
            raw = raw.partition(",")[2]
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            return _reply(400, "base64Data: not valid base64")
        assert body is not None
        return self._store(data, str(body.get("uploadPath") or ""), body.get("fileName"))

    async def url(self, request: web.Request) -> web.StreamResponse:
        """POST /api/file-url-upload: JSON ``{fileUrl, uploadPath, fileName}`` (loopback only)."""
        body = await _json(request)
        file_url = body.get("fileUrl") if body is not None else None
        if not isinstance(file_url, str) or not file_url:
            return _reply(400, "fileUrl: required")
        if not _is_loopback(file_url):
            return _reply(451, "Failed to fetch the file (the fake fetches loopback URLs only)")
        try:
            timeout = aiohttp.ClientTimeout(total=_FETCH_TIMEOUT)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(file_url) as resp,
            ):
                if resp.status != 200:
                    return _reply(451, f"Failed to fetch the file (HTTP {resp.status})")
                data = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _reply(451, f"Failed to fetch the file ({type(exc).__name__})")
        assert body is not None
        name = body.get("fileName") or urlsplit(file_url).path.rsplit("/", 1)[-1]
        return self._store(data, str(body.get("uploadPath") or ""), name)

    async def serve(self, request: web.Request) -> web.StreamResponse:
        """GET /uploads/{path}: the stored bytes, with Content-Length."""
        stored = self.files.get(request.match_info["path"])
        if stored is None:
            return web.json_response({"code": 404, "msg": "file not found"}, status=404)
        return web.Response(body=stored.data, content_type=stored.mime_type)


def _boundary(content_type: str) -> bytes | None:
    """The multipart boundary of a Content-Type header."""
    if not content_type.lower().startswith("multipart/"):
        return None
    value = _param(content_type, "boundary")
    return value.encode() if value else None


def _param(header: str, key: str) -> str | None:
    """``key``'s value in a header such as ``form-data; name="file"; filename="a.mp3"``."""
    for item in header.split(";")[1:]:
        name, _, value = item.strip().partition("=")
        if name.strip().lower() == key:
            return value.strip().strip('"')
    return None


def _parts(body: bytes, boundary: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The (headers, content) of each part of a multipart body, bytes exact.

    Parsed by hand: aiohttp's streaming reader warns (deprecated ``unread_data``).
    """
    parts = []
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, _, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, content.removesuffix(b"\r\n")))
    return parts


async def _json(request: web.Request) -> dict[str, Any] | None:
    try:
        body = json.loads(await request.read())
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def body_fault(
    fault: Fault, request: web.Request, response: web.StreamResponse
) -> web.StreamResponse:
    """Send ``response`` the way ``fault`` says: cut off mid-body, or dripped slowly."""
    body = response.body if isinstance(response, web.Response) else None
    if not isinstance(body, bytes):
        return response  # nothing buffered to misbehave with
    out = web.StreamResponse(status=response.status, headers=response.headers)
    out.content_length = len(body)
    await out.prepare(request)
    if fault.kind == "reset_mid_body":
        await out.write(body[: len(body) // 2])
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # aiohttp's way to end a handler whose peer is gone
    step = max(1, -(-len(body) // _DRIP_PIECES))
    for start in range(0, len(body), step):
        await out.write(body[start : start + step])
        await asyncio.sleep(fault.delay)
    await out.write_eof()
    return out
