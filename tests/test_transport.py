"""The transport at the aiohttp boundary: auth, error mapping, retries, key hygiene."""

from __future__ import annotations

import asyncio
import logging
import re
import traceback
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.client_reqrep import ConnectionKey
from aioresponses import aioresponses
from yarl import URL

from kiemashup import (
    APIError,
    AuthenticationError,
    InsufficientCreditsError,
    KieError,
    MashupClient,
    MashupRequest,
    ProtocolError,
    RateLimitError,
    RateLimits,
    RetryPolicy,
    ServerError,
    ServiceUnavailableError,
    SubmitOutcomeUnknown,
    Timeouts,
    TransportError,
)
from kiemashup._core.protocol import CREDITS_PATH, RECORD_INFO_PATH, SUBMIT_PATH
from kiemashup._transport import Transport

BASE = "https://api.kie.test"
CREDITS_URL = BASE + CREDITS_PATH
SUBMIT_URL = BASE + SUBMIT_PATH
RECORD_URL = re.compile(re.escape(BASE + RECORD_INFO_PATH) + r"\?taskId=.*")
TEST_API_KEY = "sk-transport-test-0f1e2d3c4b5a6978"
NOW = 1_700_000_000.0  # the transport's injected wall clock (for Retry-After dates)
ATTEMPTS = 4


def ok(data: Any) -> dict[str, Any]:
    return {"code": 200, "msg": "success", "data": data}


def connector_error() -> aiohttp.ClientConnectorError:
    """The error aiohttp raises when the TCP connection never opened."""
    key = ConnectionKey("api.kie.test", 443, True, None, None, None, None, None)
    return aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connection refused"))


class Sleeps:
    """A fake ``sleep`` that records each delay instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.now = 1000.0  # the transport's monotonic clock: moved on by each sleep

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.now += delay
        await asyncio.sleep(0)

    @property
    def retries(self) -> list[float]:
        """Delays long enough to be retry backoffs (the rate gate may ask for microseconds)."""
        return [d for d in self.delays if d > 1e-3]


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


class _WrittenRequest:
    """Stands in for the request writer that aiohttp >= 3.14 hands every response."""

    output_size = 0


class _CompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.x builds responses without aiohttp 3.14's ``stream_writer``."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _WrittenRequest())
        super().__init__(method, url, **kwargs)


class _Mocked(aioresponses):  # type: ignore[misc]
    """aioresponses whose canned replies work on aiohttp 3.14 (pnuckowski/aioresponses#289)."""

    def add(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", _CompatResponse)
        super().add(*args, **kwargs)


@pytest.fixture
def mocked() -> Any:
    with _Mocked() as m:
        yield m


@pytest_asyncio.fixture
async def transport(sleeps: Sleeps) -> AsyncIterator[Transport]:
    t = Transport(
        api_key=TEST_API_KEY,
        base_url=BASE,
        session=None,
        limits=RateLimits(requests_per_second=1e6),
        retry=RetryPolicy(attempts=ATTEMPTS, base=1.0, cap=8.0, max_retry_after=60.0),
        timeouts=Timeouts(),
        sleep=sleeps,
        rand=lambda: 0.5,
        wall_clock=lambda: NOW,
        clock=lambda: sleeps.now,
    )
    yield t
    await t.aclose()


@pytest.fixture
def request_() -> MashupRequest:
    return MashupRequest(("https://example.com/a.mp3", "https://example.com/b.mp3"), prompt="mix")


def sent(m: Any, method: str, url: str | re.Pattern[str]) -> int:
    """How many requests aioresponses saw for ``method`` and ``url``."""
    return sum(
        len(calls)
        for (meth, u), calls in m.requests.items()
        if meth == method
        and (re.fullmatch(url, str(u)) if isinstance(url, re.Pattern) else u == URL(url))
    )


async def submit(t: Transport, request: MashupRequest) -> str:
    return await t.submit(SUBMIT_PATH, request.to_payload(), request)


# --- auth and error mapping -----------------------------------------------------------------


async def test_bearer_auth_header_is_sent(transport: Transport, mocked: Any) -> None:
    """Every request carries ``Authorization: Bearer <key>``."""
    mocked.get(CREDITS_URL, payload=ok(42))
    assert await transport.get(CREDITS_PATH) == 42
    (call,) = mocked.requests[("GET", URL(CREDITS_URL))]
    assert call.kwargs["headers"]["Authorization"] == f"Bearer {TEST_API_KEY}"


async def test_submit_sends_json_body_with_auth(
    transport: Transport, mocked: Any, request_: MashupRequest
) -> None:
    """A submit POSTs the request's payload as JSON, with the Bearer header, and returns taskId."""
    mocked.post(SUBMIT_URL, payload=ok({"taskId": "abc123"}))
    assert await submit(transport, request_) == "abc123"
    (call,) = mocked.requests[("POST", URL(SUBMIT_URL))]
    assert call.kwargs["json"] == request_.to_payload()
    assert call.kwargs["headers"]["Authorization"] == f"Bearer {TEST_API_KEY}"


BODY_CODES = [
    (401, AuthenticationError),
    (402, InsufficientCreditsError),
    (422, APIError),
    (429, RateLimitError),
    (455, ServiceUnavailableError),
    (500, ServerError),
]


@pytest.mark.parametrize(("code", "error"), BODY_CODES)
async def test_http_200_with_error_body_code_raises_typed_error(
    transport: Transport, mocked: Any, code: int, error: type[APIError]
) -> None:
    """HTTP 200 with a non-200 body code raises the error class of that code, data attached."""
    mocked.get(CREDITS_URL, payload={"code": code, "msg": f"says {code}", "data": None})
    with pytest.raises(error) as info:
        await transport.call("GET", CREDITS_URL)
    assert type(info.value) is error
    assert (info.value.code, info.value.message, info.value.http_status) == (
        code,
        f"says {code}",
        200,
    )


@pytest.mark.parametrize(("code", "error"), BODY_CODES)
async def test_http_error_status_without_envelope_raises_typed_error(
    transport: Transport, mocked: Any, code: int, error: type[APIError]
) -> None:
    """An HTTP error status with a non-JSON body maps by the HTTP status."""
    mocked.get(CREDITS_URL, status=code, body="<html>oops</html>", content_type="text/html")
    with pytest.raises(error) as info:
        await transport.call("GET", CREDITS_URL)
    assert type(info.value) is error
    assert (info.value.code, info.value.http_status) == (code, code)


async def test_http_error_status_with_success_body_code_still_fails(
    transport: Transport, mocked: Any
) -> None:
    """HTTP 503 wrapped around body code 200 is a ServerError, not a success."""
    mocked.get(CREDITS_URL, status=503, payload=ok(1))
    with pytest.raises(ServerError) as info:
        await transport.call("GET", CREDITS_URL)
    assert (info.value.code, info.value.http_status) == (503, 503)


async def test_body_code_wins_over_http_status(transport: Transport, mocked: Any) -> None:
    """When both disagree, the body code picks the error class; http_status keeps the HTTP one."""
    mocked.get(CREDITS_URL, status=500, payload={"code": 402, "msg": "no credits", "data": None})
    with pytest.raises(InsufficientCreditsError) as info:
        await transport.call("GET", CREDITS_URL)
    assert (info.value.code, info.value.http_status) == (402, 500)


# --- reads: retries ---------------------------------------------------------------------------


READ_FAILURES: list[tuple[str, dict[str, Any]]] = [
    ("connection refused", {"exception": connector_error()}),
    ("timeout", {"exception": TimeoutError()}),
    ("server disconnected", {"exception": aiohttp.ServerDisconnectedError()}),
    ("read timeout", {"exception": aiohttp.SocketTimeoutError()}),
    ("http 429", {"status": 429, "payload": {"code": 429, "msg": "slow down", "data": None}}),
    ("body 429", {"payload": {"code": 429, "msg": "slow down", "data": None}}),
    ("body 455", {"payload": {"code": 455, "msg": "maintenance", "data": None}}),
    ("http 500", {"status": 500, "body": "boom", "content_type": "text/plain"}),
    ("http 502", {"status": 502, "body": "bad gateway", "content_type": "text/plain"}),
    ("http 503", {"status": 503, "payload": {"code": 503, "msg": "down", "data": None}}),
    ("body 500", {"payload": {"code": 500, "msg": "server error", "data": None}}),
    ("invalid json", {"body": '{"code":200,"msg":', "content_type": "application/json"}),
]


@pytest.mark.parametrize(
    "failure", [f for _, f in READ_FAILURES], ids=[n for n, _ in READ_FAILURES]
)
@pytest.mark.parametrize("endpoint", ["credits", "record-info"])
async def test_reads_retry_transient_failures(
    transport: Transport,
    mocked: Any,
    sleeps: Sleeps,
    failure: dict[str, Any],
    endpoint: str,
) -> None:
    """record-info and credits GETs retry a transient failure once, after one backoff."""
    url: str | re.Pattern[str]
    if endpoint == "credits":
        url, path, params = CREDITS_URL, CREDITS_PATH, None
        mocked.get(url, **failure)
        mocked.get(url, payload=ok(7))
        expected: Any = 7
    else:
        url, path, params = RECORD_URL, RECORD_INFO_PATH, {"taskId": "t1"}
        mocked.get(url, **failure)
        mocked.get(url, payload=ok({"taskId": "t1", "status": "PENDING"}))
        expected = {"taskId": "t1", "status": "PENDING"}
    assert await transport.get(path, params) == expected
    assert sent(mocked, "GET", url) == 2
    if failure.get("status") == 455 or "455" in str(failure.get("payload", "")):
        # Maintenance also pauses the whole client a moment: the retry's backoff, then
        # whatever is left of that pause.
        assert 1 <= len(sleeps.retries) <= 2
    else:
        assert len(sleeps.retries) == 1


async def test_read_retries_are_bounded_and_back_off(
    transport: Transport, mocked: Any, sleeps: Sleeps
) -> None:
    """A GET that keeps failing is sent RetryPolicy.attempts times, backing off exponentially."""
    mocked.get(CREDITS_URL, status=503, body="down", content_type="text/plain", repeat=True)
    with pytest.raises(ServerError):
        await transport.get(CREDITS_PATH)
    assert sent(mocked, "GET", CREDITS_URL) == ATTEMPTS
    # base 1.0, rand 0.5 (full jitter): 0.5, 1.0, 2.0
    assert sleeps.retries == [0.5, 1.0, 2.0]


async def test_exhausted_connection_retries_raise_transport_error_from_aiohttp(
    transport: Transport, mocked: Any
) -> None:
    """When retries run out, a TransportError is raised whose __cause__ is the aiohttp error."""
    mocked.get(CREDITS_URL, exception=connector_error(), repeat=True)
    with pytest.raises(TransportError) as info:
        await transport.get(CREDITS_PATH)
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectorError)
    assert sent(mocked, "GET", CREDITS_URL) == ATTEMPTS


@pytest.mark.parametrize("code", [401, 402, 422, 404])
async def test_reads_do_not_retry_permanent_errors(
    transport: Transport, mocked: Any, sleeps: Sleeps, code: int
) -> None:
    """Auth, credit and validation errors are raised on the first reply, without retrying."""
    mocked.get(CREDITS_URL, payload={"code": code, "msg": "no", "data": None}, repeat=True)
    with pytest.raises(APIError) as info:
        await transport.get(CREDITS_PATH)
    assert info.value.code == code
    assert sent(mocked, "GET", CREDITS_URL) == 1
    assert sleeps.retries == []


async def test_retry_after_seconds_is_honoured(
    transport: Transport, mocked: Any, sleeps: Sleeps
) -> None:
    """A 429 with ``Retry-After: 7`` waits exactly 7 s before the retry."""
    mocked.get(
        CREDITS_URL,
        status=429,
        payload={"code": 429, "msg": "slow", "data": None},
        headers={"Retry-After": "7"},
    )
    mocked.get(CREDITS_URL, payload=ok(3))
    assert await transport.get(CREDITS_PATH) == 3
    assert sleeps.retries == [7.0]


async def test_retry_after_http_date_is_honoured(
    transport: Transport, mocked: Any, sleeps: Sleeps
) -> None:
    """A 429 with an HTTP-date Retry-After waits until that date (by the wall clock)."""
    when = formatdate(NOW + 30, usegmt=True)
    mocked.get(
        CREDITS_URL,
        status=429,
        payload={"code": 429, "msg": "slow", "data": None},
        headers={"Retry-After": when},
    )
    mocked.get(CREDITS_URL, payload=ok(3))
    assert await transport.get(CREDITS_PATH) == 3
    assert sleeps.retries == [pytest.approx(30.0)]


async def test_retry_after_is_capped(transport: Transport, mocked: Any, sleeps: Sleeps) -> None:
    """A huge Retry-After is capped at RetryPolicy.max_retry_after."""
    mocked.get(CREDITS_URL, status=429, body="", headers={"Retry-After": "86400"})
    mocked.get(CREDITS_URL, payload=ok(3))
    assert await transport.get(CREDITS_PATH) == 3
    assert sleeps.retries == [60.0]


async def test_rate_limit_error_carries_retry_after(transport: Transport, mocked: Any) -> None:
    """RateLimitError.retry_after holds the header's seconds."""
    mocked.get(CREDITS_URL, status=429, body="", headers={"Retry-After": "12"})
    with pytest.raises(RateLimitError) as info:
        await transport.call("GET", CREDITS_URL)
    assert info.value.retry_after == 12.0


# --- submit: retried only when nothing was created ---------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        {"status": 429, "payload": {"code": 429, "msg": "slow", "data": None}},
        {"payload": {"code": 429, "msg": "slow", "data": None}},
        {"payload": {"code": 455, "msg": "maintenance", "data": None}},
        {"exception": connector_error()},
    ],
    ids=["http 429", "body 429", "body 455", "connection never opened"],
)
async def test_submit_retries_when_nothing_was_created(
    transport: Transport,
    mocked: Any,
    sleeps: Sleeps,
    request_: MashupRequest,
    failure: dict[str, Any],
) -> None:
    """A submit is retried after 429, 455 or a connection that never opened."""
    mocked.post(SUBMIT_URL, **failure)
    mocked.post(SUBMIT_URL, payload=ok({"taskId": "t-2"}))
    assert await submit(transport, request_) == "t-2"
    assert sent(mocked, "POST", SUBMIT_URL) == 2
    if "429" in repr(failure):  # a creation 429 holds the next submit back a full window
        assert sum(sleeps.retries) == pytest.approx(10.0 * 1.02 + 0.05)
    else:
        assert len(sleeps.retries) == 1


async def test_submit_retry_after_is_honoured(
    transport: Transport, mocked: Any, sleeps: Sleeps, request_: MashupRequest
) -> None:
    """A submit's 429 Retry-After sets the delay before the one retry."""
    mocked.post(SUBMIT_URL, status=429, body="", headers={"Retry-After": "5"})
    mocked.post(SUBMIT_URL, payload=ok({"taskId": "t-2"}))
    assert await submit(transport, request_) == "t-2"
    assert sleeps.retries == [5.0]


async def test_submit_retries_are_bounded(
    transport: Transport, mocked: Any, request_: MashupRequest
) -> None:
    """A submit that keeps getting 429 is sent at most RetryPolicy.attempts times."""
    mocked.post(SUBMIT_URL, status=429, body="", repeat=True)
    with pytest.raises(RateLimitError):
        await submit(transport, request_)
    assert sent(mocked, "POST", SUBMIT_URL) == ATTEMPTS


@pytest.mark.parametrize(
    "exception",
    [TimeoutError(), aiohttp.ServerDisconnectedError(), aiohttp.SocketTimeoutError()],
    ids=["timeout", "server disconnected", "read timeout"],
)
async def test_submit_failure_after_sending_is_outcome_unknown(
    transport: Transport, mocked: Any, request_: MashupRequest, exception: Exception
) -> None:
    """A timeout or disconnect after the POST went out: SubmitOutcomeUnknown, never resent."""
    mocked.post(SUBMIT_URL, exception=exception)
    mocked.post(SUBMIT_URL, payload=ok({"taskId": "would-be-a-duplicate"}))
    with pytest.raises(SubmitOutcomeUnknown) as info:
        await submit(transport, request_)
    assert info.value.request is request_
    assert sent(mocked, "POST", SUBMIT_URL) == 1


@pytest.mark.parametrize(
    "reply",
    [
        {"body": "<html>ok</html>", "content_type": "text/html"},
        {"body": '{"code":200,"msg":', "content_type": "application/json"},
        {"payload": ok({"noTaskId": True})},
    ],
    ids=["html", "truncated json", "no taskId"],
)
async def test_submit_unreadable_2xx_reply_is_outcome_unknown(
    transport: Transport, mocked: Any, request_: MashupRequest, reply: dict[str, Any]
) -> None:
    """A 2xx submit reply that cannot be read raises SubmitOutcomeUnknown after one POST."""
    mocked.post(SUBMIT_URL, **reply)
    mocked.post(SUBMIT_URL, payload=ok({"taskId": "would-be-a-duplicate"}))
    with pytest.raises(SubmitOutcomeUnknown) as info:
        await submit(transport, request_)
    assert info.value.request is request_
    assert isinstance(info.value.__cause__, ProtocolError)
    assert sent(mocked, "POST", SUBMIT_URL) == 1


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ({"payload": {"code": 401, "msg": "bad key", "data": None}}, AuthenticationError),
        ({"payload": {"code": 402, "msg": "no credits", "data": None}}, InsufficientCreditsError),
        ({"payload": {"code": 422, "msg": "bad field", "data": None}}, APIError),
        ({"status": 400, "body": "", "content_type": "text/plain"}, APIError),
    ],
    ids=["401", "402", "422", "http 400"],
)
async def test_submit_refusals_are_raised_as_is_after_one_post(
    transport: Transport,
    mocked: Any,
    request_: MashupRequest,
    reply: dict[str, Any],
    error: type[APIError],
) -> None:
    """A submit answered with a 4xx refusal raises that error after exactly one POST."""
    mocked.post(SUBMIT_URL, **reply)
    mocked.post(SUBMIT_URL, payload=ok({"taskId": "would-be-a-duplicate"}))
    with pytest.raises(error) as info:
        await submit(transport, request_)
    assert type(info.value) is error
    assert sent(mocked, "POST", SUBMIT_URL) == 1


@pytest.mark.parametrize(
    ("reply", "cause"),
    [
        ({"status": 500, "body": "boom", "content_type": "text/plain"}, ServerError),
        ({"status": 504, "body": "", "content_type": "text/html"}, ServerError),
        ({"payload": {"code": 500, "msg": "server error", "data": None}}, ServerError),
        ({"status": 503, "payload": {"code": 503, "msg": "down", "data": None}}, ServerError),
        ({"status": 502, "payload": {"code": 422, "msg": "odd", "data": None}}, APIError),
        ({"body": "[" * 100_000, "content_type": "application/json"}, ProtocolError),
    ],
    ids=["http 500", "gateway 504", "body 500", "http 503", "4xx body in a 5xx", "deep nesting"],
)
async def test_submit_5xx_or_unreadable_reply_is_outcome_unknown(
    transport: Transport,
    mocked: Any,
    request_: MashupRequest,
    reply: dict[str, Any],
    cause: type[Exception],
) -> None:
    """Any 5xx (HTTP or body code) or a reply too nested to parse: SubmitOutcomeUnknown, 1 POST."""
    mocked.post(SUBMIT_URL, **reply)
    mocked.post(SUBMIT_URL, payload=ok({"taskId": "would-be-a-duplicate"}))
    with pytest.raises(SubmitOutcomeUnknown) as info:
        await transport.submit(SUBMIT_PATH, request_.to_payload(), request_, key="k-1")
    assert info.value.request is request_
    assert info.value.key == "k-1"
    assert isinstance(info.value.__cause__, cause)
    assert sent(mocked, "POST", SUBMIT_URL) == 1


# --- the key never leaks ----------------------------------------------------------------------


async def test_api_key_never_appears_in_reprs_errors_or_logs(
    transport: Transport,
    mocked: Any,
    request_: MashupRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The API key is absent from repr(client), repr(transport), errors and log records."""
    caplog.set_level(logging.DEBUG)
    client = MashupClient(api_key=TEST_API_KEY, base_url=BASE)
    try:
        assert TEST_API_KEY not in repr(client)
        assert TEST_API_KEY not in repr(transport)
        mocked.get(CREDITS_URL, exception=connector_error(), repeat=True)
        mocked.get(RECORD_URL, payload={"code": 401, "msg": "bad key", "data": None}, repeat=True)
        mocked.post(SUBMIT_URL, exception=TimeoutError())
        errors: list[BaseException] = []
        for call in (
            transport.get(CREDITS_PATH),
            transport.get(RECORD_INFO_PATH, {"taskId": "t1"}),
            submit(transport, request_),
        ):
            with pytest.raises(KieError) as info:
                await call
            errors.append(info.value)
        assert len(errors) == 3
        for error in errors:
            text = "".join(traceback.format_exception(error))
            assert TEST_API_KEY not in text
            assert TEST_API_KEY not in repr(error)
        for record in caplog.records:
            assert TEST_API_KEY not in record.getMessage()
            assert TEST_API_KEY not in repr(record.__dict__)
    finally:
        await client.aclose()


# --- session ownership -----------------------------------------------------------------------


async def test_owned_session_is_closed_by_aclose(transport: Transport, mocked: Any) -> None:
    """A session the transport created itself is closed by aclose()."""
    mocked.get(CREDITS_URL, payload=ok(1))
    await transport.get(CREDITS_PATH)
    session = transport.session
    await transport.aclose()
    assert session.closed


async def test_borrowed_session_is_not_closed_by_aclose(mocked: Any) -> None:
    """A session passed in by the caller stays open after the transport and client close."""
    mocked.get(CREDITS_URL, payload=ok(1), repeat=True)
    async with aiohttp.ClientSession() as session:
        transport = Transport(
            api_key=TEST_API_KEY,
            base_url=BASE,
            session=session,
            limits=RateLimits(),
            retry=RetryPolicy(),
            timeouts=Timeouts(),
        )
        assert await transport.get(CREDITS_PATH) == 1
        await transport.aclose()
        assert not session.closed

        client = MashupClient(api_key=TEST_API_KEY, base_url=BASE, session=session)
        assert await client.credits() == 1
        await client.aclose()
        assert not session.closed


async def test_closed_transport_refuses_requests(transport: Transport) -> None:
    """After aclose() a request raises KieError instead of reopening a session."""
    await transport.aclose()
    with pytest.raises(KieError):
        await transport.get(CREDITS_PATH)
