"""The one terminal display of the CLI, used by ``demo``, ``batch``, ``submit --wait`` and ``wait``.

On a terminal it redraws a block of lines in place: a header with the elapsed time,
for several items a bar and the count per state, a note explaining why items wait,
then one row per item. Every line is cut to the terminal's width (so nothing wraps),
and the block never has more lines than the terminal has rows: when the rows do not
fit, the items still moving are shown and the rest summarised in one line. The size
is read again at every redraw, so a resized window is followed.

Elsewhere (a pipe, a file, CI) it prints one plain line per change instead, and never
an escape sequence.

Plain ANSI (cursor up, erase line, erase below), no dependency: rich would do the
same in more code paths to keep working (it would still need this fallback for a
plain ``pip install .``), and these three sequences are all the block needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import TextIO

__all__ = ["FINISHED", "STATES", "Display"]

#: Every state an item can be in, in the order they are counted.
STATES = (
    "queued",
    "submitting",
    "pending",
    "text",
    "first",
    "done",
    "failed",
    "error",
    "unknown",
)
FINISHED = frozenset({"done", "failed", "error", "unknown"})
_MARKS = {
    "queued": "[    ]",
    "submitting": "[    ]",
    "pending": "[.   ]",
    "text": "[=   ]",
    "first": "[==  ]",
    "done": "[====]",
    "failed": "[ !! ]",
    "error": "[ !! ]",
    "unknown": "[ ?? ]",
}
_PRIORITY = {"pending": 0, "text": 0, "first": 0, "queued": 1, "submitting": 1}
_TICK = 0.25  # seconds between redraws of a live display (the clock moves)
_MIN_REDRAW = 0.05  # a burst of changes redraws at most this often (10 000-item batches)
_MIN_WIDTH = 20


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


def _wrap(words: Sequence[str], width: int, sep: str = "  ") -> list[str]:
    """``words`` joined by ``sep`` into lines of at most ``width`` (a long word is cut)."""
    lines: list[str] = []
    line = ""
    for word in words:
        candidate = f"{line}{sep}{word}" if line else word
        if len(candidate) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    return [_cut(line, width) for line in lines]


def _clock_text(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


class Display:
    """Live progress of ``names`` (one item each), written to ``stream``.

    ``set(index, state, detail)`` moves an item (``state`` is one of ``STATES``);
    ``note`` explains items that are not created yet; ``plain_states`` are the
    states worth a plain line when ``stream`` is not a terminal (default: all).
    Use ``async with display:`` so the first frame is drawn at once and the clock
    keeps moving; leaving the block draws the final frame.
    """

    def __init__(
        self,
        stream: TextIO,
        names: Sequence[str],
        *,
        title: str,
        note: str = "",
        plain_states: Collection[str] | None = None,
        initial: str = "queued",
        size: Callable[[], tuple[int, int]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.names = list(names)
        self.title = title
        self.note = note
        self.plain_states = plain_states
        self.states = [initial] * len(self.names)
        self.details = [""] * len(self.names)
        self.since = [clock()] * len(self.names)
        self.live = _isatty(stream)
        self._size = size or _terminal_size
        self._clock = clock
        self.started = clock()
        self._drawn = 0
        self._last_draw = float("-inf")
        self._name_width = max((len(n) for n in self.names), default=4)
        self._ticker: asyncio.Task[None] | None = None

    # -- what callers use --------------------------------------------------

    def set(self, index: int, state: str, detail: str = "") -> None:
        """Move item ``index`` to ``state`` (with a short ``detail``)."""
        if (self.states[index], self.details[index]) == (state, detail):
            return
        if self.states[index] != state:
            self.since[index] = self._clock()
        self.states[index], self.details[index] = state, detail
        if self.live:
            if self._clock() - self._last_draw >= _MIN_REDRAW:  # the ticker draws the rest
                self.draw()
        elif self.plain_states is None or state in self.plain_states:
            self._plain(index)

    def counts(self) -> dict[str, int]:
        """How many items are in each state."""
        counted = Counter(self.states)
        return {state: counted[state] for state in STATES}

    @property
    def elapsed(self) -> float:
        return self._clock() - self.started

    def message(self, text: str) -> None:
        """Print ``text`` above the live block (or as a plain line)."""
        if self.live:
            self._erase()
        self.stream.write(text.rstrip("\n") + "\n")
        if self.live:
            self.draw()
        else:
            self.stream.flush()

    async def __aenter__(self) -> Display:
        if self.live:
            self.draw()
            self._ticker = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the clock and leave the final frame on the screen."""
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
        if self.live:
            self.draw()
            self._drawn = 0  # what follows is printed below the final frame

    # -- drawing ------------------------------------------------------------

    def frame(self, width: int, height: int) -> list[str]:
        """The lines of the block for a ``width`` x ``height`` terminal."""
        width = max(width - 1, _MIN_WIDTH)  # never touch the last column: no auto-wrap
        height = max(height - 1, 1)  # the cursor waits on the line below the block
        total = len(self.names)
        counts = self.counts()
        finished = sum(counts[s] for s in FINISHED)
        clock = _clock_text(self.elapsed)
        head: list[str]
        if total == 1:
            head = [_cut(f"{self.title}  {clock}", width)]
        else:
            head = [_cut(f"{self.title}: {finished}/{total} finished  {clock}", width)]
            bar_width = max(width - 2, 1)
            filled = bar_width * finished // total
            head.append("[" + "#" * filled + "-" * (bar_width - filled) + "]")
            head += _wrap([f"{s} {n}" for s, n in counts.items() if n], width)
        if self.note and self._waiting():
            head += _wrap(self.note.split(), width, sep=" ")
        head = head[:height]
        room = height - len(head)
        if room <= 0:
            return head
        rows = list(range(total))
        if len(rows) > room:
            # Show what moves first, then what waits, then what has finished.
            order = sorted(rows, key=lambda i: _PRIORITY.get(self.states[i], 2))
            shown = sorted(order[: room - 1])
            hidden = total - len(shown)
            rest = Counter(self.states[i] for i in order[room - 1 :])
            summary = ", ".join(f"{n} {s}" for s, n in rest.items())
            return (
                head
                + [self._row(i, width) for i in shown]
                + [_cut(f"... and {hidden} more ({summary})", width)]
            )
        return head + [self._row(i, width) for i in rows]

    def _waiting(self) -> bool:
        now = self._clock()
        return any(
            s == "queued" or (s == "submitting" and now - t > 1.0)
            for s, t in zip(self.states, self.since, strict=True)
        )

    def _row(self, index: int, width: int) -> str:
        name_width = min(self._name_width, max(width // 3, 4))
        state = self.states[index]
        detail = self.details[index]
        if state == "submitting" and self._clock() - self.since[index] > 1.0 and not detail:
            detail = "waiting for a creation slot"
        name = _cut(self.names[index], name_width)
        return _cut(f"{name:<{name_width}} {_MARKS.get(state, '[    ]')} {state} {detail}", width)

    def draw(self) -> None:
        """Redraw the block in place."""
        columns, rows = self._size()
        lines = self.frame(columns, rows)
        self._erase()
        self.stream.write("".join(f"{line}\n" for line in lines))
        self.stream.flush()
        self._drawn = len(lines)
        self._last_draw = self._clock()

    def _erase(self) -> None:
        if self._drawn:
            self.stream.write(f"\r\x1b[{self._drawn}A\x1b[J")

    def _plain(self, index: int) -> None:
        finished = sum(1 for s in self.states if s in FINISHED)
        detail = f" {self.details[index]}" if self.details[index] else ""
        total = len(self.names)
        prefix = f"[{finished}/{total}]" if total > 1 else f"[{self.elapsed:.1f}s]"
        self.stream.write(f"{prefix} {self.names[index]}: {self.states[index]}{detail}\n")
        self.stream.flush()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(_TICK)
            self.draw()


def _isatty(stream: TextIO) -> bool:
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return stream.isatty()
    return False


def _terminal_size() -> tuple[int, int]:
    size = shutil.get_terminal_size((80, 24))
    return size.columns, size.lines
