"""The stage machine, as a table. This module performs no I/O.

Rules:
1. Each known status maps to one row: (stage, terminal, failed).
2. SUCCESS is the only terminal success; CREATE_TASK_FAILED, GENERATE_AUDIO_FAILED and
   SENSITIVE_WORD_ERROR are terminal failures.
3. CALLBACK_EXCEPTION means Kie could not deliver a callback: it is terminal, and it is
   a success (stage COMPLETE) when every track it carries is playable, else a failure
   that still keeps whatever tracks it has.
4. An unknown status is kept as a string; it is neither terminal nor failed, and its
   stage is read off the tracks (so a new status never moves a task backwards).
5. A task's view only moves forward (``advance``): a terminal snapshot is final, and a
   non-terminal one replaces the current one only if it is at a later stage, or at the
   same stage and status with more playable tracks (so duplicates are dropped).
"""

from __future__ import annotations

from typing import NamedTuple

from kiemashup._core.models import Stage, TaskSnapshot, TaskStatus, Track


class Row(NamedTuple):
    stage: Stage
    terminal: bool
    failed: bool


TABLE: dict[TaskStatus, Row] = {
    TaskStatus.PENDING: Row(Stage.PENDING, terminal=False, failed=False),
    TaskStatus.TEXT_SUCCESS: Row(Stage.TEXT, terminal=False, failed=False),
    TaskStatus.FIRST_SUCCESS: Row(Stage.FIRST, terminal=False, failed=False),
    TaskStatus.SUCCESS: Row(Stage.COMPLETE, terminal=True, failed=False),
    TaskStatus.CREATE_TASK_FAILED: Row(Stage.PENDING, terminal=True, failed=True),
    TaskStatus.GENERATE_AUDIO_FAILED: Row(Stage.PENDING, terminal=True, failed=True),
    TaskStatus.SENSITIVE_WORD_ERROR: Row(Stage.PENDING, terminal=True, failed=True),
    TaskStatus.CALLBACK_EXCEPTION: Row(Stage.PENDING, terminal=True, failed=True),
}

_BY_VALUE: dict[str, TaskStatus] = {s.value: s for s in TaskStatus}


def coerce_status(raw: str) -> TaskStatus | str:
    """The enum member for a known status string; the string itself otherwise."""
    return _BY_VALUE.get(raw, raw)


def stage_from_tracks(tracks: tuple[Track, ...]) -> Stage:
    """The stage that the tracks alone prove: all playable -> COMPLETE, one -> FIRST."""
    playable = sum(1 for t in tracks if t.playable)
    if playable and playable == len(tracks) and len(tracks) >= 2:
        return Stage.COMPLETE
    if playable:
        return Stage.FIRST
    return Stage.PENDING


def classify(status: TaskStatus | str, tracks: tuple[Track, ...]) -> Row:
    """The (stage, terminal, failed) row for a status and its tracks (rules 1-4)."""
    if status is TaskStatus.CALLBACK_EXCEPTION:
        playable = sum(1 for t in tracks if t.playable)
        if tracks and playable == len(tracks):
            return Row(Stage.COMPLETE, terminal=True, failed=False)
        return Row(stage_from_tracks(tracks), terminal=True, failed=True)
    row = TABLE.get(status) if isinstance(status, TaskStatus) else None
    if row is None:
        return Row(stage_from_tracks(tracks), terminal=False, failed=False)
    if row.failed:
        return Row(max(row.stage, stage_from_tracks(tracks)), terminal=True, failed=True)
    return row


def make_snapshot(
    task_id: str,
    status: str,
    tracks: tuple[Track, ...] = (),
    *,
    error_code: int | None = None,
    error_message: str | None = None,
    source: str = "poll",
) -> TaskSnapshot:
    """Build a snapshot whose stage and flags follow the table."""
    coerced = coerce_status(status)
    row = classify(coerced, tracks)
    return TaskSnapshot(
        task_id=task_id,
        status=coerced,
        stage=row.stage,
        tracks=tracks,
        error_code=error_code,
        error_message=error_message,
        is_terminal=row.terminal,
        failed=row.failed,
        source=source,
    )


def advance(current: TaskSnapshot | None, new: TaskSnapshot) -> TaskSnapshot | None:
    """The snapshot to keep after ``new`` arrives, or None if ``current`` stays (rule 5)."""
    if current is None:
        return new
    if current.is_terminal:
        return None
    if new.is_terminal:
        return new
    if new.stage > current.stage:
        return new
    same_stage = new.stage == current.stage and new.status == current.status
    if same_stage and len(new.playable_tracks) > len(current.playable_tracks):
        return new
    return None


def reached(snapshot: TaskSnapshot | None, stage: Stage) -> bool:
    """True when a wait for ``stage`` can return ``snapshot`` (successfully)."""
    return snapshot is not None and not snapshot.failed and snapshot.stage >= stage
