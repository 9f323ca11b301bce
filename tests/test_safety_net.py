"""The safety net: with a receiver and the default PollPolicy, dead callbacks are noticed.

A task whose callbacks never come is probed once its text callback is overdue
(``PollPolicy.callback_probe``, 15 s); a probe that finds it ahead of its callbacks
logs one WARNING naming the callback URL (its secret token cut short) and sends
every task whose callbacks are overdue back to normal polling.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from conftest import TEST_API_KEY

from kiemashup import (
    CallbackReceiver,
    MashupClient,
    MashupRequest,
    RateLimits,
    Stage,
    TaskHandle,
)
from kiemashup._client import redact_url
from kiemashup.testing import CallbackFaults, FakeKieServer, Timeline

HMAC_KEY = "whk-safety-net-51e0"
SIX_SECONDS = Timeline.success(text=2.0, first=4.0, complete=6.0)
#: Creations are not what is under test: let 50 submits go at once on both sides.
NO_PACING = RateLimits(submits_per_window=1000, submit_window=1.0)


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    async with CallbackReceiver(port=0, hmac_key=HMAC_KEY) as started:
        yield started


async def timed_submit(client: MashupClient, request: MashupRequest) -> tuple[float, TaskHandle]:
    """(when the submit began, its handle)."""
    started = asyncio.get_running_loop().time()
    return started, await client.submit(request)


async def finish(started: float, handle: TaskHandle) -> float:
    """Wait for COMPLETE (20 s at most); the seconds since the submit began."""
    async with asyncio.timeout(20):
        done = await handle.wait()
    assert done.stage is Stage.COMPLETE
    return asyncio.get_running_loop().time() - started


async def run(
    receiver: CallbackReceiver,
    request: MashupRequest,
    faults: CallbackFaults | list[CallbackFaults],
    n: int,
) -> tuple[list[float], dict[str, Any]]:
    """``n`` tasks of 6 s submitted at once (split evenly over ``faults``, if several).

    Returns the seconds each took from submit to COMPLETE, and what the server saw.
    """
    groups = faults if isinstance(faults, list) else [faults]
    async with FakeKieServer(
        api_key=TEST_API_KEY,
        webhook_hmac_key=HMAC_KEY,
        default_timeline=SIX_SECONDS,
        creation_limit=1000,
        creation_window=1.0,
    ) as server:
        async with MashupClient(
            TEST_API_KEY, base_url=server.url, receiver=receiver, rate_limits=NO_PACING
        ) as client:
            waits = []
            for group in groups:  # faults apply to the tasks created while they are set
                server.callback_faults = group
                submitted = await asyncio.gather(
                    *(timed_submit(client, request) for _ in range(n // len(groups)))
                )
                waits.extend(asyncio.ensure_future(finish(*each)) for each in submitted)
            took = await asyncio.gather(*waits)
        seen = {
            "outcomes": [d.outcome for d in server.callbacks_sent],
            "polls": [len(t.poll_times) for t in server.tasks.values()],
        }
        return took, seen


@pytest.mark.slow
async def test_all_callbacks_dropped_fifty_six_second_tasks_finish_within_20_s(
    receiver: CallbackReceiver, mashup_request: MashupRequest, caplog: Any
) -> None:
    """Every callback lost: each task still completes within 20 s, and one WARNING says why."""
    caplog.set_level(logging.INFO, logger="kiemashup")
    took, seen = await run(receiver, mashup_request, CallbackFaults(drop=1.0), 50)
    assert len(took) == 50
    assert max(took) < 20
    assert seen["outcomes"]
    assert set(seen["outcomes"]) == {"dropped"}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert f"127.0.0.1:{receiver.port}/" in message
    assert receiver._token not in message  # the secret path token is never logged in full
    assert redact_url(receiver.url) in message


@pytest.mark.slow
async def test_some_callbacks_dropped_every_wait_ends_in_time(
    receiver: CallbackReceiver, mashup_request: MashupRequest
) -> None:
    """Healthy, text lost, later ones lost, only complete lost: each wait ends within 20 s."""
    mix = [
        CallbackFaults(),
        CallbackFaults(drop={"text"}),
        CallbackFaults(drop={"first", "complete"}),
        CallbackFaults(drop={"complete"}),
        CallbackFaults(drop={"text", "first"}),
    ]
    took, seen = await run(receiver, mashup_request, mix, 30)
    assert len(took) == 30
    assert max(took) < 20
    assert "dropped" in seen["outcomes"]
    assert "delivered" in seen["outcomes"]


async def test_healthy_callbacks_cost_at_most_two_polls(
    receiver: CallbackReceiver, mashup_request: MashupRequest
) -> None:
    """Callbacks on time (tasks of 6 s, probe at 15 s): only the confirming poll is spent."""
    took, seen = await run(receiver, mashup_request, CallbackFaults(), 20)
    assert max(took) < 20
    assert len(seen["polls"]) == 20
    assert max(seen["polls"]) <= 2


def test_redact_url_cuts_path_segments_and_drops_credentials() -> None:
    """Scheme and host stay; each path segment keeps 4 characters; no query, no userinfo."""
    url = "https://user:pw@hooks.example.com:8443/kie/Zk3xV9Qp2LmT7aB1cD4eF6gH?sig=abc"
    assert redact_url(url) == "https://hooks.example.com:8443/kie/Zk3x…"
    assert redact_url(None) == "(no callback URL)"
