"""Task handles: what callers await. Knows no aiohttp and no client.

One ``TaskState`` exists per task id in a client; every ``TaskHandle`` for that id
shares it, so two waiters on one task share its polls. A wait registers a future on
the state and asks the client (through ``Hooks``) to keep the task polled while it
waits; it starts no task of its own, so cancelling it leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs

from kiemashup._core.errors import TaskFailedError
from kiemashup._core.models import Stage, TaskSnapshot
from kiemashup._core.state import advance, reached, trusted_stage


class LiveStates:
    """Task id -> its ``TaskState``, held weakly: a state lives while a handle, a wait or a
    poll holds it, then drops out by itself.

    A ``weakref.WeakValueDictionary`` without the ``KeyError`` its ``get`` raises and
    catches for an id it does not hold, which is the common case on the hot paths
    (``get_task`` of a task nobody waits for, a callback that arrives early).
    """

    __slots__ = ("__weakref__", "_dead", "_gone", "_refs")

    def __init__(self) -> None:
        dead: list[str] = []
        self._refs: dict[str, weakref.KeyedRef[str, TaskState]] = {}
        self._dead = dead
        # A state may die on any thread (a handle dropped by a web thread while the client
        # runs on a background loop): its callback only notes the id (list.append is
        # atomic) and holds no reference to the map; ``_purge`` removes the entry on the
        # client's own thread, unless a newer, live state of that id has replaced it.
        self._gone = lambda ref: dead.append(ref.key)

    def _purge(self) -> None:
        refs, dead = self._refs, self._dead
        while dead:
            task_id = dead.pop()
            ref = refs.get(task_id)
            if ref is not None and ref() is None:
                del refs[task_id]

    def get(self, task_id: str) -> TaskState | None:
        ref = self._refs.get(task_id)
        return None if ref is None else ref()

    def __setitem__(self, task_id: str, state: TaskState) -> None:
        self._purge()
        self._refs[task_id] = weakref.KeyedRef(state, self._gone, task_id)

    def __len__(self) -> int:
        self._purge()
        return len(self._refs)

    def values(self) -> list[TaskState]:
        """The states alive now."""
        self._purge()
        return [state for ref in list(self._refs.values()) if (state := ref()) is not None]


class TaskState:
    """The live view of one task: its newest snapshot and its waiters.

    ``plan`` belongs to the poll scheduler (its private per-task plan: due time, in
    flight, failures, last poll, callback news); nothing else reads or writes it.
    """

    __slots__ = ("__weakref__", "latest", "plan", "task_id", "waiters")

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.latest: TaskSnapshot | None = None
        self.waiters: list[tuple[asyncio.Future[TaskSnapshot], Stage]] = []
        self.plan: object | None = None

    def offer(self, snapshot: TaskSnapshot) -> bool:
        """Take ``snapshot`` if it moves the task forward; wake whoever it satisfies."""
        newer = advance(self.latest, snapshot)
        if newer is None:
            return False
        self.latest = newer
        if self.waiters:
            self._wake()
        return True

    def wants_confirmation(self) -> bool:
        """True when a waiter could return once a poll confirms a callback's stage.

        A callback's FIRST is Kie's word only (``_core.state`` rule 6): a wait for it
        returns a polled snapshot, with the track's audio URL.
        """
        latest = self.latest
        if latest is None or latest.confirmed or latest.stage <= Stage.TEXT:
            return False
        return any(
            not future.done() and Stage.TEXT < stage <= latest.stage
            for future, stage in self.waiters
        )

    def fail_waiters(self, error: BaseException) -> None:
        """Hand ``error`` to every current waiter (a poll failed in a way retrying cannot fix)."""
        for future, _stage in self.waiters:
            if not future.done():
                future.set_exception(error)

    def _wake(self) -> None:
        latest = self.latest
        assert latest is not None
        for future, stage in self.waiters:
            if future.done():
                continue
            if latest.failed:
                future.set_exception(TaskFailedError(latest))
            elif reached(latest, stage) or latest.is_terminal:
                future.set_result(latest)


@attrs.frozen
class Hooks:
    """What a handle needs from its client: one poll now, and interest on/off."""

    fetch: Callable[[TaskState], Awaitable[TaskSnapshot]]
    watch: Callable[[TaskState], None]
    unwatch: Callable[[TaskState], None]


class TaskHandle:
    """The live object for one task: await stages, iterate updates, or poll once."""

    __slots__ = ("_hooks", "_state")

    def __init__(self, state: TaskState, hooks: Hooks) -> None:
        self._state = state
        self._hooks = hooks

    def __repr__(self) -> str:
        latest = self._state.latest
        status = latest.status if latest is not None else "unknown"
        return f"<TaskHandle {self._state.task_id} {status}>"

    @property
    def task_id(self) -> str:
        return self._state.task_id

    @property
    def latest(self) -> TaskSnapshot | None:
        """The newest known snapshot; never goes backwards."""
        return self._state.latest

    async def wait(self, stage: Stage = Stage.COMPLETE) -> TaskSnapshot:
        """Return once the task reaches ``stage``; raise ``TaskFailedError`` if it fails.

        Deadlines come from the caller (``async with asyncio.timeout(...)``).
        """
        state = self._state
        latest = state.latest
        if latest is not None:
            if latest.failed:
                raise TaskFailedError(latest)
            if reached(latest, stage) or latest.is_terminal:
                return latest
        future: asyncio.Future[TaskSnapshot] = asyncio.get_running_loop().create_future()
        entry = (future, stage)
        state.waiters.append(entry)
        self._hooks.watch(state)
        try:
            return await future
        finally:
            state.waiters.remove(entry)
            self._hooks.unwatch(state)

    async def updates(self) -> AsyncIterator[TaskSnapshot]:
        """Yield one snapshot per stage reached, in order, ending at a terminal state.

        A stage the task skipped is not invented: stages yielded strictly increase.
        A failed task raises ``TaskFailedError`` after the stages it did reach.
        """
        last = Stage.PENDING
        while True:
            latest = self._state.latest
            if latest is not None and latest.failed:
                raise TaskFailedError(latest)
            if latest is not None and (trusted_stage(latest) > last or latest.is_terminal):
                last = trusted_stage(latest)
                # A callback's FIRST counts as TEXT until a poll agrees: not yielded as
                # such (its stage would then be yielded twice).
                if latest.is_terminal or latest.stage == last:
                    yield latest
                if latest.is_terminal or last is Stage.COMPLETE:
                    return
                continue
            await self.wait(Stage(last + 1))

    async def refresh(self) -> TaskSnapshot:
        """Poll once now and return the newest snapshot (which never goes backwards)."""
        snapshot = await self._hooks.fetch(self._state)
        self._state.offer(snapshot)
        latest = self._state.latest
        assert latest is not None
        return latest
