"""Shared batches: one journal, several processes (kiemashup.redis, issue 14 point 5)."""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import sys
from pathlib import Path

import pytest
from redis_kit import RedisServer, redis_server
from redis_workers import KEY, request

from kiemashup import (
    CallbackReceiver,
    JournalError,
    MashupClient,
    PollPolicy,
    SubmitOutcomeUnknown,
)
from kiemashup.redis import RedisBackend
from kiemashup.testing import FakeKieServer, Fault, Timeline

__all__ = ["redis_server"]  # the fixture, imported for pytest

WORKERS = Path(__file__).with_name("redis_workers.py")
FAST = PollPolicy(initial=0.05, maximum=0.2, after_first=0.1)


async def start_batch(
    server: FakeKieServer, redis_url: str, count: int, lease: float
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKERS),
        "batch",
        server.url,
        redis_url,
        "pairs",
        str(count),
        str(lease),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def created_per_request(server: FakeKieServer) -> collections.Counter[str]:
    """How many tasks the fake created for each request (told apart by prompt)."""
    return collections.Counter(str(task.payload["prompt"]) for task in server.tasks.values())


async def test_two_workers_split_a_batch_and_survive_a_sigkill(redis_server: RedisServer) -> None:
    """Two processes run one journal; one is SIGKILLed mid-run: the other finishes its items
    after the lease, no item is created twice, and a rerun reads every result without I/O."""
    count, lease = 12, 1.0
    timeline = Timeline.success(text=0.2, first=0.4, complete=0.8)
    async with FakeKieServer(api_key=KEY, default_timeline=timeline) as server:
        doomed = await start_batch(server, redis_server.url, count, lease)
        survivor = await start_batch(server, redis_server.url, count, lease)
        assert doomed.stdout is not None
        async with asyncio.timeout(20):
            first = await doomed.stdout.readline()  # it has finished one item, holds others
        assert json.loads(first)["error"] is None
        doomed.send_signal(signal.SIGKILL)
        await doomed.wait()
        yielded = [
            json.loads(first),
            *(json.loads(x) for x in (await doomed.stdout.read()).splitlines()),
        ]
        async with asyncio.timeout(40):
            out, err = await survivor.communicate()
        assert survivor.returncode == 0, err.decode()[-2000:]
        lines = [json.loads(line) for line in out.decode().splitlines()]
        survived = lines[:-1]
        created = created_per_request(server)
        assert max(created.values()) == 1  # no item was ever created twice
        assert len(survived) + len(yielded) == count  # each item yielded by one process
        handled = {line["index"] for line in survived} | {line["index"] for line in yielded}
        assert handled == set(range(count))  # nothing lost: the survivor took the rest
        unknown = [line for line in survived if line["error"] == "SubmitOutcomeUnknown"]
        assert all(line["error"] in (None, "SubmitOutcomeUnknown") for line in survived)
        submits = server.count("submit")

        # A rerun, in this process: every result is read back, nothing is sent again.
        async with (
            RedisBackend(redis_server.url, api_key=KEY) as backend,
            MashupClient(
                api_key=KEY, base_url=server.url, poll_policy=FAST, backend=backend
            ) as client,
        ):
            requests = [request(i) for i in range(count)]
            journal = backend.journal("pairs", lease=lease)
            async with client.run_batch(requests, journal=journal) as items:
                rerun = [item async for item in items]
        assert server.count("submit") == submits
        assert sorted(item.index for item in rerun) == list(range(count))
        done = [item for item in rerun if item.ok]
        assert all(item.from_journal for item in done)
        assert len(done) + len(unknown) >= count - 3  # at most the killed one's in-flight items
        assert all(isinstance(item.error, SubmitOutcomeUnknown) for item in rerun if not item.ok)


async def test_a_batch_on_a_shared_journal_in_one_process(redis_server: RedisServer) -> None:
    """One process on a shared journal: every item done once; a rerun replays without I/O."""
    async with (
        FakeKieServer(api_key=KEY, default_timeline=Timeline.success()) as server,
        RedisBackend(redis_server.url, api_key=KEY) as backend,
        MashupClient(api_key=KEY, base_url=server.url, poll_policy=FAST, backend=backend) as client,
    ):
        requests = [request(i) for i in range(5)]
        async with client.run_batch(requests, journal=backend.journal("one")) as items:
            first = [item async for item in items]
        assert sorted(item.index for item in first) == list(range(5))
        assert all(item.ok and not item.from_journal for item in first)
        polls = server.count("record-info")
        async with client.run_batch(requests, journal=backend.journal("one")) as items:
            again = [item async for item in items]
        assert all(item.ok and item.from_journal for item in again)
        assert server.count("submit") == 5
        assert server.count("record-info") == polls


async def test_journal_writes_fail_loudly_when_redis_is_gone(redis_server: RedisServer) -> None:
    """Redis lost before a submit: the intent write fails with JournalError and nothing is sent."""
    async with (
        FakeKieServer(api_key=KEY, default_timeline=Timeline.success()) as server,
        RedisBackend(redis_server.url, api_key=KEY) as backend,
    ):
        journal = backend.journal("lost")
        await journal.open()
        item = ("f" * 64, 0)
        assert await journal.claim(item) == "mine"
        redis_server.kill()
        with pytest.raises(JournalError, match="intent"):
            await journal.append(item, 0, "intent", key="k" + "x" * 16)
        assert server.count("submit") == 0
        await journal.aclose()


async def test_an_unknown_submit_is_recovered_by_its_key_through_redis(
    redis_server: RedisServer,
) -> None:
    """A shared-journal batch whose submit reply is lost finds the task by its callback key,
    received by a receiver in another process, and never submits the item again."""
    timeline = Timeline.success(text=0.2, first=0.4, complete=0.6)
    async with (
        FakeKieServer(api_key=KEY, default_timeline=timeline) as server,
        RedisBackend(redis_server.url, api_key=KEY) as elsewhere,
        RedisBackend(redis_server.url, api_key=KEY) as backend,
        CallbackReceiver(port=0, backend=elsewhere) as receiver,
        MashupClient(
            api_key=KEY,
            base_url=server.url,
            poll_policy=FAST,
            backend=backend,
            callback_url=receiver.url,
        ) as client,
    ):
        server.inject(Fault("submit", "drop_after_create"))
        requests = [request(i) for i in range(3)]
        journal = backend.journal("recovering")
        async with client.run_batch(requests, journal=journal, recover_wait=10) as items:
            results = [item async for item in items]
        assert all(item.ok for item in results), [item.error for item in results]
        assert server.count("submit") == 3  # the lost reply's item was not sent again
        assert server.creations == 3
