"""FakeKieServer speaks the Kie wire format over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from kiemashup.testing import (
    FakeKieServer,
    Fault,
    Timeline,
    callback_payload,
    payload_problems,
)

AUTH = {"Authorization": "Bearer test-key"}
SUBMIT = "/api/v1/generate/mashup"
RECORD = "/api/v1/generate/record-info"
CREDIT = "/api/v1/chat/credit"
TRACK_KEYS = {
    "id",
    "audioUrl",
    "streamAudioUrl",
    "imageUrl",
    "prompt",
    "modelName",
    "title",
    "tags",
    "createTime",
    "duration",
}


class Clock:
    """A server clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def payload(**changes: Any) -> dict[str, Any]:
    """A valid non-custom mashup body, with ``changes`` applied (None deletes a key)."""
    body: dict[str, Any] = {
        "uploadUrlList": ["https://example.com/a.mp3", "https://example.com/b.mp3"],
        "customMode": False,
        "model": "V5",
        "callBackUrl": "https://example.com/callback",
        "prompt": "two songs, one groove",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def custom(**changes: Any) -> dict[str, Any]:
    """A valid custom-mode mashup body, with ``changes`` applied (None deletes a key)."""
    base = {"customMode": True, "style": "Jazz", "title": "Blend", "prompt": "[Verse] la"}
    return payload(**{**base, **changes})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest_asyncio.fixture
async def server(clock: Clock) -> AsyncIterator[FakeKieServer]:
    async with FakeKieServer(clock=clock) as fake:
        yield fake


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession,
    server: FakeKieServer,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> tuple[int, Any]:
    """One request; returns (HTTP status, parsed JSON body)."""
    hdrs = AUTH if headers is None else headers
    async with http.request(method, server.url + path, headers=hdrs, **kwargs) as resp:
        return resp.status, await resp.json()


async def submit(http: aiohttp.ClientSession, server: FakeKieServer, body: object) -> str:
    """Create a task and return its id."""
    status, reply = await call(http, server, "POST", SUBMIT, json=body)
    assert (status, reply["code"]) == (200, 200), reply
    return str(reply["data"]["taskId"])


async def poll(http: aiohttp.ClientSession, server: FakeKieServer, task_id: str) -> Any:
    """One record-info poll; returns the envelope."""
    _, reply = await call(http, server, "GET", RECORD, params={"taskId": task_id})
    return reply


# -- the happy path --------------------------------------------------------


async def test_task_progresses_through_stages_with_exact_record_info_shape(
    http: aiohttp.ClientSession, clock: Clock
) -> None:
    """A task moves PENDING -> TEXT -> FIRST -> SUCCESS in the documented camelCase shape."""
    timeline = Timeline.success(text=0.5, first=1.0, complete=1.5)
    async with FakeKieServer(clock=clock, default_timeline=timeline) as server:
        body = custom(title="My Blend")
        task_id = await submit(http, server, body)
        assert re.fullmatch(r"[0-9a-f]{32}", task_id)

        seen = []
        for _ in range(4):
            reply = await poll(http, server, task_id)
            assert reply["code"] == 200
            seen.append(reply["data"])
            clock.advance(0.5)

    assert [d["status"] for d in seen] == ["PENDING", "TEXT_SUCCESS", "FIRST_SUCCESS", "SUCCESS"]
    pending, text, first, done = seen
    assert set(done) == {
        "taskId",
        "parentMusicId",
        "param",
        "response",
        "status",
        "type",
        "operationType",
        "errorCode",
        "errorMessage",
    }
    assert (done["taskId"], done["parentMusicId"]) == (task_id, "")
    assert (done["type"], done["operationType"]) == ("GENERATE", "generate")
    assert (done["errorCode"], done["errorMessage"]) == (None, None)
    assert isinstance(done["param"], str)
    assert json.loads(done["param"]) == body
    assert pending["response"] == {"taskId": task_id, "sunoData": []}
    assert [(t["audioUrl"], t["streamAudioUrl"]) for t in text["response"]["sunoData"]] == [
        ("", ""),
        ("", ""),
    ]
    first_tracks = first["response"]["sunoData"]
    assert first_tracks[0]["audioUrl"]
    assert first_tracks[0]["streamAudioUrl"]
    assert first_tracks[1]["audioUrl"] == ""
    tracks = done["response"]["sunoData"]
    assert len(tracks) == 2
    for track in tracks:
        assert set(track) == TRACK_KEYS
        assert track["audioUrl"] == f"{server.url}/files/{task_id}/{track['id']}.mp3"
        assert track["imageUrl"] == f"{server.url}/files/{task_id}/{track['id']}.jpeg"
        assert (track["title"], track["tags"], track["modelName"]) == (
            "My Blend",
            "Jazz",
            "chirp-v5",
        )
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", track["createTime"])
        assert isinstance(track["duration"], float)
    assert [t["id"] for t in tracks] == list(server.tasks[task_id].audio_ids)


async def test_default_clock_runs_a_short_timeline_in_real_time(
    http: aiohttp.ClientSession,
) -> None:
    """With the default monotonic clock a 60 ms timeline is SUCCESS after 60 ms."""
    async with FakeKieServer() as server:
        task_id = await submit(http, server, payload())
        assert (await poll(http, server, task_id))["data"]["status"] == "PENDING"
        await asyncio.sleep(0.07)
        data = (await poll(http, server, task_id))["data"]
    assert data["status"] == "SUCCESS"
    assert data["response"]["sunoData"][0]["title"] == "Mashup 1"


async def test_failure_timeline_reports_error_code_and_message_only_when_failed(
    http: aiohttp.ClientSession, server: FakeKieServer, clock: Clock
) -> None:
    """A failure timeline passes its `after` stage at at/2, then fails with errorCode/Message."""
    server.script(Timeline.failure(at=1.0, after="TEXT_SUCCESS", error_code=501))
    task_id = await submit(http, server, payload())
    clock.advance(0.5)
    middle = (await poll(http, server, task_id))["data"]
    clock.advance(0.5)
    failed = (await poll(http, server, task_id))["data"]
    assert (middle["status"], middle["errorCode"], middle["errorMessage"]) == (
        "TEXT_SUCCESS",
        None,
        None,
    )
    assert (failed["status"], failed["errorCode"], failed["errorMessage"]) == (
        "GENERATE_AUDIO_FAILED",
        501,
        "Audio generation failed",
    )
    assert failed["response"]["sunoData"] == []


async def test_custom_timeline_can_fail_with_tracks_or_report_unknown_statuses(
    http: aiohttp.ClientSession, server: FakeKieServer, clock: Clock
) -> None:
    """Custom timelines give CALLBACK_EXCEPTION with finished tracks, and unknown statuses."""
    server.script(
        Timeline.custom(steps=((0.1, "CALLBACK_EXCEPTION"),), tracks_at_terminal=2),
        Timeline.custom(steps=((0.1, "TEXT_SUCCESS"), (0.2, "SOME_NEW_STATUS"))),
    )
    with_tracks = await submit(http, server, payload())
    unknown = await submit(http, server, payload())
    clock.advance(0.2)
    exception = (await poll(http, server, with_tracks))["data"]
    new_status = (await poll(http, server, unknown))["data"]
    assert exception["status"] == "CALLBACK_EXCEPTION"
    assert all(t["audioUrl"] for t in exception["response"]["sunoData"])
    assert len(exception["response"]["sunoData"]) == 2
    assert new_status["status"] == "SOME_NEW_STATUS"
    assert new_status["response"]["sunoData"] == []


async def test_script_is_used_first_then_timeline_for_then_default(
    http: aiohttp.ClientSession, server: FakeKieServer
) -> None:
    """Scripted timelines go to the next tasks in order; then timeline_for; then the default."""
    scripted = Timeline.failure(status="SENSITIVE_WORD_ERROR")
    chosen = Timeline.success(tracks=1)
    server.script(scripted)
    server.timeline_for = lambda body: chosen if body["prompt"] == "pick me" else None
    ids = [
        await submit(http, server, payload(prompt="pick me")),
        await submit(http, server, payload(prompt="pick me")),
        await submit(http, server, payload()),
    ]
    assert [server.tasks[i].timeline for i in ids] == [scripted, chosen, server.default_timeline]
    assert server.creations == 3


# -- Timeline and Fault values -----------------------------------------------


def test_timeline_constructors_produce_ordered_steps() -> None:
    """The three constructors start PENDING at 0 and list their steps in time order."""
    assert Timeline.success().steps == (
        (0.0, "PENDING"),
        (0.02, "TEXT_SUCCESS"),
        (0.04, "FIRST_SUCCESS"),
        (0.06, "SUCCESS"),
    )
    failure = Timeline.failure(at=0.04, after="FIRST_SUCCESS")
    assert failure.steps == (
        (0.0, "PENDING"),
        (0.02, "FIRST_SUCCESS"),
        (0.04, "GENERATE_AUDIO_FAILED"),
    )
    assert (failure.error_code, failure.error_message) == (500, "Audio generation failed")
    assert Timeline.custom(steps=((0.0, "SUCCESS"),)).steps == ((0.0, "SUCCESS"),)
    timeline = Timeline.success()
    assert [timeline.status_at(t) for t in (0.0, 0.019, 0.02, 0.05, 9.0)] == [
        "PENDING",
        "PENDING",
        "TEXT_SUCCESS",
        "FIRST_SUCCESS",
        "SUCCESS",
    ]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Timeline.custom(steps=((0.2, "TEXT_SUCCESS"), (0.1, "SUCCESS"))), "time order"),
        (lambda: Timeline.failure(status="SUCCESS"), "progress status"),
        (lambda: Timeline.failure(after="PENDING"), "after must be"),
        (lambda: Timeline.custom(tracks_at_terminal=3), "tracks_at_terminal"),
        (lambda: Fault("nowhere", "http_500"), "endpoint must be"),
        (lambda: Fault("submit", "explode"), "kind must be"),
        (lambda: Fault("submit", "http_500", times=0), "times must be"),
        (lambda: Fault("submit", "body_code"), "needs code"),
        (lambda: Fault("record-info", "drop_after_create"), "only applies to endpoint 'submit'"),
    ],
)
def test_inconsistent_timelines_and_faults_are_rejected(make: Any, match: str) -> None:
    """Timelines and faults that cannot happen raise ValueError when built."""
    with pytest.raises(ValueError, match=match):
        make()


# -- auth, routing, recording ------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}, {"Authorization": "wrong"}],
)
async def test_missing_or_malformed_authorization_gets_body_code_401(
    http: aiohttp.ClientSession, server: FakeKieServer, headers: dict[str, str]
) -> None:
    """Without a Bearer key every API endpoint answers HTTP 200 with body code 401."""
    for method, path in (("POST", SUBMIT), ("GET", RECORD), ("GET", CREDIT)):
        status, reply = await call(http, server, method, path, headers=headers, json=payload())
        assert (status, reply) == (
            200,
            {"code": 401, "msg": "You do not have access permissions", "data": None},
        )
    assert server.creations == 0


async def test_a_configured_api_key_must_match_exactly(http: aiohttp.ClientSession) -> None:
    """With api_key set only that key is accepted."""
    async with FakeKieServer(api_key="right") as server:
        wrong = await call(http, server, "GET", CREDIT, headers={"Authorization": "Bearer nope"})
        right = await call(http, server, "GET", CREDIT, headers={"Authorization": "Bearer right"})
    assert wrong[1]["code"] == 401
    assert right == (200, {"code": 200, "msg": "success", "data": 1000})


async def test_unknown_paths_and_methods_get_http_404_envelopes(
    http: aiohttp.ClientSession, server: FakeKieServer
) -> None:
    """Unknown paths, and known paths with the wrong method, answer HTTP 404 code 404."""
    for method, path in (("GET", "/api/v1/nope"), ("GET", SUBMIT), ("POST", CREDIT)):
        status, reply = await call(http, server, method, path)
        assert (status, reply["code"], reply["data"]) == (404, 404, None)


async def test_unknown_or_missing_task_id_is_reported_in_the_body(
    http: aiohttp.ClientSession, server: FakeKieServer
) -> None:
    """Polling an unknown task gives body code 404; a missing taskId gives 422."""
    assert await poll(http, server, "f" * 32) == {
        "code": 404,
        "msg": "task not found",
        "data": None,
    }
    assert (await call(http, server, "GET", RECORD))[1]["code"] == 422


async def test_requests_are_recorded_with_the_key_redacted(
    http: aiohttp.ClientSession, server: FakeKieServer
) -> None:
    """Every request is recorded and counted per endpoint, never with the real key."""
    task_id = await submit(http, server, payload())
    await poll(http, server, task_id)
    await poll(http, server, task_id)
    await call(http, server, "GET", CREDIT)
    first = server.requests[0]
    assert (first.method, first.path, first.json) == ("POST", SUBMIT, payload())
    assert server.requests[1].query == {"taskId": task_id}
    assert all("test-key" not in str(r.headers) for r in server.requests)
    assert first.headers["Authorization"] == "<redacted>"
    counts = [server.count(e) for e in ("submit", "record-info", "credits", "audio")]
    assert counts == [1, 2, 1, 0]


# -- validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        payload(),
        payload(instrumental=True, model="V4", prompt="x" * 500),
        custom(prompt=None, instrumental=True),
        custom(
            model="V4",
            style="s" * 200,
            title="t" * 80,
            prompt="p" * 3000,
            instrumental=False,
            vocalGender="f",
            styleWeight=0.61,
            weirdnessConstraint=0,
            audioWeight=1,
        ),
        custom(model="V5_5", style="s" * 1000, prompt="p" * 5000, vocalGender="m"),
        payload(uploadUrlList=["http://a.example/1.wav", "https://b.example/2"]),
    ],
)
def test_valid_payloads_have_no_problems(body: dict[str, Any]) -> None:
    """Bodies that follow KIE-API.md 1.1-1.3 pass validation."""
    assert payload_problems(body) == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ([1, 2], "body: must be a JSON object"),
        (payload(uploadUrlList=None), "uploadUrlList: required"),
        (payload(uploadUrlList=["https://a.example/1"]), "exactly 2 URLs, got 1"),
        (payload(uploadUrlList=["https://a/1", "https://b/2", "https://c/3"]), "got 3"),
        (payload(uploadUrlList="https://a/1"), "uploadUrlList: must be a list"),
        (payload(uploadUrlList=["https://a/1", "ftp://b/2"]), "uploadUrlList[1]"),
        (payload(uploadUrlList=["https://a/1", 7]), "uploadUrlList[1]"),
        (payload(customMode=None), "customMode: required"),
        (payload(customMode="false"), "customMode: must be a boolean"),
        (payload(model=None), "model: required"),
        (payload(model="V3_5"), "model: must be one of"),
        (payload(callBackUrl=None), "callBackUrl: required"),
        (payload(callBackUrl="example.com/cb"), "callBackUrl: must be an http(s) URL"),
        (payload(instrumental="yes"), "instrumental: must be a boolean"),
        (payload(prompt=None), "prompt: required"),
        (payload(prompt="  "), "prompt: must not be empty"),
        (payload(prompt="x" * 501), "prompt: at most 500 characters, got 501"),
        (payload(prompt=5), "prompt: must be a string"),
        (payload(style="Jazz"), "style: only allowed in custom mode"),
        (payload(title="T"), "title: only allowed in custom mode"),
        (payload(vocalGender="m"), "vocalGender: only allowed in custom mode"),
        (payload(styleWeight=0.5), "styleWeight: only allowed in custom mode"),
        (payload(weirdnessConstraint=0.5), "weirdnessConstraint: only allowed in custom mode"),
        (payload(audioWeight=0.5), "audioWeight: only allowed in custom mode"),
        (custom(style=None), "style: required"),
        (custom(style=""), "style: must not be empty"),
        (custom(model="V4", style="s" * 201), "style: at most 200 characters, got 201"),
        (custom(style="s" * 1001), "style: at most 1000 characters, got 1001"),
        (custom(title=None), "title: required"),
        (custom(title="t" * 81), "title: at most 80 characters, got 81"),
        (custom(prompt=None), "prompt: required"),
        (custom(prompt=None, instrumental=False), "prompt: required"),
        (custom(model="V4", prompt="p" * 3001), "prompt: at most 3000 characters, got 3001"),
        (custom(prompt="p" * 5001), "prompt: at most 5000 characters, got 5001"),
        (custom(vocalGender="male"), "vocalGender: must be 'm' or 'f'"),
        (custom(styleWeight=True), "styleWeight: must be a number, got bool"),
        (custom(styleWeight="0.5"), "styleWeight: must be a number, got str"),
        (custom(weirdnessConstraint=1.01), "weirdnessConstraint: must be between 0 and 1"),
        (custom(audioWeight=-0.1), "audioWeight: must be between 0 and 1"),
        (custom(audioWeight=0.123), "audioWeight: at most two decimals, got 0.123"),
        (payload(negativeTags="metal"), "negativeTags: unknown field"),
        (custom(personaId="p1"), "personaId: unknown field"),
        (payload(callback_url="https://x/cb"), "callback_url: unknown field"),
    ],
)
def test_each_schema_rule_is_reported(body: object, expected: str) -> None:
    """Each broken rule of KIE-API.md 1.1-1.3 is named in the problems."""
    problems = payload_problems(body)
    assert any(expected in problem for problem in problems), problems


def test_every_broken_rule_is_reported_not_only_the_first() -> None:
    """payload_problems lists all problems at once."""
    problems = payload_problems({"customMode": True, "model": "V9", "extra": 1})
    fields = [problem.split(":")[0] for problem in problems]
    assert fields == [
        "extra",
        "uploadUrlList",
        "model",
        "callBackUrl",
        "style",
        "title",
        "prompt",
    ]


async def test_invalid_submit_gets_body_code_422_and_creates_nothing(
    http: aiohttp.ClientSession, server: FakeKieServer
) -> None:
    """An invalid body gets HTTP 200, code 422, the problems as msg, and no task."""
    status, reply = await call(http, server, "POST", SUBMIT, json=payload(prompt=None, style="x"))
    assert (status, reply["code"], reply["data"]) == (200, 422, None)
    assert reply["msg"] == "prompt: required; style: only allowed in custom mode"
    json_auth = {**AUTH, "Content-Type": "application/json"}
    status, reply = await call(http, server, "POST", SUBMIT, data=b"{not json", headers=json_auth)
    assert (status, reply["code"]) == (200, 422)
    assert (server.creations, server.credits) == (0, 1000)


async def test_a_body_not_sent_as_json_is_refused_as_kie_does(
    http: aiohttp.ClientSession, server: FakeKieServer
) -> None:
    """A valid body sent without Content-Type: application/json gets code 401 and no task."""
    body = json.dumps(payload()).encode()
    form = {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}
    for headers in (AUTH, form, {**AUTH, "Content-Type": "text/plain"}):
        status, reply = await call(http, server, "POST", SUBMIT, data=body, headers=headers)
        assert (status, reply["code"]) == (200, 401)
    json_auth = {**AUTH, "Content-Type": "application/json; charset=utf-8"}
    status, reply = await call(http, server, "POST", SUBMIT, data=body, headers=json_auth)
    assert reply["code"] == 200
    assert server.creations == 1


def test_non_custom_mode_accepts_empty_style_and_title() -> None:
    """Non-custom mode accepts style and title left empty ("" or null), as Kie's docs say."""
    assert payload_problems(payload(style="", title="")) == []
    assert payload_problems(payload(style=None, title=None)) == []  # None deletes the keys
    body = payload()
    body.update(style=None, title=None, vocalGender="")
    assert payload_problems(body) == []
    assert payload_problems(payload(style="Jazz")) == ["style: only allowed in custom mode"]


async def test_a_non_custom_body_with_empty_style_and_title_completes(
    http: aiohttp.ClientSession, server: FakeKieServer, clock: Clock
) -> None:
    """The body a third-party client sends in non-custom mode creates a task that completes."""
    task_id = await submit(http, server, payload(style="", title=""))
    clock.now += 10
    _, reply = await call(http, server, "GET", RECORD, params={"taskId": task_id})
    assert reply["data"]["status"] == "SUCCESS"


# -- rate limits and credits ---------------------------------------------------


async def test_creations_beyond_the_limit_get_429_and_create_nothing(
    http: aiohttp.ClientSession, clock: Clock
) -> None:
    """Over creation_limit in creation_window: HTTP 429, body code 429, no task, one violation."""
    async with FakeKieServer(clock=clock, creation_limit=2, creation_window=10.0) as server:
        await submit(http, server, payload())
        clock.advance(5.0)
        await submit(http, server, payload())
        status, reply = await call(http, server, "POST", SUBMIT, json=payload())
        assert (status, reply) == (429, {"code": 429, "msg": "rate limited", "data": None})
        assert (server.creations, server.creation_rate_violations()) == (2, 1)
        clock.advance(5.0)  # the first creation has left the window
        await submit(http, server, payload())
    assert (server.creations, server.credits) == (3, 1000 - 3 * 12)


async def test_unenforced_creation_limit_creates_but_counts_violations(
    http: aiohttp.ClientSession, clock: Clock
) -> None:
    """With enforce_rate_limits=False excess creations succeed and are counted as violations."""
    async with FakeKieServer(clock=clock, creation_limit=1, enforce_rate_limits=False) as server:
        for _ in range(3):
            await submit(http, server, payload())
    assert (server.creations, server.creation_rate_violations()) == (3, 2)


async def test_more_than_three_polls_a_second_get_429_and_are_counted(
    http: aiohttp.ClientSession, server: FakeKieServer, clock: Clock
) -> None:
    """The 4th poll of one task within 1 s gets HTTP 429 / code 429 and is a violation."""
    task_id = await submit(http, server, payload())
    other = await submit(http, server, payload())
    codes = []
    for _ in range(5):
        codes.append((await poll(http, server, task_id))["code"])
        clock.advance(0.1)
    await poll(http, server, other)
    clock.advance(1.0)
    codes.append((await poll(http, server, task_id))["code"])
    assert codes == [200, 200, 200, 429, 429, 200]
    assert server.poll_rate_violations() == 2
    assert server.max_polls_per_second(task_id) == 5
    assert server.max_polls_per_second(other) == 1
    assert server.max_polls_per_second() == 5
    assert len(server.tasks[task_id].poll_times) == 6


async def test_polls_spaced_a_third_of_a_second_apart_are_allowed(
    http: aiohttp.ClientSession, server: FakeKieServer, clock: Clock
) -> None:
    """Polling at exactly 3 per second never trips the limit."""
    task_id = await submit(http, server, payload())
    for _ in range(7):
        assert (await poll(http, server, task_id))["code"] == 200
        clock.advance(0.34)
    assert (server.max_polls_per_second(task_id), server.poll_rate_violations()) == (3, 0)


async def test_credits_are_reported_deducted_and_enforced(
    http: aiohttp.ClientSession, clock: Clock
) -> None:
    """Credits start at `credits`, drop per task, and too few give code 402 without a task."""
    async with FakeKieServer(clock=clock, credits=30, credits_per_task=12) as server:
        assert (await call(http, server, "GET", CREDIT))[1] == {
            "code": 200,
            "msg": "success",
            "data": 30,
        }
        await submit(http, server, payload())
        await submit(http, server, payload())
        status, reply = await call(http, server, "POST", SUBMIT, json=payload())
        assert (status, reply["code"], reply["data"]) == (200, 402, None)
        assert (await call(http, server, "GET", CREDIT))[1]["data"] == 6
    assert server.creations == 2


# -- audio files -----------------------------------------------------------------


async def test_audio_files_are_deterministic_mp3_bytes_with_length(
    http: aiohttp.ClientSession, clock: Clock
) -> None:
    """Track URLs serve audio_bytes deterministic bytes starting with ID3, without auth."""
    async with FakeKieServer(clock=clock, audio_bytes=5000) as server:
        task_id = await submit(http, server, payload())
        clock.advance(1.0)
        track = (await poll(http, server, task_id))["data"]["response"]["sunoData"][0]
        bodies = []
        for _ in range(2):
            async with http.get(track["audioUrl"]) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "audio/mpeg"
                assert resp.headers["Content-Length"] == "5000"
                bodies.append(await resp.read())
        async with http.get(f"{server.url}/files/{'0' * 32}/x.mp3") as missing:
            assert missing.status == 404
    assert bodies[0] == bodies[1]
    assert len(bodies[0]) == 5000
    assert bodies[0].startswith(b"ID3")
    assert server.count("audio") == 3


# -- faults ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "body"),
    [
        (Fault("credits", "http_500"), 500, {"code": 500}),
        (Fault("credits", "http_503"), 503, {"code": 503}),
        (Fault("credits", "body_code", code=402), 200, {"code": 402, "data": None}),
        (Fault("credits", "body_code", code=501), 200, {"code": 501}),
        (Fault("credits", "maintenance"), 200, {"code": 455}),
        (Fault("credits", "rate_limit"), 429, {"code": 429}),
        (Fault("*", "http_500"), 500, {"code": 500}),
    ],
)
async def test_envelope_faults_replace_one_reply_then_are_used_up(
    http: aiohttp.ClientSession,
    server: FakeKieServer,
    fault: Fault,
    status: int,
    body: dict[str, Any],
) -> None:
    """An injected fault answers the next matching request its way, then normal service resumes."""
    server.inject(fault)
    got_status, reply = await call(http, server, "GET", CREDIT)
    assert got_status == status
    assert body.items() <= reply.items()
    assert isinstance(reply["msg"], str)
    assert await call(http, server, "GET", CREDIT) == (
        200,
        {"code": 200, "msg": "success", "data": 1000},
    )


@pytest.mark.parametrize("retry_after", ["7", "Wed, 21 Oct 2015 07:28:00 GMT"])
async def test_rate_limit_fault_sends_retry_after(
    http: aiohttp.ClientSession, server: FakeKieServer, retry_after: str
) -> None:
    """A rate_limit fault answers HTTP 429, code 429 and the given Retry-After header."""
    server.inject(Fault("record-info", "rate_limit", retry_after=retry_after))
    async with http.get(server.url + RECORD, params={"taskId": "x"}, headers=AUTH) as resp:
        assert (resp.status, resp.headers["Retry-After"]) == (429, retry_after)
        assert (await resp.json())["code"] == 429


async def test_faults_match_their_endpoint_in_fifo_order_for_times_requests(
    http: aiohttp.ClientSession, server: FakeKieServer
) -> None:
    """Faults hit only their endpoint, oldest first, each `times` times."""
    server.inject(
        Fault("credits", "body_code", code=500, times=2),
        Fault("submit", "maintenance"),
        Fault("credits", "maintenance"),
    )
    codes = [(await call(http, server, "GET", CREDIT))[1]["code"] for _ in range(4)]
    assert codes == [500, 500, 455, 200]
    assert (await call(http, server, "POST", SUBMIT, json=payload()))[1]["code"] == 455
    assert server.creations == 0


async def test_invalid_json_fault_sends_a_truncated_body(
    http: aiohttp.ClientSession, server: FakeKieServer
) -> None:
    """invalid_json answers HTTP 200 with a body that is not JSON."""
    server.inject(Fault("submit", "invalid_json"))
    async with http.post(server.url + SUBMIT, json=payload(), headers=AUTH) as resp:
        text = await resp.text()
    assert resp.status == 200
    assert text.startswith('{"code":200,"msg":')
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert server.creations == 0


async def test_slow_fault_delays_then_answers_normally(
    http: aiohttp.ClientSession, server: FakeKieServer
) -> None:
    """slow sleeps `delay` seconds and then does the normal work."""
    server.inject(Fault("submit", "slow", delay=0.05))
    started = time.monotonic()
    await submit(http, server, payload())
    assert time.monotonic() - started >= 0.05
    assert server.creations == 1


async def test_reset_fault_closes_the_connection_without_doing_the_work(
    http: aiohttp.ClientSession, server: FakeKieServer
) -> None:
    """reset drops the connection with no reply and no task created."""
    server.inject(Fault("submit", "reset"))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(http, server, "POST", SUBMIT, json=payload())
    assert (server.creations, server.count("submit")) == (0, 1)
    await submit(http, server, payload())


async def test_reset_on_a_get_needs_two_hits_to_beat_aiohttps_retry(
    http: aiohttp.ClientSession, server: FakeKieServer
) -> None:
    """aiohttp retries a GET once after a disconnect, so times=2 surfaces the reset."""
    server.inject(Fault("credits", "reset"))
    assert (await call(http, server, "GET", CREDIT))[1]["data"] == 1000
    server.inject(Fault("credits", "reset", times=2))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(http, server, "GET", CREDIT)
    assert server.count("credits") == 4


async def test_drop_after_create_creates_the_task_but_loses_the_reply(
    http: aiohttp.ClientSession, server: FakeKieServer
) -> None:
    """drop_after_create creates and charges the task, then disconnects without a reply."""
    server.inject(Fault("submit", "drop_after_create"))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(http, server, "POST", SUBMIT, json=payload())
    assert (server.creations, server.credits) == (1, 1000 - 12)
    (task_id,) = server.tasks
    assert (await poll(http, server, task_id))["code"] == 200


# -- callbacks ---------------------------------------------------------------------


async def test_callback_payloads_are_snake_case_per_stage(
    http: aiohttp.ClientSession, server: FakeKieServer
) -> None:
    """callback_payload builds the documented text/first/complete/error bodies."""
    server.script(Timeline.failure(error_code=531, error_message="Refunded"))
    failed_id = await submit(http, server, payload())
    task_id = await submit(http, server, custom())
    task = server.tasks[task_id]

    text = callback_payload(task, "text")
    assert text == {
        "code": 200,
        "msg": "Text generation completed.",
        "data": {"callbackType": "text", "task_id": task_id, "data": []},
    }
    first = callback_payload(task, "first")
    assert first["msg"] == "First track generated successfully."
    assert [t["id"] for t in first["data"]["data"]] == [task.audio_ids[0]]
    complete = callback_payload(task, "complete")
    assert complete["code"] == 200
    assert complete["data"]["callbackType"] == "complete"
    tracks = complete["data"]["data"]
    assert [t["id"] for t in tracks] == list(task.audio_ids)
    assert set(tracks[0]) == {
        "id",
        "audio_url",
        "stream_audio_url",
        "image_url",
        "prompt",
        "model_name",
        "title",
        "tags",
        "createTime",
        "duration",
    }
    assert tracks[0]["audio_url"].startswith(f"{server.url}/files/{task_id}/")
    assert callback_payload(server.tasks[failed_id], "error") == {
        "code": 531,
        "msg": "Refunded",
        "data": {"callbackType": "error", "task_id": failed_id, "data": None},
    }
    with pytest.raises(ValueError, match="callback_type must be one of"):
        callback_payload(task, "done")


# -- lifecycle ---------------------------------------------------------------------


async def test_close_is_clean_with_idle_keep_alive_connections() -> None:
    """close() shuts down while a client still holds an idle keep-alive connection."""
    server = FakeKieServer()
    with pytest.raises(RuntimeError):
        _ = server.url
    await server.start()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.url)
    async with aiohttp.ClientSession() as http:
        assert (await call(http, server, "GET", CREDIT))[0] == 200
        await server.close()
        await server.close()  # idempotent
        with pytest.raises(aiohttp.ClientConnectionError):
            await call(http, server, "GET", CREDIT)


# --- the least-friendly shape -----------------------------------------------------------------


@pytest_asyncio.fixture
async def sparse(clock: Clock) -> AsyncIterator[FakeKieServer]:
    async with FakeKieServer(clock=clock, shape="least-friendly") as fake:
        yield fake


async def poll_data(http: aiohttp.ClientSession, server: FakeKieServer, task_id: str) -> Any:
    """The ``data`` of one record-info reply."""
    _, reply = await call(http, server, "GET", RECORD, params={"taskId": task_id})
    return reply["data"]


async def test_least_friendly_shape_takes_each_inconvenient_documented_choice(
    http: aiohttp.ClientSession, sparse: FakeKieServer, clock: Clock
) -> None:
    """PENDING has response null, TEXT has sunoData [], unfinished tracks have duration null."""
    sparse.script(Timeline.success(text=1.0, first=2.0, complete=3.0))
    task_id = await submit(http, sparse, payload())
    assert (await poll_data(http, sparse, task_id))["response"] is None
    clock.advance(1.0)
    data = await poll_data(http, sparse, task_id)
    assert (data["status"], data["response"]["sunoData"]) == ("TEXT_SUCCESS", [])
    clock.advance(1.0)
    first, second = (await poll_data(http, sparse, task_id))["response"]["sunoData"]
    assert first["duration"] > 0
    assert first["audioUrl"]
    assert first["sourceAudioUrl"]
    assert (second["duration"], second["audioUrl"], second["sourceAudioUrl"]) == (None, "", "")
    clock.advance(1.0)
    tracks = (await poll_data(http, sparse, task_id))["response"]["sunoData"]
    assert all(t["duration"] and t["sourceAudioUrl"] and t["sourceImageUrl"] for t in tracks)
    sources = {"sourceAudioUrl", "sourceStreamAudioUrl", "sourceImageUrl"}
    assert set(tracks[0]) == TRACK_KEYS | sources


async def test_least_friendly_failure_has_no_response_and_its_error_callback_says_501(
    http: aiohttp.ClientSession, sparse: FakeKieServer, clock: Clock
) -> None:
    """A failure without tracks has response null; its error callback has code 501 anyway."""
    sparse.script(Timeline.failure(at=1.0, error_code=400, error_message="copyrighted"))
    task_id = await submit(http, sparse, payload())
    clock.advance(1.0)
    data = await poll_data(http, sparse, task_id)
    assert (data["status"], data["response"], data["errorCode"]) == (
        "GENERATE_AUDIO_FAILED",
        None,
        400,
    )
    error = callback_payload(sparse.tasks[task_id], "error")
    assert (error["code"], error["msg"], error["data"]["data"]) == (501, "copyrighted", None)
    complete = callback_payload(sparse.tasks[task_id], "complete")
    assert all("source_audio_url" in track for track in complete["data"]["data"])


async def test_the_friendly_shape_stays_the_default(
    http: aiohttp.ClientSession, server: FakeKieServer
) -> None:
    """By default PENDING has an empty sunoData list and tracks carry no source fields."""
    task_id = await submit(http, server, payload())
    assert (await poll_data(http, server, task_id))["response"]["sunoData"] == []
    assert server.shape == "friendly"
    with pytest.raises(ValueError, match="shape must be one of"):
        FakeKieServer(shape="grumpy")


# --- /api/v1/common/download-url --------------------------------------------------------------

DOWNLOAD_URL = "/api/v1/common/download-url"


async def test_download_url_gives_a_temporary_link_for_generated_files_only(
    http: aiohttp.ClientSession, server: FakeKieServer, clock: Clock
) -> None:
    """download-url answers a working 20-minute link for a track URL, 422 for other URLs."""
    task_id = await submit(http, server, payload())
    clock.advance(10)
    track = (await poll_data(http, server, task_id))["response"]["sunoData"][0]
    status, reply = await call(http, server, "POST", DOWNLOAD_URL, json={"url": track["audioUrl"]})
    assert (status, reply["code"]) == (200, 200)
    link = reply["data"]
    assert link.startswith(track["audioUrl"] + "?expires=")
    assert int(link.split("=")[1]) - time.time() == pytest.approx(1200, abs=60)
    async with http.get(link) as resp:
        assert resp.status == 200
        assert (await resp.read())[:3] == b"ID3"
    for url in ("https://elsewhere.example/a.mp3", 42):
        status, reply = await call(http, server, "POST", DOWNLOAD_URL, json={"url": url})
        assert (status, reply["code"]) == (200, 422)
    status, reply = await call(http, server, "POST", DOWNLOAD_URL, json={"url": link}, headers={})
    assert reply["code"] == 401
    assert server.count("download-url") == 4
