"""Bounded fuzz run over the parsers: only the SDK's typed errors ever escape.

A seeded generator mutates real-shaped record-info replies, callback payloads and
headers (dropping, renaming, retyping and nesting fields, truncating bytes) and feeds
them to the same parsers the client and receiver use, then 100 000 hostile callback
deliveries (unknown types, deep nesting, huge arrays, Unicode spaces in the signature
headers). 210 000 inputs in all.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from kiemashup import CallbackRejected, Stage, parse_callback
from kiemashup._core.callbacks import parse_callback_at, sign
from kiemashup._core.errors import KieError
from kiemashup._core.protocol import parse_envelope, parse_record_info

SEED = 20261125
RECORD_INFO: dict[str, Any] = {
    "taskId": "5c79be8e", "parentMusicId": "", "param": '{"prompt":"x"}',
    "response": {"taskId": "5c79be8e", "sunoData": [
        {"id": "e231", "audioUrl": "https://x.example/a.mp3", "streamAudioUrl": "https://x/s",
         "imageUrl": "https://x/i.jpeg", "prompt": "[Verse]", "modelName": "chirp-v5",
         "title": "T", "tags": "rock", "createTime": "2025-01-01 00:00:00", "duration": 198.44},
        {"id": "e232", "audioUrl": "", "duration": 1}]},
    "status": "FIRST_SUCCESS", "type": "GENERATE", "operationType": "generate",
    "errorCode": None, "errorMessage": None,
}  # fmt: skip
CALLBACK: dict[str, Any] = {
    "code": 200, "msg": "All generated successfully.",
    "data": {"callbackType": "complete", "task_id": "2fac9f72", "data": [
        {"id": "e231", "audio_url": "https://x/a.mp3", "source_audio_url": "https://x/s.mp3",
         "createTime": "2025-01-01 00:00:00", "duration": 198.44, "title": "Iron Man"}]},
}  # fmt: skip
WEIRD = [None, True, False, 0, -1, 2**70, 1.5, float("nan"), "", "x", "SUCCESS", [], {}, [None],
         {"a": 1}, "ü" * 3, "\x00"]  # fmt: skip


def mutate(value: Any, rng: random.Random, depth: int = 0) -> Any:
    """A random structural mutation of a JSON-like value."""
    roll = rng.random()
    if roll < 0.08 or depth > 6:
        return rng.choice(WEIRD)
    if isinstance(value, dict):
        out = dict(value)
        for key in list(out):
            r = rng.random()
            if r < 0.1:
                del out[key]
            elif r < 0.15:
                out[key.upper() if rng.random() < 0.5 else key + "_x"] = out.pop(key)
            elif r < 0.5:
                out[key] = mutate(out[key], rng, depth + 1)
        if rng.random() < 0.1:
            out[rng.choice(["extra", "status", "data", "code"])] = rng.choice(WEIRD)
        return out
    if isinstance(value, list):
        out_list = [mutate(v, rng, depth + 1) if rng.random() < 0.5 else v for v in value]
        if rng.random() < 0.2:
            out_list.append(rng.choice(WEIRD))
        return out_list
    return value if roll < 0.7 else rng.choice(WEIRD)


def as_bytes(value: Any, rng: random.Random) -> bytes:
    raw = json.dumps(value, allow_nan=True).encode()
    if rng.random() < 0.1:
        raw = raw[: rng.randrange(len(raw) + 1)]
    if rng.random() < 0.05:
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(32)))
    return raw


def test_record_info_fuzz() -> None:
    """40 000 mutated record-info replies: parsed or rejected with a KieError, nothing else."""
    rng = random.Random(SEED)
    outcomes = {"ok": 0, "rejected": 0}
    for _ in range(40_000):
        envelope = {
            "code": rng.choice([200, 200, 200, 401, 455, "200", None]),
            "msg": "m",
            "data": mutate(RECORD_INFO, rng),
        }
        body = as_bytes(mutate(envelope, rng) if rng.random() < 0.3 else envelope, rng)
        try:
            parse_record_info(
                parse_envelope(
                    rng.choice([200, 200, 429, 500]),
                    body,
                    retry_after=rng.choice([None, "1", "junk"]),
                )
            )
            outcomes["ok"] += 1
        except KieError:
            outcomes["rejected"] += 1
    assert outcomes["ok"] > 1000
    assert outcomes["rejected"] > 1000


def test_callback_fuzz() -> None:
    """40 000 mutated callback bodies, unsigned: parsed or CallbackRejected, nothing else."""
    rng = random.Random(SEED + 1)
    outcomes = {"ok": 0, "rejected": 0}
    for _ in range(40_000):
        body = as_bytes(mutate(CALLBACK, rng), rng)
        try:
            parse_callback_at({}, body, hmac_key=None, now=1_700_000_000)
            outcomes["ok"] += 1
        except KieError:
            outcomes["rejected"] += 1
    assert outcomes["ok"] > 1000
    assert outcomes["rejected"] > 1000


def test_signed_callback_header_fuzz() -> None:
    """30 000 signed deliveries with mutated headers: only valid signatures get through."""
    rng = random.Random(SEED + 2)
    key, now = "hmac-key", 1_700_000_000
    body = json.dumps(CALLBACK).encode()
    accepted = 0
    for i in range(30_000):
        ts = str(now + rng.choice([0, 1, -299, 301, -301, 10**6]))
        headers: dict[str, Any] = {
            "X-Webhook-Timestamp": ts,
            "X-Webhook-Signature": sign("2fac9f72", ts, key),
        }
        genuine = abs(int(ts) - now) <= 300
        r = rng.random()
        if r < 0.5:
            genuine = False
            target = rng.choice(["X-Webhook-Timestamp", "X-Webhook-Signature"])
            headers[target] = rng.choice(
                [
                    "",
                    "abc",
                    "1" * 300,
                    sign("other", ts, key),
                    sign("2fac9f72", ts, "wrong"),
                    "\u00e9",
                    str(i),
                ]
            )
            if rng.random() < 0.2:
                del headers[target]
        elif r < 0.6:
            headers = {k.lower(): v for k, v in headers.items()}  # case-insensitive names
        try:
            parse_callback_at(headers, body, hmac_key=key, now=now)
        except KieError:
            assert not genuine or headers.get("X-Webhook-Signature", "") == ""
            continue
        assert genuine
        accepted += 1
    assert accepted > 1000


KINDS = ["text", "first", "complete", "error", "failed", "Complete", "bogus", "complete ",
         "SUCCESS", "exception", "", " text", "text\u00a0", None, 7, [], {}]  # fmt: skip
SPACES = ["", " ", "\t", "\u00a0", "\u2003", "\u3000", "\u200b", "\ufeff", "\n", "\u0660"]


def hostile_body(rng: random.Random) -> bytes:
    """A callback body an attacker might send: odd types, deep nesting, huge arrays, junk."""
    roll = rng.random()
    if roll < 0.01:
        depth = rng.choice([50, 300, 5_000, 60_000])
        return b'{"data":' * depth + b"1" + b"}" * rng.choice([0, depth])
    if roll < 0.02:
        item = rng.choice([b"{}", b"[]", b"null", b'{"audio_url":"https://evil/x"}'])
        return (
            b'{"data":{"callbackType":"complete","task_id":"t","data":['
            + b",".join([item] * rng.choice([9, 500, 40_000]))
            + b"]}}"
        )
    payload = mutate(CALLBACK, rng) if rng.random() < 0.5 else json.loads(json.dumps(CALLBACK))
    if isinstance(payload, dict) and isinstance(payload.get("data"), dict):
        payload["data"]["callbackType"] = rng.choice(KINDS)
    return as_bytes(payload, rng)


def test_hostile_callback_fuzz() -> None:
    """100 000 hostile deliveries, signed or not: only CallbackRejected escapes, as a claim."""
    rng = random.Random(SEED + 3)
    key, now = "hmac-key", int(time.time())
    outcomes = {"claims": 0, "rejected": 0, "signed": 0}
    for _ in range(100_000):
        body = hostile_body(rng)
        stamp = str(now)

        def space() -> str:
            return rng.choice(SPACES) if rng.random() < 0.3 else ""

        headers = {
            "X-Webhook-Timestamp": space() + stamp + space(),
            "X-Webhook-Signature": space() + sign("2fac9f72", stamp, key) + space(),
        }
        hmac_key = rng.choice([None, key])
        try:
            snapshot = parse_callback(headers, body, hmac_key=hmac_key)
        except CallbackRejected:
            outcomes["rejected"] += 1
            continue
        # Whatever got through is a claim: never an outcome, never a URL.
        assert not snapshot.is_terminal
        assert not snapshot.failed
        assert snapshot.tracks == ()
        assert snapshot.stage <= Stage.FIRST
        outcomes["claims"] += 1
        outcomes["signed"] += hmac_key is not None
    assert outcomes["claims"] > 1000
    assert outcomes["signed"] > 1000
    assert outcomes["rejected"] > 1000
