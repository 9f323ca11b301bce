"""Pure helpers for files: audio sniffing, safe names, upload replies. This module performs no I/O.

Kie's File Upload API (KIE-API.md §5.2) lives on its own host and wraps replies
in the usual ``{code, msg, data}`` envelope plus a ``success`` flag; the URL to
pass on is ``data.downloadUrl``. Uploaded files are deleted after 3 days.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any
from urllib.parse import unquote, urlsplit

from kiemashup._errors import APIError, ProtocolError, UploadError
from kiemashup._request import is_http_url
from kiemashup._sansio import parse_envelope

STREAM_UPLOAD_PATH = "/api/file-stream-upload"
BASE64_UPLOAD_PATH = "/api/file-base64-upload"
URL_UPLOAD_PATH = "/api/file-url-upload"
DEFAULT_UPLOAD_PATH = "kiemashup/uploads"
BASE64_MAX = 1024 * 1024  # bytes up to this size go as base64 JSON; bigger ones are streamed
SNIFF_BYTES = 16

#: Audio kinds we recognise, with their usual extension and MIME type.
AUDIO_KINDS: dict[str, tuple[str, str]] = {
    "mp3": (".mp3", "audio/mpeg"),
    "wav": (".wav", "audio/wav"),
    "flac": (".flac", "audio/flac"),
    "ogg": (".ogg", "audio/ogg"),
    "m4a": (".m4a", "audio/mp4"),
    "aac": (".aac", "audio/aac"),
}
AUDIO_EXTENSIONS = frozenset(
    {".mp3", ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".mp4", ".aac"}
)

_UNSAFE = re.compile(r"[^\w\-. ()\[\]]+")
_SPACES = re.compile(r"\s+")
_WINDOWS_RESERVED = frozenset(
    {
        "con",
        "prn",
        "aux",
        "nul",
        *(f"com{i}" for i in range(1, 10)),
        *(f"lpt{i}" for i in range(10)),
    }
)
NAME_MAX = 120


def sniff_audio(head: bytes) -> str | None:
    """The audio kind the first bytes of a file announce ("mp3", "wav", ...), or None."""
    if head.startswith(b"ID3"):
        return "mp3"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"OggS"):
        return "ogg"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[4:8] == b"ftyp":
        return "m4a"
    if head.startswith(b"ADIF"):
        return "aac"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        # MPEG frame sync; layer bits 00 mean an AAC ADTS stream, anything else MPEG audio.
        return "aac" if head[1] & 0x06 == 0 else "mp3"
    return None


def audio_problem(head: bytes, name: str | None) -> str | None:
    """Why a file with these first bytes (and this name) is not uploadable audio, or None."""
    if not head:
        return "the file is empty"
    if sniff_audio(head) is not None:
        return None
    ext = extension_of(name) if name else ""
    shown = f" (extension {ext!r})" if ext else ""
    return f"not an audio file{shown}: its first bytes match none of mp3, wav, flac, ogg, m4a, aac"


def extension_of(name: str) -> str:
    """The lower-case extension of ``name`` (".mp3"), or ""."""
    base = name.rsplit("/", 1)[-1]
    dot = base.rfind(".")
    return base[dot:].lower() if dot > 0 else ""


def mime_type(head: bytes, name: str | None = None) -> str:
    """The MIME type to declare for an upload."""
    kind = sniff_audio(head)
    if kind is not None:
        return AUDIO_KINDS[kind][1]
    return "application/octet-stream"


def default_upload_name(head: bytes, digest: str) -> str:
    """A stable file name for bytes with no name of their own: ``upload-<digest>.<ext>``."""
    kind = sniff_audio(head)
    ext = AUDIO_KINDS[kind][0] if kind is not None else ".bin"
    return f"upload-{digest[:16]}{ext}"


def safe_component(text: str, *, fallback: str = "track") -> str:
    """``text`` made safe as one file name component: no separators, no traversal, bounded."""
    text = unicodedata.normalize("NFKC", text)
    text = _UNSAFE.sub("_", text)
    text = _SPACES.sub(" ", text).strip(" ._")
    text = text[:NAME_MAX].rstrip(" ._")
    if not text or text.split(".")[0].lower() in _WINDOWS_RESERVED:
        text = f"{fallback}_{text}" if text else fallback
    return text


def track_file_name(title: str | None, track_id: str | None, url: str) -> str:
    """``"<title> - <id8>.<ext>"``, sanitized, for a track saved into a folder."""
    ext = extension_of(urlsplit(url).path) or ".mp3"
    if ext not in AUDIO_EXTENSIONS and ext not in (".jpeg", ".jpg", ".png"):
        ext = ".mp3"
    stem = safe_component(title or "", fallback="track")
    if track_id:
        stem = f"{stem} - {safe_component(track_id, fallback='id')[:8]}"
    return stem + ext


def url_file_name(url: str) -> str:
    """A safe file name from the last segment of ``url``'s path."""
    segment = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return safe_component(segment, fallback="download")


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
