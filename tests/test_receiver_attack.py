"""The callback receiver under attack: forgeries refused and counted, genuine callbacks still flow.

tests/test_receiver.py and tests/test_callbacks_e2e.py pin each kind of forgery one
at a time; here they come all at once (a loopback flood of ~1 000 bad requests per
second), or slowly (bodies dripped a byte at a time), while genuine callbacks from
FakeKieServer must still wake their handles. Every forged request is accounted
for: ``receiver.rejected`` (plus ``receiver.replayed`` for replays) equals the
number sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest_asyncio

from kiemashup import (
    CallbackReceiver,
    MashupClient,
    MashupRequest,
    PollPolicy,
    RateLimits,
    RetryPolicy,
    Stage,
    TaskHandle,
    TaskStatus,
    Timeouts,
)
from kiemashup.testing import FakeKieServer, Timeline, callback_payload, signed_headers

API_KEY = "sk-attack-51c2"
HMAC_KEY = "whk-attack-77e0"
#: Callbacks carry the news; a safety-net poll only after 30 s of silence.
HYBRID = PollPolicy(initial=0.05, growth=0.0, maximum=0.1, after_first=0.1, callback_grace=30.0)
QUICK = Timeline.success(text=0.05, first=0.1, complete=0.15)
ENDLESS = Timeline.success(text=600.0, first=700.0, complete=800.0)
FLOOD = 3000  # bad requests in the flood
FLOOD_RATE = 1000.0  # per second, at most
BODY_TIMEOUT = 1.0


@pytest_asyncio.fixture
async def server() -> AsyncIterator[FakeKieServer]:
    """A fake Kie that signs its callbacks; tasks finish in 150 ms unless scripted."""
    async with FakeKieServer(
        api_key=API_KEY,
        webhook_hmac_key=HMAC_KEY,
        default_timeline=QUICK,
        creation_limit=1000,
    ) as fake:
        yield fake


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    """A signed receiver that gives a body at most BODY_TIMEOUT seconds to arrive."""
    async with CallbackReceiver(port=0, hmac_key=HMAC_KEY, body_timeout=BODY_TIMEOUT) as started:
        yield started


@pytest_asyncio.fixture
async def client(server: FakeKieServer, receiver: CallbackReceiver) -> AsyncIterator[MashupClient]:
    async with MashupClient(
        api_key=API_KEY,
        base_url=server.url,
        receiver=receiver,
        poll_policy=HYBRID,
        retry_policy=RetryPolicy(attempts=3, base=0.01, cap=0.05),
        rate_limits=RateLimits(
            submits_per_window=1000, submit_window=1.0, requests_per_second=2000
        ),
        timeouts=Timeouts(connect=2.0, read=5.0, total=10.0),
    ) as made:
        yield made


def request_(n: int) -> MashupRequest:
    return MashupRequest(
        ("https://example.com/a.mp3", "https://example.com/b.mp3"), prompt=f"attack test {n}"
    )


def polls(server: FakeKieServer, handle: TaskHandle) -> int:
    return len(server.tasks[handle.task_id].poll_times)


async def slow_drip(url: str, stop: asyncio.Event) -> int:
    """POST a signed-looking body one byte every 50 ms until ``stop``; the HTTP status answered."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        body = b'{"code": 200, "data": {"callbackType": "complete", "task_id": "x"}}' * 20
        head = (
            f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode())
        await writer.drain()
        for byte in body:
            if stop.is_set() or reader.at_eof():
                break
            writer.write(bytes([byte]))
            try:
                await writer.drain()
            except ConnectionError:
                break
            try:
                async with asyncio.timeout(0.05):
                    line = await reader.readline()  # the receiver gave up on us
                if line:
                    return int(line.split()[1])
            except TimeoutError:
                pass
        line = await reader.readline()
        return int(line.split()[1])
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_slow_drip_bodies_do_not_block_genuine_callbacks(
    client: MashupClient, server: FakeKieServer, receiver: CallbackReceiver
) -> None:
    """While 20 bodies drip in, a genuine callback still wakes its handle; the drips get 408."""
    stop = asyncio.Event()
    drips = [asyncio.create_task(slow_drip(receiver.url, stop)) for _ in range(20)]
    await asyncio.sleep(0.1)  # every drip is open and stalled
    handle = await client.submit(request_(0))
    async with asyncio.timeout(BODY_TIMEOUT / 2):  # sooner than any drip is cut off
        text = await handle.wait(Stage.TEXT)
    assert text.stage >= Stage.TEXT
    assert polls(server, handle) == 0  # woken by the text callback, not by a poll
    assert not any(drip.done() for drip in drips)
    async with asyncio.timeout(BODY_TIMEOUT + 5):
        statuses = await asyncio.gather(*drips)
    stop.set()
    assert statuses == [408] * 20
    async with asyncio.timeout(5):
        final = await handle.wait()
    assert final.status is TaskStatus.SUCCESS
    assert receiver.rejected == 20


class Attacker:
    """Builds the mix of bad deliveries, each labelled with what it is and what it must get."""

    def __init__(self, receiver: CallbackReceiver, targets: list[Any], rng: random.Random) -> None:
        self.receiver = receiver
        self.targets = targets  # FakeTasks nobody may advance
        self.rng = rng
        self.sent: Counter[str] = Counter()
        self.answers: dict[str, Counter[int]] = {}
        self.replay: tuple[bytes, dict[str, str]] | None = None

    def make(self) -> tuple[str, str, bytes, dict[str, str]]:
        """(kind, url, body, headers) of one bad delivery."""
        rng = self.rng
        task, other = rng.sample(self.targets, 2)
        body = json.dumps(callback_payload(task, rng.choice(("first", "complete", "error"))))
        url = self.receiver.url
        now = int(time.time())
        kind = rng.choice(
            (
                "wrong_key",
                "other_task",
                "skew_past",
                "skew_future",
                "unsigned",
                "wrong_token",
                "no_token",
                "not_json",
                "oversized",
                "replay",
            )
        )
        headers = signed_headers(task.task_id, HMAC_KEY)
        if kind == "wrong_key":
            headers = signed_headers(task.task_id, "guessed")
        elif kind == "other_task":
            headers = signed_headers(other.task_id, HMAC_KEY)
        elif kind == "skew_past":
            headers = signed_headers(task.task_id, HMAC_KEY, timestamp=now - 301 - rng.randrange(9))
        elif kind == "skew_future":
            # Well past the window: the flood may take seconds to send it, and a future
            # timestamp only gets closer to the receiver's clock while it waits.
            headers = signed_headers(task.task_id, HMAC_KEY, timestamp=now + 330 + rng.randrange(9))
        elif kind == "unsigned":
            headers = {}
        elif kind == "wrong_token":
            url = url.rsplit("/", 1)[0] + "/" + rng.choice(("guess", "x" * 32, "..%2f"))
        elif kind == "no_token":
            url = url.rsplit("/", 1)[0] + "/"
        elif kind == "not_json":
            body = rng.choice(('{"code": 200, "data": ', "<xml/>", "\x00\xff", "[1, 2]"))
        elif kind == "oversized":
            body = body + " " * (256 * 1024)
        else:
            assert self.replay is not None
            raw, headers = self.replay
            return kind, url, raw, headers
        return kind, url, body.encode("utf-8", "surrogateescape"), headers

    async def flood(self, http: aiohttp.ClientSession, count: int, workers: int) -> None:
        """Send ``count`` bad deliveries from ``workers`` connections, at most FLOOD_RATE/s."""
        start = time.monotonic()
        numbers = iter(range(count))

        async def worker() -> None:
            for n in numbers:
                delay = start + n / FLOOD_RATE - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                kind, url, body, headers = self.make()
                sent = {"Content-Type": "application/json", **headers}
                async with http.post(url, data=body, headers=sent) as response:
                    await response.read()
                self.sent[kind] += 1
                self.answers.setdefault(kind, Counter())[response.status] += 1

        await asyncio.gather(*(worker() for _ in range(workers)))


EXPECTED = {
    "wrong_key": {401},
    "other_task": {401},
    "skew_past": {401},
    "skew_future": {401},
    "unsigned": {401},
    "wrong_token": {404},
    "no_token": {404},
    "not_json": {400},
    "oversized": {413},
    "replay": {200},  # answered like a duplicate (Kie must not retry it) and handed to nobody
}


async def test_a_flood_of_forgeries_is_refused_while_genuine_callbacks_flow(
    client: MashupClient, server: FakeKieServer, receiver: CallbackReceiver
) -> None:
    """3 000 bad requests at ~1 000/s: all refused and counted; 30 genuine tasks still finish."""
    rng = random.Random(20240611)
    server.script(*([ENDLESS] * 10))
    targets = [await client.submit(request_(n)) for n in range(10)]
    fakes = [server.tasks[handle.task_id] for handle in targets]
    # One genuine, signed "text" delivery for the first target; the flood replays it.
    replayed = json.dumps(callback_payload(fakes[0], "text")).encode()
    replay_headers = signed_headers(fakes[0].task_id, HMAC_KEY)
    assert await server.send_forged_callback(receiver.url, replayed, replay_headers) == 200
    assert targets[0].latest is not None
    assert targets[0].latest.stage is Stage.TEXT
    attacker = Attacker(receiver, fakes, rng)
    attacker.replay = (replayed, replay_headers)
    accepted_before = receiver.accepted

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as http:
        flood = asyncio.create_task(attacker.flood(http, FLOOD, workers=16))
        await asyncio.sleep(0.3)  # the flood is on
        genuine: list[TaskHandle] = []
        for n in range(30):
            genuine.append(await client.submit(request_(100 + n)))
            await asyncio.sleep(0.05)
        async with asyncio.timeout(10):
            firsts = await asyncio.gather(*(handle.wait(Stage.FIRST) for handle in genuine))
        still_flooding = not flood.done()
        async with asyncio.timeout(60):
            await flood
    async with asyncio.timeout(10):
        finals = await asyncio.gather(*(handle.wait() for handle in genuine))

    assert still_flooding, "the genuine callbacks came after the flood, not during it"
    assert all(first.stage >= Stage.FIRST for first in firsts)
    assert {final.status for final in finals} == {TaskStatus.SUCCESS}
    # Genuine FIRST came by callback, not by the safety-net poll (30 s away): the
    # only polls are the ones confirming the FIRST waited for and the final callback.
    assert all(polls(server, handle) <= 2 for handle in genuine)
    # 100% of the flood refused, each with the status its kind deserves ...
    assert sum(attacker.sent.values()) == FLOOD
    for kind, answers in attacker.answers.items():
        assert set(answers) <= EXPECTED[kind], (kind, answers)
    replays = attacker.sent["replay"]
    assert receiver.rejected == FLOOD - replays
    assert receiver.replayed == replays
    # ... and not one advanced a task: the targets are where the genuine deliveries left them.
    assert targets[0].latest.stage is Stage.TEXT
    for handle in targets[1:]:
        assert handle.latest is not None
        assert handle.latest.stage is Stage.PENDING
        assert polls(server, handle) == 0  # no forged "complete" even earned a confirmation poll
    genuine_deliveries = sum(
        1
        for delivery in server.callbacks_sent
        if delivery.ok and delivery.task_id in {handle.task_id for handle in genuine}
    )
    assert receiver.accepted - accepted_before == genuine_deliveries
