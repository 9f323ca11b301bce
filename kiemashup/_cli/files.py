"""CLI commands for files: ``upload`` and ``download`` (and the track saving they share)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from typing import Any
from urllib.parse import urlsplit

from kiemashup._cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    make_client,
    read_environment,
    task_id,
)
from kiemashup._client import MashupClient
from kiemashup._core.errors import TaskFailedError
from kiemashup._core.filenames import track_file_name
from kiemashup._core.models import TaskSnapshot
from kiemashup._core.request import is_http_url


def add_file_commands(sub: Any) -> None:
    """Add ``upload`` and ``download`` to the ``kiemashup`` sub-parsers."""
    upload = sub.add_parser("upload", help="upload a local audio file (or copy a URL)")
    upload.add_argument("source", help="local audio file, or an http(s) URL to copy")
    upload.add_argument("--file-name", help="the name to store it under")
    upload.add_argument("--upload-path", default="kiemashup/uploads", help="folder at Kie")
    upload.add_argument("--json", action="store_true", help="machine-readable output")

    download = sub.add_parser("download", help="save a task's playable tracks in a folder")
    download.add_argument("task_id", type=task_id)
    download.add_argument("dir")
    download.add_argument("--wait", action="store_true", help="wait until complete first")
    download.add_argument("--json", action="store_true", help="machine-readable output")


def check_source(source: str) -> None:
    """A local path or an http(s) URL; another scheme (``ftp://``) is a usage error."""
    scheme = urlsplit(source).scheme if "://" in source else ""
    if scheme and scheme not in ("http", "https"):
        raise UsageError(f"{source}: only http(s) URLs and local files can be used, not {scheme}:")
    if scheme and not is_http_url(source):  # "http://", a space in the host: not a file either
        raise UsageError(f"{source!r} is not a valid http(s) URL")


async def save_tracks(client: MashupClient, snapshot: TaskSnapshot, folder: str) -> list[str]:
    """Save the playable tracks in ``folder``; a track saved before (a rerun) is not fetched."""
    folder = os.path.join(folder, "")  # a trailing separator: always a folder, created if missing
    files = []
    for track in snapshot.playable_tracks:
        assert track.audio_url is not None
        saved = os.path.join(folder, track_file_name(track.title, track.id, track.audio_url))
        # Downloads never leave partial files under the final name: one there is complete.
        if not await asyncio.to_thread(os.path.isfile, saved):
            saved = str(await client.download(track, folder))
        files.append(saved)
    return files


def check_out_folder(folder: str) -> None:
    """Refuse a folder that cannot take downloads, before anything is paid for."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UsageError(f"--out {folder}: {exc.strerror or exc}") from None


async def upload_cmd(args: argparse.Namespace) -> int:
    check_source(args.source)
    async with make_client(read_environment()) as client:
        if is_http_url(args.source):
            url = await client.upload_url(
                args.source, file_name=args.file_name, upload_path=args.upload_path
            )
        else:
            url = await client.upload(
                args.source, file_name=args.file_name, upload_path=args.upload_path
            )
    print(json.dumps({"url": url}) if args.json else url)
    return EXIT_OK


async def download_cmd(args: argparse.Namespace) -> int:
    async with make_client(read_environment()) as client:
        if args.wait:
            snapshot = await client.task(args.task_id).wait()
        else:
            snapshot = await client.get_task(args.task_id)
        if snapshot.failed:
            raise TaskFailedError(snapshot)
        files = await save_tracks(client, snapshot, args.dir)
    if args.json:
        print(json.dumps({"task_id": snapshot.task_id, "files": files}))
    else:
        for path in files:
            print(path)
    if not files:
        print(f"kiemashup: task {snapshot.task_id} has no playable track yet", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


FILE_COMMANDS = {
    "upload": upload_cmd,
    "download": download_cmd,
}
