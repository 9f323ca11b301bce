"""Uploads to Kie's File Upload API and downloads of results, over the transport's session.

Uploads go to their own host (``upload_base_url``) with the same Bearer key and the
client's caps; paths and file objects are streamed as multipart (never read whole
into memory), small byte strings are sent as base64 JSON. Downloads fetch public
result URLs *without* the API key, stream to a temporary file in the destination
folder and rename it only once complete and verified, so no half-written file
ever carries the final name. Both retry transient failures with the client's
``RetryPolicy``. Uploaded files expire after 3 days, result URLs after 14 days or
less (KIE-API.md §2, §5): download promptly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any

import aiohttp

from kiemashup._core.errors import DownloadError, FileValidationError, ServerError
from kiemashup._core.filenames import (
    SNIFF_BYTES,
    audio_problem,
    default_upload_name,
    mime_type,
    safe_component,
    track_file_name,
    url_file_name,
)
from kiemashup._core.models import Track
from kiemashup._core.policy import Timeouts
from kiemashup._core.protocol import (
    BASE64_MAX,
    BASE64_UPLOAD_PATH,
    DEFAULT_UPLOAD_PATH,
    STREAM_UPLOAD_PATH,
    URL_UPLOAD_PATH,
    parse_upload_reply,
)
from kiemashup._core.request import is_http_url
from kiemashup._transport import RETRYABLE_READ, USER_AGENT, Transport, translate

#: ``progress(bytes_done, total_or_None)`` after every chunk written.
Progress = Callable[[int, int | None], None]
UploadSource = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]

CHUNK = 64 * 1024


class _Truncated(Exception):
    """The body ended before Content-Length bytes arrived (retryable)."""


class FileTransfer:
    """Upload and download for one client; borrows the client's transport."""

    def __init__(
        self,
        transport: Transport,
        *,
        upload_base_url: str,
        timeouts: Timeouts,
    ) -> None:
        self._transport = transport
        self.upload_base_url = upload_base_url.rstrip("/")
        # Retries go through the transport's one loop, with the client's RetryPolicy.
        # Uploads and downloads of big files can be long: bound connect and each read
        # (a stall), not the whole transfer.
        self._transfer_timeout = aiohttp.ClientTimeout(
            total=None, connect=timeouts.connect, sock_read=timeouts.read
        )

    # --- uploads ----------------------------------------------------------------------------

    async def upload(
        self,
        source: UploadSource,
        *,
        file_name: str | None = None,
        upload_path: str = DEFAULT_UPLOAD_PATH,
    ) -> str:
        """Upload a local file, bytes or a binary file object; return its ``downloadUrl``."""
        if isinstance(source, bytes | bytearray | memoryview):
            data = bytes(source)
            check(data[:SNIFF_BYTES], file_name, "<bytes>")
            name = file_name or default_upload_name(data, hashlib.sha256(data).hexdigest())
            if len(data) <= BASE64_MAX:
                payload = {
                    "base64Data": base64.b64encode(data).decode("ascii"),
                    "uploadPath": upload_path,
                    "fileName": name,
                }
                return await self._post(BASE64_UPLOAD_PATH, lambda: {"json": payload})
            return await self._stream(io.BytesIO(data), name, upload_path, data[:SNIFF_BYTES])
        if isinstance(source, str | os.PathLike):
            path = Path(source)
            fh, head = await asyncio.to_thread(_open_audio, path)
            try:
                return await self._stream(fh, file_name or path.name, upload_path, head)
            finally:
                fh.close()
        if hasattr(source, "read"):
            return await self._upload_fileobj(source, file_name, upload_path)
        raise TypeError(
            f"upload() takes a path, bytes or a binary file, not {type(source).__name__}"
        )

    async def _upload_fileobj(self, fh: IO[bytes], file_name: str | None, upload_path: str) -> str:
        raw_name = getattr(fh, "name", None)
        shown = raw_name if isinstance(raw_name, str) else "<file object>"
        seekable = _seekable(fh)
        if seekable:
            start = fh.tell()
            head = fh.read(SNIFF_BYTES)
            fh.seek(start)
        else:
            head = fh.read(SNIFF_BYTES)
        if not isinstance(head, bytes):
            raise FileValidationError(shown, "the file object is not binary (open it with 'rb')")
        check(head, raw_name if isinstance(raw_name, str) else file_name, shown)
        name = file_name or (
            os.path.basename(raw_name)
            if isinstance(raw_name, str) and raw_name
            else default_upload_name(head, hashlib.sha256(head).hexdigest())
        )
        if seekable:
            return await self._stream(fh, name, upload_path, head)
        # Not seekable: the head is already consumed; stream it back in front, once (no retry).
        return await self._post(
            STREAM_UPLOAD_PATH,
            lambda: {"data": _form(_chain(head, fh), name, upload_path, head)},
            attempts=1,
        )

    async def _stream(self, fh: IO[bytes], name: str, upload_path: str, head: bytes) -> str:
        start = fh.tell()

        def form() -> dict[str, Any]:
            fh.seek(start)  # a retry sends the whole file again
            return {"data": _form(_NoClose(fh), name, upload_path, head)}

        return await self._post(STREAM_UPLOAD_PATH, form)

    async def upload_url(
        self, url: str, *, file_name: str | None = None, upload_path: str = DEFAULT_UPLOAD_PATH
    ) -> str:
        """Have Kie copy a remote file (30 s limit, ~100 MB); return its ``downloadUrl``."""
        if not is_http_url(url):
            raise FileValidationError(url, "not an http(s) URL")
        payload: dict[str, str] = {"fileUrl": url, "uploadPath": upload_path}
        payload["fileName"] = file_name or url_file_name(url)
        return await self._post(URL_UPLOAD_PATH, lambda: {"json": payload})

    async def _post(
        self, path: str, body: Callable[[], dict[str, Any]], *, attempts: int | None = None
    ) -> str:
        url = self.upload_base_url + path

        async def once() -> str:
            status, retry_after, reply = await self._transport.send(
                "POST", url, http_timeout=self._transfer_timeout, **body()
            )
            return parse_upload_reply(status, reply, retry_after=retry_after, now=time.time())

        return await self._transport.retrying(once, attempts=attempts, what=f"POST {path}")

    # --- downloads --------------------------------------------------------------------------

    async def download(
        self,
        source: Track | str,
        dest: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
    ) -> Path:
        """Stream ``source`` (a playable track or a URL) to ``dest`` (a folder or a file path)."""
        if isinstance(source, Track):
            if not source.audio_url:
                raise FileValidationError(source.id, "the track has no audio yet (not playable)")
            url = source.audio_url
            name = track_file_name(source.title, source.id, url)
        elif isinstance(source, str) and is_http_url(source):
            url, name = source, url_file_name(source)
        else:
            raise FileValidationError(source, "not a playable Track or an http(s) URL")
        target = await asyncio.to_thread(_resolve_target, dest, name)
        try:
            await self._transport.retrying(
                lambda: self._download_once(url, target, progress),
                (_Truncated, *RETRYABLE_READ),
                what="download",
            )
        except _Truncated as exc:
            raise DownloadError(url, str(exc)) from None
        except RETRYABLE_READ as exc:
            raise DownloadError(url, str(exc)) from exc
        return target

    async def _download_once(self, url: str, target: Path, progress: Progress | None) -> None:
        fd, temp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{safe_component(target.name)}.", suffix=".part"
        )
        try:
            with os.fdopen(fd, "wb") as out:
                await self._fetch_into(url, out, progress)
                out.flush()
                await asyncio.to_thread(os.fsync, out.fileno())
            os.replace(temp_name, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            raise

    async def _fetch_into(self, url: str, out: IO[bytes], progress: Progress | None) -> None:
        try:
            async with self._transport.session.get(
                url, headers={"User-Agent": USER_AGENT}, timeout=self._transfer_timeout
            ) as resp:
                if resp.status >= 500 or resp.status == 429:
                    raise ServerError(resp.status, f"HTTP {resp.status}", http_status=resp.status)
                if resp.status >= 400:
                    raise DownloadError(
                        url, f"HTTP {resp.status} (expired or missing?)", http_status=resp.status
                    )
                total = resp.content_length if "Content-Encoding" not in resp.headers else None
                done = 0
                if progress is not None:
                    progress(0, total)
                async for chunk in resp.content.iter_chunked(CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise translate(exc, f"GET {url.split('?')[0]}") from exc
        if total is not None and done != total:
            raise _Truncated(f"got {done} of {total} bytes (Content-Length)")


def check(head: bytes, name: str | None, shown: object) -> None:
    """Raise ``FileValidationError`` unless ``head`` starts a non-empty audio file."""
    problem = audio_problem(head, name)
    if problem is not None:
        raise FileValidationError(shown, problem)


def _open_audio(path: Path) -> tuple[IO[bytes], bytes]:
    """Open ``path`` for upload after checking it is a non-empty audio file."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise FileValidationError(path, "no such file") from None
    except IsADirectoryError:
        raise FileValidationError(path, "is a folder, not a file") from None
    except PermissionError:
        raise FileValidationError(path, "permission denied") from None
    try:
        head = fh.read(SNIFF_BYTES)
        check(head, path.name, path)
        fh.seek(0)
    except BaseException:
        fh.close()
        raise
    return fh, head


def _resolve_target(dest: str | os.PathLike[str], name: str) -> Path:
    """The file path a download writes: ``dest/name`` for a folder, else ``dest``."""
    target = Path(dest)
    if target.is_dir() or os.fspath(dest).endswith((os.sep, "/")):
        target = target / name
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _seekable(fh: IO[bytes]) -> bool:
    try:
        return bool(fh.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _form(value: object, name: str, upload_path: str, head: bytes) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("uploadPath", upload_path)
    form.add_field("fileName", name)
    form.add_field("file", value, filename=name, content_type=mime_type(head))
    return form


async def _chain(head: bytes, fh: IO[bytes]) -> AsyncIterator[bytes]:
    yield head
    while chunk := await asyncio.to_thread(fh.read, CHUNK):
        yield chunk


class _NoClose(io.RawIOBase):
    """A read-only view of a caller's file that aiohttp may 'close' without closing it."""

    def __init__(self, fh: IO[bytes]) -> None:
        super().__init__()
        self._fh = fh
        self.name = getattr(fh, "name", "file")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def fileno(self) -> int:  # lets aiohttp size the part (Content-Length) for real files
        return self._fh.fileno()

    def readinto(self, buffer: Any) -> int:
        data = self._fh.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
