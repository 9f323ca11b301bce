"""Uploads to the File Upload API and downloads of results, against FakeKieServer."""

from __future__ import annotations

import asyncio
import io
import os
import stat
from pathlib import Path
from typing import Any

import attrs
import pytest

from kiemashup import (
    AuthenticationError,
    DownloadError,
    FileValidationError,
    KieError,
    MashupClient,
    Track,
    UploadError,
)
from kiemashup._core.filenames import safe_component, sniff_audio, track_file_name
from kiemashup.testing import FakeKieServer, Fault

MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 40
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 64


@pytest.fixture
def client(make_client: Any, fake_server: FakeKieServer) -> MashupClient:
    """A fast client whose uploads also go to the fake server."""
    client: MashupClient = make_client(upload_base_url=fake_server.url)
    return client


def stored(server: FakeKieServer, url: str) -> bytes:
    """The bytes the fake stored for the upload at ``url``."""
    path = url.split("/uploads/", 1)[1]
    return server.uploads.files[path].data


async def test_upload_path_streams_multipart(
    client: MashupClient, fake_server: FakeKieServer, tmp_path: Path
) -> None:
    """A local file goes as multipart to the stream endpoint and comes back byte for byte."""
    song = tmp_path / "song.mp3"
    song.write_bytes(MP3)
    url = await client.upload(song)
    assert url.startswith(fake_server.url)
    assert url.rsplit("/", 1)[1].startswith("song-")
    assert url.endswith(".mp3")
    assert stored(fake_server, url) == MP3
    [request] = [r for r in fake_server.requests if r.endpoint == "upload"]
    assert request.path == "/api/file-stream-upload"
    assert request.headers["Authorization"] == "<redacted>"


async def test_upload_small_bytes_as_base64(
    client: MashupClient, fake_server: FakeKieServer
) -> None:
    """Small bytes use the base64 endpoint, with upload_path and file_name as given."""
    url = await client.upload(WAV, file_name="take.wav", upload_path="audio/mashups")
    assert url.endswith("/audio/mashups/take.wav")
    assert stored(fake_server, url) == WAV
    [request] = [r for r in fake_server.requests if r.endpoint == "upload"]
    assert request.path == "/api/file-base64-upload"
    assert isinstance(request.json, dict)
    assert request.json["uploadPath"] == "audio/mashups"


async def test_upload_large_bytes_are_streamed(
    client: MashupClient, fake_server: FakeKieServer
) -> None:
    """Bytes over 1 MiB go through the stream endpoint, not base64."""
    big = MP3 + b"\x00" * (1024 * 1024)
    url = await client.upload(big)
    assert stored(fake_server, url) == big
    assert [r.path for r in fake_server.requests if r.endpoint == "upload"] == [
        "/api/file-stream-upload"
    ]


async def test_upload_file_objects(client: MashupClient, fake_server: FakeKieServer) -> None:
    """Seekable and non-seekable binary file objects upload whole, and are not closed."""
    buffer = io.BytesIO(MP3)
    url = await client.upload(buffer, file_name="buffer.mp3")
    assert stored(fake_server, url) == MP3
    assert not buffer.closed
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as writer:
        writer.write(MP3)
    with os.fdopen(read_end, "rb") as pipe:
        url = await client.upload(pipe, file_name="pipe.mp3")
    assert stored(fake_server, url) == MP3


async def test_upload_url_copies_a_loopback_file(
    client: MashupClient, fake_server: FakeKieServer
) -> None:
    """upload_url has the host fetch the file; the fake fetches loopback URLs only."""
    first = await client.upload(MP3, file_name="one.mp3")
    copy = await client.upload_url(first, file_name="copy.mp3")
    assert stored(fake_server, copy) == MP3
    with pytest.raises(UploadError) as info:
        await client.upload_url("https://example.com/a.mp3")
    assert info.value.code == 451


@pytest.mark.parametrize(
    ("content", "name", "reason"),
    [
        (None, "missing.mp3", "no such file"),
        (b"", "empty.mp3", "empty"),
        (b"%PDF-1.7 not audio at all", "notes.mp3", "not an audio file"),
    ],
)
async def test_upload_rejects_bad_files(
    client: MashupClient,
    fake_server: FakeKieServer,
    tmp_path: Path,
    content: bytes | None,
    name: str,
    reason: str,
) -> None:
    """A missing, empty or non-audio file raises FileValidationError before any request."""
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(FileValidationError) as info:
        await client.upload(path)
    assert reason in info.value.reason
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, KieError)
    assert fake_server.count("upload") == 0


async def test_upload_rejects_bad_bytes_and_urls(client: MashupClient) -> None:
    """Empty or non-audio bytes and non-http URLs are bad input (FileValidationError)."""
    with pytest.raises(FileValidationError):
        await client.upload(b"")
    with pytest.raises(FileValidationError):
        await client.upload(b"<html>nope</html>")
    with pytest.raises(FileValidationError):
        await client.upload_url("ftp://example.com/a.mp3")


async def test_upload_failure_envelope_is_typed(
    client: MashupClient, fake_server: FakeKieServer
) -> None:
    """A refused upload maps through the envelope: body codes to typed errors, success:false."""
    fake_server.inject(Fault("upload", "body_code", code=413))
    with pytest.raises(UploadError) as info:
        await client.upload(MP3)
    assert info.value.code == 413
    fake_server.inject(Fault("upload", "body_code", code=401))
    with pytest.raises(AuthenticationError):
        await client.upload(MP3)


async def test_upload_retries_transient_failures(
    client: MashupClient, fake_server: FakeKieServer, tmp_path: Path
) -> None:
    """A 5xx from the upload host is retried, and the retry sends the whole file again."""
    song = tmp_path / "retry.mp3"
    song.write_bytes(MP3)
    fake_server.inject(Fault("upload", "http_500"))
    url = await client.upload(song)
    assert stored(fake_server, url) == MP3
    assert fake_server.count("upload") == 2


def test_sniffing_and_safe_names() -> None:
    """Magic bytes decide the audio kind; names never carry separators or traversal."""
    assert sniff_audio(b"fLaC\x00") == "flac"
    assert sniff_audio(b"OggS\x00") == "ogg"
    assert sniff_audio(b"\x00\x00\x00\x20ftypM4A ") == "m4a"
    assert sniff_audio(b"\xff\xf1\x50\x80") == "aac"
    assert sniff_audio(b"\xff\xfb\x90\x64") == "mp3"
    assert sniff_audio(WAV) == "wav"
    assert sniff_audio(b"GIF89a") is None
    name = track_file_name("../../etc/passwd", "abcdef1234567890", "https://x/y/z.mp3")
    assert "/" not in name
    assert not name.startswith(".")
    assert name.endswith(" - abcdef12.mp3")
    assert safe_component("CON") != "CON"
    assert safe_component("   ") == "track"


async def audio_url(client: MashupClient, mashup_request: Any) -> Track:
    """A finished task's first track."""
    snapshot = await (await client.submit(mashup_request)).wait()
    return snapshot.tracks[0]


async def test_download_to_folder_uses_a_safe_name(
    client: MashupClient, fake_server: FakeKieServer, mashup_request: Any, tmp_path: Path
) -> None:
    """Into a folder, the file is named from title and id; progress reaches the total."""
    track = await audio_url(client, mashup_request)
    seen: list[tuple[int, int | None]] = []
    path = await client.download(track, tmp_path, progress=lambda d, t: seen.append((d, t)))
    assert path.parent == tmp_path
    assert track.id is not None
    assert track.id[:8] in path.name
    assert path.suffix == ".mp3"
    assert path.stat().st_size == fake_server.audio_bytes
    assert seen[-1] == (fake_server.audio_bytes, fake_server.audio_bytes)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert os.listdir(tmp_path) == [path.name]


async def test_download_to_a_file_path(
    client: MashupClient, fake_server: FakeKieServer, mashup_request: Any, tmp_path: Path
) -> None:
    """A file path is used as given, parent folders created; a URL works like a track."""
    track = await audio_url(client, mashup_request)
    assert track.audio_url is not None
    target = tmp_path / "deep" / "er" / "mine.mp3"
    path = await client.download(track.audio_url, target)
    assert path == target
    assert target.stat().st_size == fake_server.audio_bytes


async def test_interrupted_download_is_retried_without_partial_files(
    client: MashupClient, fake_server: FakeKieServer, mashup_request: Any, tmp_path: Path
) -> None:
    """A reset mid-body is retried; only the complete file ever has the final name."""
    track = await audio_url(client, mashup_request)
    fake_server.inject(Fault("audio", "reset_mid_body", times=2))
    names: set[str] = set()

    def progress(_done: int, _total: int | None) -> None:
        names.update(os.listdir(tmp_path))

    path = await client.download(track, tmp_path, progress=progress)
    assert path.stat().st_size == fake_server.audio_bytes
    assert path.name not in names  # never visible under its final name before completion
    assert os.listdir(tmp_path) == [path.name]  # no leftover temporary file
    assert fake_server.count("audio") == 3


async def test_download_gives_up_cleanly(
    client: MashupClient, fake_server: FakeKieServer, mashup_request: Any, tmp_path: Path
) -> None:
    """After the retries, DownloadError; nothing is left behind in the folder."""
    track = await audio_url(client, mashup_request)
    fake_server.inject(Fault("audio", "reset_mid_body", times=10))
    with pytest.raises(DownloadError):
        await client.download(track, tmp_path)
    assert os.listdir(tmp_path) == []
    assert fake_server.count("audio") == client.retry_policy.attempts


async def test_download_slow_body_and_http_errors(
    client: MashupClient, fake_server: FakeKieServer, mashup_request: Any, tmp_path: Path
) -> None:
    """A dripping body still completes; a 404 (expired URL) is not retried."""
    track = await audio_url(client, mashup_request)
    fake_server.inject(Fault("audio", "drip", delay=0.01))
    path = await client.download(track, tmp_path / "slow.mp3")
    assert path.stat().st_size == fake_server.audio_bytes
    with pytest.raises(DownloadError) as info:
        await client.download(f"{fake_server.url}/files/nope/x.mp3", tmp_path)
    assert info.value.http_status == 404
    with pytest.raises(FileValidationError):
        await client.download(Track(id="x", audio_url=None), tmp_path)


async def test_download_verifies_content_length(tmp_path: Path) -> None:
    """A body shorter than its Content-Length is never accepted as a complete file."""
    from aiohttp import web

    async def short(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"ID3" + b"\x00" * 97)
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_get("/short.mp3", short)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        from kiemashup import RetryPolicy

        async with MashupClient(
            "k", base_url="http://127.0.0.1:9", retry_policy=RetryPolicy(attempts=2, base=0.01)
        ) as client:
            with pytest.raises(DownloadError):
                await client.download(f"http://127.0.0.1:{port}/short.mp3", tmp_path)
    finally:
        await runner.cleanup()
    assert os.listdir(tmp_path) == []


# --- issue 10: names from content, no silent overwrite, byte-bounded names, modes -----------


async def test_same_basename_different_content_never_share_a_url(
    client: MashupClient, fake_server: FakeKieServer, tmp_path: Path
) -> None:
    """Two different files both called song.mp3 get two URLs; identical content shares one."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    first, second, same = (tmp_path / d / "song.mp3" for d in "abc")
    first.write_bytes(MP3)
    second.write_bytes(MP3 + b"\x01")
    same.write_bytes(MP3)
    urls = [await client.upload(path) for path in (first, second, same)]
    assert urls[0] != urls[1]
    assert urls[0] == urls[2]
    assert stored(fake_server, urls[0]) == MP3
    assert stored(fake_server, urls[1]) == MP3 + b"\x01"


async def test_upload_of_a_fifo_is_refused_without_blocking(
    client: MashupClient, tmp_path: Path
) -> None:
    """A named pipe with no writer is a FileValidationError at once, not a hang."""
    fifo = tmp_path / "song.mp3"
    os.mkfifo(fifo)
    with pytest.raises(FileValidationError) as info:
        async with asyncio.timeout(5):
            await client.upload(fifo)
    assert "not a regular file" in info.value.reason


async def test_download_never_silently_overwrites(
    client: MashupClient, fake_server: FakeKieServer, mashup_request: Any, tmp_path: Path
) -> None:
    """Downloading onto an existing file: DownloadError naming it; overwrite=True replaces it."""
    track = await audio_url(client, mashup_request)
    target = tmp_path / "mine.mp3"
    target.write_bytes(b"keep me")
    with pytest.raises(DownloadError) as info:
        await client.download(track, target)
    assert info.value.path == target
    assert "already exists" in info.value.reason
    assert target.read_bytes() == b"keep me"
    path = await client.download(track, target, overwrite=True)
    assert path.stat().st_size == fake_server.audio_bytes
    assert sorted(os.listdir(tmp_path)) == ["mine.mp3"]  # no temporary file left


async def test_missing_folder_is_created_and_long_titles_fit_in_bytes(
    client: MashupClient, fake_server: FakeKieServer, mashup_request: Any, tmp_path: Path
) -> None:
    """A missing DIR is a folder (two tracks, two files); a 100-char CJK title fits in 255 bytes."""
    snapshot = await (await client.submit(mashup_request)).wait()
    folder = tmp_path / "DIR"
    paths = [await client.download(track, folder) for track in snapshot.tracks]
    assert len({p.name for p in paths}) == 2
    assert all(p.parent == folder for p in paths)
    long = attrs.evolve(snapshot.tracks[0], title="夜の曲" * 34)
    path = await client.download(long, folder)
    assert len(path.name.encode()) <= 255
    assert path.stat().st_size == fake_server.audio_bytes


async def test_downloaded_files_get_the_usual_mode(
    client: MashupClient, mashup_request: Any, tmp_path: Path
) -> None:
    """A downloaded file has mode 0666 minus the umask (0644 under umask 022), not 0600."""
    track = await audio_url(client, mashup_request)
    old = os.umask(0o022)
    try:
        path = await client.download(track, tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


async def test_download_honours_retry_after_and_counts_requests(tmp_path: Path) -> None:
    """A CDN 429 with Retry-After goes through the transport seam: retried, counted, typed."""
    from aiohttp import web

    hits = 0

    async def audio(_request: web.Request) -> web.StreamResponse:
        nonlocal hits
        hits += 1
        if hits == 1:
            return web.Response(status=429, headers={"Retry-After": "0"})
        return web.Response(body=MP3, content_type="audio/mpeg")

    app = web.Application()
    app.router.add_get("/a.mp3", audio)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/a.mp3"
    try:
        from kiemashup import ClientClosedError, RetryPolicy

        client = MashupClient(
            "k", base_url="http://127.0.0.1:9", retry_policy=RetryPolicy(attempts=2, base=5.0)
        )
        async with client:
            async with asyncio.timeout(4):  # base=5 s: only Retry-After: 0 makes this fast
                path = await client.download(url, tmp_path)
            assert path.read_bytes() == MP3
            assert client.requests_sent == 2
        with pytest.raises(ClientClosedError):
            await client.download(url, tmp_path / "again.mp3")
    finally:
        await runner.cleanup()
    assert hits == 2
