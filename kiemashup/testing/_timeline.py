"""How one fake task moves through its statuses over time.

This module performs no I/O and reads no clock: elapsed time is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "FAILURE_STATUSES",
    "PROGRESS_STATUSES",
    "Timeline",
]

#: Statuses a task passes through on its way to success, in order.
PROGRESS_STATUSES: tuple[str, ...] = (
    "PENDING",
    "TEXT_SUCCESS",
    "FIRST_SUCCESS",
    "SUCCESS",
)

#: The documented failure statuses (KIE-API.md section 2).
FAILURE_STATUSES: tuple[str, ...] = (
    "CREATE_TASK_FAILED",
    "GENERATE_AUDIO_FAILED",
    "CALLBACK_EXCEPTION",
    "SENSITIVE_WORD_ERROR",
)

_INTERMEDIATE = ("TEXT_SUCCESS", "FIRST_SUCCESS")


@dataclass(frozen=True)
class Timeline:
    """One task's life: ``(seconds after creation, status)`` steps, in order.

    A task is ``PENDING`` until its first step. Any status outside
    ``PROGRESS_STATUSES`` (a failure or an unknown value) reports
    ``error_code``/``error_message`` and ``tracks_at_terminal`` finished tracks.
    """

    steps: tuple[tuple[float, str], ...]
    error_code: int | None = None
    error_message: str | None = None
    tracks: int = 2
    tracks_at_terminal: int = 0

    def __post_init__(self) -> None:
        previous = 0.0
        for at, status in self.steps:
            if at < previous:
                raise ValueError(f"timeline steps must be in time order, got {self.steps!r}")
            if not status:
                raise ValueError("timeline status must be a non-empty string")
            previous = at
        if self.tracks < 1:
            raise ValueError(f"tracks must be >= 1, got {self.tracks}")
        if not 0 <= self.tracks_at_terminal <= self.tracks:
            raise ValueError(
                f"tracks_at_terminal must be between 0 and tracks ({self.tracks}), "
                f"got {self.tracks_at_terminal}"
            )

    @classmethod
    def success(
        cls,
        text: float = 0.02,
        first: float = 0.04,
        complete: float = 0.06,
        tracks: int = 2,
    ) -> Timeline:
        """PENDING -> TEXT_SUCCESS -> FIRST_SUCCESS -> SUCCESS at the given times."""
        return cls(
            steps=(
                (0.0, "PENDING"),
                (text, "TEXT_SUCCESS"),
                (first, "FIRST_SUCCESS"),
                (complete, "SUCCESS"),
            ),
            tracks=tracks,
        )

    @classmethod
    def failure(
        cls,
        status: str = "GENERATE_AUDIO_FAILED",
        at: float = 0.03,
        error_code: int | None = 500,
        error_message: str | None = "Audio generation failed",
        after: str | None = None,
    ) -> Timeline:
        """PENDING, optionally ``after`` at ``at/2``, then the failure ``status`` at ``at``."""
        if status in PROGRESS_STATUSES:
            raise ValueError(f"failure status must not be a progress status, got {status!r}")
        steps: list[tuple[float, str]] = [(0.0, "PENDING")]
        if after is not None:
            if after not in _INTERMEDIATE:
                raise ValueError(f"after must be one of {_INTERMEDIATE}, got {after!r}")
            steps.append((at / 2, after))
        steps.append((at, status))
        return cls(
            steps=tuple(steps),
            error_code=error_code,
            error_message=error_message,
        )

    @classmethod
    def custom(
        cls,
        steps: tuple[tuple[float, str], ...] = ((0.01, "TEXT_SUCCESS"), (0.02, "SUCCESS")),
        error_code: int | None = None,
        error_message: str | None = None,
        tracks_at_terminal: int = 0,
        tracks: int = 2,
    ) -> Timeline:
        """Any steps at all (unknown statuses, skipped stages, tracks on a failure)."""
        full = tuple(steps)
        if not full or full[0][0] > 0:
            full = ((0.0, "PENDING"), *full)
        return cls(
            steps=full,
            error_code=error_code,
            error_message=error_message,
            tracks=tracks,
            tracks_at_terminal=tracks_at_terminal,
        )

    @property
    def final_status(self) -> str:
        """The status the task ends in."""
        return self.steps[-1][1] if self.steps else "PENDING"

    def status_at(self, elapsed: float) -> str:
        """The status ``elapsed`` seconds after creation."""
        status = "PENDING"
        for at, step_status in self.steps:
            if at > elapsed:
                break
            status = step_status
        return status
