"""What the client, the transport and the receiver ask of a shared backend (docs/scaling.md).

Only protocols: the one implementation is ``kiemashup.redis.RedisBackend``, and these
modules never import it (nor redis). Without a backend each process paces, polls and
hears callbacks alone, exactly as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from kiemashup._core.models import TaskSnapshot
from kiemashup._core.policy import PollPolicy, RateLimits, Timeouts


class CreationSlots(Protocol):
    """Kie's creation window shared by every client of one account (``CreationWindow``'s rule)."""

    async def take(self) -> object:
        """Wait for a place and take it; the returned token is handed back below."""

    def closed(self, place: object, *, rejected: bool, retry_after: float | None) -> None:
        """The submit holding ``place`` got its reply (or was given up after it left)."""

    def abandoned(self, place: object) -> None:
        """The submit holding ``place`` was given up before it left: free it."""

    async def aclose(self) -> None:
        """Wait (briefly) for places being handed back."""


class SharedBudget(Protocol):
    """The account's request budget as far as it is shared: Kie's push-back reaches all."""

    async def wait(self) -> None:
        """Return once this request may go: no shared pause, and a slot of a shared cap."""

    def pushed_back(self, pause: float | None, rate: float | None) -> None:
        """Kie pushed back: pause every client ``pause`` seconds, cap them at ``rate``."""


class BackendLink(Protocol):
    """One client's connection to the backend: callbacks in, one poll per task."""

    async def start(self) -> None:
        """Subscribe (idempotent); callbacks then reach the client's ``feed``."""

    def interest(self, task_id: str) -> None:
        """The client now knows ``task_id``: hand it the callbacks kept for it."""

    def poll(
        self, task_id: str, fetch: Callable[[], Awaitable[TaskSnapshot]]
    ) -> Awaitable[TaskSnapshot]:
        """One poll of ``task_id`` for every process: ``fetch()`` here, or another's result."""

    async def claims(self, key: str) -> list[str]:
        """Task ids that keyed callbacks (any process's) named for the submit ``key``."""

    async def aclose(self) -> None:
        """Unsubscribe and finish background writes."""


class ClientBackend(Protocol):
    """What ``MashupClient(backend=...)`` needs."""

    def check_api_key(self, api_key: str) -> None:
        """Raise ``KieError`` when the backend's namespace belongs to another API key."""

    def creation_slots(self, limits: RateLimits, timeouts: Timeouts) -> CreationSlots:
        """The account's shared creation window."""

    def request_budget(self) -> SharedBudget:
        """The account's shared request budget."""

    def link(
        self,
        feed: Callable[[TaskSnapshot], object],
        policy: PollPolicy,
        on_key: Callable[[str, str], object],
    ) -> BackendLink:
        """A link that hands callbacks to ``feed``, the (key, task id) of keyed ones to
        ``on_key``, and shares polls at ``policy``'s pace."""


class CallbackPublisher(Protocol):
    """What ``CallbackReceiver(backend=...)`` needs: hand a verified callback to every client."""

    async def publish(self, snapshot: TaskSnapshot, key: str | None) -> None:
        """Publish one accepted callback (``key``: the per-submit key of its URL, if any)."""
