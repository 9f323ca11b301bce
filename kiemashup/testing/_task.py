"""Fake tasks and the JSON the fake server renders for them.

Pure: time is an argument, and nothing here touches the network. Record-info
replies are camelCase (KIE-API.md section 2); callback payloads are snake_case
with the documented camelCase exceptions (section 3.2).
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kiemashup.testing._timeline import PROGRESS_STATUSES, Timeline

__all__ = [
    "CALLBACK_TYPES",
    "SHAPES",
    "FakeTask",
    "FakeTrack",
    "RecordedRequest",
    "audio_body",
    "callback_payload",
    "count_in_window",
    "events_over_limit",
    "max_events_in_window",
    "record_info_data",
]

CALLBACK_TYPES: tuple[str, ...] = ("text", "first", "complete", "error")

#: How the fake renders what Kie's docs leave open. "friendly" (the default) fills
#: everything in; "least-friendly" takes the least convenient documented choice each
#: time: ``response: null`` while PENDING (and for a failure without tracks),
#: ``sunoData: []`` at TEXT_SUCCESS, ``duration: null`` and empty URLs for an
#: unfinished track, the ``source*`` URL fields present, and error callbacks with
#: code 501 whatever the task's error code.
SHAPES: tuple[str, ...] = ("friendly", "least-friendly")

_CALLBACK_MESSAGES = {
    "text": "Text generation completed.",
    "first": "First track generated successfully.",
    "complete": "All generated successfully.",
}

_MODEL_NAMES = {
    "V4": "chirp-v4",
    "V4_5": "chirp-v4-5",
    "V4_5PLUS": "chirp-v4-5-plus",
    "V4_5ALL": "chirp-v4-5-all",
    "V5": "chirp-v5",
    "V5_5": "chirp-v5-5",
}


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake server received (Authorization value redacted)."""

    method: str
    path: str
    query: dict[str, str]
    json: object | None
    headers: dict[str, str]
    endpoint: str = ""


@dataclass(frozen=True)
class FakeTrack:
    """One generated track, with every URL it will have once finished."""

    id: str
    audio_url: str
    stream_audio_url: str
    image_url: str
    prompt: str
    model_name: str
    title: str
    tags: str
    create_time: str
    duration: float
    source_audio_url: str = ""
    source_stream_audio_url: str = ""
    source_image_url: str = ""

    @classmethod
    def build(
        cls,
        *,
        base_url: str,
        task_id: str,
        audio_id: str,
        payload: dict[str, Any],
        number: int,
        create_time: str,
        index: int,
    ) -> FakeTrack:
        """The track ``index`` of task ``task_id``, the ``number``-th task created."""
        files = f"{base_url}/files/{task_id}/{audio_id}"
        instrumental = payload.get("instrumental") is True
        return cls(
            id=audio_id,
            audio_url=f"{files}.mp3",
            stream_audio_url=f"{files}-stream.mp3",
            image_url=f"{files}.jpeg",
            prompt="" if instrumental else str(payload.get("prompt") or ""),
            model_name=_MODEL_NAMES.get(str(payload.get("model")), "chirp-v5"),
            title=str(payload.get("title") or f"Mashup {number}"),
            tags=str(payload.get("style") or "mashup"),
            create_time=create_time,
            duration=round(150.0 + 12.34 * index + number % 7, 2),
            source_audio_url=f"{files}-source.mp3",
            source_stream_audio_url=f"{files}-source-stream.mp3",
            source_image_url=f"{files}-source.jpeg",
        )


@dataclass
class FakeTask:
    """A task the fake server created, and every poll it has seen."""

    task_id: str
    payload: dict[str, Any]
    created_at: float
    timeline: Timeline
    tracks: tuple[FakeTrack, ...]
    poll_times: list[float] = field(default_factory=list)
    shape: str = "friendly"  # one of SHAPES

    @property
    def audio_ids(self) -> tuple[str, ...]:
        """The ids of the task's tracks (``sunoData[].id``)."""
        return tuple(track.id for track in self.tracks)

    def status_at(self, now: float) -> str:
        """The task's status at server time ``now``."""
        return self.timeline.status_at(now - self.created_at)


def _is_failed(status: str) -> bool:
    return status not in PROGRESS_STATUSES


def _poll_track(
    track: FakeTrack, *, audio: bool, stream: bool, shape: str = "friendly"
) -> dict[str, object]:
    sparse = shape == "least-friendly"
    out: dict[str, object] = {
        "id": track.id,
        "audioUrl": track.audio_url if audio else "",
        "streamAudioUrl": track.stream_audio_url if stream else "",
        "imageUrl": track.image_url,
        "prompt": track.prompt,
        "modelName": track.model_name,
        "title": track.title,
        "tags": track.tags,
        "createTime": track.create_time,
        "duration": track.duration if audio or not sparse else None,
    }
    if sparse:
        out["sourceAudioUrl"] = track.source_audio_url if audio else ""
        out["sourceStreamAudioUrl"] = track.source_stream_audio_url if stream else ""
        out["sourceImageUrl"] = track.source_image_url
    return out


def _suno_data(task: FakeTask, status: str) -> list[dict[str, object]]:
    tracks, shape = task.tracks, task.shape
    if status == "PENDING":
        return []
    if status == "TEXT_SUCCESS":
        if shape == "least-friendly":
            return []
        return [_poll_track(t, audio=False, stream=False) for t in tracks]
    if status == "FIRST_SUCCESS":
        # Documented quirk: only the first track is finished; the rest stream at most.
        return [
            _poll_track(t, audio=i == 0, stream=True, shape=shape) for i, t in enumerate(tracks)
        ]
    if status == "SUCCESS":
        return [_poll_track(t, audio=True, stream=True, shape=shape) for t in tracks]
    finished = tracks[: task.timeline.tracks_at_terminal]
    return [_poll_track(t, audio=True, stream=True, shape=shape) for t in finished]


def record_info_data(task: FakeTask, status: str) -> dict[str, object]:
    """The ``data`` of a record-info reply for ``task`` in ``status``."""
    failed = _is_failed(status)
    tracks = _suno_data(task, status)
    response: dict[str, object] | None = {"taskId": task.task_id, "sunoData": tracks}
    if task.shape == "least-friendly" and not tracks and status != "TEXT_SUCCESS":
        response = None  # PENDING, or a failure without tracks
    return {
        "taskId": task.task_id,
        "parentMusicId": "",
        "param": json.dumps(task.payload),
        "response": response,
        "status": status,
        "type": "GENERATE",
        "operationType": "generate",
        "errorCode": task.timeline.error_code if failed else None,
        "errorMessage": task.timeline.error_message if failed else None,
    }


def _callback_track(track: FakeTrack, shape: str = "friendly") -> dict[str, object]:
    out: dict[str, object] = {
        "id": track.id,
        "audio_url": track.audio_url,
        "stream_audio_url": track.stream_audio_url,
        "image_url": track.image_url,
        "prompt": track.prompt,
        "model_name": track.model_name,
        "title": track.title,
        "tags": track.tags,
        "createTime": track.create_time,
        "duration": track.duration,
    }
    if shape == "least-friendly":
        out["source_audio_url"] = track.source_audio_url
        out["source_stream_audio_url"] = track.source_stream_audio_url
        out["source_image_url"] = track.source_image_url
    return out


def callback_payload(task: FakeTask, callback_type: str) -> dict[str, Any]:
    """The JSON body Kie POSTs to ``callBackUrl`` for ``task`` at ``callback_type``.

    ``callback_type`` is ``"text"`` (no tracks), ``"first"`` (the first track),
    ``"complete"`` (every track) or ``"error"`` (``data.data`` is null; code and
    message from the task's timeline, default 501; always 501 in the
    least-friendly shape).
    """
    if callback_type not in CALLBACK_TYPES:
        raise ValueError(f"callback_type must be one of {CALLBACK_TYPES}, got {callback_type!r}")
    if callback_type == "error":
        code = 501 if task.shape == "least-friendly" else task.timeline.error_code or 501
        msg = task.timeline.error_message or "Audio generation failed"
        tracks: list[dict[str, object]] | None = None
    else:
        code, msg = 200, _CALLBACK_MESSAGES[callback_type]
        chosen = {"text": (), "first": task.tracks[:1], "complete": task.tracks}[callback_type]
        tracks = [_callback_track(track, task.shape) for track in chosen]
    return {
        "code": code,
        "msg": msg,
        "data": {"callbackType": callback_type, "task_id": task.task_id, "data": tracks},
    }


def audio_body(name: str, size: int) -> bytes:
    """``size`` deterministic bytes for the file ``name``, starting with an ID3 tag."""
    seed = hashlib.sha256(name.encode()).digest()
    header = b"ID3\x04\x00\x00\x00\x00\x00\x00"
    return (header + seed * (size // len(seed) + 1))[:size]


def count_in_window(times: Sequence[float], index: int, window: float) -> int:
    """How many of the sorted ``times[: index + 1]`` fall within ``window`` of ``times[index]``."""
    return index + 1 - bisect_right(times, times[index] - window)


def max_events_in_window(times: Sequence[float], window: float) -> int:
    """The most events in any sliding window of ``window`` seconds."""
    ordered = sorted(times)
    return max((count_in_window(ordered, i, window) for i in range(len(ordered))), default=0)


def events_over_limit(times: Sequence[float], window: float, limit: int) -> int:
    """How many events found more than ``limit`` events (themselves included) in their window."""
    ordered = sorted(times)
    return sum(1 for i in range(len(ordered)) if count_in_window(ordered, i, window) > limit)
