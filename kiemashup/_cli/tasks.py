"""CLI commands about tasks: ``submit``, ``status``, ``wait``, ``credits``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from kiemashup._cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    CliError,
    make_client,
    print_snapshot,
    read_environment,
    seconds_in,
    task_id,
    weight,
)
from kiemashup._cli.display import Display
from kiemashup._cli.files import check_source, save_tracks
from kiemashup._core.errors import TaskFailedError
from kiemashup._core.models import Model, Stage, TaskSnapshot
from kiemashup._core.request import MashupRequest, is_http_url
from kiemashup._core.state import reached
from kiemashup._core.wire import snapshot_json
from kiemashup._handle import TaskHandle

_PLACEHOLDER = "https://upload.invalid/{}.mp3"  # validates a request before any upload
STAGES = ["text", "first", "complete"]
_TIMEOUT_HELP = "give up after SECONDS (exit 7); the task keeps running at Kie"
timeout_seconds = seconds_in(0.0, 7 * 24 * 3600.0)


def add_task_commands(sub: Any) -> None:
    """Add ``submit``, ``status``, ``wait`` and ``credits`` to the sub-parsers."""
    submit = sub.add_parser(
        "submit",
        help="submit one mashup of two files or URLs",
        description="Submit one mashup. A and B are local audio files (uploaded first) or "
        "http(s) URLs. The request is checked before anything is uploaded or paid for.",
    )
    submit.add_argument("sources", nargs=2, metavar="A_OR_URL", help="local audio file or URL")
    submit.add_argument("--prompt", help="description (simple mode) or lyrics (custom mode)")
    submit.add_argument("--custom", action="store_true", help="custom mode (style, title...)")
    submit.add_argument("--model", default="V5", help=f"one of {', '.join(m for m in Model)}")
    submit.add_argument("--style", help="custom mode: the style")
    submit.add_argument("--title", help="custom mode: the title")
    submit.add_argument("--instrumental", action="store_true", help="no vocals")
    submit.add_argument("--vocal-gender", choices=["m", "f"], help="custom mode: m or f")
    submit.add_argument("--style-weight", type=weight, help="custom mode: 0..1, two decimals")
    submit.add_argument("--weirdness", type=weight, help="custom mode: 0..1, two decimals")
    submit.add_argument("--audio-weight", type=weight, help="custom mode: 0..1, two decimals")
    submit.add_argument("--callback-url", help="where Kie posts progress (your own endpoint)")
    submit.add_argument("--wait", action="store_true", help="wait until complete")
    submit.add_argument("--download", metavar="DIR", help="wait, then save the tracks in DIR")
    submit.add_argument("--timeout", type=timeout_seconds, metavar="SECONDS", help=_TIMEOUT_HELP)
    submit.add_argument("--json", action="store_true", help="machine-readable output")

    status = sub.add_parser("status", help="show a task's current state (one poll)")
    status.add_argument("task_id", type=task_id)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    wait = sub.add_parser("wait", help="wait for a task to reach a stage")
    wait.add_argument("task_id", type=task_id)
    wait.add_argument("--stage", choices=STAGES, default="complete", help="default: complete")
    wait.add_argument("--timeout", type=timeout_seconds, metavar="SECONDS", help=_TIMEOUT_HELP)
    wait.add_argument("--json", action="store_true", help="machine-readable output")

    credits = sub.add_parser("credits", help="show the account's remaining credits")
    credits.add_argument("--json", action="store_true", help="machine-readable output")


# --- waiting, with the live stage line ------------------------------------------------------


def display_state(snapshot: TaskSnapshot) -> str:
    """The display's state for a snapshot."""
    if snapshot.failed:
        return "failed"
    return "done" if snapshot.stage is Stage.COMPLETE else snapshot.stage.name.lower()


async def follow(handle: TaskHandle, stage: Stage, seconds: float | None) -> TaskSnapshot:
    """Wait for ``stage`` with a live stage line on stderr; ``--timeout`` exits 7."""
    display = Display(
        sys.stderr,
        [f"task {handle.task_id}"],
        title=f"waiting for {stage.name.lower()}",
        initial="pending",
    )
    try:
        async with display, asyncio.timeout(seconds):
            return await _stages(handle, stage, display)
    except TimeoutError:
        name = stage.name.lower()
        raise CliError(
            EXIT_TIMEOUT,
            f"task {handle.task_id} has not reached {name} after {seconds:g} s",
            (f"it keeps running: kiemashup wait {handle.task_id}",),
        ) from None


async def _stages(handle: TaskHandle, stage: Stage, display: Display) -> TaskSnapshot:
    """Wait for each stage up to ``stage`` in turn, showing each one reached."""
    snapshot = handle.latest
    try:
        for step in (Stage.TEXT, Stage.FIRST, Stage.COMPLETE):
            if snapshot is not None:
                display.set(0, display_state(snapshot), str(snapshot.status))
                if reached(snapshot, stage) or snapshot.is_terminal:
                    break
            if step <= stage:
                snapshot = await handle.wait(step)
    except TaskFailedError as exc:
        display.set(0, "failed", str(exc.snapshot.status))
        raise
    assert snapshot is not None
    display.set(0, display_state(snapshot), str(snapshot.status))
    if snapshot.failed:  # a terminal status that wait() returned as it stood
        raise TaskFailedError(snapshot)
    return snapshot


# --- the commands ---------------------------------------------------------------------------


def _request(args: argparse.Namespace, urls: tuple[str, str]) -> MashupRequest:
    return MashupRequest(
        urls,
        prompt=args.prompt,
        custom_mode=args.custom,
        model=args.model,
        style=args.style,
        title=args.title,
        instrumental=args.instrumental,
        vocal_gender=args.vocal_gender,
        style_weight=args.style_weight,
        weirdness_constraint=args.weirdness,
        audio_weight=args.audio_weight,
        callback_url=args.callback_url,
    )


async def submit_cmd(args: argparse.Namespace) -> int:
    sources: list[str] = list(args.sources)
    for source in sources:
        check_source(source)
    # Validate first, so a bad option costs no upload.
    checked = [s if is_http_url(s) else _PLACEHOLDER.format(i) for i, s in enumerate(sources)]
    _request(args, (checked[0], checked[1]))
    config = read_environment()
    async with make_client(config) as client:
        urls = [s if is_http_url(s) else await client.upload(s) for s in sources]
        handle = await client.submit(_request(args, (urls[0], urls[1])))
        if not (args.wait or args.download):
            out = {"task_id": handle.task_id, "upload_urls": urls}
            print(json.dumps(out) if args.json else handle.task_id)
            return EXIT_OK
        print(f"submitted task {handle.task_id}", file=sys.stderr)
        snapshot = await follow(handle, Stage.COMPLETE, args.timeout)
        files = await save_tracks(client, snapshot, args.download) if args.download else []
    if args.json:
        print(json.dumps({**snapshot_json(snapshot), "files": files}))
    else:
        print_snapshot(snapshot)
        for path in files:
            print(f"  saved {path}")
    return EXIT_OK


async def status_cmd(args: argparse.Namespace) -> int:
    async with make_client(read_environment()) as client:
        snapshot = await client.get_task(args.task_id)
    _emit(args, snapshot)
    return EXIT_FAILED if snapshot.failed else EXIT_OK


async def wait_cmd(args: argparse.Namespace) -> int:
    stage = Stage[args.stage.upper()]
    async with make_client(read_environment()) as client:
        handle = client.task(args.task_id)
        await handle.refresh()  # a wrong id or an unreachable host is an error now, not never
        snapshot = await follow(handle, stage, args.timeout)
    _emit(args, snapshot)
    return EXIT_OK


async def credits_cmd(args: argparse.Namespace) -> int:
    async with make_client(read_environment()) as client:
        remaining = await client.credits()
    print(json.dumps({"credits": remaining}) if args.json else f"{remaining} credits")
    return EXIT_OK


def _emit(args: argparse.Namespace, snapshot: TaskSnapshot) -> None:
    if args.json:
        print(json.dumps(snapshot_json(snapshot)))
    else:
        print_snapshot(snapshot)


TASK_COMMANDS = {
    "submit": submit_cmd,
    "status": status_cmd,
    "wait": wait_cmd,
    "credits": credits_cmd,
}
