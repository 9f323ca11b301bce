"""``kiemashup demo``: real mashup round trips against an embedded FakeKieServer.

Nothing here is faked on the client side: the client talks HTTP to a real aiohttp
server on 127.0.0.1, exactly as it would talk to Kie.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from kiemashup._client import MashupClient
from kiemashup._core.errors import KieError, TaskFailedError
from kiemashup._core.models import Stage, TaskSnapshot
from kiemashup._core.policy import PollPolicy
from kiemashup._core.request import MashupRequest
from kiemashup._handle import TaskHandle
from kiemashup._receiver import CallbackReceiver
from kiemashup.testing import FakeKieServer, Timeline

DEMO_KEY = "demo-key-not-secret"
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
    return [
        Timeline.success(text=0.6 * scale, first=1.4 * scale, complete=2.2 * scale),
        Timeline.success(text=0.9 * scale, first=1.9 * scale, complete=3.0 * scale),
        Timeline.success(text=0.4 * scale, first=1.1 * scale, complete=2.6 * scale),
        Timeline.success(text=1.0 * scale, first=2.2 * scale, complete=3.4 * scale),
    ]


class Display:
    """Shows each task's stage: redrawn in place on a terminal, one line per change otherwise."""

    def __init__(self, out: TextIO, names: list[str]) -> None:
        self.out = out
        self.names = names
        self.rows: dict[int, str] = dict.fromkeys(range(len(names)), "submitting")
        self.live = out.isatty()
        self._drawn = 0
        self.started = time.monotonic()

    def update(self, index: int, text: str) -> None:
        if self.rows.get(index) == text:
            return
        self.rows[index] = text
        if self.live:
            self._redraw()
        else:
            elapsed = time.monotonic() - self.started
            self.out.write(f"[{elapsed:5.2f}s] {self.names[index]:<16} {text}\n")
            self.out.flush()

    def _redraw(self) -> None:
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F")
        for i, name in enumerate(self.names):
            self.out.write(f"\x1b[2K  {name:<16} {self.rows[i]}\n")
        self._drawn = len(self.names)
        self.out.flush()


def _stage_text(snapshot: TaskSnapshot) -> str:
    bar = {Stage.PENDING: "[    ]", Stage.TEXT: "[=   ]", Stage.FIRST: "[==  ]"}
    mark = bar.get(snapshot.stage, "[====]")
    return f"{mark} {snapshot.stage.name.lower():<8} {snapshot.status}"


async def _follow(handle: TaskHandle, index: int, display: Display) -> TaskSnapshot:
    display.update(index, f"[    ] pending  task {handle.task_id[:8]}")
    async for snapshot in handle.updates():
        display.update(index, _stage_text(snapshot))
    latest = handle.latest
    assert latest is not None
    return latest


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
        out.write(f"Submitting {count} mashups concurrently...\n")
        display = Display(out, names)
        handles = await asyncio.gather(*(client.submit(r) for r in requests))
        results = await asyncio.gather(
            *(_follow(h, i, display) for i, h in enumerate(handles)), return_exceptions=True
        )
        summary: dict[str, Any] = {"server": server.url, "callbacks": callbacks, "tasks": []}
        out.write("\nResults:\n")
        for name, handle, result in zip(names, handles, results, strict=True):
            polls = len(server.tasks[handle.task_id].poll_times)
            entry: dict[str, Any] = {"name": name, "task_id": handle.task_id, "polls": polls}
            if isinstance(result, TaskFailedError):
                entry["status"] = str(result.snapshot.status)
                out.write(f"  {name}: FAILED {result}\n")
            elif isinstance(result, BaseException):
                raise result
            else:
                entry["status"] = str(result.status)
                entry["tracks"] = [
                    {"id": t.id, "title": t.title, "audio_url": t.audio_url, "duration": t.duration}
                    for t in result.tracks
                ]
                out.write(f"  {name} ({handle.task_id[:8]}, {polls} polls):\n")
                for track in result.tracks:
                    path = await client.download(track, out_dir)
                    size = path.stat().st_size
                    entry.setdefault("downloads", []).append({"path": str(path), "bytes": size})
                    out.write(
                        f"    - {track.title} [{track.duration}s] -> {path.name} ({size} B)\n"
                    )
            summary["tasks"].append(entry)
        summary["requests"] = client.requests_sent
        summary["callbacks_received"] = receiver.accepted
        out.write(
            f"\n{count} mashups, {client.requests_sent} API requests, "
            f"{receiver.accepted} callbacks in {time.monotonic() - display.started:.1f}s; "
            f"tracks downloaded to {out_dir}\n"
        )
    return summary


def main(count: int = 4) -> int:
    try:
        asyncio.run(run_demo(count=count))
    except KieError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    return 0
