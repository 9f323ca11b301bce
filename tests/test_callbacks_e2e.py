"""Callbacks end to end over loopback: FakeKieServer -> CallbackReceiver -> MashupClient handles."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from kiemashup import (
    CallbackReceiver,
    KieError,
    MashupClient,
    MashupRequest,
    PollPolicy,
    RetryPolicy,
    Stage,
    TaskFailedError,
    TaskHandle,
    TaskSnapshot,
    TaskStatus,
    parse_callback,
)
from kiemashup._core.protocol import PLACEHOLDER_CALLBACK_URL
from kiemashup.testing import (
    CallbackFaults,
    FakeKieServer,
    Timeline,
    callback_payload,
    signed_headers,
)

API_KEY = "sk-callbacks-e2e-7d41"
HMAC_KEY = "whk-e2e-0b9c2d"
#: Callbacks are trusted to come: a safety-net poll only after 30 s of silence.
HYBRID = PollPolicy(initial=0.05, growth=0.0, maximum=0.1, after_first=0.1, callback_grace=30.0)
#: An overdue callback (0.3 s of silence) sends the task back to polling.
RESCUE = PollPolicy(initial=0.05, growth=0.0, maximum=0.1, after_first=0.1, callback_grace=0.3)
QUICK = Timeline.success(text=0.05, first=0.1, complete=0.15)
ENDLESS = Timeline.success(text=60.0, first=70.0, complete=80.0)

ClientFactory = Callable[..., MashupClient]


#: Tests that read what the callbacks said run against both shapes of the fake.
BOTH_SHAPES = {
    "test_callbacks_wake_each_stage_and_polling_only_confirms",
    "test_an_error_callback_fails_the_wait_after_a_confirming_poll",
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the BOTH_SHAPES tests once per fake-server shape."""
    if metafunc.function.__name__ in BOTH_SHAPES:
        metafunc.parametrize("server", ["friendly", "least-friendly"], indirect=True)


@pytest_asyncio.fixture
async def server(request: pytest.FixtureRequest) -> AsyncIterator[FakeKieServer]:
    """A fake Kie that signs its callbacks; tasks finish in 150 ms."""
    async with FakeKieServer(
        api_key=API_KEY,
        webhook_hmac_key=HMAC_KEY,
        default_timeline=QUICK,
        shape=getattr(request, "param", "friendly"),
    ) as fake:
        yield fake


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    async with CallbackReceiver(port=0, hmac_key=HMAC_KEY) as started:
        yield started


@pytest.fixture
def make_client(
    make_client: ClientFactory, server: FakeKieServer, receiver: CallbackReceiver
) -> ClientFactory:
    """conftest's client factory, wired to this module's signing server and receiver."""

    def factory(**overrides: Any) -> MashupClient:
        options: dict[str, Any] = {
            "api_key": API_KEY,
            "server": server,
            "receiver": receiver,
            "poll_policy": HYBRID,
            "retry_policy": RetryPolicy(attempts=3, base=0.01, cap=0.05),
        }
        options.update(overrides)
        return make_client(**options)

    return factory


def polls(server: FakeKieServer, handle: TaskHandle) -> int:
    """Record-info polls the fake answered for the handle's task."""
    return len(server.tasks[handle.task_id].poll_times)


def delivered(server: FakeKieServer, task_id: str) -> list[str]:
    """Callback types the receiver accepted with 2xx, in delivery order."""
    return [d.type for d in server.callbacks_sent if d.task_id == task_id and d.ok]


async def stages_of(handle: TaskHandle) -> list[Stage]:
    """The stages ``updates()`` yields, within a 10 s deadline."""
    async with asyncio.timeout(10):
        return [snapshot.stage async for snapshot in handle.updates()]


async def until(predicate: Callable[[], bool]) -> None:
    """Wait (at most 5 s) until ``predicate()`` holds."""
    async with asyncio.timeout(5):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


# -- the happy path ---------------------------------------------------------------------------


async def test_callbacks_wake_each_stage_and_polling_only_confirms(
    make_client: ClientFactory, server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """Each stage arrives by callback; the only polls confirm the first and complete ones."""
    client = make_client()
    handle = await client.submit(mashup_request)
    assert await stages_of(handle) == [Stage.TEXT, Stage.FIRST, Stage.COMPLETE]
    assert handle.latest is not None
    assert handle.latest.source == "poll"  # the confirmation, not the unsigned body
    assert len(handle.latest.playable_tracks) == 2
    assert polls(server, handle) == 2  # updates() waited for FIRST: a poll brought its URL
    assert delivered(server, handle.task_id) == ["text", "first", "complete"]
    sent_url = server.requests[0].json["callBackUrl"]  # type: ignore[index]
    key = sent_url.rsplit("/", 1)[1]  # each submit's URL carries its own key (recover())
    assert sent_url == client.callback_url_for(mashup_request, key)


async def test_a_plain_wait_costs_one_confirming_poll(
    make_client: ClientFactory, server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """wait() for COMPLETE on healthy callbacks: one poll, the one confirming the final callback."""
    handle = await make_client().submit(mashup_request)
    async with asyncio.timeout(10):
        done = await handle.wait()
    assert (done.source, done.stage) == ("poll", Stage.COMPLETE)
    assert polls(server, handle) == 1


async def test_a_wait_for_first_returns_the_polled_track(
    make_client: ClientFactory, server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """wait(FIRST) wakes on the first callback and returns a poll's snapshot with its audio URL."""
    handle = await make_client().submit(mashup_request)
    async with asyncio.timeout(10):
        first = await handle.wait(Stage.FIRST)
    assert first.source == "poll"
    assert first.playable_tracks
    assert "first" in delivered(server, handle.task_id)
    assert polls(server, handle) == 1


async def test_many_tasks_need_at_most_two_polls_each(
    make_client: ClientFactory, server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """Eight concurrent waits finish on callbacks with at most two polls per task."""
    client = make_client()
    handles = [await client.submit(mashup_request) for _ in range(8)]
    async with asyncio.timeout(10):
        results = await asyncio.gather(*(h.wait() for h in handles))
    assert all(r.status is TaskStatus.SUCCESS for r in results)
    assert max(polls(server, h) for h in handles) <= 2


async def test_an_error_callback_fails_the_wait_after_a_confirming_poll(
    make_client: ClientFactory, server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """An error callback raises TaskFailedError with the poll's status and code, after one poll."""
    server.script(Timeline.failure(at=0.1, after="TEXT_SUCCESS", error_code=531))
    handle = await make_client().submit(mashup_request)
    with pytest.raises(TaskFailedError) as info:
        async with asyncio.timeout(10):
            await handle.wait()
    assert info.value.snapshot.status is TaskStatus.GENERATE_AUDIO_FAILED
    assert info.value.snapshot.error_code == 531
    assert delivered(server, handle.task_id) == ["text", "error"]
    assert polls(server, handle) == 1


async def test_without_a_receiver_the_client_polls_and_sends_its_callback_url(
    make_client: ClientFactory, server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """No receiver: the placeholder (or callback_url) is sent, and polling alone finishes tasks."""
    polling = make_client(receiver=None, poll_policy=RESCUE)
    handle = await polling.submit(mashup_request)
    async with asyncio.timeout(10):
        assert (await handle.wait()).stage is Stage.COMPLETE
    assert polls(server, handle) >= 1
    assert server.requests[0].json["callBackUrl"] == PLACEHOLDER_CALLBACK_URL  # type: ignore[index]
    assert server.callbacks_sent == []  # the placeholder is never called

    mine = make_client(receiver=None, callback_url="https://hooks.example.com/kie")
    await mine.submit(mashup_request)
    assert server.requests[-1].json["callBackUrl"] == "https://hooks.example.com/kie"  # type: ignore[index]
    assert server.callbacks_sent == []  # not loopback: the fake does not call it


# -- faults -------------------------------------------------------------------------------------


async def test_duplicated_callbacks_change_nothing(
    make_client: ClientFactory, server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """Every callback sent twice: each stage is still yielded once, with the same two polls."""
    server.callback_faults = CallbackFaults(duplicate=1.0)
    handle = await make_client().submit(mashup_request)
    assert await stages_of(handle) == [Stage.TEXT, Stage.FIRST, Stage.COMPLETE]
    await until(lambda: len(delivered(server, handle.task_id)) == 6)
    assert polls(server, handle) == 2  # confirming FIRST (updates() waits for it) and COMPLETE


@pytest.mark.parametrize(
    ("held_back", "expected_order"),
    [
        ({"first"}, ["text", "complete", "first"]),
        ({"text"}, ["first", "text", "complete"]),
    ],
)
async def test_out_of_order_callbacks_never_move_a_handle_backwards(
    make_client: ClientFactory,
    server: FakeKieServer,
    mashup_request: MashupRequest,
    held_back: set[str],
    expected_order: list[str],
) -> None:
    """A stage delivered after a later one is ignored; updates() yields increasing stages."""
    server.callback_faults = CallbackFaults(reorder=held_back)
    handle = await make_client().submit(mashup_request)
    seen: list[Stage] = []

    async def follow() -> None:
        async for snapshot in handle.updates():
            seen.append(snapshot.stage)

    async with asyncio.timeout(10):
        await follow()
    await until(lambda: len(delivered(server, handle.task_id)) == 3)
    assert delivered(server, handle.task_id) == expected_order
    assert seen == sorted(set(seen))  # strictly increasing: no repeats, no going back
    assert seen[-1] is Stage.COMPLETE
    assert handle.latest is not None
    assert handle.latest.stage is Stage.COMPLETE
    assert polls(server, handle) <= 2


@pytest.mark.parametrize("drop", [{"complete"}, {"first", "complete"}, 1.0])
async def test_dropped_callbacks_are_rescued_by_polling(
    make_client: ClientFactory, server: FakeKieServer, mashup_request: MashupRequest, drop: Any
) -> None:
    """With callbacks lost, a task goes back to polling once callback_grace passes, and finishes."""
    server.callback_faults = CallbackFaults(drop=drop, seed=7)
    handle = await make_client(poll_policy=RESCUE).submit(mashup_request)
    async with asyncio.timeout(10):
        done = await handle.wait()
    assert (done.stage, done.source) == (Stage.COMPLETE, "poll")
    assert "complete" not in delivered(server, handle.task_id)
    assert any(d.outcome == "dropped" for d in server.callbacks_sent)


async def test_an_overdue_callback_returns_the_task_to_normal_polling(
    make_client: ClientFactory, server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """When 'first' is dropped, polling finds FIRST long before the complete callback is due."""
    server.script(Timeline.success(text=0.05, first=0.1, complete=3.0))
    server.callback_faults = CallbackFaults(drop={"first"})
    handle = await make_client(poll_policy=RESCUE).submit(mashup_request)
    async with asyncio.timeout(2.5):
        first = await handle.wait(Stage.FIRST)
    assert first.source == "poll"
    assert delivered(server, handle.task_id) == ["text"]


async def test_delayed_callbacks_still_finish_with_at_most_two_polls(
    make_client: ClientFactory, server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """Callbacks that arrive late (but within callback_grace) need no extra polls."""
    server.callback_faults = CallbackFaults(delay=0.2)
    handle = await make_client().submit(mashup_request)
    stages = await stages_of(handle)
    # The poll confirming a late FIRST may already find the task complete.
    assert stages in ([Stage.TEXT, Stage.FIRST, Stage.COMPLETE], [Stage.TEXT, Stage.COMPLETE])
    assert polls(server, handle) <= 2


async def test_failed_deliveries_are_retried_until_one_gets_through(
    make_client: ClientFactory, server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """Two failed attempts per callback are retried; the third gets through and polls stay idle."""
    server.callback_faults = CallbackFaults(fail_first_attempts=2)
    handle = await make_client().submit(mashup_request)
    stages = await stages_of(handle)
    # The poll confirming a late FIRST may already find the task complete.
    assert stages in ([Stage.TEXT, Stage.FIRST, Stage.COMPLETE], [Stage.TEXT, Stage.COMPLETE])
    await until(lambda: server.callbacks_pending == 0)
    attempts = [(d.type, d.attempt, d.outcome) for d in server.callbacks_sent]
    for kind in ("text", "first", "complete"):
        assert [a for a in attempts if a[0] == kind] == [
            (kind, 1, "simulated_failure"),
            (kind, 2, "simulated_failure"),
            (kind, 3, "delivered"),
        ]
    assert polls(server, handle) <= 2


async def test_after_three_failed_retries_the_sender_gives_up_and_polling_rescues(
    make_client: ClientFactory, server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """A callback whose four attempts all fail is abandoned; polling still finishes the task."""
    server.callback_faults = CallbackFaults(fail_first_attempts=4)
    handle = await make_client(poll_policy=RESCUE).submit(mashup_request)
    async with asyncio.timeout(10):
        assert (await handle.wait()).stage is Stage.COMPLETE
    await until(lambda: server.callbacks_pending == 0)
    complete = [d.attempt for d in server.callbacks_sent if d.type == "complete"]
    assert complete == [1, 2, 3, 4]
    assert delivered(server, handle.task_id) == []


async def test_rejected_deliveries_are_retried_and_never_advance_the_task(
    make_client: ClientFactory,
    server: FakeKieServer,
    receiver: CallbackReceiver,
    mashup_request: MashupRequest,
) -> None:
    """Signed with the wrong key, every attempt gets 401 and is retried 3 times; polling wins."""
    server.webhook_hmac_key = "not-the-receivers-key"
    handle = await make_client(poll_policy=RESCUE).submit(mashup_request)
    async with asyncio.timeout(10):
        assert (await handle.wait()).source == "poll"
    await until(lambda: server.callbacks_pending == 0)
    statuses = {d.status for d in server.callbacks_sent}
    assert statuses == {401}
    assert len(server.callbacks_sent) == 3 * 4
    assert (receiver.accepted, receiver.rejected) == (0, 12)


# -- forged, replayed, malformed --------------------------------------------------------------


async def test_forged_and_malformed_callbacks_advance_no_task(
    make_client: ClientFactory,
    server: FakeKieServer,
    receiver: CallbackReceiver,
    mashup_request: MashupRequest,
) -> None:
    """Bad signatures, skew, missing headers, bad paths, bad JSON, huge bodies: all refused."""
    server.script(ENDLESS, ENDLESS)
    client = make_client()
    handle = await client.submit(mashup_request)
    other = await client.submit(mashup_request)
    body = callback_payload(server.tasks[handle.task_id], "complete")
    good = signed_headers(handle.task_id, HMAC_KEY)
    stamp = int(good["X-Webhook-Timestamp"])
    forgeries: list[tuple[str, Any, dict[str, str], int]] = [
        (receiver.url, body, signed_headers(handle.task_id, "guessed-key"), 401),
        (receiver.url, body, signed_headers(other.task_id, HMAC_KEY), 401),
        (receiver.url, body, signed_headers(handle.task_id, HMAC_KEY, timestamp=stamp - 400), 401),
        (receiver.url, body, signed_headers(handle.task_id, HMAC_KEY, timestamp=stamp + 400), 401),
        (receiver.url, body, {}, 401),
        (receiver.url + "x", body, good, 404),
        (receiver.url.rsplit("/", 1)[0] + "/guess", body, good, 404),
        (receiver.url, b'{"code": 200, "data": ', good, 400),
        (receiver.url, json.dumps(body).encode() + b" " * (256 * 1024), good, 413),
    ]
    for url, payload, headers, status in forgeries:
        assert await server.send_forged_callback(url, payload, headers) == status, url
    for h in (handle, other):
        assert h.latest is not None
        assert h.latest.stage is Stage.PENDING
    # Wrong paths count as rejected too (since the reliability work): every forgery.
    assert (receiver.accepted, receiver.rejected) == (0, len(forgeries))
    assert polls(server, handle) == 0
    # The receiver is undisturbed: a genuine callback still goes through.
    text = callback_payload(server.tasks[handle.task_id], "text")
    assert await server.send_forged_callback(receiver.url, text, good) == 200
    assert handle.latest.stage is Stage.TEXT


async def test_a_replayed_callback_is_ignored(
    make_client: ClientFactory,
    server: FakeKieServer,
    receiver: CallbackReceiver,
    mashup_request: MashupRequest,
) -> None:
    """Re-sending a captured signed delivery is answered 200 but handed on only once."""
    server.script(ENDLESS)
    client = make_client()
    handle = await client.submit(mashup_request)
    seen: list[TaskSnapshot] = []
    receiver.subscribe(seen.append)
    text = callback_payload(server.tasks[handle.task_id], "text")
    headers = signed_headers(handle.task_id, HMAC_KEY)
    for _ in range(3):
        assert await server.send_forged_callback(receiver.url, text, headers) == 200
    assert len(seen) == 1
    assert handle.latest is not None
    assert handle.latest.stage is Stage.TEXT


async def test_a_signed_but_forged_final_callback_does_not_resolve_a_wait(
    make_client: ClientFactory,
    server: FakeKieServer,
    receiver: CallbackReceiver,
    mashup_request: MashupRequest,
) -> None:
    """The signature does not cover the body: a forged 'complete' is checked by a poll and loses."""
    server.script(ENDLESS)
    handle = await make_client().submit(mashup_request)
    forged = callback_payload(server.tasks[handle.task_id], "complete")
    forged["data"]["data"][0]["audio_url"] = "https://evil.example/track.mp3"
    waiting = asyncio.create_task(handle.wait())
    headers = signed_headers(handle.task_id, HMAC_KEY)
    assert await server.send_forged_callback(receiver.url, forged, headers) == 200
    await until(lambda: polls(server, handle) == 1)  # the confirming poll says PENDING
    await asyncio.sleep(0.05)
    assert not waiting.done()
    assert handle.latest is not None
    assert handle.latest.stage is Stage.PENDING
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


# -- early callbacks, feed, cancellation ------------------------------------------------------


async def test_a_callback_that_beats_the_submit_reply_is_not_lost(
    make_client: ClientFactory, server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """The text callback is delivered before submit() returns; the handle still starts at TEXT."""
    server.script(
        Timeline.custom(((0.0, "TEXT_SUCCESS"), (0.1, "FIRST_SUCCESS"), (0.15, "SUCCESS")))
    )
    handle = await make_client().submit(mashup_request)
    assert delivered(server, handle.task_id) == ["text"]  # before the reply was sent
    assert handle.latest is not None
    assert handle.latest.stage is Stage.TEXT
    assert await stages_of(handle) == [Stage.TEXT, Stage.FIRST, Stage.COMPLETE]
    assert polls(server, handle) <= 2


async def test_feed_hands_callbacks_from_other_frameworks_to_waiters(
    make_client: ClientFactory, server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """parse_callback + client.feed wake waits; a callback fed before the task is known is kept."""
    server.script(ENDLESS)
    client = make_client(receiver=None, poll_policy=HYBRID)
    handle = await client.submit(mashup_request)
    task = server.tasks[handle.task_id]

    def parsed(kind: str) -> TaskSnapshot:
        body = json.dumps(callback_payload(task, kind)).encode()
        headers = signed_headers(task.task_id, HMAC_KEY)
        return parse_callback(headers, body, hmac_key=HMAC_KEY)

    waiting = asyncio.create_task(handle.wait(Stage.TEXT))
    await asyncio.sleep(0)
    assert client.feed(parsed("text")) is True
    async with asyncio.timeout(5):
        assert (await waiting).source == "callback"
    assert client.feed(parsed("text")) is False  # a duplicate changes nothing
    assert polls(server, handle) == 0

    early = parsed("text")
    fresh = make_client(receiver=None)
    assert fresh.feed(early) is False  # unknown task: kept for a while
    assert fresh.task(task.task_id).latest == early


async def test_cancelling_one_wait_during_callbacks_leaves_the_others_running(
    make_client: ClientFactory, server: FakeKieServer, mashup_request: MashupRequest
) -> None:
    """A wait cancelled between callbacks ends alone; another wait on the task completes."""
    server.script(Timeline.success(text=0.05, first=0.2, complete=0.3))
    client = make_client()
    handle = await client.submit(mashup_request)
    doomed = asyncio.create_task(handle.wait())
    survivor = asyncio.create_task(client.task(handle.task_id).wait())
    async with asyncio.timeout(5):
        await handle.wait(Stage.TEXT)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    async with asyncio.timeout(5):
        assert (await survivor).stage is Stage.COMPLETE
    assert polls(server, handle) <= 2


async def test_closing_everything_leaves_no_callback_task_behind(
    mashup_request: MashupRequest,
) -> None:
    """Closing client, receiver and fake mid-delivery leaves no pending asyncio task."""
    before = asyncio.all_tasks()
    async with (
        FakeKieServer(webhook_hmac_key=HMAC_KEY, default_timeline=QUICK) as fake,
        CallbackReceiver(port=0, hmac_key=HMAC_KEY) as receiver,
        MashupClient(api_key=API_KEY, base_url=fake.url, receiver=receiver) as client,
    ):
        fake.callback_faults = CallbackFaults(delay=30.0)
        await client.submit(mashup_request)
        assert fake.callbacks_pending == 3
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()


async def test_the_fake_sends_callbacks_when_its_own_clock_reaches_each_step(
    receiver: CallbackReceiver,
) -> None:
    """With a hand-moved clock, each stage's callback goes out only once the clock gets there."""
    now = [1000.0]
    seen: list[str] = []
    receiver.subscribe(lambda snapshot: seen.append(str(snapshot.status)))
    timeline = Timeline.success(text=10.0, first=20.0, complete=30.0)
    async with (
        FakeKieServer(
            webhook_hmac_key=HMAC_KEY, default_timeline=timeline, clock=lambda: now[0]
        ) as fake,
        MashupClient(api_key=API_KEY, base_url=fake.url, receiver=receiver) as client,
    ):
        await client.submit(
            MashupRequest(("https://example.com/a.mp3", "https://example.com/b.mp3"), prompt="p")
        )
        await asyncio.sleep(0.1)
        assert seen == []
        claims = (("TEXT_SUCCESS", 1010.0), ("FIRST_SUCCESS", 1020.0), ("SUCCESS", 1030.0))
        for status, at in claims:
            now[0] = at
            await until(lambda status=status: seen[-1:] == [status])  # type: ignore[misc]
        assert [d.type for d in fake.callbacks_sent] == ["text", "first", "complete"]
        assert all(d.ok and d.at >= 1010.0 for d in fake.callbacks_sent)


async def test_a_client_key_that_the_receiver_does_not_check_is_refused(
    receiver: CallbackReceiver,
) -> None:
    """MashupClient(webhook_hmac_key=...) must match the receiver's key, never be ignored."""
    unsigned = CallbackReceiver(port=0)
    with pytest.raises(KieError, match="webhook_hmac_key"):
        MashupClient(api_key=API_KEY, receiver=unsigned, webhook_hmac_key=HMAC_KEY)
    async with MashupClient(api_key=API_KEY, receiver=receiver, webhook_hmac_key=HMAC_KEY):
        pass
