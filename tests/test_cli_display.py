"""The one live display, checked as a person sees it: the real CLI in a pseudo-terminal.

The bytes the CLI writes to a pty of 80x24 or 40x15 are fed into pyte, a terminal
emulator, and the assertions are about the screen (and its scrollback): the block is
redrawn in place (its header appears once, however long the run), nothing wraps, it
never needs more rows than the window has, it explains why mashups wait, and it is
on the screen before the first task exists.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pyte
import pytest
from conftest import TEST_API_KEY
from hypothesis import given, settings
from hypothesis import strategies as st

from kiemashup._cli.display import STATES, Display
from kiemashup.testing import FakeKieServer, Timeline

SIZES = [(80, 24), (40, 15)]


class Terminal:
    """What a terminal of ``columns`` x ``rows`` shows while a command runs in it."""

    def __init__(self, columns: int, rows: int) -> None:
        self.screen = pyte.HistoryScreen(columns, rows, history=10_000)
        self.stream = pyte.ByteStream(self.screen)
        self.frames: list[list[str]] = []  # the screen after each chunk of output

    def feed(self, data: bytes) -> None:
        self.stream.feed(data)
        self.frames.append(self.lines())

    def lines(self) -> list[str]:
        """The visible lines, right spaces removed."""
        return [line.rstrip() for line in self.screen.display]

    def transcript(self) -> list[str]:
        """Every line that scrolled off the top, then the visible ones."""
        columns = self.screen.columns
        top = [
            "".join(line[x].data for x in range(columns)).rstrip()
            for line in self.screen.history.top
        ]
        return top + self.lines()


def run_in_pty(
    argv: list[str], columns: int, rows: int, env: dict[str, str]
) -> tuple[int, Terminal]:
    """Run ``python -m kiemashup *argv`` with a pty as its terminal; (exit code, terminal)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    clean = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiemashup", *argv],
        stdin=slave, stdout=slave, stderr=slave, env={**clean, "TERM": "xterm", **env},
        close_fds=True,
    )  # fmt: skip
    os.close(slave)
    terminal = Terminal(columns, rows)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            terminal.feed(data)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, terminal


def count_lines(lines: list[str], starts: str) -> int:
    return sum(1 for line in lines if line.startswith(starts))


def check_redrawn_in_place(terminal: Terminal, header: str, row: str, columns: int) -> None:
    """The block's header is in the scrollback once; no line of the block reaches the edge."""
    assert count_lines(terminal.transcript(), header) == 1, terminal.transcript()
    block = (header, "[#", "[-", row, "... and ")
    for frame in terminal.frames:
        assert count_lines(frame, header) <= 1
        assert all(len(line) < columns for line in frame if line.startswith(block))
    assert len(terminal.frames) > 3  # redrawn many times


@pytest.mark.parametrize(("columns", "rows"), SIZES)
def test_demo_display_fits_and_redraws_in_place(columns: int, rows: int) -> None:
    """demo in a pty: one header, every row once per screen, results below the final frame."""
    code, terminal = run_in_pty(["demo", "--count", "4", "--time-scale", "0.3"], columns, rows, {})
    assert code == 0
    check_redrawn_in_place(terminal, "4 mashups: ", "mashup ", columns)
    for frame in terminal.frames:
        for n in range(1, 5):
            assert count_lines(frame, f"mashup {n} ") <= 1
    moving = [
        f for f in terminal.frames if any(" text " in line or " first " in line for line in f)
    ]
    assert moving, "the stages were never shown moving"
    text = "\n".join(terminal.transcript())
    assert "4 mashups: 4/4 finished" in text
    assert "Results:" in text
    assert "4 mashups, " in text  # the summary line, plural right


@pytest.mark.slow
def test_demo_of_25_explains_the_creation_slots_and_summarises_rows_at_40x15() -> None:
    """25 mashups at 40x15: drawn before any task exists, slot wait explained, rows summarised."""
    columns, rows = 40, 15
    code, terminal = run_in_pty(["demo", "--count", "25", "--time-scale", "0.3"], columns, rows, {})
    assert code == 0
    check_redrawn_in_place(terminal, "25 mashups: ", "mashup ", columns)
    framed = [f for f in terminal.frames if count_lines(f, "25 mashups: ")]
    first = framed[0]
    assert "submitting 25" in "\n".join(first)  # on screen before the first task was created
    assert any("creation slot" in "\n".join(f) for f in framed)
    assert any(count_lines(f, "... and ") == 1 for f in framed)  # 25 rows never fit in 15
    for frame in framed:
        assert count_lines(frame, "mashup ") <= rows - 2


@pytest.mark.parametrize(("columns", "rows"), SIZES)
async def test_batch_display_fits_explains_queued_and_redraws_in_place(
    fake_server: FakeKieServer, tmp_path: Path, columns: int, rows: int
) -> None:
    """batch in a pty: one header, queued explained, at 40x15 the rows are summarised."""
    import asyncio

    fake_server.default_timeline = Timeline.success(text=0.1, first=0.3, complete=0.5)
    path = tmp_path / "pairs.jsonl"
    line = {"upload_urls": ["https://a.example/1.mp3", "https://a.example/2.mp3"], "prompt": "p"}
    path.write_text("".join(json.dumps(line) + "\n" for _ in range(12)))
    env = {
        "KIE_API_KEY": TEST_API_KEY,
        "KIE_BASE_URL": fake_server.url,
        "KIEMASHUP_POLL_INITIAL": "0.05",
    }
    argv = ["batch", str(path), "--concurrency", "3"]
    code, terminal = await asyncio.to_thread(run_in_pty, argv, columns, rows, env)
    assert code == 0
    check_redrawn_in_place(terminal, "12 items: ", "item ", columns)
    framed = [f for f in terminal.frames if count_lines(f, "12 items: ")]
    assert any("queued: not submitted yet" in "\n".join(f) for f in framed)
    if rows < 20:
        assert any(count_lines(f, "... and ") == 1 for f in framed)
    else:
        assert any(count_lines(f, "item ") == 12 for f in framed)
    assert "12/12 succeeded" in "\n".join(terminal.transcript())
    assert fake_server.creations == 12


# --- the frame itself, for any size and any mix of states -------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    columns=st.integers(min_value=1, max_value=200),
    rows=st.integers(min_value=1, max_value=60),
    states=st.lists(st.sampled_from(STATES), min_size=1, max_size=300),
    note=st.booleans(),
)
def test_a_frame_never_outgrows_the_terminal(
    columns: int, rows: int, states: list[str], note: bool
) -> None:
    """Every frame has fewer lines than the terminal's rows and every line fits its width."""
    now = [0.0]
    clock: Callable[[], float] = lambda: now[0]  # noqa: E731
    display = Display(
        open(os.devnull, "w"),  # noqa: SIM115
        [f"item {i}" for i in range(len(states))],
        title=f"{len(states)} items",
        note="queued: waiting for a creation slot, which Kie hands out 20 per 10 s" * note,
        clock=clock,
    )
    display.stream.close()
    now[0] = 5.0
    for index, state in enumerate(states):
        display.states[index] = state
    lines = display.frame(columns, rows)
    assert 1 <= len(lines) <= max(rows - 1, 1)
    assert all(len(line) <= max(columns - 1, 20) for line in lines)
    if columns >= 80 and len(states) + 6 < rows:
        assert count_lines(lines, "item ") == len(states)  # everything fits: every row shown
