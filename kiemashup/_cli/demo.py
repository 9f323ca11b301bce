"""``kiemashup demo``: real mashup round trips against an embedded FakeKieServer.

Nothing here is faked on the client side: the client talks HTTP to a real aiohttp
server on 127.0.0.1, exactly as it would talk to Kie.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from kiemashup._cli.common import EXIT_OK, int_in, plural, seconds_in
from kiemashup._cli.display import Display
from kiemashup._cli.tasks import display_state
from kiemashup._client import MashupClient
from kiemashup._core.errors import TaskFailedError
from kiemashup._core.models import TaskSnapshot
from kiemashup._core.policy import PollPolicy
from kiemashup._core.request import MashupRequest
from kiemashup._handle import TaskHandle
from kiemashup._receiver import CallbackReceiver

if TYPE_CHECKING:
    from kiemashup.testing import Timeline

DEMO_KEY = "demo-key-not-secret"
MAX_COUNT = 200
DEMO_WEBHOOK_KEY = "demo-webhook-key-not-secret"

DEMO_REQUESTS = (
    MashupRequest(
        ["https://cdn.example/rain.mp3", "https://cdn.example/piano.mp3"],
        prompt="Lo-fi mashup, mellow rain and soft piano",
    ),
    MashupRequest(
        ["https://cdn.example/funk.mp3", "https://cdn.example/disco.mp3"],
        custom_mode=True,
        style="Funk, disco, upbeat",
        title="Mirror Ball",
        prompt="[Verse] Lights come down, the floor is ours",
        style_weight=0.65,
    ),
    MashupRequest(
        ["https://cdn.example/strings.mp3", "https://cdn.example/808.mp3"],
        custom_mode=True,
        style="Orchestral trap",
        title="Velvet Thunder",
        instrumental=True,
        model="V4_5PLUS",
    ),
    MashupRequest(
        ["https://cdn.example/folk.mp3", "https://cdn.example/house.mp3"],
        prompt="Folk guitar over deep house",
        model="V5_5",
    ),
)


def demo_timelines(scale: float) -> list[Timeline]:
    """Staggered timelines so the live display shows stages moving at different paces."""
    from kiemashup.testing import Timeline  # the testing kit loads only for the demo

    return [
        Timeline.success(text=0.6 * scale, first=1.4 * scale, complete=2.2 * scale),
        Timeline.success(text=0.9 * scale, first=1.9 * scale, complete=3.0 * scale),
        Timeline.success(text=0.4 * scale, first=1.1 * scale, complete=2.6 * scale),
        Timeline.success(text=1.0 * scale, first=2.2 * scale, complete=3.4 * scale),
    ]


#: Shown while a mashup waits to be created (above 20 mashups, some must).
SLOT_NOTE = (
    "submitting: Kie creates at most 20 tasks per 10 s, so the rest wait for a creation slot."
)


def add_demo_command(sub: Any) -> None:
    """Add ``demo`` to the ``kiemashup`` sub-parsers."""
    demo = sub.add_parser(
        "demo",
        help="run mashups end to end against an embedded fake Kie API (no key, no network)",
    )
    demo.add_argument(
        "--count", type=int_in(1, MAX_COUNT), default=4, help="how many mashups (default 4)"
    )
    demo.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    demo.add_argument(
        "--time-scale",
        type=seconds_in(0.05, 100.0, low_included=True),
        default=1.0,
        metavar="X",
        help="stretch (>1) or shrink (<1) the fake timelines, 0.05..100 (default 1)",
    )
    demo.add_argument(
        "--no-callbacks", action="store_true", help="poll only, without the callback receiver"
    )
    demo.add_argument("--out", metavar="DIR", help="keep the downloaded tracks in this folder")


async def demo_cmd(args: argparse.Namespace) -> int:
    summary = await run_demo(
        count=args.count,
        scale=args.time_scale,
        callbacks=not args.no_callbacks,
        out_dir=args.out,
        out=sys.stderr if args.json else sys.stdout,
    )
    if args.json:
        print(json.dumps(summary))
    return EXIT_OK


async def _follow(
    client: MashupClient, request: MashupRequest, index: int, display: Display
) -> tuple[TaskHandle, TaskSnapshot | TaskFailedError]:
    handle = await client.submit(request)
    task = f"task {handle.task_id[:8]}"
    display.set(index, "pending", task)
    try:
        async for snapshot in handle.updates():
            display.set(index, display_state(snapshot), task)
    except TaskFailedError as exc:
        display.set(index, "failed", str(exc.snapshot.status))
        return handle, exc
    latest = handle.latest
    assert latest is not None
    return handle, latest


async def run_demo(
    *,
    count: int = 4,
    scale: float = 1.0,
    callbacks: bool = True,
    out_dir: str | None = None,
    out: TextIO = sys.stdout,
) -> dict[str, Any]:
    """Run ``count`` mashups end to end; return a summary (also printed).

    With ``callbacks`` the fake server calls a loopback ``CallbackReceiver`` (signed with
    an HMAC key) and handles wake on each callback; without, the client polls alone.
    Every finished track is downloaded into ``out_dir`` (a temporary folder by default).
    """
    with tempfile.TemporaryDirectory(prefix="kiemashup-demo-") as tmp:
        summary = await _run_demo(count, scale, callbacks, Path(out_dir or tmp), out)
        if out_dir is None:
            out.write("(a temporary folder, now removed: pass --out DIR to keep the tracks)\n")
        return summary


async def _run_demo(
    count: int, scale: float, callbacks: bool, out_dir: Path, out: TextIO
) -> dict[str, Any]:
    from kiemashup.testing import FakeKieServer

    requests = [DEMO_REQUESTS[i % len(DEMO_REQUESTS)] for i in range(count)]
    names = [f"mashup {i + 1}" for i in range(count)]
    policy = PollPolicy(
        initial=0.3 * scale, growth=0.0, maximum=0.5 * scale, after_first=0.4 * scale
    )
    async with (
        FakeKieServer(api_key=DEMO_KEY, webhook_hmac_key=DEMO_WEBHOOK_KEY) as server,
        CallbackReceiver(port=0, hmac_key=DEMO_WEBHOOK_KEY) as receiver,
        MashupClient(
            DEMO_KEY,
            base_url=server.url,
            upload_base_url=server.url,
            poll_policy=policy,
            receiver=receiver if callbacks else None,
            webhook_hmac_key=DEMO_WEBHOOK_KEY if callbacks else None,
        ) as client,
    ):
        timelines = demo_timelines(scale)
        server.script(*(timelines[i % len(timelines)] for i in range(count)))
        out.write(f"Fake Kie API on {server.url} (loopback, no key, no network)\n")
        if callbacks:
            out.write(f"Callback receiver on {receiver.url.rsplit('/', 1)[0]}/<secret token>\n")
        else:
            out.write("No callbacks: the client polls alone\n")
        together = " concurrently" if count > 1 else ""
        out.write(f"Submitting {plural(count, 'mashup')}{together}...\n")
        display = Display(
            out, names, title=plural(count, "mashup"), note=SLOT_NOTE, initial="submitting"
        )
        async with display:
            followed = await asyncio.gather(
                *(_follow(client, r, i, display) for i, r in enumerate(requests))
            )
        handles = [handle for handle, _ in followed]
        results = [result for _, result in followed]
        summary: dict[str, Any] = {"server": server.url, "callbacks": callbacks, "tasks": []}
        out.write("\nResults:\n")
        for name, handle, result in zip(names, handles, results, strict=True):
            polls = len(server.tasks[handle.task_id].poll_times)
            entry: dict[str, Any] = {"name": name, "task_id": handle.task_id, "polls": polls}
            if isinstance(result, TaskFailedError):
                entry["status"] = str(result.snapshot.status)
                out.write(f"  {name}: FAILED {result}\n")
            else:
                entry["status"] = str(result.status)
                entry["tracks"] = [
                    {"id": t.id, "title": t.title, "audio_url": t.audio_url, "duration": t.duration}
                    for t in result.tracks
                ]
                out.write(f"  {name} ({handle.task_id[:8]}, {plural(polls, 'poll')}):\n")
                for track in result.tracks:
                    path = await client.download(track, out_dir)
                    size = path.stat().st_size
                    entry.setdefault("downloads", []).append({"path": str(path), "bytes": size})
                    out.write(f"    - {track.title} [{track.duration}s] {size} B\n")
            summary["tasks"].append(entry)
        summary["requests"] = client.requests_sent
        summary["callbacks_received"] = receiver.accepted
        out.write(
            f"\n{plural(count, 'mashup')}, {plural(client.requests_sent, 'API request')}, "
            f"{plural(receiver.accepted, 'callback')} in {display.elapsed:.1f}s\n"
            f"tracks downloaded to {out_dir}\n"  # its own line: a path fits 80 columns
        )
    return summary
