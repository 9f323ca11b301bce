"""Callbacks you can trust: no callback completes a task or shows its URLs; bounded work.

Kie signs a callback's task id and timestamp, not its body, so anyone holding one
signed delivery's headers can send any body for that task within the signature window.
These tests play that attacker (and a careless sender) against real loopback servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiemashup import (
    CallbackReceiver,
    CallbackRejected,
    KieError,
    MashupClient,
    MashupRequest,
    PollPolicy,
    Stage,
)
from kiemashup._client import EARLY_BYTES, EARLY_MAX
from kiemashup._core.callbacks import MAX_CONTAINERS, MAX_TRACKS, read_callback, sign
from kiemashup.testing import FakeKieServer, Timeline, signed_headers

API_KEY = "sk-trust-5e1a"
HMAC_KEY = "whk-trust-93c1"
FORGED = "https://evil.example/forged"
#: Kie takes its time: nothing a poll can see ever agrees with a forged final callback.
ENDLESS = Timeline.success(text=60.0, first=70.0, complete=80.0)
#: Callbacks expected: polls only as a far-off safety net (the confirming poll aside).
QUIET = PollPolicy(initial=0.05, callback_grace=30.0, callback_probe=30.0)
REQUEST = MashupRequest(("https://example.com/a.mp3", "https://example.com/b.mp3"), prompt="p")


async def until(predicate: Callable[[], bool]) -> None:
    """Wait (at most 5 s) until ``predicate()`` holds."""
    async with asyncio.timeout(5):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


def forged_body(task_id: str, kind: Any, tracks: int = 2, code: Any = 200) -> bytes:
    """A callback body of ``kind`` for ``task_id`` carrying ``tracks`` tracks at FORGED URLs."""
    items = [
        {"id": f"x{n}", "audio_url": f"{FORGED}/{n}.mp3", "stream_audio_url": f"{FORGED}/{n}"}
        for n in range(tracks)
    ]
    data: dict[str, Any] = {"task_id": task_id, "data": items}
    if kind is not None:
        data["callbackType"] = kind
    return json.dumps({"code": code, "msg": "ok", "data": data}).encode()


@pytest_asyncio.fixture
async def server() -> AsyncIterator[FakeKieServer]:
    async with FakeKieServer(
        api_key=API_KEY, webhook_hmac_key=HMAC_KEY, default_timeline=ENDLESS
    ) as fake:
        yield fake


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    async with CallbackReceiver(port=0, hmac_key=HMAC_KEY) as started:
        yield started


@pytest_asyncio.fixture
async def client(server: FakeKieServer, receiver: CallbackReceiver) -> AsyncIterator[MashupClient]:
    async with MashupClient(
        api_key=API_KEY, base_url=server.url, receiver=receiver, poll_policy=QUIET
    ) as made:
        yield made


# --- the attack from the issue, over real HTTP ------------------------------------------------


@pytest.mark.parametrize("kind", ["bogus", "complete ", "SUCCESS", "exception"])
async def test_a_captured_signature_with_an_unknown_type_is_refused_and_counted(
    server: FakeKieServer, receiver: CallbackReceiver, client: MashupClient, kind: str
) -> None:
    """One signed delivery's headers + a body of unknown type with 2 tracks: a 400, nothing fed."""
    handle = await client.submit(REQUEST)
    headers = signed_headers(handle.task_id, HMAC_KEY)
    genuine = json.dumps({"code": 200, "data": {"callbackType": "text", "task_id": handle.task_id}})
    assert await server.send_forged_callback(receiver.url, genuine.encode(), headers) == 200
    rejected = receiver.rejected
    status = await server.send_forged_callback(
        receiver.url, forged_body(handle.task_id, kind), headers
    )
    assert status == 400
    assert receiver.rejected == rejected + 1
    assert handle.latest is not None
    assert handle.latest.stage is Stage.TEXT
    assert FORGED not in repr(handle.latest)


async def test_a_forged_complete_callback_never_ends_a_wait(
    server: FakeKieServer, receiver: CallbackReceiver, client: MashupClient
) -> None:
    """A signed "complete" body, forged URLs: the confirming poll disagrees; the wait goes on."""
    handle = await client.submit(REQUEST)
    waiting = asyncio.create_task(handle.wait())
    await asyncio.sleep(0.05)
    headers = signed_headers(handle.task_id, HMAC_KEY)
    body = forged_body(handle.task_id, "complete")
    assert await server.send_forged_callback(receiver.url, body, headers) == 200
    task = server.tasks[handle.task_id]
    await until(lambda: bool(task.poll_times))  # the confirming poll
    await asyncio.sleep(0.2)
    assert not waiting.done()
    assert handle.latest is not None
    assert not handle.latest.is_terminal
    assert FORGED not in repr(handle.latest)
    waiting.cancel()


@pytest.mark.parametrize("stage", [Stage.FIRST, Stage.COMPLETE])
async def test_a_batch_resumed_after_a_forged_first_does_not_finish_on_it(
    server: FakeKieServer, tmp_path: Path, stage: Stage
) -> None:
    """A forged FIRST kept for an unknown task, then a rerun of the batch: nothing is done."""
    journal = tmp_path / "run.journal"
    async with (
        CallbackReceiver(port=0, hmac_key=HMAC_KEY) as receiver,
        MashupClient(
            api_key=API_KEY, base_url=server.url, receiver=receiver, poll_policy=QUIET
        ) as client,
    ):
        batch = client.run_batch([REQUEST], journal=journal, stage=stage)
        first = asyncio.create_task(anext(aiter(batch)))
        await until(lambda: bool(server.tasks))
        await asyncio.sleep(0.1)  # the id is journaled
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await batch.aclose()
    task_id = next(iter(server.tasks))
    async with (
        CallbackReceiver(port=0, hmac_key=HMAC_KEY) as receiver,
        MashupClient(
            api_key=API_KEY, base_url=server.url, receiver=receiver, poll_policy=QUIET
        ) as client,
    ):
        # The forgery arrives before the rerun knows the task: kept, then handed over.
        body = forged_body(task_id, "first")
        assert (
            await server.send_forged_callback(receiver.url, body, signed_headers(task_id, HMAC_KEY))
            == 200
        )
        batch = client.run_batch([REQUEST], journal=journal, stage=stage)
        rerun = asyncio.create_task(anext(aiter(batch)))
        await asyncio.sleep(0.5)  # its confirming poll (PENDING) has long been answered
        assert not rerun.done()
        rerun.cancel()
        await asyncio.gather(rerun, return_exceptions=True)
        await batch.aclose()
    records = [json.loads(line) for line in journal.read_bytes().splitlines()[1:]]
    assert not [r for r in records if r["ev"] == "done"]
    assert server.creations == 1


# --- the rule as a property: any callbacks, no agreeing poll ------------------------------------

KINDS = st.sampled_from(
    ["text", "first", "complete", "error", "failed", "COMPLETE", "bogus", "complete ", None, 7]
)
DELIVERY = st.tuples(
    KINDS,
    st.integers(0, MAX_TRACKS + 2),
    st.sampled_from([200, 200, 501, "x", None]),
    st.sampled_from(["signed", "unsigned", "wrong key", "stale"]),
)


def delivery_headers(task_id: str, how: str) -> dict[str, str]:
    if how == "unsigned":
        return {}
    key = "not-the-key" if how == "wrong key" else HMAC_KEY
    stamp = int(time.time()) - (3600 if how == "stale" else 0)
    return signed_headers(task_id, key, timestamp=stamp)


async def run_callbacks(deliveries: list[tuple[Any, int, Any, str]], journal: Path) -> None:
    async with (
        FakeKieServer(api_key=API_KEY, webhook_hmac_key=HMAC_KEY, default_timeline=ENDLESS) as fake,
        CallbackReceiver(port=0, hmac_key=HMAC_KEY) as receiver,
        MashupClient(
            api_key=API_KEY, base_url=fake.url, receiver=receiver, poll_policy=QUIET
        ) as client,
    ):
        seen: list[Any] = []
        batch = client.run_batch([REQUEST], journal=journal)

        async def drain() -> None:
            async for item in batch:
                seen.append(item)

        draining = asyncio.create_task(drain())
        await until(lambda: bool(fake.tasks))
        task_id = next(iter(fake.tasks))
        handle = client.task(task_id)
        updates: list[Any] = []

        async def follow() -> None:
            async for snapshot in handle.updates():
                updates.append(snapshot)

        following = asyncio.create_task(follow())
        for kind, tracks, code, how in deliveries:
            body = forged_body(task_id, kind, tracks, code)
            with contextlib.suppress(CallbackRejected):
                client.handle_callback(delivery_headers(task_id, how), body)
            await asyncio.sleep(0)
        await asyncio.sleep(0.3)  # every confirming poll has had time to answer
        for snapshot in [handle.latest, *updates]:
            assert snapshot is not None
            assert snapshot.stage < Stage.COMPLETE
            assert not snapshot.is_terminal
            assert FORGED not in repr(snapshot)
        assert not draining.done()  # the batch still waits
        assert not seen
        assert not following.done()
        draining.cancel()
        following.cancel()
        await asyncio.gather(draining, following, return_exceptions=True)
    assert FORGED not in journal.read_text()  # noqa: ASYNC240 (the run is over)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(DELIVERY, min_size=1, max_size=10))
def test_no_sequence_of_callbacks_completes_a_task_or_shows_its_urls(
    tmp_path: Path, deliveries: list[tuple[Any, int, Any, str]]
) -> None:
    """Any callbacks (type, tracks, code, signature) without an agreeing poll: never COMPLETE."""
    journal = tmp_path / f"run-{time.monotonic_ns()}.journal"
    asyncio.run(run_callbacks(deliveries, journal))


# --- handle_callback -------------------------------------------------------------------------


async def test_handle_callback_verifies_parses_and_feeds(server: FakeKieServer) -> None:
    """With webhook_hmac_key: a signed text callback wakes the wait; a bad one is a 401."""
    async with MashupClient(
        api_key=API_KEY,
        base_url=server.url,
        callback_url="https://you.example/kie",
        webhook_hmac_key=HMAC_KEY,
        poll_policy=QUIET,
    ) as client:
        handle = await client.submit(REQUEST)
        waiting = asyncio.create_task(handle.wait(Stage.TEXT))
        await asyncio.sleep(0)
        body = forged_body(handle.task_id, "text", tracks=0)
        snapshot = client.handle_callback(signed_headers(handle.task_id, HMAC_KEY), body)
        assert snapshot.stage is Stage.TEXT
        async with asyncio.timeout(5):
            assert (await waiting).source == "callback"
        for headers in ({}, signed_headers(handle.task_id, "wrong")):
            with pytest.raises(CallbackRejected) as info:
                client.handle_callback(headers, body)
            assert info.value.http_status == 401
        with pytest.raises(CallbackRejected) as too_big:
            client.handle_callback({}, b" " * (256 * 1024 + 1))
        assert too_big.value.http_status == 413


async def test_handle_callback_uses_the_receivers_key_and_drops_replays(
    client: MashupClient, receiver: CallbackReceiver
) -> None:
    """Without its own key the client checks the receiver's; a replay is fed to nobody."""
    handle = await client.submit(REQUEST)
    headers = signed_headers(handle.task_id, HMAC_KEY)
    body = forged_body(handle.task_id, "text", tracks=0)
    assert client.handle_callback(headers, body).stage is Stage.TEXT
    state_before = handle.latest
    replay = {**headers, "X-Webhook-Timestamp": headers["X-Webhook-Timestamp"] + " "}
    client.handle_callback(replay, body)  # same normalised timestamp: a replay
    assert handle.latest is state_before
    with pytest.raises(CallbackRejected):
        client.handle_callback(signed_headers(handle.task_id, "other"), body)
    assert receiver.hmac_key == HMAC_KEY


@pytest.mark.parametrize("key", ["", "   "])
def test_a_key_the_client_cannot_use_is_an_error(key: str) -> None:
    """An empty webhook_hmac_key raises at construction, never a silent no-op."""
    with pytest.raises(KieError, match="webhook_hmac_key"):
        MashupClient(api_key=API_KEY, webhook_hmac_key=key)


# --- bounded work ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"[" * 20_000 + b"]" * 20_000, "nested"),
        (b'{"data": {"data": [' + b",".join([b"{}"] * 87_000) + b"]}}", "objects"),
        (forged_body("t", "complete", tracks=MAX_TRACKS + 1), "tracks"),
        (forged_body("t" * 129, "text", tracks=0), "task id"),
        (json.dumps({"a": [[[[[1]]]]] * 100}).encode("utf-16"), "UTF-8"),
        (b"[" * 257 + b'"' + b'\\"' * 130_000, "nested"),
        (b"[" * 257 + b'"' * 260_000, "strings"),
    ],
    ids=[
        "deep",
        "huge array",
        "too many tracks",
        "long task id",
        "UTF-16",
        "unclosed string of escapes",
        "many quotes",
    ],
)
def test_hostile_bodies_are_refused_before_any_work(body: bytes, why: str) -> None:
    """Deep nesting, huge arrays, too many tracks, long ids: a 400 naming why, no RecursionError."""
    started = time.process_time()
    with pytest.raises(CallbackRejected) as info:
        read_callback({}, body, hmac_key=None, now=0.0)
    assert info.value.http_status == 400
    assert why in info.value.reason
    # Linear work: milliseconds. (A quadratic scan took 12 s for 64 KiB of quotes.)
    assert time.process_time() - started < 1.0


def test_brackets_inside_strings_do_not_count() -> None:
    """Lyrics full of [Verse] markers are not mistaken for nesting."""
    prompt = "[Verse] {x} " * (MAX_CONTAINERS * 2)
    body = json.dumps(
        {"code": 200, "msg": prompt, "data": {"callbackType": "text", "task_id": "t"}}
    ).encode()
    assert read_callback({}, body, hmac_key=None, now=0.0).snapshot.stage is Stage.TEXT


@pytest.mark.parametrize("suffix", ["\u00a0", "\u2003", "\u3000", "\u0660"])
def test_a_timestamp_with_unicode_space_or_digits_is_refused(suffix: str) -> None:
    """Only ASCII digits (and HTTP spaces) make a timestamp: an NBSP cannot make a replay new."""
    now = 1_700_000_000
    stamp = str(now)
    headers = {
        "X-Webhook-Timestamp": stamp + suffix,
        "X-Webhook-Signature": sign("t", stamp, HMAC_KEY),
    }
    body = forged_body("t", "text", tracks=0)
    with pytest.raises(CallbackRejected) as info:
        read_callback(headers, body, hmac_key=HMAC_KEY, now=now)
    assert info.value.http_status == 401
    headers["X-Webhook-Timestamp"] = f" {stamp}\t"
    assert read_callback(headers, body, hmac_key=HMAC_KEY, now=now).timestamp == stamp


async def test_a_flood_of_rejections_logs_a_few_lines_and_counts_all(
    receiver: CallbackReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """500 refused deliveries (deep JSON among them): every one counted, one log line, no trace."""
    caplog.set_level(logging.DEBUG, logger="kiemashup")
    bodies = [b"[" * 20_000, b"{not json", forged_body("t", "bogus")]
    async with aiohttp.ClientSession() as http:
        for n in range(500):
            async with http.post(receiver.url, data=bodies[n % 3]) as reply:
                assert reply.status in (400, 401)
    assert receiver.rejected == 500
    lines = [r for r in caplog.records if r.name.startswith("kiemashup")]
    assert 1 <= len(lines) <= 2  # once at the start, then at most once per 10 s
    assert all(r.exc_info is None and r.levelno <= logging.WARNING for r in lines)


async def test_the_early_callback_cache_is_bounded_in_bytes(server: FakeKieServer) -> None:
    """50 000 claims for unknown tasks with long ids and messages: kept within EARLY_BYTES."""
    async with MashupClient(api_key=API_KEY, base_url=server.url) as client:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        message = "m" * 1_000
        for n in range(50_000):
            body = json.dumps(
                {
                    "code": 501,
                    "msg": message,
                    "data": {"callbackType": "error", "task_id": f"{n:0128d}"},
                }
            ).encode()
            client.handle_callback({}, body)
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert grown < 2 * EARLY_BYTES  # unbounded, this would be over 100 MB
        assert len(client._early) <= EARLY_MAX


@pytest.mark.parametrize("key", ["", "  "])
def test_a_receiver_key_that_verifies_nothing_is_an_error(key: str) -> None:
    """CallbackReceiver(hmac_key="") would accept signatures anyone can make: it raises."""
    with pytest.raises(KieError, match="hmac_key"):
        CallbackReceiver(port=0, hmac_key=key)


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"X-Webhook-Timestamp": b"1", "X-Webhook-Signature": b"x"}, forged_body("t", "text")),
        ({"X-Webhook-Timestamp": 1_700_000_000, "X-Webhook-Signature": "x"}, b"{}"),
        ({"X-Webhook-Timestamp": ["1"], "X-Webhook-Signature": ["x"]}, b"{}"),
        (None, forged_body("t", "text")),
        ({}, "\ud800"),
        ({}, memoryview(b"{not json")),
        ({}, 12),
        ({}, forged_body("\u00e9" * 10, "text")),
    ],
    ids=[
        "bytes headers",
        "int header",
        "list headers",
        "no headers",
        "lone surrogate",
        "memoryview",
        "int body",
        "non-ASCII task id",
    ],
)
async def test_odd_inputs_to_handle_callback_are_only_ever_rejected(
    server: FakeKieServer, headers: Any, body: Any
) -> None:
    """Whatever a framework hands over, handle_callback answers CallbackRejected, nothing else."""
    async with MashupClient(
        api_key=API_KEY, base_url=server.url, webhook_hmac_key=HMAC_KEY
    ) as client:
        with pytest.raises(CallbackRejected) as info:
            client.handle_callback(headers, body)
        assert info.value.http_status in (400, 401)


async def test_compressed_and_malformed_requests_cost_little_and_log_no_traceback(
    receiver: CallbackReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A gzip bomb is refused uninflated; broken HTTP is logged throttled, without a traceback."""
    caplog.set_level(logging.DEBUG)
    bomb = gzip.compress(b" " * 50_000_000)
    async with aiohttp.ClientSession() as http:
        for url in (receiver.url, receiver.url + "x"):
            started = time.process_time()
            async with http.post(
                url, data=bomb, headers={"Content-Encoding": "gzip"}, compress=None
            ) as reply:
                assert reply.status in (400, 404)
            assert time.process_time() - started < 0.2  # not 50 MB inflated
    host, port = receiver.host, receiver.port
    for garbage in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"GET / HTTP/1.1\r\n" * 3):
        for _ in range(5):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(garbage + b"\r\n\r\n")
            await writer.drain()
            await reader.read()
            writer.close()
            await writer.wait_closed()
    http_lines = [r for r in caplog.records if r.name == "kiemashup.receiver.http"]
    assert len(http_lines) <= 2
    assert all(r.exc_info is None for r in caplog.records if r.name.startswith("kiemashup"))
    assert not [r for r in caplog.records if r.name == "aiohttp.server"]
