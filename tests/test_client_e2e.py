"""MashupClient end to end over loopback against the real FakeKieServer (no mocks)."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from conftest import TEST_API_KEY

from kiemashup import (
    AuthenticationError,
    ClientClosedError,
    KieError,
    MashupClient,
    MashupRequest,
    RateLimits,
    ServerError,
    Stage,
    SubmitOutcomeUnknown,
    TaskFailedError,
    TaskStatus,
    Timeouts,
)
from kiemashup.testing import FakeKieServer, Fault, Timeline

ClientFactory = Callable[..., MashupClient]


#: Tests that read what a task became run against both shapes of the fake (the SDK
#: must not need the friendly one); the others (rate limits, cancellation) run once.
BOTH_SHAPES = {
    "test_submit_wait_first_then_complete",
    "test_updates_yield_each_stage_once_in_order",
    "test_failure_status_raises_task_failed",
    "test_failure_after_text_ends_updates_with_task_failed",
    "test_callback_exception_with_all_tracks_keeps_them",
    "test_unknown_status_is_kept_as_string",
    "test_task_reattaches_without_io_then_waits",
    "test_get_task_is_one_record_info_call",
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the BOTH_SHAPES tests once per fake-server shape."""
    if metafunc.function.__name__ in BOTH_SHAPES:
        metafunc.parametrize("fake_server", ["friendly", "least-friendly"], indirect=True)


@pytest_asyncio.fixture
async def fake_server(request: pytest.FixtureRequest) -> AsyncIterator[FakeKieServer]:
    """The conftest fake server, in the shape the test asks for (friendly by default)."""
    shape = getattr(request, "param", "friendly")
    async with FakeKieServer(
        api_key=TEST_API_KEY, default_timeline=Timeline.success(), shape=shape
    ) as server:
        yield server


#: Slow enough that polls every 0.34 s (Kie's per-task limit) see each stage once.
STAGED = Timeline.success(text=0.15, first=0.5, complete=0.85)
#: A task that will not finish while a test runs.
ENDLESS = Timeline.success(text=30.0, first=40.0, complete=50.0)


def sdk_tasks() -> set[asyncio.Task[Any]]:
    """Running asyncio tasks whose coroutine belongs to the SDK (not the testing kit)."""
    found = set()
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        filename = code.co_filename if code is not None else ""
        if "kiemashup" in filename and "testing" not in filename:
            found.add(task)
    return found


def is_poll(task: asyncio.Task[Any]) -> bool:
    """True for a scheduler's short-lived poll request."""
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and code.co_name == "_poll"


# --- the happy path ---------------------------------------------------------------------------


async def test_submit_wait_first_then_complete(
    make_client: ClientFactory, fake_server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """submit -> wait(FIRST) gives a playable track -> wait() gives SUCCESS with every track."""
    fake_server.script(STAGED)
    client = make_client()
    handle = await client.submit(mashup_request)
    assert handle.task_id in fake_server.tasks
    first = await handle.wait(Stage.FIRST)
    assert first.stage >= Stage.FIRST
    assert first.playable_tracks
    final = await handle.wait()
    assert final.status is TaskStatus.SUCCESS
    assert final.stage is Stage.COMPLETE
    assert final.is_terminal
    assert not final.failed
    assert len(final.tracks) == 2
    assert all(track.playable for track in final.tracks)
    assert {t.id for t in final.tracks} == set(fake_server.tasks[handle.task_id].audio_ids)
    assert handle.latest == final


async def test_submit_sends_valid_payload_with_callback_url(
    make_client: ClientFactory, fake_server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """The submit body passes the fake's schema check and carries a callBackUrl."""
    client = make_client()
    await client.submit(mashup_request)
    (submit,) = [r for r in fake_server.requests if r.endpoint == "submit"]
    assert isinstance(submit.json, dict)
    assert submit.json["callBackUrl"]
    assert submit.json["uploadUrlList"] == list(mashup_request.upload_urls)
    assert submit.headers["Authorization"] == "<redacted>"


async def test_updates_yield_each_stage_once_in_order(
    make_client: ClientFactory, fake_server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """updates() yields strictly increasing stages, once each, ending at COMPLETE."""
    fake_server.script(STAGED)
    client = make_client()
    handle = await client.submit(mashup_request)
    stages = [snapshot.stage async for snapshot in handle.updates()]
    assert stages == sorted(set(stages))
    assert stages[-1] is Stage.COMPLETE
    assert stages == [Stage.TEXT, Stage.FIRST, Stage.COMPLETE]


# --- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status",
    [
        "CREATE_TASK_FAILED",
        "GENERATE_AUDIO_FAILED",
        "SENSITIVE_WORD_ERROR",
        "CALLBACK_EXCEPTION",
    ],
)
async def test_failure_status_raises_task_failed(
    make_client: ClientFactory,
    fake_server: FakeKieServer,
    mashup_request: MashupRequest,
    status: str,
) -> None:
    """Each failure status (CALLBACK_EXCEPTION without tracks included) raises TaskFailedError."""
    fake_server.script(
        Timeline.failure(status, at=0.03, error_code=413, error_message=f"{status} happened")
    )
    client = make_client()
    handle = await client.submit(mashup_request)
    with pytest.raises(TaskFailedError) as info:
        await handle.wait()
    snapshot = info.value.snapshot
    assert snapshot.status == status
    assert isinstance(snapshot.status, TaskStatus)
    assert (snapshot.error_code, snapshot.error_message) == (413, f"{status} happened")
    assert snapshot.failed
    assert snapshot.is_terminal
    # A later wait on the same handle fails the same way, without polling.
    polls = fake_server.count("record-info")
    with pytest.raises(TaskFailedError):
        await handle.wait(Stage.TEXT)
    assert fake_server.count("record-info") == polls


async def test_failure_after_text_ends_updates_with_task_failed(
    make_client: ClientFactory, fake_server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """updates() raises TaskFailedError once the task fails, after the stages it reached."""
    fake_server.script(Timeline.failure("GENERATE_AUDIO_FAILED", at=0.6, after="TEXT_SUCCESS"))
    client = make_client()
    handle = await client.submit(mashup_request)
    seen: list[Stage] = []

    async def follow() -> None:
        async for snapshot in handle.updates():
            seen.append(snapshot.stage)

    with pytest.raises(TaskFailedError):
        await follow()
    assert seen in ([], [Stage.TEXT])


async def test_callback_exception_with_all_tracks_keeps_them(
    make_client: ClientFactory, fake_server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """CALLBACK_EXCEPTION with every track playable is a completed task that keeps its tracks."""
    fake_server.script(Timeline.custom(((0.03, "CALLBACK_EXCEPTION"),), tracks_at_terminal=2))
    client = make_client()
    handle = await client.submit(mashup_request)
    snapshot = await handle.wait()
    assert snapshot.status is TaskStatus.CALLBACK_EXCEPTION
    assert not snapshot.failed
    assert snapshot.is_terminal
    assert snapshot.stage is Stage.COMPLETE
    assert len(snapshot.playable_tracks) == 2


async def test_unknown_status_is_kept_as_string(
    make_client: ClientFactory, fake_server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """An undocumented status is kept as a plain string, neither terminal nor failed."""
    fake_server.script(Timeline.custom(((0.01, "QUANTUM_SUCCESS"), (0.4, "SUCCESS"))))
    client = make_client()
    handle = await client.submit(mashup_request)
    await asyncio.sleep(0.05)
    snapshot = await client.get_task(handle.task_id)
    assert snapshot.status == "QUANTUM_SUCCESS"
    assert not isinstance(snapshot.status, TaskStatus)
    assert not snapshot.is_terminal
    assert not snapshot.failed
    final = await handle.wait()
    assert final.status is TaskStatus.SUCCESS


# --- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        Fault("record-info", "http_500", times=2),
        Fault("record-info", "http_503", times=2),
        Fault("record-info", "rate_limit", retry_after="0.05"),
        Fault("record-info", "maintenance"),
        Fault("record-info", "invalid_json"),
        # aiohttp itself resends a GET once after a disconnect: two resets reach the SDK.
        Fault("record-info", "reset", times=2),
    ],
    ids=lambda f: f.kind,
)
async def test_transient_poll_faults_are_retried(
    make_client: ClientFactory,
    fake_server: FakeKieServer,
    mashup_request: MashupRequest,
    fault: Fault,
) -> None:
    """A poll answered with 5xx, 429, 455, broken JSON or a reset is retried until success."""
    client = make_client()
    handle = await client.submit(mashup_request)
    fake_server.inject(fault)
    snapshot = await handle.wait()
    assert snapshot.status is TaskStatus.SUCCESS
    assert fake_server.count("record-info") >= fault.times + 1


async def test_slow_poll_beyond_read_timeout_is_retried(
    make_client: ClientFactory, fake_server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """A poll whose reply is slower than the read timeout is retried, and the wait succeeds."""
    client = make_client(timeouts=Timeouts(connect=1.0, read=0.1, total=5.0))
    handle = await client.submit(mashup_request)
    fake_server.inject(Fault("record-info", "slow", delay=0.4))
    snapshot = await handle.wait()
    assert snapshot.status is TaskStatus.SUCCESS
    assert fake_server.count("record-info") >= 2


async def test_auth_error_on_poll_reaches_the_waiter(
    make_client: ClientFactory, fake_server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """A poll answered with body code 401 makes wait() raise AuthenticationError (not hang)."""
    fake_server.script(ENDLESS)
    client = make_client()
    handle = await client.submit(mashup_request)
    fake_server.inject(Fault("record-info", "body_code", code=401))
    async with asyncio.timeout(10):
        with pytest.raises(AuthenticationError) as info:
            await handle.wait()
    assert info.value.code == 401
    assert fake_server.count("record-info") == 1


async def test_wrong_key_fails_submit_with_authentication_error(
    make_client: ClientFactory, fake_server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """A key the server rejects raises AuthenticationError at submit, creating nothing."""
    client = make_client(api_key="sk-wrong")
    with pytest.raises(AuthenticationError):
        await client.submit(mashup_request)
    assert fake_server.creations == 0


async def test_drop_after_create_is_outcome_unknown_and_not_resent(
    make_client: ClientFactory, fake_server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """A submit whose reply is lost raises SubmitOutcomeUnknown; the task exists once, one POST."""
    client = make_client()
    fake_server.inject(Fault("submit", "drop_after_create"))
    with pytest.raises(SubmitOutcomeUnknown) as info:
        await client.submit(mashup_request)
    assert info.value.request.upload_urls == mashup_request.upload_urls
    assert fake_server.creations == 1
    assert fake_server.count("submit") == 1


async def test_reset_on_submit_is_outcome_unknown_and_not_resent(
    make_client: ClientFactory, fake_server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """A submit connection closed without a reply is never sent twice."""
    client = make_client()
    fake_server.inject(Fault("submit", "reset"))
    with pytest.raises(SubmitOutcomeUnknown):
        await client.submit(mashup_request)
    assert fake_server.count("submit") == 1


@pytest.mark.parametrize(
    "fault",
    [Fault("submit", "rate_limit", retry_after="0.05"), Fault("submit", "maintenance")],
    ids=lambda f: f.kind,
)
async def test_submit_rate_limit_and_maintenance_are_retried(
    make_client: ClientFactory,
    fake_server: FakeKieServer,
    mashup_request: MashupRequest,
    fault: Fault,
) -> None:
    """A submit answered 429 or 455 (nothing created) is sent again and creates one task."""
    client = make_client()
    fake_server.inject(fault)
    handle = await client.submit(mashup_request)
    assert handle.task_id in fake_server.tasks
    assert fake_server.count("submit") == 2
    assert fake_server.creations == 1


async def test_submit_server_error_is_not_retried(
    make_client: ClientFactory, fake_server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """A submit answered HTTP 500 may have created the task: SubmitOutcomeUnknown, one POST."""
    client = make_client()
    fake_server.inject(Fault("submit", "http_500"))
    with pytest.raises(SubmitOutcomeUnknown) as info:
        await client.submit(mashup_request)
    assert isinstance(info.value.__cause__, ServerError)
    assert info.value.key
    assert fake_server.count("submit") == 1


# --- re-attaching, one-off calls ------------------------------------------------------------


async def test_task_reattaches_without_io_then_waits(
    make_client: ClientFactory, fake_server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """client.task(id) sends nothing; its wait() then polls and completes."""
    task_id = (await make_client().submit(mashup_request)).task_id
    client = make_client()
    before = len(fake_server.requests)
    handle = client.task(task_id)
    assert handle.task_id == task_id
    assert handle.latest is None
    assert len(fake_server.requests) == before
    assert client.requests_sent == 0
    snapshot = await handle.wait()
    assert snapshot.status is TaskStatus.SUCCESS
    assert client.requests_sent >= 1


async def test_get_task_is_one_record_info_call(
    make_client: ClientFactory, fake_server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """get_task() makes one record-info call and returns that moment's snapshot."""
    client = make_client()
    handle = await client.submit(mashup_request)
    await asyncio.sleep(0.1)
    snapshot = await client.get_task(handle.task_id)
    assert snapshot.task_id == handle.task_id
    assert snapshot.status is TaskStatus.SUCCESS
    assert fake_server.count("record-info") == 1
    assert handle.latest == snapshot  # the handle learnt it too


async def test_get_task_unknown_id_raises_api_error(make_client: ClientFactory) -> None:
    """get_task() for an id the server does not know raises APIError code 404."""
    from kiemashup import APIError

    with pytest.raises(APIError) as info:
        await make_client().get_task("no-such-task")
    assert info.value.code == 404


async def test_credits(
    make_client: ClientFactory, fake_server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """credits() returns the account's remaining credits, which a submit reduces."""
    client = make_client()
    start = await client.credits()
    assert start == fake_server.credits
    await client.submit(mashup_request)
    assert await client.credits() == start - fake_server.credits_per_task


# --- sharing, cancelling, closing -----------------------------------------------------------


async def test_two_waiters_share_polls(
    make_client: ClientFactory, fake_server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """Two waiters on one task cost about as many polls as one waiter."""
    fake_server.script(STAGED, STAGED)
    client = make_client()
    alone = await client.submit(mashup_request)
    await alone.wait()
    polls_alone = len(fake_server.tasks[alone.task_id].poll_times)

    shared = await client.submit(mashup_request)
    other = client.task(shared.task_id)
    first, second = await asyncio.gather(shared.wait(), other.wait(Stage.COMPLETE))
    assert first == second
    polls_shared = len(fake_server.tasks[shared.task_id].poll_times)
    assert polls_shared <= polls_alone + 1


async def test_cancelling_one_waiter_leaves_the_other_and_no_tasks(
    make_client: ClientFactory, fake_server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """A wait cut short by asyncio.timeout neither disturbs another waiter nor leaves tasks."""
    fake_server.script(STAGED)
    client = make_client()
    handle = await client.submit(mashup_request)
    survivor = asyncio.create_task(handle.wait())
    await asyncio.sleep(0)  # the survivor is now waiting
    before = sdk_tasks()

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await client.task(handle.task_id).wait()

    leftovers = {t for t in sdk_tasks() - before if not is_poll(t)}
    assert leftovers == set()
    assert not survivor.done()
    snapshot = await survivor
    assert snapshot.status is TaskStatus.SUCCESS
    await client.aclose()
    assert sdk_tasks() == set()


async def test_cancelled_sole_waiter_stops_polling(
    make_client: ClientFactory, fake_server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """Once its only waiter is cancelled, a task is no longer polled."""
    fake_server.script(ENDLESS)
    client = make_client()
    handle = await client.submit(mashup_request)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await handle.wait()
    polls = fake_server.count("record-info")
    await asyncio.sleep(0.8)
    assert fake_server.count("record-info") <= polls + 1  # at most one already in flight


async def test_aclose_fails_pending_waits_promptly(
    make_client: ClientFactory, fake_server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """aclose() makes every pending wait raise ClientClosedError at once, and stops polling."""
    fake_server.script(ENDLESS, ENDLESS, ENDLESS)
    client = make_client()
    handles = [await client.submit(mashup_request) for _ in range(3)]
    waits = [asyncio.create_task(h.wait()) for h in handles]
    waits.append(asyncio.create_task(handles[0].wait(Stage.FIRST)))
    await asyncio.sleep(0.05)
    async with asyncio.timeout(5):  # generous: "promptly" means not after the task finishes
        await client.aclose()
        results = await asyncio.gather(*waits, return_exceptions=True)
    assert all(isinstance(r, ClientClosedError) for r in results), results
    assert sdk_tasks() == set()


async def test_wait_after_aclose_raises_client_closed(
    make_client: ClientFactory, fake_server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """A wait started after aclose() raises ClientClosedError instead of hanging."""
    fake_server.script(ENDLESS)
    client = make_client()
    handle = await client.submit(mashup_request)
    await client.aclose()
    async with asyncio.timeout(5):
        with pytest.raises(ClientClosedError):
            await handle.wait()
    with pytest.raises(ClientClosedError):
        await client.submit(mashup_request)
    with pytest.raises(ClientClosedError):
        await handle.refresh()
    with pytest.raises(ClientClosedError):
        client.task(handle.task_id)


# --- rate limits ----------------------------------------------------------------------------


async def test_gathered_submits_are_paced_to_the_creation_limit(
    make_client: ClientFactory, mashup_request: MashupRequest
) -> None:
    """45 gathered submits stay inside 20 per window: no 429, no violation, 45 tasks."""
    async with FakeKieServer(creation_limit=20, creation_window=0.5) as server:
        client = make_client(
            server=server,
            rate_limits=RateLimits(
                submits_per_window=20, submit_window=0.5, requests_per_second=2000
            ),
        )
        handles = await asyncio.gather(*(client.submit(mashup_request) for _ in range(45)))
        assert len({h.task_id for h in handles}) == 45
        assert server.count("submit") == 45  # a 429 would have caused a resend
        assert server.creations == 45
        assert server.creation_rate_violations() == 0
        await client.aclose()


@pytest.mark.slow
async def test_a_thousand_concurrent_waits_respect_the_poll_limit(
    make_client: ClientFactory, mashup_request: MashupRequest
) -> None:
    """1 000 concurrent waits on one client all complete without breaking 3 polls/s per task."""
    # Long enough that every task is polled several times at the per-task limit.
    timeline = Timeline.success(text=0.8, first=1.6, complete=2.4)
    async with FakeKieServer(
        creation_limit=100_000, creation_window=1.0, credits=10**6, default_timeline=timeline
    ) as server:
        client = make_client(
            server=server,
            rate_limits=RateLimits(
                submits_per_window=100_000, submit_window=1.0, requests_per_second=2000
            ),
        )
        handles = await asyncio.gather(*(client.submit(mashup_request) for _ in range(1000)))
        async with asyncio.timeout(45):
            results = await asyncio.gather(*(h.wait() for h in handles))
        assert all(r.status is TaskStatus.SUCCESS for r in results)
        assert sum(len(t.poll_times) for t in server.tasks.values()) >= 2 * 1000
        assert server.poll_rate_violations() == 0
        assert server.max_polls_per_second() <= 3
        await client.aclose()


# --- hygiene --------------------------------------------------------------------------------


async def test_no_unclosed_resource_warnings(fake_server: FakeKieServer) -> None:
    """A client used and closed leaves no 'Unclosed' session or connector behind."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with MashupClient(api_key=fake_server.api_key, base_url=fake_server.url) as client:
            await client.credits()
        del client
        gc.collect()
        await asyncio.sleep(0)
    assert [str(w.message) for w in caught if "Unclosed" in str(w.message)] == []


def test_a_blank_api_key_is_refused_when_the_client_is_built() -> None:
    """MashupClient(api_key="  ") raises KieError at once, not a 401 at the first request."""
    with pytest.raises(KieError, match="API key"):
        MashupClient(api_key="  ")
