"""parse_callback and CallbackReceiver: parsing, signatures and robust delivery over loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from kiemashup import (
    CallbackReceiver,
    CallbackRejected,
    KieError,
    Stage,
    TaskSnapshot,
    TaskStatus,
    parse_callback,
)
from kiemashup._core.callbacks import sign
from kiemashup._core.state import final_claim
from kiemashup.testing import signed_headers

SAMPLES = Path(__file__).parent / "samples"
KEY = "whk-test-3f9a1c7e5b2d"
TASK = "5c79a1b2be8e"


def sample(name: str) -> bytes:
    return (SAMPLES / f"{name}.json").read_bytes()


def headers_for(task_id: str = TASK, *, key: str = KEY, skew: int = 0) -> dict[str, str]:
    return signed_headers(task_id, key, timestamp=int(time.time()) + skew)


# -- parse_callback: payloads -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "status", "stage"),
    [
        ("callback_text", TaskStatus.TEXT_SUCCESS, Stage.TEXT),
        ("callback_first", TaskStatus.FIRST_SUCCESS, Stage.FIRST),
        ("callback_complete", TaskStatus.SUCCESS, Stage.FIRST),
        ("callback_extra_fields", TaskStatus.SUCCESS, Stage.FIRST),
    ],
)
def test_stage_callbacks_parse_to_claims(name: str, status: TaskStatus, stage: Stage) -> None:
    """text/first/complete callbacks claim a status: not terminal, at most FIRST, no tracks."""
    snapshot = parse_callback({}, sample(name))
    assert (snapshot.task_id, snapshot.status, snapshot.stage) == (TASK, status, stage)
    assert snapshot.tracks == ()  # a callback's URLs are never shown (the body is unsigned)
    assert (snapshot.source, snapshot.confirmed) == ("callback", False)
    assert not snapshot.is_terminal
    assert not snapshot.failed
    assert final_claim(snapshot) is (status is TaskStatus.SUCCESS)


@pytest.mark.parametrize(
    "name", ["callback_error_null", "callback_error_empty", "callback_error_missing"]
)
def test_error_callback_claims_a_failure_whatever_data_data_is(name: str) -> None:
    """An error callback (data.data null, [] or missing) claims failure 501; a poll decides."""
    snapshot = parse_callback({}, sample(name))
    assert (snapshot.is_terminal, snapshot.failed, snapshot.tracks) == (False, False, ())
    assert snapshot.status is TaskStatus.GENERATE_AUDIO_FAILED
    assert final_claim(snapshot)
    assert (snapshot.error_code, snapshot.error_message) == (501, "Audio generation failed")


def test_mixed_casing_is_read_either_way() -> None:
    """callback_type and callbackType are both understood."""
    payload = json.loads(sample("callback_first"))
    payload["data"]["callback_type"] = payload["data"].pop("callbackType")
    snapshot = parse_callback({}, json.dumps(payload).encode())
    assert (snapshot.status, snapshot.stage) == (TaskStatus.FIRST_SUCCESS, Stage.FIRST)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        (b'{"code": 200, "data": {"callbackType": "text"}}', 400),  # no task id
        (b"x" * (256 * 1024 + 1), 413),
    ],
)
def test_bad_bodies_are_rejected_with_the_status_to_answer(body: bytes, status: int) -> None:
    """Bad JSON, a non-object, a missing task id -> 400; a body over 256 KiB -> 413."""
    with pytest.raises(CallbackRejected) as info:
        parse_callback({}, body)
    assert info.value.http_status == status


# -- parse_callback: signatures -----------------------------------------------------------


def test_signature_is_base64_hmac_sha256_of_task_id_dot_timestamp() -> None:
    """sign() matches Kie's documented scheme, and a correctly signed callback parses."""
    import base64
    import hashlib
    import hmac

    expected = base64.b64encode(
        hmac.new(KEY.encode(), f"{TASK}.1700000000".encode(), hashlib.sha256).digest()
    ).decode()
    assert sign(TASK, "1700000000", KEY) == expected
    snapshot = parse_callback(headers_for(), sample("callback_text"), hmac_key=KEY)
    assert snapshot.stage is Stage.TEXT


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(lambda: headers_for(key="wrong-key"), id="wrong-key"),
        pytest.param(lambda: headers_for("otherTask123"), id="other-task-signature"),
        pytest.param(lambda: headers_for(skew=-301), id="timestamp-too-old"),
        pytest.param(lambda: headers_for(skew=301), id="timestamp-in-future"),
        pytest.param(dict, id="missing-headers"),
        pytest.param(lambda: {**headers_for(), "X-Webhook-Timestamp": "soon"}, id="bad-stamp"),
        pytest.param(
            lambda: {"X-Webhook-Timestamp": headers_for()["X-Webhook-Timestamp"]},
            id="no-signature",
        ),
    ],
)
def test_forged_signatures_are_rejected_with_401(headers: Any) -> None:
    """Wrong key, another task's signature, skew beyond 300 s either way, missing headers -> 401."""
    with pytest.raises(CallbackRejected) as info:
        parse_callback(headers(), sample("callback_complete"), hmac_key=KEY)
    assert info.value.http_status == 401


def test_header_names_are_case_insensitive_and_the_window_is_configurable() -> None:
    """Lower-case header names verify; a 30 s window rejects 60 s of skew that 300 s allows."""
    lowered = {k.lower(): v for k, v in headers_for(skew=-60).items()}
    assert parse_callback(lowered, sample("callback_text"), hmac_key=KEY).stage is Stage.TEXT
    with pytest.raises(CallbackRejected):
        parse_callback(lowered, sample("callback_text"), hmac_key=KEY, window=30)


# -- CallbackReceiver over loopback -----------------------------------------------------------


class Listener:
    """Records what the receiver hands to its subscribers."""

    def __init__(self) -> None:
        self.seen: list[TaskSnapshot] = []

    def __call__(self, snapshot: TaskSnapshot) -> None:
        self.seen.append(snapshot)


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    async with CallbackReceiver(port=0, hmac_key=KEY) as started:
        yield started


async def post(
    http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str] | None = None
) -> int:
    async with http.post(url, data=body, headers=headers or {}) as response:
        await response.read()
        return response.status


async def test_url_is_public_url_plus_an_unguessable_token() -> None:
    """url = public URL + a path token of >= 128 random bits, different for every receiver."""
    first = CallbackReceiver(public_url="https://hooks.example.com/kie/")
    second = CallbackReceiver(public_url="https://hooks.example.com/kie")
    prefix = "https://hooks.example.com/kie/"
    assert first.url.startswith(prefix)
    token = first.url.removeprefix(prefix)
    assert "/" not in token
    assert len(token) * 6 >= 128  # urlsafe base64: 6 bits a character
    assert first.url != second.url
    with pytest.raises(KieError, match="not started"):
        _ = CallbackReceiver().url


async def test_port_zero_picks_a_free_port_and_the_url_points_at_it(
    receiver: CallbackReceiver,
) -> None:
    """Standalone with port=0: a free port is chosen and url is http://host:port/<token>."""
    assert receiver.port != 0
    assert receiver.url.startswith(f"http://127.0.0.1:{receiver.port}/")


async def test_a_signed_callback_reaches_listeners_with_200(
    http: aiohttp.ClientSession, receiver: CallbackReceiver
) -> None:
    """A valid signed callback is answered 200 and handed to each subscriber once."""
    listener = Listener()
    unsubscribe = receiver.subscribe(listener)
    assert await post(http, receiver.url, sample("callback_first"), headers_for()) == 200
    assert [s.stage for s in listener.seen] == [Stage.FIRST]
    unsubscribe()
    assert await post(http, receiver.url, sample("callback_text"), headers_for()) == 200
    assert len(listener.seen) == 1
    assert receiver.accepted == 2


@pytest.mark.parametrize(
    ("suffix", "method"),
    [("", "POST"), ("/", "GET"), ("/wrong-token", "POST"), ("/TOKEN/extra", "POST")],
)
async def test_any_other_path_answers_404(
    http: aiohttp.ClientSession, receiver: CallbackReceiver, suffix: str, method: str
) -> None:
    """Only the secret path is served: the root, a wrong token or a longer path get 404."""
    listener = Listener()
    receiver.subscribe(listener)
    base = receiver.url.rsplit("/", 1)[0]
    token = receiver.url.rsplit("/", 1)[1]
    url = base + suffix.replace("TOKEN", token)
    async with http.request(method, url, data=sample("callback_text"), headers=headers_for()) as r:
        assert r.status == 404
    assert listener.seen == []


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        pytest.param(lambda: headers_for(key="nope"), "callback_complete", 401, id="bad-signature"),
        pytest.param(dict, "callback_complete", 401, id="missing-signature"),
        pytest.param(lambda: headers_for("other"), "callback_complete", 401, id="other-task"),
        pytest.param(lambda: headers_for(skew=-3600), "callback_complete", 401, id="old-stamp"),
        pytest.param(lambda: headers_for(skew=3600), "callback_complete", 401, id="future-stamp"),
        pytest.param(headers_for, b"{oops", 400, id="malformed"),
        pytest.param(headers_for, b"x" * (256 * 1024 + 1), 413, id="oversized"),
    ],
)
async def test_bad_deliveries_are_rejected_and_the_receiver_keeps_serving(
    http: aiohttp.ClientSession,
    receiver: CallbackReceiver,
    headers: Any,
    body: str | bytes,
    status: int,
) -> None:
    """Forged (401), malformed (400) and oversized (413) deliveries reach no listener."""
    listener = Listener()
    receiver.subscribe(listener)
    raw = sample(body) if isinstance(body, str) else body
    assert await post(http, receiver.url, raw, headers()) == status
    assert (listener.seen, receiver.rejected) == ([], 1)
    assert await post(http, receiver.url, sample("callback_text"), headers_for()) == 200
    assert len(listener.seen) == 1


async def test_a_chunked_oversized_body_is_rejected_with_413(
    http: aiohttp.ClientSession, receiver: CallbackReceiver
) -> None:
    """A body over 256 KiB without Content-Length (chunked) is still refused with 413."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"x" * 8192

    async with http.post(receiver.url, data=chunks(), headers=headers_for()) as response:
        assert response.status == 413


async def test_a_replayed_signed_delivery_is_ignored(
    http: aiohttp.ClientSession, receiver: CallbackReceiver
) -> None:
    """The same signed delivery sent twice is answered 200 but handed on only once."""
    listener = Listener()
    receiver.subscribe(listener)
    headers = headers_for()
    for _ in range(3):
        assert await post(http, receiver.url, sample("callback_first"), headers) == 200
    assert len(listener.seen) == 1
    assert receiver.accepted == 1
    # Another stage within the same second carries the same signature and is not a replay.
    assert await post(http, receiver.url, sample("callback_complete"), headers) == 200
    assert len(listener.seen) == 2


async def test_a_failing_listener_does_not_cost_the_delivery(
    http: aiohttp.ClientSession, receiver: CallbackReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener that raises is logged; the delivery still gets 200 and other listeners run."""

    def broken(_snapshot: TaskSnapshot) -> None:
        raise RuntimeError("listener bug")

    listener = Listener()
    receiver.subscribe(broken)
    receiver.subscribe(listener)
    assert await post(http, receiver.url, sample("callback_text"), headers_for()) == 200
    assert len(listener.seen) == 1
    assert "listener failed" in caplog.text


async def test_mounted_in_an_existing_app_with_add_subapp(http: aiohttp.ClientSession) -> None:
    """receiver.app mounted under /kie of another app takes callbacks at public_url + token."""
    with socket.socket() as probe:  # the parent app's port, known before the receiver is built
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    receiver = CallbackReceiver(public_url=f"http://127.0.0.1:{port}/kie", hmac_key=KEY)
    listener = Listener()
    receiver.subscribe(listener)

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/health", health)
    app.add_subapp("/kie", receiver.app)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        assert await post(http, receiver.url, sample("callback_first"), headers_for()) == 200
        big = b"x" * (256 * 1024 + 1)
        assert await post(http, receiver.url, big, headers_for()) == 413
        assert await post(http, f"http://127.0.0.1:{port}/kie/wrong", b"{}") == 404
        async with http.get(f"http://127.0.0.1:{port}/health") as response:
            assert await response.text() == "ok"
    finally:
        await runner.cleanup()
    assert [s.stage for s in listener.seen] == [Stage.FIRST]


async def test_close_finishes_within_5_s_with_an_idle_keep_alive_sender() -> None:
    """Leaving the context closes promptly although a sender holds a keep-alive connection."""
    async with aiohttp.ClientSession() as http:
        receiver = CallbackReceiver(port=0, hmac_key=KEY)
        async with asyncio.timeout(5):
            async with receiver:
                url = receiver.url
                assert await post(http, url, sample("callback_text"), headers_for()) == 200
                # the connection stays open in http's pool
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(http, url, sample("callback_text"), headers_for())


async def test_close_finishes_in_flight_requests_within_5_s() -> None:
    """close() while one delivery was answered and another is half sent ends within 5 s."""
    receiver = CallbackReceiver(port=0)
    listener = Listener()
    receiver.subscribe(listener)

    async def drip() -> AsyncIterator[bytes]:
        yield sample("callback_text")[:10]
        await asyncio.sleep(0.2)
        yield sample("callback_text")[10:]

    async def send(http: aiohttp.ClientSession, data: Any) -> int | str:
        try:
            async with http.post(url, data=data) as response:
                await response.read()
                return response.status
        except aiohttp.ClientConnectionError:
            return "disconnected"  # Kie retries a delivery that got no answer

    async with aiohttp.ClientSession() as http:
        await receiver.start()
        url = receiver.url
        assert await send(http, sample("callback_first")) == 200
        half_sent = asyncio.create_task(send(http, drip()))
        await asyncio.sleep(0.05)
        async with asyncio.timeout(5):
            await receiver.close()
            assert await half_sent in (200, "disconnected")
    assert listener.seen[0].stage is Stage.FIRST


async def test_a_port_in_use_fails_to_start_without_leaking(receiver: CallbackReceiver) -> None:
    """Starting on a busy port raises OSError and leaves nothing running or leaked."""
    busy = CallbackReceiver(port=receiver.port)
    with pytest.raises(OSError, match="address already in use"):
        await busy.start()
    with pytest.raises(KieError):
        _ = busy.url
    await busy.close()
    with pytest.raises(KieError, match="already started"):
        await receiver.start()
