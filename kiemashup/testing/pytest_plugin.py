"""pytest fixtures for code that uses kiemashup: an opt-in plugin.

Turn it on in your ``conftest.py``::

    pytest_plugins = ["kiemashup.testing.pytest_plugin"]

It needs pytest-asyncio (``pip install 'kiemashup[testing]'`` brings both); use
``asyncio_mode = "auto"`` or mark your tests ``@pytest.mark.asyncio``.

Fixtures (each new for every test):

- ``kie_server``: a started ``FakeKieServer`` that accepts ``kie_api_key``. Pass it
  options with ``@pytest.mark.kie_server(shape="least-friendly", credits=0, ...)``.
- ``kie_client``: a ``MashupClient`` pointed at ``kie_server`` (API and uploads),
  polling every few milliseconds, closed after the test. Override its options with
  ``@pytest.mark.kie_client(poll_policy=..., ...)``.
- ``kie_api_key``: the key both use (never a real one).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from kiemashup._client import MashupClient
from kiemashup._core.policy import PollPolicy, RetryPolicy
from kiemashup.testing._fake import FakeKieServer

__all__ = ["FAST_POLL", "FAST_RETRY", "kie_api_key", "kie_client", "kie_server"]

#: Polls as often as Kie's per-task limit allows, from the first few milliseconds.
FAST_POLL = PollPolicy(initial=0.02, growth=0.0, maximum=0.05, after_first=0.05)
#: Retries that back off in milliseconds.
FAST_RETRY = RetryPolicy(attempts=4, base=0.01, cap=0.05, max_retry_after=0.2)


def pytest_configure(config: pytest.Config) -> None:
    """Register the plugin's markers (so ``--strict-markers`` accepts them)."""
    config.addinivalue_line("markers", "kie_server(**options): options for FakeKieServer")
    config.addinivalue_line("markers", "kie_client(**options): options for MashupClient")


def _options(request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    marker = request.node.get_closest_marker(name)
    return dict(marker.kwargs) if marker is not None else {}


@pytest.fixture
def kie_api_key() -> str:
    """The API key the fake server demands and the client sends."""
    return "kiemashup-fake-key"


@pytest_asyncio.fixture
async def kie_server(
    request: pytest.FixtureRequest, kie_api_key: str
) -> AsyncIterator[FakeKieServer]:
    """A started FakeKieServer on loopback (options from ``@pytest.mark.kie_server``)."""
    options: dict[str, Any] = {"api_key": kie_api_key, **_options(request, "kie_server")}
    async with FakeKieServer(**options) as server:
        yield server


@pytest_asyncio.fixture
async def kie_client(
    request: pytest.FixtureRequest, kie_server: FakeKieServer, kie_api_key: str
) -> AsyncIterator[MashupClient]:
    """A fast MashupClient pointed at ``kie_server`` (options from ``@pytest.mark.kie_client``)."""
    options: dict[str, Any] = {
        "base_url": kie_server.url,
        "upload_base_url": kie_server.url,
        "poll_policy": FAST_POLL,
        "retry_policy": FAST_RETRY,
        **_options(request, "kie_client"),
    }
    async with MashupClient(kie_api_key, **options) as client:
        yield client
