"""Callbacks on any replica and one poll per task (kiemashup.redis, issue 14 points 2 and 4)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest
from redis_kit import RedisServer, free_port, redis_server
from redis_workers import KEY, request

from kiemashup import (
    CallbackReceiver,
    MashupClient,
    MashupRequest,
    PollPolicy,
    Stage,
    SubmitOutcomeUnknown,
    Timeouts,
)
from kiemashup._core.state import make_snapshot
from kiemashup._redis.callbacks import decode, encode
from kiemashup.redis import RedisBackend
from kiemashup.testing import FakeKieServer, Fault, Timeline

__all__ = ["redis_server"]  # the fixture, imported for pytest

WORKERS = Path(__file__).with_name("redis_workers.py")
REQUEST = MashupRequest(("https://example.com/a.mp3", "https://example.com/b.mp3"), prompt="p")
#: Polls that would never come within a test: only callbacks (and their confirmations) move.
QUIET = PollPolicy(
    initial=30.0, maximum=30.0, after_first=30.0, callback_probe=30.0, callback_grace=30.0
)


def quiet_client(server: FakeKieServer, backend: RedisBackend, **options: object) -> MashupClient:
    return MashupClient(
        api_key=KEY,
        base_url=server.url,
        poll_policy=QUIET,
        timeouts=Timeouts(connect=2.0, read=5.0, total=10.0),
        backend=backend,
        **options,  # type: ignore[arg-type]
    )


def test_messages_are_json_round_trips() -> None:
    """A snapshot crosses Redis as JSON and comes back equal, its source naming the kind."""
    snapshot = make_snapshot("t1", "TEXT_SUCCESS", source="callback")
    kind, back, key = decode(encode("callback", snapshot, "k123"))
    assert (kind, key) == ("callback", "k123")
    assert (back.task_id, back.status, back.stage, back.source) == (
        "t1",
        snapshot.status,
        Stage.TEXT,
        "callback",
    )
    assert json.loads(encode("poll", snapshot))["kind"] == "poll"
    with pytest.raises(ValueError, match="not a kiemashup message"):
        decode(b'{"kind": "callback"}')


async def test_callback_received_elsewhere_wakes_a_handle(redis_server: RedisServer) -> None:
    """A receiver on one backend wakes a client on another: news at once, final after a poll."""
    timeline = Timeline.success(text=0.3, first=0.5, complete=0.7)
    async with (
        FakeKieServer(api_key=KEY, default_timeline=timeline) as server,
        RedisBackend(redis_server.url, api_key=KEY) as receiving_side,
        RedisBackend(redis_server.url, api_key=KEY) as waiting_side,
        CallbackReceiver(port=0, backend=receiving_side) as receiver,
        quiet_client(server, waiting_side, callback_url=receiver.url) as client,
    ):
        handle = await client.submit(request(1))
        async with asyncio.timeout(10):
            snapshot = await handle.wait(Stage.COMPLETE)
        assert snapshot.stage is Stage.COMPLETE
        assert snapshot.source == "poll"  # the final stage was confirmed by a poll
        assert receiver.accepted >= 3
        assert server.count("record-info") == 1  # that confirmation, and nothing else


async def test_callback_before_anyone_waits_is_kept(redis_server: RedisServer) -> None:
    """A callback for a task no process knows yet is kept, so a late handle still hears it."""
    async with (
        FakeKieServer(api_key=KEY, default_timeline=Timeline.success(60, 70, 80)) as server,
        RedisBackend(redis_server.url, api_key=KEY) as backend,
    ):
        async with MashupClient(api_key=KEY, base_url=server.url) as plain:
            task_id = (await plain.submit(REQUEST)).task_id  # PENDING for a minute
        # TEXT: the one stage a callback may bring on its own (FIRST waits for a poll).
        await backend.publish(make_snapshot(task_id, "TEXT_SUCCESS", source="callback"), None)
        async with quiet_client(server, backend, callback_url="http://127.0.0.1:9/x") as client:
            handle = client.task(task_id)  # re-attached: polled at once, which sees PENDING
            async with asyncio.timeout(5):
                snapshot = await handle.wait(Stage.TEXT)
        # Only the kept callback can have brought TEXT (the server says PENDING).
        assert (snapshot.stage, snapshot.source) == (Stage.TEXT, "callback")
        kept = await backend.redis.lrange(backend.keys.kept(task_id), 0, -1)
        assert len(kept) == 1
        assert 0 < await backend.redis.pttl(backend.keys.kept(task_id)) <= 600_000


async def start_worker(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKERS),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def first_line(proc: asyncio.subprocess.Process) -> dict[str, object]:
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        line = await proc.stdout.readline()
    if not line:
        _, err = await proc.communicate()
        pytest.fail(err.decode()[-2000:])
    result: dict[str, object] = json.loads(line)
    return result


async def last_line(proc: asyncio.subprocess.Process) -> dict[str, object]:
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    result: dict[str, object] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def test_receiver_process_wakes_two_client_processes(redis_server: RedisServer) -> None:
    """A receiver process wakes two client processes; each poll serves both processes."""
    timeline = Timeline.success(text=2.5, first=3.0, complete=3.5)  # after the clients start
    receiver = await start_worker("receive", redis_server.url, str(free_port()), "tok" * 8, "25")
    try:
        url = str((await first_line(receiver))["ready"])
        async with (
            FakeKieServer(api_key=KEY, default_timeline=timeline) as server,
            MashupClient(api_key=KEY, base_url=server.url, callback_url=url) as submitter,
        ):
            tasks = [(await submitter.submit(request(i))).task_id for i in range(2)]
            waiters = [
                await start_worker("wait", server.url, redis_server.url, url, *tasks)
                for _ in range(2)
            ]
            results = [await last_line(proc) for proc in waiters]
            polls = server.count("record-info")
    finally:
        receiver.terminate()
        await receiver.communicate()
    assert [r["stages"] for r in results] == [["COMPLETE", "COMPLETE"]] * 2
    # Per task: the first look of a handle made from an id, and the confirmation of its
    # final callback -- each polled by one process for both (unshared, it would be 8).
    assert polls <= 2 * len(tasks)
    assert sum(int(str(r["requests"])) for r in results) == polls


async def test_a_dead_poll_holder_is_replaced(redis_server: RedisServer) -> None:
    """A lease held by a client that no longer polls lapses; another polls within one interval."""
    fast = PollPolicy(initial=0.1, maximum=0.5, after_first=0.1)
    async with (
        FakeKieServer(api_key=KEY, default_timeline=Timeline.success()) as server,
        RedisBackend(redis_server.url, api_key=KEY) as backend,
    ):
        async with MashupClient(api_key=KEY, base_url=server.url) as plain:
            task_id = (await plain.submit(request(7))).task_id
        # A process that took the lease and died: its lease is still there.
        await backend.redis.set(backend.keys.poll_lease(task_id), b"dead", px=500)
        async with MashupClient(
            api_key=KEY, base_url=server.url, poll_policy=fast, backend=backend
        ) as client:
            async with asyncio.timeout(5):
                snapshot = await client.task(task_id).wait(Stage.COMPLETE)
        assert snapshot.stage is Stage.COMPLETE
        assert await backend.redis.get(backend.keys.poll_lease(task_id)) != b"dead"


async def test_recover_finds_a_task_from_a_keyed_callback_received_elsewhere(
    redis_server: RedisServer,
) -> None:
    """A submit of unknown outcome from a process without a receiver is recovered by a
    client of yet another process: its key rode in the callback URL to a receiver elsewhere."""
    timeline = Timeline.success(text=0.2, first=0.4, complete=0.6)
    async with (
        FakeKieServer(api_key=KEY, default_timeline=timeline) as server,
        RedisBackend(redis_server.url, api_key=KEY) as receiving_side,
        RedisBackend(redis_server.url, api_key=KEY) as submitting_side,
        RedisBackend(redis_server.url, api_key=KEY) as recovering_side,
        CallbackReceiver(port=0, backend=receiving_side) as receiver,
        quiet_client(server, submitting_side, callback_url=receiver.url) as lost,
    ):
        server.inject(Fault("submit", "drop_after_create"))
        with pytest.raises(SubmitOutcomeUnknown) as info:
            await lost.submit(request(5))
        assert info.value.key
        async with quiet_client(server, recovering_side, callback_url=receiver.url) as client:
            async with asyncio.timeout(10):
                handle = await client.recover(info.value)
                snapshot = await handle.wait(Stage.COMPLETE)
        sent_to = next(iter(server.tasks.values())).payload["callBackUrl"]
        assert sent_to == f"{receiver.url}/{info.value.key}"
        assert handle.task_id in server.tasks
        assert snapshot.stage is Stage.COMPLETE
        assert server.count("submit") == 1  # found, never sent again


async def test_when_the_polling_process_dies_another_takes_over(redis_server: RedisServer) -> None:
    """Two processes wait on one task; the one holding its poll lease is SIGKILLed, and the
    other takes the lease over and sees the task complete."""
    timeline = Timeline.success(text=1.0, first=2.0, complete=3.0)
    async with (
        FakeKieServer(api_key=KEY, default_timeline=timeline) as server,
        RedisBackend(redis_server.url, api_key=KEY) as backend,
    ):
        async with MashupClient(api_key=KEY, base_url=server.url) as plain:
            task_id = (await plain.submit(request(8))).task_id
        procs = [await start_worker("follow", server.url, redis_server.url, task_id) for _ in "ab"]
        ids = [str((await first_line(proc))["ready"]) for proc in procs]
        lease = backend.keys.poll_lease(task_id)
        holder = None
        for _ in range(200):  # the first poll takes the lease
            holder = await backend.redis.get(lease)
            if holder is not None:
                break
            await asyncio.sleep(0.05)
        assert holder is not None
        doomed = ids.index(holder.decode())
        polls_before = server.count("record-info")
        procs[doomed].send_signal(signal.SIGKILL)
        await procs[doomed].wait()
        result = await last_line(procs[1 - doomed])
        assert result["stage"] == "COMPLETE"
        assert int(str(result["requests"])) >= 1  # it polled once the lease was its own
        assert server.count("record-info") > polls_before
