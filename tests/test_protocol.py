"""The protocol without I/O: reply envelopes, webhook signatures, timing rules and rate windows."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiemashup import (
    APIError,
    AuthenticationError,
    CallbackRejected,
    InsufficientCreditsError,
    KieError,
    PollPolicy,
    ProtocolError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    ServiceUnavailableError,
    Stage,
    TaskStatus,
)
from kiemashup._core.callbacks import parse_callback_at, sign, verify_signature
from kiemashup._core.protocol import parse_credits, parse_envelope, parse_retry_after, parse_submit
from kiemashup._core.timing import (
    backoff_delay,
    outage_interval,
    poll_interval,
    retry_delay,
)

KEY = "whk_5e3c7a1f"
TASK = "5c79a1b2be8e"
NOW = 1_750_000_000.0


def envelope(code: int, msg: str = "m", data: object = None) -> bytes:
    """A ``{code, msg, data}`` reply body."""
    return json.dumps({"code": code, "msg": msg, "data": data}).encode()


# --- envelopes ------------------------------------------------------------------------


def test_success_envelope_returns_its_data() -> None:
    """HTTP 200 with body code 200 returns ``data`` (whatever it is, null included)."""
    assert parse_envelope(200, envelope(200, data={"taskId": "t"})) == {"taskId": "t"}
    assert parse_envelope(200, envelope(200, data=100)) == 100
    assert parse_envelope(200, envelope(200)) is None


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        (401, AuthenticationError),
        (402, InsufficientCreditsError),
        (404, APIError),
        (422, APIError),
        (429, RateLimitError),
        (451, APIError),
        (455, ServiceUnavailableError),
        (500, ServerError),
        (501, ServerError),
        (505, ServerError),
    ],
)
def test_http_200_with_error_body_code_raises_the_typed_error(
    code: int, error_type: type[APIError]
) -> None:
    """Kie's logical errors come as HTTP 200 with a body code; each maps to its error class."""
    with pytest.raises(APIError) as info:
        parse_envelope(200, envelope(code, msg="server words"))
    error = info.value
    assert type(error) is error_type
    assert (error.code, error.message, error.http_status) == (code, "server words", 200)
    assert isinstance(error, KieError)


def test_http_error_without_json_maps_the_http_status() -> None:
    """HTTP 500 with an HTML body is a ServerError with code and http_status 500."""
    with pytest.raises(ServerError) as info:
        parse_envelope(500, b"<html>Bad gateway</html>")
    assert (info.value.code, info.value.http_status, info.value.message) == (500, 500, "HTTP 500")


def test_http_error_with_json_body_prefers_the_body_code() -> None:
    """With both an HTTP status and a body code, the body code picks the error class."""
    with pytest.raises(InsufficientCreditsError) as info:
        parse_envelope(400, envelope(402, msg="no credits"))
    assert (info.value.code, info.value.http_status) == (402, 400)


def test_http_error_around_a_success_code_trusts_the_http_status() -> None:
    """HTTP 503 with body code 200 is still a failure, classified by the HTTP status."""
    with pytest.raises(ServerError) as info:
        parse_envelope(503, envelope(200))
    assert (info.value.code, info.value.http_status) == (503, 503)


def test_http_401_without_body_is_an_authentication_error() -> None:
    """A bare HTTP 401 is an AuthenticationError."""
    with pytest.raises(AuthenticationError):
        parse_envelope(401, b"")


def test_http_429_retry_after_seconds() -> None:
    """HTTP 429 with Retry-After in seconds gives a RateLimitError with retry_after."""
    with pytest.raises(RateLimitError) as info:
        parse_envelope(429, b"Too Many Requests", retry_after="7", now=NOW)
    assert (info.value.retry_after, info.value.http_status, info.value.code) == (7.0, 429, 429)


def test_http_429_retry_after_http_date() -> None:
    """HTTP 429 with Retry-After as an HTTP-date gives the seconds from ``now``."""
    when = format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True)
    with pytest.raises(RateLimitError) as info:
        parse_envelope(429, b"", retry_after=when, now=NOW)
    assert info.value.retry_after == pytest.approx(30.0)


def test_body_code_429_also_reads_retry_after() -> None:
    """A body code 429 inside HTTP 200 also carries the Retry-After header's value."""
    with pytest.raises(RateLimitError) as info:
        parse_envelope(200, envelope(429), retry_after="2.5")
    assert info.value.retry_after == 2.5


def test_rate_limit_without_retry_after_has_none() -> None:
    """Without a Retry-After header, retry_after is None."""
    with pytest.raises(RateLimitError) as info:
        parse_envelope(200, envelope(429))
    assert info.value.retry_after is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("  12 ", 12.0),
        ("-5", 0.0),
        ("soon", None),
        ("inf", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Retry-After is non-negative finite seconds, or None when absent or unreadable."""
    assert parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize("body", [b"<html>ok</html>", b"", b"[1, 2]", b'{"msg": "no code"}'])
def test_http_200_that_is_not_an_envelope_is_a_protocol_error(body: bytes) -> None:
    """A 200 reply that is not JSON, or not a {code, msg, data} object, is a ProtocolError."""
    with pytest.raises(ProtocolError):
        parse_envelope(200, body)


def test_parse_submit_and_credits() -> None:
    """The submit reply yields its taskId; the credit reply its integer balance."""
    assert parse_submit({"taskId": "5c79"}) == "5c79"
    assert parse_credits(100) == 100
    assert parse_credits(99.0) == 99
    for bad in (None, {}, {"taskId": ""}, {"taskId": 5}):
        with pytest.raises(ProtocolError):
            parse_submit(bad)
    for bad_credits in ("100", None, True):
        with pytest.raises(ProtocolError):
            parse_credits(bad_credits)


# --- webhook signatures ---------------------------------------------------------------


def headers_for(task_id: str, timestamp: int, key: str = KEY) -> dict[str, str]:
    """The headers Kie sends with a signed callback."""
    return {
        "X-Webhook-Timestamp": str(timestamp),
        "X-Webhook-Signature": sign(task_id, str(timestamp), key),
    }


def test_sign_is_base64_hmac_sha256_of_task_id_dot_timestamp() -> None:
    """sign() is base64(HMAC-SHA256(task_id + "." + timestamp, key)) as Kie documents."""
    mac = hmac.new(KEY.encode(), f"{TASK}.1750000000".encode(), hashlib.sha256).digest()
    assert sign(TASK, "1750000000", KEY) == base64.b64encode(mac).decode()


def test_good_signature_is_accepted() -> None:
    """A signature made with the key for this task and a fresh timestamp passes."""
    verify_signature(headers_for(TASK, int(NOW)), TASK, KEY, now=NOW)


def test_header_names_are_case_insensitive() -> None:
    """Header names match whatever their case, even in a plain dict."""
    good = headers_for(TASK, int(NOW))
    lowered = {k.lower(): v for k, v in good.items()}
    upper = {k.upper(): v for k, v in good.items()}
    verify_signature(lowered, TASK, KEY, now=NOW)
    verify_signature(upper, TASK, KEY, now=NOW)


@pytest.mark.parametrize(
    ("headers", "task_id", "key"),
    [
        (headers_for(TASK, int(NOW), key="other-key"), TASK, KEY),
        (headers_for("other-task", int(NOW)), TASK, KEY),
        ({"X-Webhook-Timestamp": str(int(NOW)), "X-Webhook-Signature": "AAAA"}, TASK, KEY),
    ],
    ids=["wrong-key", "other-task", "garbage"],
)
def test_wrong_signature_is_rejected(headers: dict[str, str], task_id: str, key: str) -> None:
    """A signature made with another key or for another task is rejected with HTTP 401."""
    with pytest.raises(CallbackRejected) as info:
        verify_signature(headers, task_id, key, now=NOW)
    assert info.value.http_status == 401
    assert "signature" in info.value.reason


@pytest.mark.parametrize("skew", [-301, 301, -10_000, 10_000])
def test_timestamp_outside_the_window_is_rejected(skew: int) -> None:
    """A correctly signed callback whose timestamp is more than 300 s off is a replay: rejected."""
    with pytest.raises(CallbackRejected) as info:
        verify_signature(headers_for(TASK, int(NOW) + skew), TASK, KEY, now=NOW)
    assert "window" in info.value.reason


@pytest.mark.parametrize("skew", [-300, 300, -1, 1])
def test_timestamp_inside_the_window_is_accepted(skew: int) -> None:
    """Timestamps up to the window away from ``now``, either way, are accepted."""
    verify_signature(headers_for(TASK, int(NOW) + skew), TASK, KEY, now=NOW)


def test_window_is_configurable() -> None:
    """A narrower window rejects what the default accepts."""
    headers = headers_for(TASK, int(NOW) - 60)
    verify_signature(headers, TASK, KEY, now=NOW)
    with pytest.raises(CallbackRejected):
        verify_signature(headers, TASK, KEY, now=NOW, window=30)


@pytest.mark.parametrize("drop", ["X-Webhook-Timestamp", "X-Webhook-Signature"])
def test_missing_signature_header_is_rejected(drop: str) -> None:
    """A callback missing either signature header is rejected with HTTP 401."""
    headers = headers_for(TASK, int(NOW))
    del headers[drop]
    with pytest.raises(CallbackRejected) as info:
        verify_signature(headers, TASK, KEY, now=NOW)
    assert (info.value.http_status, info.value.reason) == (401, "missing signature headers")


def test_non_integer_timestamp_is_rejected() -> None:
    """X-Webhook-Timestamp must be integer seconds."""
    headers = {"X-Webhook-Timestamp": "1750000000.5", "X-Webhook-Signature": "x"}
    with pytest.raises(CallbackRejected):
        verify_signature(headers, TASK, KEY, now=NOW)


def _callback_body(task_key: str = "task_id") -> bytes:
    return json.dumps(
        {"code": 200, "msg": "ok", "data": {"callbackType": "text", task_key: TASK, "data": []}}
    ).encode()


@pytest.mark.parametrize("task_key", ["task_id", "taskId"])
def test_parse_callback_at_verifies_then_parses(task_key: str) -> None:
    """With a key, a correctly signed callback (task_id or taskId) parses to a snapshot."""
    snapshot = parse_callback_at(
        headers_for(TASK, int(NOW)), _callback_body(task_key), hmac_key=KEY, now=NOW
    )
    assert (snapshot.task_id, snapshot.status) == (TASK, TaskStatus.TEXT_SUCCESS)


def test_parse_callback_at_rejects_bad_signature_only_when_a_key_is_set() -> None:
    """An unsigned callback is rejected when a key is configured and accepted otherwise."""
    with pytest.raises(CallbackRejected):
        parse_callback_at({}, _callback_body(), hmac_key=KEY, now=NOW)
    assert parse_callback_at({}, _callback_body(), hmac_key=None, now=NOW).task_id == TASK


@pytest.mark.parametrize(
    "body", [b"not json", b"\xff\xfe", b"[1]", b'"text"', b'{"code": 200, "data": {}}']
)
def test_parse_callback_at_rejects_unreadable_bodies_with_400(body: bytes) -> None:
    """A body that is not a JSON object, or has no task id, is rejected with HTTP 400."""
    for key in (None, KEY):
        with pytest.raises(CallbackRejected) as info:
            parse_callback_at(headers_for(TASK, int(NOW)), body, hmac_key=key, now=NOW)
        assert info.value.http_status == 400


# --- timing ---------------------------------------------------------------------------


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    """The backoff ceiling is base * 2**(attempt-1), capped; rand scales it (full jitter)."""
    policy = RetryPolicy(base=0.5, cap=20.0)
    assert [backoff_delay(n, policy, 1.0) for n in range(1, 8)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        20.0,
    ]
    assert backoff_delay(3, policy, 0.0) == 0.0
    assert backoff_delay(3, policy, 0.25) == 0.5


@settings(max_examples=300)
@given(st.integers(1, 100_000), st.floats(0, 1, exclude_max=True))
def test_backoff_stays_within_zero_and_cap(attempt: int, rand: float) -> None:
    """Every backoff is between 0 and the cap, however many attempts (no float overflow)."""
    policy = RetryPolicy(attempts=100_000)
    assert 0.0 <= backoff_delay(attempt, policy, rand) <= policy.cap


def test_retry_delay_prefers_retry_after_up_to_its_maximum() -> None:
    """Retry-After wins over backoff, capped at max_retry_after; other errors back off."""
    policy = RetryPolicy(max_retry_after=60.0)
    limited = RateLimitError(429, "slow down", retry_after=7.0)
    assert retry_delay(limited, 1, policy, 0.0) == 7.0
    huge = RateLimitError(429, "slow down", retry_after=3600.0)
    assert retry_delay(huge, 1, policy, 0.0) == 60.0
    bare = RateLimitError(429, "slow down")
    assert retry_delay(bare, 2, policy, 1.0) == backoff_delay(2, policy, 1.0)
    assert retry_delay(ServerError(500, "x"), 3, policy, 0.5) == backoff_delay(3, policy, 0.5)


def test_poll_interval_grows_with_age_and_shrinks_after_first() -> None:
    """Unjittered, the interval starts at initial, grows to maximum; after_first caps it."""
    policy = PollPolicy()
    assert poll_interval(Stage.PENDING, 0.0, policy, 0.5) == policy.initial
    assert poll_interval(Stage.TEXT, 10.0, policy, 0.5) == pytest.approx(2.0 + 0.12 * 10)
    assert poll_interval(Stage.TEXT, 1000.0, policy, 0.5) == policy.maximum
    assert poll_interval(Stage.FIRST, 1000.0, policy, 0.5) == policy.after_first
    assert poll_interval(Stage.PENDING, -50.0, policy, 0.5) == policy.initial


_policies = st.builds(
    PollPolicy,
    initial=st.floats(0.01, 30),
    growth=st.floats(0, 2),
    maximum=st.floats(0.01, 60),
    after_first=st.floats(0.01, 30),
    jitter=st.floats(0, 0.9),
    min_interval=st.floats(0.01, 2),
)


@settings(max_examples=300)
@given(
    st.sampled_from(list(Stage)),
    st.floats(-10, 1e6),
    _policies,
    st.floats(0, 1, exclude_max=True),
)
def test_poll_interval_bounds(stage: Stage, age: float, policy: PollPolicy, rand: float) -> None:
    """Polls are never closer than min_interval nor further than the (jittered) maximum."""
    delay = poll_interval(stage, age, policy, rand)
    ceiling = policy.maximum if stage < Stage.FIRST else min(policy.maximum, policy.after_first)
    assert policy.min_interval <= delay <= max(policy.min_interval, ceiling * (1 + policy.jitter))


@settings(max_examples=300)
@given(st.integers(0, 10_000), _policies, st.floats(0, 1, exclude_max=True))
def test_outage_interval_bounds(failures: int, policy: PollPolicy, rand: float) -> None:
    """Outage backoff stays between min_interval and outage_maximum."""
    delay = outage_interval(failures, policy, rand)
    assert policy.min_interval <= delay <= max(policy.min_interval, policy.outage_maximum)


def test_outage_interval_grows_with_failures() -> None:
    """Consecutive poll failures double the outage backoff until outage_maximum."""
    policy = PollPolicy(initial=2.0, outage_maximum=30.0)
    assert [outage_interval(n, policy, 1.0) for n in range(5)] == [2.0, 4.0, 8.0, 16.0, 30.0]
    assert outage_interval(3, policy, 0.0) == 8.0  # rand 0 halves it


@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40))
@settings(max_examples=300)
def test_record_info_query_round_trips_any_task_id(task_id: str) -> None:
    """The query built for a poll decodes to exactly the task id (Kie's hex ids as they are)."""
    from urllib.parse import parse_qs

    from kiemashup._core.protocol import record_info_query

    query = record_info_query(task_id)
    assert query.startswith("?taskId=")
    assert parse_qs(query[1:], keep_blank_values=True, strict_parsing=True) == {"taskId": [task_id]}
    assert record_info_query("8a1c0f3e9b7d4a2c") == "?taskId=8a1c0f3e9b7d4a2c"


def test_a_task_id_that_cannot_be_sent_is_a_value_error() -> None:
    """Empty, not a string, or holding bytes that are not UTF-8 (a lone surrogate)."""
    from kiemashup._core.protocol import check_task_id

    assert check_task_id("8a1c0f3e") == "8a1c0f3e"
    for bad in ("", None, 12, "ab\udcffcd"):
        with pytest.raises(ValueError, match="task_id must be"):
            check_task_id(bad)
