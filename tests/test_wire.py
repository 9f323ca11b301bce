"""Reading Kie's payloads: the converter, record-info replies and callbacks, from tests/samples."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiemashup import KieError, ProtocolError, Stage, TaskStatus, Track
from kiemashup._core.callbacks import MAX_TRACKS, parse_callback_at, snapshot_from_callback
from kiemashup._core.errors import CallbackRejected
from kiemashup._core.protocol import parse_envelope, parse_record_info
from kiemashup._core.request import MashupRequest
from kiemashup._core.state import final_claim
from kiemashup._core.wire import (
    _usual_track,
    camel,
    snake,
    structure_track,
    structure_tracks,
    unstructure_request,
)

SAMPLES = Path(__file__).parent / "samples"
TASK = "5c79a1b2be8e"
A1 = "https://tempfile.aiquickdraw.com/e231a1.mp3"
B2 = "https://tempfile.aiquickdraw.com/e231b2.mp3"


def sample(name: str) -> Any:
    """The parsed JSON of tests/samples/<name>.json."""
    return json.loads((SAMPLES / f"{name}.json").read_text())


def sample_names(prefix: str) -> list[str]:
    """The names of the samples whose file name starts with ``prefix``."""
    return sorted(p.stem for p in SAMPLES.glob(f"{prefix}*.json"))


def poll(name: str) -> Any:
    """The snapshot parsed from a record-info sample, through the envelope as the client does."""
    raw = (SAMPLES / f"{name}.json").read_bytes()
    return parse_record_info(parse_envelope(200, raw), task_id=TASK)


# --- key helpers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("audioUrl", "audio_url"),
        ("streamAudioUrl", "stream_audio_url"),
        ("createTime", "create_time"),
        ("modelName", "model_name"),
        ("sourceImageUrl", "source_image_url"),
        ("audio_url", "audio_url"),
        ("id", "id"),
        ("taskId", "task_id"),
    ],
)
def test_snake_converts_camel_case_and_keeps_snake_case(key: str, expected: str) -> None:
    """snake() turns camelCase keys into snake_case and leaves snake_case alone."""
    assert snake(key) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("upload_urls", "uploadUrlList"),
        ("callback_url", "callBackUrl"),
        ("custom_mode", "customMode"),
        ("style_weight", "styleWeight"),
        ("weirdness_constraint", "weirdnessConstraint"),
        ("audio_weight", "audioWeight"),
        ("vocal_gender", "vocalGender"),
        ("prompt", "prompt"),
    ],
)
def test_camel_uses_kies_spellings(name: str, expected: str) -> None:
    """camel() gives camelCase with Kie's own exceptions (uploadUrlList, callBackUrl)."""
    assert camel(name) == expected


def test_unstructure_request_gives_plain_json_types() -> None:
    """The request body holds only JSON types: lists, str, bool, numbers (no enums, no tuples)."""
    body = unstructure_request(MashupRequest(("http://a/1", "http://a/2"), prompt="p", model="V4"))
    assert body == {
        "uploadUrlList": ["http://a/1", "http://a/2"],
        "prompt": "p",
        "customMode": False,
        "model": "V4",
        "instrumental": False,
    }
    assert type(body["model"]) is str
    assert json.loads(json.dumps(body)) == body


# --- tracks ---------------------------------------------------------------------------


def test_track_reads_camel_and_snake_case_alike() -> None:
    """A track reads the same from camelCase (poll) and snake_case (callback) keys."""
    camel_track = structure_track({"id": "x", "audioUrl": A1, "modelName": "m", "duration": 1.5})
    snake_track = structure_track({"id": "x", "audio_url": A1, "model_name": "m", "duration": 1.5})
    assert camel_track == snake_track == Track(id="x", audio_url=A1, model_name="m", duration=1.5)


def test_track_is_lenient_about_empty_null_numbers_and_extra_keys() -> None:
    """ "" and null become None, numeric ids become strings, numeric strings become floats."""
    track = structure_track(
        {"id": 7, "audioUrl": "", "title": None, "duration": "12.5", "new": [1], 3: "x"}
    )
    assert track == Track(id="7", audio_url=None, title=None, duration=12.5)
    assert not track.playable


@pytest.mark.parametrize(
    "raw",
    [
        "a string",
        [1, 2],
        None,
        {"duration": "long"},
        {"duration": [1]},
        {"audioUrl": True},
        {"title": {"a": 1}},
        {"duration": 10**400},
    ],
)
def test_unreadable_track_is_a_protocol_error(raw: object) -> None:
    """A track that is not an object or has unusable field types raises ProtocolError."""
    with pytest.raises(ProtocolError):
        structure_track(raw)


def test_track_list_null_is_empty_and_non_list_is_a_protocol_error() -> None:
    """A null track list means no tracks; a non-list track list raises ProtocolError."""
    assert structure_tracks(None) == ()
    assert structure_tracks([]) == ()
    with pytest.raises(ProtocolError):
        structure_tracks({"id": "x"})


# --- record-info samples --------------------------------------------------------------


def test_samples_exist() -> None:
    """The sample directory holds record-info replies and callback payloads."""
    assert len(sample_names("record_")) >= 9
    assert len(sample_names("callback_")) >= 7


@pytest.mark.parametrize("name", sample_names("record_"))
def test_every_record_info_sample_parses(name: str) -> None:
    """Every record-info sample gives a snapshot for its task whose flags follow the table."""
    snapshot = poll(name)
    assert snapshot.task_id == TASK
    assert snapshot.source == "poll"
    assert snapshot.failed <= snapshot.is_terminal  # failed implies terminal


@pytest.mark.parametrize(
    ("name", "status", "stage", "terminal", "failed"),
    [
        ("record_pending", TaskStatus.PENDING, Stage.PENDING, False, False),
        ("record_text_success", TaskStatus.TEXT_SUCCESS, Stage.TEXT, False, False),
        ("record_first_success", TaskStatus.FIRST_SUCCESS, Stage.FIRST, False, False),
        ("record_success", TaskStatus.SUCCESS, Stage.COMPLETE, True, False),
        (
            "record_generate_audio_failed",
            TaskStatus.GENERATE_AUDIO_FAILED,
            Stage.PENDING,
            True,
            True,
        ),
        ("record_callback_exception", TaskStatus.CALLBACK_EXCEPTION, Stage.COMPLETE, True, False),
        (
            "record_callback_exception_no_tracks",
            TaskStatus.CALLBACK_EXCEPTION,
            Stage.PENDING,
            True,
            True,
        ),
        ("record_lenient_fields", TaskStatus.FIRST_SUCCESS, Stage.FIRST, False, False),
    ],
)
def test_record_info_sample_status_and_stage(
    name: str, status: TaskStatus, stage: Stage, terminal: bool, failed: bool
) -> None:
    """Each record-info sample maps to its documented status, stage and flags."""
    snapshot = poll(name)
    assert snapshot.status is status
    assert (snapshot.stage, snapshot.is_terminal, snapshot.failed) == (stage, terminal, failed)


def test_first_success_keeps_the_unplayable_second_track() -> None:
    """At FIRST_SUCCESS the second track's "" audioUrl becomes None and it is not playable."""
    snapshot = poll("record_first_success")
    first, second = snapshot.tracks
    assert first.audio_url == A1
    assert (second.id, second.audio_url, second.duration) == ("e231b2", None, None)
    assert second.stream_audio_url == "https://musicfile.aiquickdraw.com/e231b2"
    assert snapshot.playable_tracks == (first,)


def test_success_tracks_have_every_documented_field() -> None:
    """A SUCCESS reply's tracks carry id, URLs, prompt, model, title, tags, time and duration."""
    first, second = poll("record_success").tracks
    assert first == Track(
        id="e231a1",
        audio_url=A1,
        stream_audio_url="https://musicfile.aiquickdraw.com/e231a1",
        image_url="https://tempfile.aiquickdraw.com/e231a1.jpeg",
        prompt="[Verse] neon rain",
        model_name="chirp-v5",
        title="Neon Rain",
        tags="synthwave, calm",
        create_time="2025-01-01 00:00:00",
        duration=198.44,
    )
    assert (second.audio_url, second.duration) == (B2, 201.5)


def test_failure_carries_error_code_and_message() -> None:
    """GENERATE_AUDIO_FAILED keeps errorCode and errorMessage."""
    snapshot = poll("record_generate_audio_failed")
    assert (snapshot.error_code, snapshot.error_message) == (
        413,
        "Uploaded audio matches an existing work",
    )


def test_callback_exception_without_tracks_is_a_failure_with_its_error() -> None:
    """CALLBACK_EXCEPTION with null sunoData is a failure carrying its error fields."""
    snapshot = poll("record_callback_exception_no_tracks")
    assert (snapshot.tracks, snapshot.error_code) == ((), 500)


def test_unknown_status_sample_is_kept_as_a_string() -> None:
    """An undocumented status is kept verbatim, not terminal, not failed."""
    snapshot = poll("record_unknown_status")
    assert (snapshot.status, type(snapshot.status)) == ("QUEUED_FOR_REVIEW", str)
    assert (snapshot.stage, snapshot.is_terminal) == (Stage.PENDING, False)


def test_lenient_sample_ignores_extra_fields_and_empties() -> None:
    """Extra fields are ignored; "", null and absent fields are None; numeric strings parse."""
    snapshot = poll("record_lenient_fields")
    first, second = snapshot.tracks
    assert first == Track(id="e231a1", audio_url=A1, duration=198.44)
    assert second == Track()
    assert (snapshot.error_code, snapshot.error_message) == (None, None)


def test_record_info_falls_back_to_the_polled_task_id() -> None:
    """Without a taskId in the reply, the task id that was polled is used."""
    assert parse_record_info({"status": "PENDING"}, task_id="abc").task_id == "abc"
    with pytest.raises(ProtocolError):
        parse_record_info({"status": "PENDING"})


@pytest.mark.parametrize("status", [None, "", 5])
def test_missing_or_unusable_status_reads_as_pending(status: object) -> None:
    """A reply without a usable status is PENDING: nothing is known yet."""
    assert parse_record_info({"taskId": "t", "status": status}).status is TaskStatus.PENDING


@pytest.mark.parametrize("data", [None, [], "x", 3])
def test_record_info_data_must_be_an_object(data: object) -> None:
    """record-info data that is not an object raises ProtocolError."""
    with pytest.raises(ProtocolError):
        parse_record_info(data, task_id="t")


@pytest.mark.parametrize(
    ("raw", "expected"), [(413, 413), ("500", 500), (408.0, 408), ("x", None), (True, None)]
)
def test_error_code_is_read_leniently(raw: object, expected: int | None) -> None:
    """errorCode accepts ints and numeric strings; anything else is None, never a crash."""
    data = {"taskId": "t", "status": "GENERATE_AUDIO_FAILED", "errorCode": raw}
    assert parse_record_info(data).error_code == expected


def test_infinite_error_code_is_none_not_a_crash() -> None:
    """errorCode Infinity (which Python's JSON accepts) is None, not an OverflowError."""
    raw = b'{"code":200,"data":{"taskId":"t","status":"PENDING","errorCode":Infinity}}'
    assert parse_record_info(parse_envelope(200, raw)).error_code is None


# --- callback samples -----------------------------------------------------------------


def callback(name: str) -> Any:
    """The snapshot parsed from a callback sample's bytes, without signature checking."""
    raw = (SAMPLES / f"{name}.json").read_bytes()
    return parse_callback_at({}, raw, hmac_key=None, now=0.0)


def _camel_key(key: str) -> str:
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key)


_POLL_STATUS = {
    "text": "TEXT_SUCCESS",
    "first": "FIRST_SUCCESS",
    "complete": "SUCCESS",
    "error": "GENERATE_AUDIO_FAILED",
}


def equivalent_record_info(payload: dict[str, Any]) -> dict[str, Any]:
    """The record-info ``data`` a poll would return at the moment a callback was sent."""
    inner = payload["data"]
    items = inner.get("data") or []
    failed = inner["callbackType"] == "error"
    return {
        "taskId": inner["task_id"],
        "status": _POLL_STATUS[inner["callbackType"]],
        "response": {"sunoData": [{_camel_key(k): v for k, v in i.items()} for i in items]},
        "errorCode": payload["code"] if failed else None,
        "errorMessage": payload["msg"] if failed else None,
    }


@pytest.mark.parametrize("name", sample_names("callback_"))
def test_callback_gives_the_same_snapshot_as_the_equivalent_poll(name: str) -> None:
    """A callback and the poll answering at the same moment give equal snapshots (but source)."""
    from_callback = callback(name)
    from_poll = parse_record_info(equivalent_record_info(sample(name)))
    assert from_callback.source == "callback"
    assert from_callback == attrs.evolve(from_poll, source="callback")
    assert snapshot_from_callback(sample(name)) == from_callback


@pytest.mark.parametrize(
    ("name", "status", "stage", "playable"),
    [
        ("callback_text", TaskStatus.TEXT_SUCCESS, Stage.TEXT, 0),
        ("callback_first", TaskStatus.FIRST_SUCCESS, Stage.FIRST, 0),
        ("callback_complete", TaskStatus.SUCCESS, Stage.FIRST, 0),
        ("callback_extra_fields", TaskStatus.SUCCESS, Stage.FIRST, 0),
    ],
)
def test_progress_callbacks_map_to_claims(
    name: str, status: TaskStatus, stage: Stage, playable: int
) -> None:
    """text, first and complete callbacks claim their status, capped at FIRST, with no tracks."""
    snapshot = callback(name)
    assert (snapshot.task_id, snapshot.status, snapshot.stage) == (TASK, status, stage)
    assert len(snapshot.playable_tracks) == playable
    assert not snapshot.failed
    assert not snapshot.is_terminal
    assert snapshot.error_code is None


def test_snake_case_tracks_read_optional_source_urls() -> None:
    """Tracks in a callback's snake_case shape read source_* URLs and camelCase createTime."""
    raw = json.loads((SAMPLES / "callback_complete.json").read_bytes())
    first, second = structure_tracks(raw["data"]["data"])
    assert first.source_audio_url == "https://cdn1.suno.ai/e231a1.mp3"
    assert first.source_stream_audio_url == "https://cdn1.suno.ai/e231a1"
    assert first.source_image_url == "https://cdn2.suno.ai/e231a1.jpeg"
    assert first.create_time == "2025-01-01 00:00:00"  # camelCase inside a snake_case item
    assert (second.source_audio_url, second.audio_url) == (None, B2)


@pytest.mark.parametrize("name", sample_names("callback_error"))
def test_error_callback_with_null_empty_or_missing_data_is_a_failure(name: str) -> None:
    """An error callback claims GENERATE_AUDIO_FAILED, code 501, whatever data.data is."""
    snapshot = callback(name)
    assert snapshot.status is TaskStatus.GENERATE_AUDIO_FAILED
    assert (snapshot.is_terminal, snapshot.failed, snapshot.tracks) == (False, False, ())
    assert final_claim(snapshot)
    assert (snapshot.error_code, snapshot.error_message) == (501, "Audio generation failed")


def test_failed_callback_type_and_non_200_code_claim_failure() -> None:
    """callbackType "failed" (a clone's spelling) or a non-200 code: a failure claim, polled."""
    for payload in (
        {"code": 200, "data": {"callbackType": "failed", "task_id": "t"}},
        {"code": 531, "msg": "refunded", "data": {"callbackType": "complete", "task_id": "t"}},
        {"code": 531, "msg": "refunded", "data": {"task_id": "t"}},  # no type at all
    ):
        snapshot = snapshot_from_callback(payload)
        assert snapshot.status == TaskStatus.GENERATE_AUDIO_FAILED
        assert final_claim(snapshot)
        assert not snapshot.failed


def test_callback_task_id_may_be_camel_case() -> None:
    """Other Kie families send taskId instead of task_id; both are accepted."""
    payload = {"code": 200, "data": {"callbackType": "text", "taskId": "t9", "data": []}}
    assert snapshot_from_callback(payload).task_id == "t9"


@pytest.mark.parametrize(
    "kind", ["remixing", "bogus", "complete ", "SUCCESS", "exception", "", None, 7, ["text"]]
)
def test_unknown_callback_types_are_rejected(kind: Any) -> None:
    """A callbackType Kie does not send (or none, with code 200) is refused with a 400."""
    payload = {"code": 200, "data": {"callbackType": kind, "task_id": "t", "data": []}}
    if kind is None:
        del payload["data"]["callbackType"]  # type: ignore[attr-defined]
    with pytest.raises(CallbackRejected) as info:
        snapshot_from_callback(payload)
    assert info.value.http_status == 400


def test_callback_without_task_id_is_rejected() -> None:
    """A callback with no task id anywhere is rejected."""
    with pytest.raises(CallbackRejected):
        snapshot_from_callback({"code": 200, "data": {"callbackType": "text"}})


def test_a_callbacks_tracks_are_counted_never_read() -> None:
    """Track items are not read (no work, no URLs); more than MAX_TRACKS of them is a 400."""
    payload = {"code": 200, "data": {"callbackType": "first", "task_id": "t", "data": [3]}}
    assert snapshot_from_callback(payload).tracks == ()
    payload["data"]["data"] = [{}] * (MAX_TRACKS + 1)  # type: ignore[index]
    with pytest.raises(CallbackRejected) as info:
        snapshot_from_callback(payload)
    assert info.value.http_status == 400


# --- fuzzing: only kiemashup errors escape --------------------------------------------

_KEYS = st.one_of(
    st.sampled_from(
        [
            "taskId",
            "task_id",
            "status",
            "response",
            "sunoData",
            "data",
            "callbackType",
            "code",
            "msg",
            "error",
            "errorCode",
            "errorMessage",
            "id",
            "audioUrl",
            "audio_url",
            "duration",
            "title",
        ]
    ),
    st.text(max_size=6),
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.sampled_from(["", "SUCCESS", "CALLBACK_EXCEPTION", "error", "complete", "1e999", "nan"]),
    st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e308, -0.0]),
)
json_values = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_KEYS, children, max_size=5)
    ),
    max_leaves=25,
)


_REPLACEMENTS = st.one_of(_SCALARS, json_values)


@st.composite
def mutated(draw: st.DrawFn, value: Any) -> Any:
    """``value`` with each node independently kept, replaced, dropped or given an extra key."""
    if draw(st.integers(0, 4)) == 0:
        return draw(_REPLACEMENTS)
    if isinstance(value, dict):
        out = {k: draw(mutated(v)) for k, v in value.items() if draw(st.integers(0, 9))}
        if draw(st.integers(0, 4)) == 0:
            out[draw(_KEYS)] = draw(json_values)
        return out
    if isinstance(value, list):
        return [draw(mutated(v)) for v in value]
    return value


_RECORDS = [sample(n)["data"] for n in sample_names("record_")]
_CALLBACKS = [sample(n) for n in sample_names("callback_")]


def _only_kie_errors(call: Any, *args: Any, **kwargs: Any) -> None:
    with contextlib.suppress(KieError):
        call(*args, **kwargs)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, st.sampled_from(_RECORDS).flatmap(mutated)))
def test_record_info_parser_raises_only_kie_errors(data: Any) -> None:
    """parse_record_info on any JSON value returns a snapshot or raises a KieError."""
    _only_kie_errors(parse_record_info, data, task_id="t")
    _only_kie_errors(parse_record_info, data)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, st.sampled_from(_CALLBACKS).flatmap(mutated)))
def test_callback_parsers_raise_only_kie_errors(payload: Any) -> None:
    """Callback parsing of any JSON value returns a snapshot or raises a KieError."""
    if isinstance(payload, dict):
        _only_kie_errors(snapshot_from_callback, payload)
    body = json.dumps(payload).encode()
    _only_kie_errors(parse_callback_at, {}, body, hmac_key=None, now=0.0)
    headers = {"X-Webhook-Timestamp": "0", "X-Webhook-Signature": "x"}
    _only_kie_errors(parse_callback_at, headers, body, hmac_key="k", now=0.0)


def test_callback_with_infinite_code_is_read_not_crashed() -> None:
    """A callback code of Infinity (valid for Python's JSON) is ignored, not an OverflowError."""
    body = b'{"code": Infinity, "data": {"callbackType": "text", "task_id": "t", "data": []}}'
    snapshot = parse_callback_at({}, body, hmac_key=None, now=0.0)
    assert (snapshot.status, snapshot.error_code) == (TaskStatus.TEXT_SUCCESS, None)


def _converter_track(raw: dict[str, Any]) -> Track | str:
    """What structure_track makes of ``raw`` through the converter (an unusual key sends it)."""
    try:
        return structure_track({"extra": None, **raw})  # an unusual key: the converter decides
    except ProtocolError:
        return "ProtocolError"


_TRACK_FIELD_NAMES = frozenset(a.name for a in attrs.fields(Track))
_TRACK_KEYS = st.sampled_from(
    sorted(_TRACK_FIELD_NAMES | {camel(n) for n in _TRACK_FIELD_NAMES} | {"extra", "Title"})
)
_TRACK_VALUES = st.one_of(
    st.none(),
    st.text(max_size=8),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.booleans(),
    st.sampled_from(["", "12.5", "nan", "1e999"]),
)


@settings(max_examples=1000, deadline=None)
@given(st.dictionaries(_TRACK_KEYS, _TRACK_VALUES, max_size=8))
def test_usual_track_fast_path_agrees_with_the_converter(raw: dict[str, Any]) -> None:
    """Where the fast path builds a track, the converter builds the very same one."""
    fast = _usual_track(raw)
    if fast is not None:
        assert fast == _converter_track(raw)


def test_the_usual_track_reads_duration_last() -> None:
    """The fast path reads fields by position: duration, the one float, must stay last."""
    from kiemashup._core.wire import _FIELD_NAMES

    assert _FIELD_NAMES[-1] == "duration"
    assert tuple(a.name for a in attrs.fields(Track)) == _FIELD_NAMES
