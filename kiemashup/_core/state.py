"""The stage machine, as a table. This module performs no I/O.

Rules:
1. Each known status maps to one row: (stage, terminal, failed, tracks_decide), and
   ``classify`` reads the row of every status; a status not in the table reads
   ``UNKNOWN_ROW``.
2. SUCCESS is the only terminal success; CREATE_TASK_FAILED, GENERATE_AUDIO_FAILED and
   SENSITIVE_WORD_ERROR are terminal failures.
3. CALLBACK_EXCEPTION means Kie could not deliver a callback: it is terminal, and it is
   a success (stage COMPLETE) when every track it carries is playable, else a failure
   that still keeps whatever tracks it has.
4. An unknown status is kept as a string; it is neither terminal nor failed, and its
   stage is read off the tracks (so a new status never moves a task backwards). A
   failure keeps the stage its tracks prove too.
5. A task's view only moves forward (``advance``): a terminal snapshot is final, and a
   non-terminal one replaces the current one if it is at a later stage, or at the same
   stage with a new status (the server's word, e.g. an unknown status after PENDING) or
   more playable tracks, never with fewer. A duplicate changes nothing. A confirmed
   snapshot (a poll's) replaces an unconfirmed one (a callback's) at the same stage.
6. No callback ever makes a task COMPLETE or failed on its own (the signature covers the
   task id and timestamp, not the body: KIE-API.md §3.3). A callback's snapshot is
   never terminal or failed, its stage is at most FIRST, and it carries no tracks; a
   final callback (``final_claim``) only asks for a confirming poll. A wait may act
   on a callback's TEXT (``trusted_stage``); FIRST and COMPLETE need a poll that agrees.
"""

from __future__ import annotations

from typing import NamedTuple

from kiemashup._core.models import Stage, TaskSnapshot, TaskStatus, Track


class Row(NamedTuple):
    """One row of the table: what a status proves, and whether its tracks may prove more."""

    stage: Stage
    terminal: bool
    failed: bool
    tracks_decide: bool = False  # rules 3 and 4: the stage (rule 3: the outcome) is the tracks'


class Verdict(NamedTuple):
    """What ``classify`` decides for one snapshot."""

    stage: Stage
    terminal: bool
    failed: bool


TABLE: dict[TaskStatus, Row] = {
    TaskStatus.PENDING: Row(Stage.PENDING, terminal=False, failed=False),
    TaskStatus.TEXT_SUCCESS: Row(Stage.TEXT, terminal=False, failed=False),
    TaskStatus.FIRST_SUCCESS: Row(Stage.FIRST, terminal=False, failed=False),
    TaskStatus.SUCCESS: Row(Stage.COMPLETE, terminal=True, failed=False),
    TaskStatus.CREATE_TASK_FAILED: Row(Stage.PENDING, True, True, tracks_decide=True),
    TaskStatus.GENERATE_AUDIO_FAILED: Row(Stage.PENDING, True, True, tracks_decide=True),
    TaskStatus.SENSITIVE_WORD_ERROR: Row(Stage.PENDING, True, True, tracks_decide=True),
    # Rule 3: failed unless every track it carries is playable (then a COMPLETE success).
    TaskStatus.CALLBACK_EXCEPTION: Row(Stage.PENDING, True, True, tracks_decide=True),
}
#: The row of every status that is not in the table (rule 4).
UNKNOWN_ROW = Row(Stage.PENDING, terminal=False, failed=False, tracks_decide=True)

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


def row_for(status: TaskStatus | str) -> Row:
    """The table's row for ``status`` (``UNKNOWN_ROW`` for a status Kie never documented)."""
    return TABLE.get(status, UNKNOWN_ROW) if isinstance(status, TaskStatus) else UNKNOWN_ROW


def classify(
    status: TaskStatus | str, tracks: tuple[Track, ...], *, confirmed: bool = True
) -> Verdict:
    """The (stage, terminal, failed) verdict for a status and its tracks (rules 1-4, 6)."""
    row = row_for(status)
    if not confirmed:  # rule 6: a claim, never an outcome
        return Verdict(Stage.PENDING if row.failed else min(row.stage, Stage.FIRST), False, False)
    if not row.tracks_decide:
        return Verdict(row.stage, row.terminal, row.failed)
    if status is TaskStatus.CALLBACK_EXCEPTION and tracks and all(t.playable for t in tracks):
        return Verdict(Stage.COMPLETE, terminal=True, failed=False)
    return Verdict(max(row.stage, stage_from_tracks(tracks)), row.terminal, row.failed)


def make_snapshot(
    task_id: str,
    status: str,
    tracks: tuple[Track, ...] = (),
    *,
    error_code: int | None = None,
    error_message: str | None = None,
    source: str = "poll",
) -> TaskSnapshot:
    """Build a snapshot; its stage and flags follow the table (``TaskSnapshot`` derives them)."""
    return TaskSnapshot(
        task_id,
        status,
        tracks,
        error_code=error_code,
        error_message=error_message,
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
    if new.stage != current.stage:
        return new if new.stage > current.stage else None
    if new.confirmed != current.confirmed:  # a poll agrees with a callback: it wins
        return new if new.confirmed else None
    more, kept = len(new.playable_tracks), len(current.playable_tracks)
    if more > kept or (more == kept and new.status != current.status):
        return new
    return None


def trusted_stage(snapshot: TaskSnapshot) -> Stage:
    """The stage a wait may act on (rule 6): a callback's word counts up to TEXT only."""
    return snapshot.stage if snapshot.confirmed else min(snapshot.stage, Stage.TEXT)


def final_claim(snapshot: TaskSnapshot) -> bool:
    """True for a callback claiming an outcome (complete or error): confirm it by a poll."""
    return not snapshot.confirmed and row_for(snapshot.status).terminal


def reached(snapshot: TaskSnapshot | None, stage: Stage) -> bool:
    """True when a wait for ``stage`` can return ``snapshot`` (successfully)."""
    return snapshot is not None and not snapshot.failed and trusted_stage(snapshot) >= stage
