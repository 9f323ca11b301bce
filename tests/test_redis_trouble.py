"""Redis trouble mid-run (kiemashup.redis, issue 14 point 6): nothing is lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
from redis_kit import RedisServer, redis_server
from redis_workers import KEY, request

from kiemashup import CallbackReceiver, MashupClient, PollPolicy, Stage, Timeouts
from kiemashup._core.state import make_snapshot
from kiemashup.redis import RedisBackend
from kiemashup.testing import FakeKieServer, Timeline

__all__ = ["redis_server"]  # the fixture, imported for pytest

FAST = PollPolicy(initial=0.05, maximum=0.2, after_first=0.1)


def make_client(server: FakeKieServer, backend: RedisBackend, **options: object) -> MashupClient:
    settings: dict[str, object] = {
        "api_key": KEY,
        "base_url": server.url,
        "poll_policy": FAST,
        "timeouts": Timeouts(connect=2.0, read=5.0, total=10.0),
        "backend": backend,
    }
    settings.update(options)
    return MashupClient(**settings)  # type: ignore[arg-type]


async def test_waits_keep_working_by_polling_without_redis(redis_server: RedisServer) -> None:
    """Redis lost while a handle waits: the wait ends by the client's own polls."""
    timeline = Timeline.success(text=0.2, first=0.4, complete=0.6)
    async with (
        FakeKieServer(api_key=KEY, default_timeline=timeline) as server,
        RedisBackend(redis_server.url, api_key=KEY) as backend,
        make_client(server, backend) as client,
    ):
        handle = await client.submit(request(1))
        redis_server.kill()
        async with asyncio.timeout(10):
            snapshot = await handle.wait(Stage.COMPLETE)
        assert snapshot.stage is Stage.COMPLETE


async def test_submits_wait_for_redis_then_resume(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis lost: a submit waits for the shared window (never alone), sends once it is back."""
    async with (
        FakeKieServer(api_key=KEY, default_timeline=Timeline.success()) as server,
        RedisBackend(redis_server.url, api_key=KEY) as backend,
        make_client(server, backend) as client,
    ):
        redis_server.kill()
        with caplog.at_level(logging.WARNING, logger="kiemashup.redis"):
            submit = asyncio.ensure_future(client.submit(request(2)))
            await asyncio.sleep(0.5)
            assert not submit.done()
            assert server.count("submit") == 0  # it never paces itself alone
            redis_server.start()
            async with asyncio.timeout(10):
                handle = await submit
        assert handle.task_id in server.tasks
        assert "unreachable" in caplog.text
        assert "is back" in caplog.text


async def test_callbacks_resume_when_redis_returns(redis_server: RedisServer) -> None:
    """After Redis comes back, the subscription is renewed and callbacks arrive again."""
    slow = Timeline.success(text=60.0, first=61.0, complete=62.0)  # polls find it PENDING
    async with (
        FakeKieServer(api_key=KEY, default_timeline=slow) as server,
        RedisBackend(redis_server.url, api_key=KEY) as backend,
        make_client(server, backend, poll_policy=PollPolicy(initial=30, maximum=30)) as client,
    ):
        async with MashupClient(api_key=KEY, base_url=server.url) as plain:
            task_id = (await plain.submit(request(4))).task_id
        handle = client.task(task_id)
        redis_server.kill()
        await asyncio.sleep(0.3)
        redis_server.start()
        waiting = asyncio.ensure_future(handle.wait(Stage.TEXT))
        async with asyncio.timeout(10):
            while not waiting.done():  # published until the resubscribed client hears it
                with contextlib.suppress(Exception):  # its own connection reconnects too
                    await backend.publish(
                        make_snapshot(task_id, "TEXT_SUCCESS", source="callback"), None
                    )
                await asyncio.sleep(0.1)
        assert (await waiting).stage is Stage.TEXT


async def test_receiver_answers_kie_when_redis_is_gone(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver whose Redis is gone still answers 200 and logs that others will poll."""
    timeline = Timeline.success(text=0.1, first=0.2, complete=0.3)
    async with (
        FakeKieServer(api_key=KEY, default_timeline=timeline) as server,
        RedisBackend(redis_server.url, api_key=KEY) as backend,
        CallbackReceiver(port=0, backend=backend) as receiver,
    ):
        redis_server.kill()
        async with MashupClient(
            api_key=KEY, base_url=server.url, receiver=receiver, poll_policy=FAST
        ) as client:
            with caplog.at_level(logging.WARNING, logger="kiemashup.receiver"):
                handle = await client.submit(request(3))
                async with asyncio.timeout(10):
                    await handle.wait(Stage.COMPLETE)
        assert receiver.accepted >= 1
        assert receiver.rejected == 0
        assert "not published to the backend" in caplog.text
