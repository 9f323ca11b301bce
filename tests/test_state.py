"""The stage machine: the table in kiemashup._core.state and the rules written above it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiemashup._core.models import Stage, TaskSnapshot, TaskStatus, Track
from kiemashup._core.state import (
    TABLE,
    UNKNOWN_ROW,
    advance,
    classify,
    coerce_status,
    make_snapshot,
    reached,
    row_for,
    stage_from_tracks,
)

PLAYABLE = Track(id="a", audio_url="https://x/a.mp3")
PLAYABLE_2 = Track(id="b", audio_url="https://x/b.mp3")
SILENT = Track(id="b", audio_url=None, stream_audio_url="https://x/b")

FAILURES = [s for s, row in TABLE.items() if row.failed and s is not TaskStatus.CALLBACK_EXCEPTION]


def snap(status: str, *tracks: Track) -> TaskSnapshot:
    """A snapshot for ``status`` and ``tracks``."""
    return make_snapshot("t1", status, tuple(tracks))


# --- the table ------------------------------------------------------------------------


def test_table_has_a_row_for_every_documented_status() -> None:
    """Every TaskStatus member has exactly one row in TABLE."""
    assert set(TABLE) == set(TaskStatus)


# What a caller sees for each status with no tracks, written from KIE-API.md §4 rather
# than read off TABLE: "waiting" (not terminal), "done" (terminal success) or "failed".
OUTCOME = {
    "PENDING": ("waiting", Stage.PENDING),
    "TEXT_SUCCESS": ("waiting", Stage.TEXT),
    "FIRST_SUCCESS": ("waiting", Stage.FIRST),
    "SUCCESS": ("done", Stage.COMPLETE),
    "CREATE_TASK_FAILED": ("failed", Stage.PENDING),
    "GENERATE_AUDIO_FAILED": ("failed", Stage.PENDING),
    "SENSITIVE_WORD_ERROR": ("failed", Stage.PENDING),
    "CALLBACK_EXCEPTION": ("failed", Stage.PENDING),
    "SOME_NEW_STATUS": ("waiting", Stage.PENDING),
}


def outcome(snapshot: TaskSnapshot) -> str:
    """How a wait() on ``snapshot`` ends: keeps waiting, returns, or raises."""
    if snapshot.failed:
        return "failed"
    return "done" if snapshot.is_terminal else "waiting"


@pytest.mark.parametrize(("status", "expected"), OUTCOME.items())
def test_each_status_without_tracks_gives_the_documented_outcome(
    status: str, expected: tuple[str, Stage]
) -> None:
    """Every documented status (and an unknown one) waits, completes or fails as Kie documents."""
    snapshot = make_snapshot("t1", status)
    assert (outcome(snapshot), snapshot.stage) == expected
    assert classify(snapshot.status, ()) == (snapshot.stage, snapshot.is_terminal, snapshot.failed)


def test_every_documented_status_is_covered_by_the_outcomes() -> None:
    """OUTCOME above speaks of every TaskStatus member (a new member needs a decision)."""
    assert {s.value for s in TaskStatus} <= set(OUTCOME)


def test_a_wait_returns_only_for_success_and_reached_stages() -> None:
    """reached() is true only where a wait for that stage returns; SUCCESS reaches every stage."""
    for status, (kind, stage) in OUTCOME.items():
        snapshot = make_snapshot("t1", status)
        for wanted in Stage:
            assert reached(snapshot, wanted) == (kind != "failed" and stage >= wanted)


def test_snapshot_cannot_claim_a_stage_its_status_does_not_prove() -> None:
    """TaskSnapshot derives stage, is_terminal and failed; they cannot be passed in."""
    with pytest.raises(TypeError):
        TaskSnapshot("t1", "PENDING", stage=Stage.COMPLETE)  # type: ignore[call-arg]  # the point
    assert TaskSnapshot("t1", "SUCCESS").stage is Stage.COMPLETE
    assert TaskSnapshot("t1", "SUCCESS").status is TaskStatus.SUCCESS


def test_every_row_of_the_table_is_consulted(monkeypatch: pytest.MonkeyPatch) -> None:
    """classify reads each row: flipping a row's terminal flag flips the verdict for its status."""
    for status, row in list(TABLE.items()):
        flipped = row._replace(terminal=not row.terminal)
        monkeypatch.setitem(TABLE, status, flipped)
        assert classify(status, ()).terminal is flipped.terminal
        monkeypatch.setitem(TABLE, status, row)
    assert row_for("SOME_NEW_STATUS") is UNKNOWN_ROW


def test_stages_are_ordered() -> None:
    """Stage compares PENDING < TEXT < FIRST < COMPLETE."""
    assert Stage.PENDING < Stage.TEXT < Stage.FIRST < Stage.COMPLETE
    assert sorted(Stage, reverse=True)[0] is Stage.COMPLETE


# --- tracks and classification --------------------------------------------------------


@pytest.mark.parametrize(
    ("tracks", "stage"),
    [
        ((), Stage.PENDING),
        ((SILENT,), Stage.PENDING),
        ((PLAYABLE,), Stage.FIRST),
        ((PLAYABLE, SILENT), Stage.FIRST),
        ((PLAYABLE, PLAYABLE_2), Stage.COMPLETE),
    ],
)
def test_stage_from_tracks(tracks: tuple[Track, ...], stage: Stage) -> None:
    """Tracks alone prove FIRST with one playable track and COMPLETE with two or more."""
    assert stage_from_tracks(tracks) is stage


def test_empty_audio_url_is_not_playable() -> None:
    """A track whose audio_url is "" or None is not playable."""
    assert not Track(audio_url="").playable
    assert not Track().playable
    assert PLAYABLE.playable


def test_known_success_stage_does_not_depend_on_tracks() -> None:
    """A known non-failed status keeps its own stage even when tracks say otherwise."""
    assert snap("TEXT_SUCCESS", PLAYABLE, PLAYABLE_2).stage is Stage.TEXT
    assert snap("SUCCESS").stage is Stage.COMPLETE
    assert snap("FIRST_SUCCESS", PLAYABLE, SILENT).tracks == (PLAYABLE, SILENT)


@pytest.mark.parametrize("status", FAILURES)
def test_failure_keeps_tracks_and_the_stage_they_prove(status: TaskStatus) -> None:
    """A failure status stays a terminal failure but keeps its tracks and the stage they prove."""
    snapshot = snap(status.value, PLAYABLE, SILENT)
    assert (snapshot.stage, snapshot.is_terminal, snapshot.failed) == (Stage.FIRST, True, True)
    assert snapshot.tracks == (PLAYABLE, SILENT)


@pytest.mark.parametrize("tracks", [(PLAYABLE,), (PLAYABLE, PLAYABLE_2)])
def test_callback_exception_with_all_tracks_playable_is_complete_success(
    tracks: tuple[Track, ...],
) -> None:
    """CALLBACK_EXCEPTION whose tracks are all playable is a terminal COMPLETE success."""
    snapshot = snap("CALLBACK_EXCEPTION", *tracks)
    assert snapshot.status is TaskStatus.CALLBACK_EXCEPTION
    assert (snapshot.stage, snapshot.is_terminal, snapshot.failed) == (Stage.COMPLETE, True, False)
    assert reached(snapshot, Stage.COMPLETE)


@pytest.mark.parametrize(
    ("tracks", "stage"),
    [((), Stage.PENDING), ((SILENT,), Stage.PENDING), ((PLAYABLE, SILENT), Stage.FIRST)],
)
def test_callback_exception_without_all_tracks_is_failure_keeping_tracks(
    tracks: tuple[Track, ...], stage: Stage
) -> None:
    """CALLBACK_EXCEPTION without every track playable is a terminal failure keeping its tracks."""
    snapshot = snap("CALLBACK_EXCEPTION", *tracks)
    assert (snapshot.stage, snapshot.is_terminal, snapshot.failed) == (stage, True, True)
    assert snapshot.tracks == tracks
    assert not reached(snapshot, Stage.PENDING)


@pytest.mark.parametrize(
    ("tracks", "stage"),
    [((), Stage.PENDING), ((PLAYABLE,), Stage.FIRST), ((PLAYABLE, PLAYABLE_2), Stage.COMPLETE)],
)
def test_unknown_status_is_kept_as_string_and_not_terminal(
    tracks: tuple[Track, ...], stage: Stage
) -> None:
    """An unknown status stays a plain str, is never terminal or failed, stage from tracks."""
    snapshot = snap("QUEUED_FOR_REVIEW", *tracks)
    assert type(snapshot.status) is str
    assert snapshot.status == "QUEUED_FOR_REVIEW"
    assert (snapshot.stage, snapshot.is_terminal, snapshot.failed) == (stage, False, False)


def test_coerce_status_returns_members_for_known_values_only() -> None:
    """coerce_status maps known strings to TaskStatus members and leaves others alone."""
    assert all(coerce_status(s.value) is s for s in TaskStatus)
    assert coerce_status("success") == "success"
    assert not isinstance(coerce_status("success"), TaskStatus)


def test_make_snapshot_carries_error_fields_and_source() -> None:
    """make_snapshot passes task id, error code, error message and source through."""
    snapshot = make_snapshot(
        "abc", "GENERATE_AUDIO_FAILED", error_code=413, error_message="m", source="callback"
    )
    assert (snapshot.task_id, snapshot.error_code, snapshot.error_message, snapshot.source) == (
        "abc",
        413,
        "m",
        "callback",
    )
    assert snapshot.playable_tracks == ()


# --- advance --------------------------------------------------------------------------


def test_first_snapshot_is_always_kept() -> None:
    """With nothing known yet, any snapshot is kept."""
    new = snap("PENDING")
    assert advance(None, new) is new


@pytest.mark.parametrize("final", ["SUCCESS", "GENERATE_AUDIO_FAILED", "CALLBACK_EXCEPTION"])
def test_terminal_snapshot_is_final(final: str) -> None:
    """After a terminal snapshot nothing replaces it, not even another terminal one."""
    current = snap(final)
    for status in [*TaskStatus, "SOMETHING_NEW"]:
        assert advance(current, snap(status, PLAYABLE, PLAYABLE_2)) is None


def test_terminal_replaces_any_non_terminal_even_at_a_lower_stage() -> None:
    """A terminal failure with no tracks replaces a non-terminal FIRST snapshot."""
    new = snap("GENERATE_AUDIO_FAILED")
    assert advance(snap("FIRST_SUCCESS", PLAYABLE), new) is new


def test_later_stage_replaces_earlier() -> None:
    """A non-terminal snapshot at a later stage replaces the current one."""
    new = snap("FIRST_SUCCESS", PLAYABLE, SILENT)
    assert advance(snap("TEXT_SUCCESS"), new) is new


def test_never_moves_backwards() -> None:
    """A non-terminal snapshot at an earlier stage is ignored."""
    assert advance(snap("FIRST_SUCCESS", PLAYABLE), snap("TEXT_SUCCESS")) is None
    assert advance(snap("TEXT_SUCCESS"), snap("PENDING")) is None
    assert advance(snap("FIRST_SUCCESS", PLAYABLE), snap("UNKNOWN_NEW")) is None


def test_same_stage_and_status_replaces_only_with_more_playable_tracks() -> None:
    """At the same stage and status, only a snapshot with more playable tracks replaces."""
    current = snap("FIRST_SUCCESS", PLAYABLE, SILENT)
    more = snap("FIRST_SUCCESS", PLAYABLE, PLAYABLE_2)
    assert advance(current, more) is more
    assert advance(current, snap("FIRST_SUCCESS", PLAYABLE, SILENT)) is None  # a duplicate
    assert advance(more, current) is None


def test_a_new_status_at_the_same_stage_replaces_the_old_one() -> None:
    """An unknown status after PENDING (same stage) is kept; TEXT then replaces it; no way back."""
    pending = snap("PENDING")
    queued = snap("QUEUED_SOMEWHERE")
    assert queued.stage is Stage.PENDING
    assert advance(pending, queued) is queued
    assert advance(queued, snap("QUEUED_SOMEWHERE")) is None  # a duplicate changes nothing
    text = snap("TEXT_SUCCESS")
    assert advance(queued, text) is text
    assert advance(text, snap("QUEUED_SOMEWHERE")) is None  # stage never goes backwards


def test_a_new_status_never_drops_a_playable_track() -> None:
    """A new status at the same stage with fewer playable tracks is ignored."""
    current = snap("FIRST_SUCCESS", PLAYABLE, PLAYABLE_2)
    assert advance(current, snap("FIRST_RENAMED", PLAYABLE, SILENT)) is None


def test_reached_needs_a_successful_snapshot_at_or_past_the_stage() -> None:
    """reached() is true for a non-failed snapshot at or past the stage, false for None."""
    first = snap("FIRST_SUCCESS", PLAYABLE)
    assert reached(first, Stage.TEXT)
    assert reached(first, Stage.FIRST)
    assert not reached(first, Stage.COMPLETE)
    assert not reached(None, Stage.PENDING)
    assert not reached(snap("SENSITIVE_WORD_ERROR"), Stage.PENDING)


_tracks = st.lists(st.sampled_from([PLAYABLE, PLAYABLE_2, SILENT]), max_size=3).map(tuple)
_statuses = st.sampled_from([*(s.value for s in TaskStatus), "NEW_STATUS"])


@settings(max_examples=300)
@given(st.lists(st.tuples(_statuses, _tracks), min_size=1, max_size=12))
def test_folding_any_sequence_never_goes_backwards(
    events: list[tuple[str, tuple[Track, ...]]],
) -> None:
    """Folding snapshots with advance: stages never drop before a terminal one, which is final."""
    kept: TaskSnapshot | None = None
    for status, tracks in events:
        new = make_snapshot("t1", status, tracks)
        before = kept
        replacement = advance(kept, new)
        if replacement is not None:
            assert replacement is new
            kept = replacement
        assert kept is not None
        if before is not None and before.is_terminal:
            assert kept is before
        elif before is not None and not kept.is_terminal:
            assert kept.stage >= before.stage
            if kept.stage == before.stage and kept is not before:
                assert len(kept.playable_tracks) >= len(before.playable_tracks)
                assert kept.status != before.status or len(kept.playable_tracks) > len(
                    before.playable_tracks
                )
