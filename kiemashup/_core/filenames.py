"""Pure rules for files: audio sniffing and safe names. This module performs no I/O.

Names are bounded and sanitised here so that no file the SDK writes can escape its
folder or trip over an operating system's reserved names.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote, urlsplit

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
NAME_MAX = 120  # bytes of UTF-8: file systems limit names in bytes (255), not characters


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


def mime_type(head: bytes) -> str:
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


def content_upload_name(name: str, digest: str) -> str:
    """``"<stem>-<digest16><ext>"``: a local file's upload name, unique to its content.

    Two different files called ``song.mp3`` (in different folders) must not share a
    URL on the upload host, so the name carries a digest of the bytes.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    ext = extension_of(base)
    stem = base[: len(base) - len(ext)] if ext else base
    ext = ext if ext in AUDIO_EXTENSIONS else ""
    return f"{safe_component(stem, fallback='upload')}-{digest[:16]}{ext}"


def truncate_bytes(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, never inside a character."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


def safe_component(text: str, *, fallback: str = "track") -> str:
    """``text`` made safe as one file name component: no separators, no traversal, bounded."""
    text = unicodedata.normalize("NFKC", text)
    text = _UNSAFE.sub("_", text)
    text = _SPACES.sub(" ", text).strip(" ._")
    text = truncate_bytes(text, NAME_MAX).rstrip(" ._")
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
