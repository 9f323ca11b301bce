"""The vocabulary of data: stages, statuses, models, tracks and snapshots.

This module performs no I/O and knows no JSON key names: those belong to
``_wire``. Everything here is immutable.
"""

from __future__ import annotations

import enum

import attrs


class Model(enum.StrEnum):
    """A Suno model accepted by the mashup endpoint; values equal the API strings."""

    V4 = "V4"
    V4_5 = "V4_5"
    V4_5PLUS = "V4_5PLUS"
    V4_5ALL = "V4_5ALL"
    V5 = "V5"
    V5_5 = "V5_5"


class VocalGender(enum.StrEnum):
    """Preferred vocal gender (custom mode only; a nudge, not a guarantee)."""

    MALE = "m"
    FEMALE = "f"


class Stage(enum.IntEnum):
    """How far a task has got. Ordered: PENDING < TEXT < FIRST < COMPLETE."""

    PENDING = 0
    TEXT = 1
    FIRST = 2
    COMPLETE = 3


class TaskStatus(enum.StrEnum):
    """The raw ``status`` values Kie documents. Unknown values are kept as plain strings."""

    PENDING = "PENDING"
    TEXT_SUCCESS = "TEXT_SUCCESS"
    FIRST_SUCCESS = "FIRST_SUCCESS"
    SUCCESS = "SUCCESS"
    CREATE_TASK_FAILED = "CREATE_TASK_FAILED"
    GENERATE_AUDIO_FAILED = "GENERATE_AUDIO_FAILED"
    CALLBACK_EXCEPTION = "CALLBACK_EXCEPTION"
    SENSITIVE_WORD_ERROR = "SENSITIVE_WORD_ERROR"


# Not slotted: a frozen slotted class sets each of its 13 fields through
# object.__setattr__, a dict-backed one stores them in its __dict__ (a third less CPU
# per track read from every poll). Snapshots stay slotted: there are many more of them.
@attrs.frozen(slots=False)
class Track:
    """One generated track. Every field is optional: Kie omits and empties fields freely.

    ``audio_url`` is ``None`` until the track is playable (Kie sends ``""`` at
    FIRST_SUCCESS for the second track).
    """

    id: str | None = None
    audio_url: str | None = None
    stream_audio_url: str | None = None
    image_url: str | None = None
    source_audio_url: str | None = None
    source_stream_audio_url: str | None = None
    source_image_url: str | None = None
    prompt: str | None = None
    model_name: str | None = None
    title: str | None = None
    tags: str | None = None
    create_time: str | None = None
    duration: float | None = None

    @property
    def playable(self) -> bool:
        """True when the track has audio that can be downloaded."""
        return bool(self.audio_url)


@attrs.frozen(slots=True)
class TaskSnapshot:
    """An immutable view of one task at one moment, from a poll or a callback.

    ``stage``, ``is_terminal`` and ``failed`` are not arguments: they are derived from
    ``status`` and ``tracks`` by the stage table in ``_core.state`` when the snapshot
    is built, so no snapshot can claim a stage its status and tracks do not prove. A
    known status string becomes its ``TaskStatus`` member. ``source`` says where the
    snapshot came from: ``"poll"``, ``"callback"``, ``"submit"`` or ``"journal"``.

    A snapshot from a callback is Kie's unconfirmed word (the signature does not cover
    the body): it is never terminal or failed, its stage is at most FIRST, and it
    carries no tracks (``confirmed`` is False). Only a poll makes a task COMPLETE or
    failed and brings audio URLs (``_core.state``, rule 6).
    """

    task_id: str
    status: TaskStatus | str
    tracks: tuple[Track, ...] = ()
    error_code: int | None = None
    error_message: str | None = None
    source: str = "poll"
    stage: Stage = attrs.field(init=False)
    is_terminal: bool = attrs.field(init=False)
    failed: bool = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        status = _state.coerce_status(self.status)
        confirmed = self.source != "callback"
        if not confirmed:  # rule 6: a callback's URLs are never shown
            object.__setattr__(self, "tracks", ())
        stage, terminal, failed = _state.classify(status, self.tracks, confirmed=confirmed)
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "stage", stage)
        object.__setattr__(self, "is_terminal", terminal)
        object.__setattr__(self, "failed", failed)

    @property
    def confirmed(self) -> bool:
        """False for a callback's snapshot: Kie's word, not yet agreed by a poll."""
        return self.source != "callback"

    @property
    def playable_tracks(self) -> tuple[Track, ...]:
        """The tracks that already have audio."""
        return tuple(t for t in self.tracks if t.playable)


# Last, not at the top: the stage table's module imports this one's classes.
from kiemashup._core import state as _state  # noqa: E402
