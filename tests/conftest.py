"""Shared pytest fixtures."""

from __future__ import annotations

# ============================================================================
# Foundation fixtures (transport / client end-to-end tests). Other sections may
# be appended below; please keep this block intact.
# ============================================================================
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from kiemashup import (
    MashupClient,
    MashupRequest,
    PollPolicy,
    RateLimits,
    RetryPolicy,
    Timeouts,
)
from kiemashup.testing import FakeKieServer, Timeline

#: The key every fake server and test client uses; tests check it never leaks.
TEST_API_KEY = "sk-kiemashup-test-5e3c7a1f9b2d4e6a"

#: Polls as fast as Kie's per-task limit allows (min_interval keeps its 0.34 s default).
FAST_POLL = PollPolicy(initial=0.02, growth=0.0, maximum=0.05, after_first=0.05)
#: Retries that back off in milliseconds.
FAST_RETRY = RetryPolicy(attempts=4, base=0.01, cap=0.05, max_retry_after=0.2)

ClientFactory = Callable[..., MashupClient]


@pytest_asyncio.fixture
async def fake_server() -> AsyncIterator[FakeKieServer]:
    """A started FakeKieServer that demands TEST_API_KEY; tasks finish in ~60 ms."""
    async with FakeKieServer(api_key=TEST_API_KEY, default_timeline=Timeline.success()) as server:
        yield server


@pytest_asyncio.fixture
async def make_client(fake_server: FakeKieServer) -> AsyncIterator[ClientFactory]:
    """Build fast MashupClients pointed at ``fake_server`` (or ``server=``); closed at teardown."""
    clients: list[MashupClient] = []

    def factory(*, server: FakeKieServer | None = None, **overrides: Any) -> MashupClient:
        options: dict[str, Any] = {
            "api_key": TEST_API_KEY,
            "base_url": (server or fake_server).url,
            "poll_policy": FAST_POLL,
            "retry_policy": FAST_RETRY,
            "rate_limits": RateLimits(requests_per_second=2000),
            "timeouts": Timeouts(connect=2.0, read=5.0, total=10.0),
        }
        options.update(overrides)
        client = MashupClient(**options)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.aclose()


@pytest.fixture
def mashup_request() -> MashupRequest:
    """A valid non-custom mashup request."""
    return MashupRequest(
        ("https://example.com/a.mp3", "https://example.com/b.mp3"), prompt="two songs, one groove"
    )


# ============================================================================
# End of foundation fixtures.
# ============================================================================
