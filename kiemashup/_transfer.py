"""Uploads to Kie's File Upload API and downloads of results, through the transport's seam.

Every request goes through ``Transport.send``/``Transport.stream`` (the client's caps,
request count, error translation, Retry-After) and its one retry loop; this module
never touches aiohttp. Uploads go to their own host (``upload_base_url``) with the
same Bearer key; paths and file objects are streamed as multipart (never read whole
into memory), small byte strings are sent as base64 JSON. A default upload name
carries a digest of the content, so two different files never share a URL.
Downloads fetch public result URLs *without* the API key, stream to a temporary file
in the destination folder and move it into place only once complete and verified, so
no half-written file ever carries the final name; an existing file is never replaced
unless ``overwrite=True``. Uploaded files expire after 3 days, result URLs after 14
days or less (KIE-API.md §2, §5): download promptly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import hashlib
import io
import os
import secrets
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any

from kiemashup._core.errors import (
    DownloadError,
    FileValidationError,
    RateLimitError,
    ServerError,
)
from kiemashup._core.filenames import (
    SNIFF_BYTES,
    audio_problem,
    content_upload_name,
    default_upload_name,
    mime_type,
    track_file_name,
    url_file_name,
)
from kiemashup._core.models import Track
from kiemashup._core.protocol import (
    BASE64_MAX,
    BASE64_UPLOAD_PATH,
    DEFAULT_UPLOAD_PATH,
    STREAM_UPLOAD_PATH,
    URL_UPLOAD_PATH,
    parse_retry_after,
    parse_upload_reply,
)
from kiemashup._core.request import is_http_url
from kiemashup._transport import RETRYABLE_READ, Multipart, Transport

#: ``progress(bytes_done, total_or_None)`` after every chunk written.
Progress = Callable[[int, int | None], None]
UploadSource = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]

CHUNK = 64 * 1024


class _Truncated(Exception):
    """The body ended before Content-Length bytes arrived (retryable)."""


class FileTransfer:
    """Upload and download for one client; borrows the client's transport."""

    def __init__(self, transport: Transport, *, upload_base_url: str) -> None:
        self._transport = transport
        self.upload_base_url = upload_base_url.rstrip("/")

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
            fh, head, digest = await asyncio.to_thread(_open_audio, path)
            try:
                name = file_name or content_upload_name(path.name, digest)
                return await self._stream(fh, name, upload_path, head)
            finally:
                fh.close()
        if hasattr(source, "read"):
            return await self._upload_fileobj(source, file_name, upload_path)
        raise TypeError(
            f"upload() takes a path, bytes or a binary file, not {type(source).__name__}"
        )

    async def _upload_fileobj(self, fh: IO[bytes], file_name: str | None, upload_path: str) -> str:
        raw_name = getattr(fh, "name", None)
        own_name = os.path.basename(raw_name) if isinstance(raw_name, str) and raw_name else None
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
        check(head, own_name or file_name, shown)
        # Seekable: the name comes from the content. Not seekable: it cannot be read twice,
        # so a random token keeps two different streams apart instead.
        digest = await asyncio.to_thread(_digest, fh, start) if seekable else secrets.token_hex(8)
        name = file_name or (
            content_upload_name(own_name, digest) if own_name else default_upload_name(head, digest)
        )
        if seekable:
            return await self._stream(fh, name, upload_path, head)
        # Not seekable: the head is already consumed; stream it back in front, once (no retry).
        return await self._post(
            STREAM_UPLOAD_PATH,
            lambda: {"multipart": _form(_chain(head, fh), name, upload_path, head)},
            attempts=1,
        )

    async def _stream(self, fh: IO[bytes], name: str, upload_path: str, head: bytes) -> str:
        start = fh.tell()

        def form() -> dict[str, Any]:
            fh.seek(start)  # a retry sends the whole file again
            return {"multipart": _form(_NoClose(fh), name, upload_path, head)}

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
                "POST", url, long=True, **body()
            )
            return parse_upload_reply(
                status, reply, retry_after=retry_after, now=self._transport.now()
            )

        return await self._transport.retrying(once, attempts=attempts, what=f"POST {path}")

    # --- downloads --------------------------------------------------------------------------

    async def download(
        self,
        source: Track | str,
        dest: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Stream ``source`` (a playable track or a URL) to ``dest`` (a folder or a file path).

        ``dest`` is a folder when it is one, ends with a separator, or does not exist and
        has no extension (it is then created). An existing file is replaced only with
        ``overwrite=True``; otherwise ``DownloadError`` (``.path``) says it exists.
        """
        if isinstance(source, Track):
            if not source.audio_url:
                raise FileValidationError(source.id, "the track has no audio yet (not playable)")
            url = source.audio_url
            name = track_file_name(source.title, source.id, url)
        elif isinstance(source, str) and is_http_url(source):
            url, name = source, url_file_name(source)
        else:
            raise FileValidationError(source, "not a playable Track or an http(s) URL")
        target = await asyncio.to_thread(_resolve_target, url, dest, name, overwrite)
        try:
            await self._transport.retrying(
                lambda: self._download_once(url, target, progress, overwrite),
                (_Truncated, *RETRYABLE_READ),
                what="download",
            )
        except _Truncated as exc:
            raise DownloadError(url, str(exc), path=target) from None
        except RETRYABLE_READ as exc:
            raise DownloadError(url, str(exc), path=target) from exc
        except OSError as exc:  # disk full, permissions, a name the file system refuses
            raise DownloadError(
                url, f"cannot write {target}: {exc.strerror or exc}", path=target
            ) from exc
        return target

    async def _download_once(
        self, url: str, target: Path, progress: Progress | None, overwrite: bool
    ) -> None:
        temp = target.parent / f".kiemashup-{secrets.token_hex(6)}.part"
        # 0o666 and O_EXCL: the process umask decides the mode (usually 0644), as for any file.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as out:
                await self._fetch_into(url, out, progress)
                out.flush()
                await asyncio.to_thread(os.fsync, out.fileno())
            await asyncio.to_thread(_place, url, temp, target, overwrite)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temp)

    async def _fetch_into(self, url: str, out: IO[bytes], progress: Progress | None) -> None:
        async with self._transport.stream(url) as resp:
            if resp.status == 429:
                wait = parse_retry_after(resp.retry_after, self._transport.now())
                raise RateLimitError(429, "HTTP 429", http_status=429, retry_after=wait)
            if resp.status >= 500:
                raise ServerError(resp.status, f"HTTP {resp.status}", http_status=resp.status)
            if resp.status >= 400:
                raise DownloadError(
                    url, f"HTTP {resp.status} (expired or missing?)", http_status=resp.status
                )
            total = resp.content_length
            done = 0
            if progress is not None:
                progress(0, total)
            async for chunk in resp.chunks(CHUNK):
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        if total is not None and done != total:
            raise _Truncated(f"got {done} of {total} bytes (Content-Length)")


def check(head: bytes, name: str | None, shown: object) -> None:
    """Raise ``FileValidationError`` unless ``head`` starts a non-empty audio file."""
    problem = audio_problem(head, name)
    if problem is not None:
        raise FileValidationError(shown, problem)


def _open_audio(path: Path) -> tuple[IO[bytes], bytes, str]:
    """Open ``path`` for upload after checking it is a non-empty regular audio file.

    Returns the file (at offset 0), its first bytes and the sha256 of its content.
    Never blocks on a FIFO or a device: they are refused before (and while) opening.
    """
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise FileValidationError(path, "is a folder, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise FileValidationError(path, "is not a regular file (a pipe, socket or device?)")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise FileValidationError(path, "no such file") from None
    except PermissionError:
        raise FileValidationError(path, "permission denied") from None
    except OSError as exc:
        raise FileValidationError(path, f"cannot open: {exc.strerror or exc}") from None
    fh = os.fdopen(fd, "rb")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped for something else meanwhile
            raise FileValidationError(path, "is not a regular file (a pipe, socket or device?)")
        head = fh.read(SNIFF_BYTES)
        check(head, path.name, path)
        digest = _digest(fh, 0)
    except BaseException:
        fh.close()
        raise
    return fh, head, digest


def _digest(fh: IO[bytes], start: int) -> str:
    """sha256 of ``fh`` from ``start`` to its end; leaves it at ``start``."""
    fh.seek(start)
    sha = hashlib.sha256()
    while chunk := fh.read(CHUNK):
        sha.update(chunk)
    fh.seek(start)
    return sha.hexdigest()


def _resolve_target(url: str, dest: str | os.PathLike[str], name: str, overwrite: bool) -> Path:
    """The file path a download writes (see ``FileTransfer.download``); folders are created."""
    target = Path(dest)
    raw = os.fspath(dest)
    as_folder = raw.endswith((os.sep, "/")) or target.is_dir()
    if not as_folder and not target.exists() and not target.suffix:
        as_folder = True  # "out" that does not exist yet: a folder to create, not a file
    if as_folder:
        target = target / name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            url, f"cannot create folder {target.parent}: {exc.strerror or exc}", path=target
        ) from None
    if target.is_dir():
        raise DownloadError(url, f"{target} is a folder", path=target)
    if not overwrite and target.exists():
        raise DownloadError(url, _exists(target), path=target)
    return target


def _exists(target: Path) -> str:
    return f"{target} already exists (pass overwrite=True to replace it)"


def _place(url: str, temp: Path, target: Path, overwrite: bool) -> None:
    """Move the finished ``temp`` to ``target``; without ``overwrite``, never replace a file."""
    if overwrite:
        os.replace(temp, target)
        return
    try:
        os.link(temp, target)  # atomic: fails if the name was taken meanwhile
    except FileExistsError:
        raise DownloadError(url, _exists(target), path=target) from None
    except OSError as exc:
        if exc.errno not in (
            errno.EPERM,
            errno.ENOTSUP,
            errno.EOPNOTSUPP,
            errno.EXDEV,
            errno.EMLINK,
        ):
            raise
        # No hard links here (some file systems): check, then rename.
        if target.exists():
            raise DownloadError(url, _exists(target), path=target) from None
        os.replace(temp, target)


def _seekable(fh: IO[bytes]) -> bool:
    try:
        return bool(fh.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _form(value: object, name: str, upload_path: str, head: bytes) -> Multipart:
    return Multipart(
        fields=(("uploadPath", upload_path), ("fileName", name)),
        file_field="file",
        file=value,
        file_name=name,
        content_type=mime_type(head),
    )


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
