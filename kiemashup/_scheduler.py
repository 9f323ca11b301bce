"""One poll scheduler per client: every waiting task is polled from one heap.

There is no sleeping coroutine per task. Tasks somebody waits on sit in a heap keyed
by their next poll time; one runner task pops what is due and starts at most
``max_in_flight`` short poll requests at once (the transport adds the client-wide
rate cap). A task nobody waits on any more is dropped when it comes up. Poll
failures that retrying fixed nothing for are handed to the task's waiters if they
cannot heal (a bad key), or back off if they can (an outage): waits never fail just
because Kie is down; their deadline is the caller's.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
from collections.abc import Awaitable, Callable

from kiemashup._core.errors import (
    ProtocolError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    TransportError,
)
from kiemashup._core.models import Stage, TaskSnapshot
from kiemashup._core.policy import PollPolicy
from kiemashup._core.timing import outage_interval, poll_interval
from kiemashup._handle import TaskState

log = logging.getLogger("kiemashup.scheduler")

TRANSIENT = (TransportError, RateLimitError, ServiceUnavailableError, ServerError, ProtocolError)


class PollScheduler:
    """Plans and runs the polls of every watched task of one client."""

    def __init__(
        self,
        fetch: Callable[[TaskState], Awaitable[TaskSnapshot]],
        policy: PollPolicy,
        *,
        max_in_flight: int,
        rand: Callable[[], float] = random.random,
        on_crash: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._fetch = fetch
        self.policy = policy
        self._rand = rand
        self._heap: list[tuple[float, int, TaskState]] = []
        self._seq = itertools.count()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._runner: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._polls: set[asyncio.Task[None]] = set()
        self._on_crash = on_crash
        self.closed = False
        self.lateness: list[float] | None = None  # set to [] to record (benchmarks)

    # --- interest ---------------------------------------------------------------------------

    def watch(self, state: TaskState) -> None:
        """Someone waits on ``state``: make sure a poll is planned."""
        state.watchers += 1
        if state.watchers == 1 and state.due is None and not state.in_flight:
            self._plan(state, self._first_delay(state))

    def unwatch(self, state: TaskState) -> None:
        """A waiter left; the task stops being polled when nobody is left."""
        state.watchers -= 1

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    # --- planning -----------------------------------------------------------------------------

    def _first_delay(self, state: TaskState) -> float:
        latest = state.latest
        # A task whose callbacks flow (last_callback set, e.g. an early callback
        # drained at submit, or updates() re-watching between stages) is not "re-attached":
        # polling it at once would cost a poll per stage.
        if latest is None or (latest.source != "submit" and state.last_callback is None):
            return 0.0  # a re-attached task: look at it now
        return self.next_delay(state)

    def next_delay(self, state: TaskState) -> float:
        """Seconds until ``state``'s next poll, by stage, age, outages and callbacks."""
        now = self.now()
        policy = self.policy
        rand = self._rand()
        if state.failures:
            delay = outage_interval(state.failures, policy, rand)
        else:
            stage = state.latest.stage if state.latest is not None else Stage.PENDING
            delay = poll_interval(stage, now - state.first_seen, policy, rand)
            if state.last_callback is not None:
                # Callbacks flow: the next poll is only a safety net for when one is overdue.
                delay = max(delay, state.last_callback + policy.callback_grace - now)
        # Never more often than Kie's per-task limit allows.
        return max(delay, state.last_poll + policy.min_interval - now)

    def _plan(self, state: TaskState, delay: float) -> None:
        due = self.now() + delay
        state.due = due
        heap = self._heap
        heapq.heappush(heap, (due, next(self._seq), state))
        if heap[0][2] is state:  # new earliest entry: let the runner re-plan its sleep
            self._wake_runner()
        if self._runner is None and not self.closed:
            self._runner = asyncio.get_running_loop().create_task(
                self._run(), name="kiemashup-poll-scheduler"
            )
            self._runner.add_done_callback(self._runner_done)

    def _runner_done(self, runner: asyncio.Task[None]) -> None:
        """A crashed runner (a bug) must reach the waiters, not vanish in a task."""
        if runner.cancelled() or runner.exception() is None:
            return
        error = runner.exception()
        assert error is not None
        log.error("kiemashup poll scheduler stopped", exc_info=error)
        self.closed = True
        for _due, _seq, state in self._heap:
            state.fail_waiters(error)
        if self._on_crash is not None:  # the owner knows the tasks that are off the heap
            self._on_crash(error)

    def replan(self, state: TaskState) -> None:
        """Re-plan ``state`` after news from elsewhere (a callback) changed its cadence."""
        if state.watchers > 0 and not state.in_flight and not self.closed:
            self._plan(state, self.next_delay(state))

    def poll_now(self, state: TaskState) -> None:
        """Poll ``state`` as soon as the caps allow, waiters or not (a callback's confirmation)."""
        state.confirm = True
        if not state.in_flight and not self.closed:
            self._plan(state, max(0.0, state.last_poll + self.policy.min_interval - self.now()))

    def _wake_runner(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    # --- running ------------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        heap = self._heap
        while not self.closed:
            if not heap:
                await self._sleep_until(None)
                continue
            due, _seq, state = heap[0]
            now = loop.time()
            if due > now:
                await self._sleep_until(due)
                continue
            heapq.heappop(heap)
            wanted = state.watchers > 0 or state.confirm
            if state.due != due or not wanted or state.in_flight:
                if state.due == due:
                    state.due = None
                continue  # stale entry, or nobody waits any more
            await self._slots.acquire()
            if self.lateness is not None:
                self.lateness.append(loop.time() - due)
            state.due = None
            state.in_flight = True
            poll = loop.create_task(self._poll(state))
            self._polls.add(poll)
            poll.add_done_callback(self._polls.discard)

    async def _sleep_until(self, due: float | None) -> None:
        loop = asyncio.get_running_loop()
        wakeup: asyncio.Future[None] = loop.create_future()
        self._wakeup = wakeup
        timer = loop.call_at(due, _resolve, wakeup) if due is not None else None
        try:
            await wakeup
        finally:
            self._wakeup = None
            if timer is not None:
                timer.cancel()

    async def _poll(self, state: TaskState) -> None:
        state.confirm = False
        try:
            snapshot = await self._fetch(state)
        except TRANSIENT:
            state.failures += 1  # outage: back off, keep the waiters waiting
        except Exception as exc:  # unfixable by retrying (a bad key), or a bug: tell the waiters
            state.failures += 1
            state.fail_waiters(exc)
        else:
            state.failures = 0
            state.offer(snapshot)
        finally:
            self._slots.release()
            state.in_flight = False
        latest = state.latest
        wanted = state.watchers > 0 or state.confirm
        if wanted and not self.closed and not (latest and latest.is_terminal):
            self._plan(state, 0.0 if state.confirm else self.next_delay(state))

    async def aclose(self) -> None:
        """Stop planning and cancel every poll in flight; returns when all have ended."""
        self.closed = True
        tasks = list(self._polls)
        if self._runner is not None:
            tasks.append(self._runner)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._heap.clear()
        self._runner = None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
