"""One poll scheduler per client: every waiting task is polled from one heap.

There is no sleeping coroutine per task. Tasks somebody waits on sit in a heap keyed
by their next poll time; one runner task pops what is due and starts at most
``max_in_flight`` short poll requests at once. The task that has waited longest goes
first, and a confirming poll (a final callback waits for it) goes before any other.
The client's total request rate is the transport's adaptive budget, not a fixed gate.
A task nobody waits on any more is dropped when it comes up. Poll failures that
retrying fixed nothing for are handed to the task's waiters if they cannot heal (a
bad key), or back off if they can (an outage): waits never fail just because Kie is
down; their deadline is the caller's.

Each task's plan (``_Plan``) is private to this module: the handle's ``TaskState``
only carries it. The client tells the scheduler about callbacks through
``expect_callbacks``, ``callback_news`` and ``confirm``.

The safety net: while callbacks are expected, a task is only probed once a callback
is overdue (``timing.callback_deadline``, by stage). A probe that finds the task
ahead of what its callbacks said means callbacks are not arriving: the task goes
back to normal polling, ``on_overdue`` is told once, and every other task whose
callbacks are expected is polled at the normal cadence too, until a callback brings
news again (``on_recovered``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from kiemashup._core.errors import (
    ProtocolError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    TransportError,
)
from kiemashup._core.models import Stage, TaskSnapshot
from kiemashup._core.policy import PollPolicy
from kiemashup._core.timing import (
    callback_deadline,
    next_poll_at,
    outage_interval,
    poll_interval,
    typical_gap,
)
from kiemashup._gate import Gate
from kiemashup._handle import TaskState

log = logging.getLogger("kiemashup.scheduler")

#: Seconds of normal polling after a complete or error callback that no poll has confirmed
#: yet (Kie's record-info may lag its callback); then polls are a safety net again, so a
#: forged final callback costs a few polls, not a poll every few seconds until the end.
FINAL_CLAIM_FOLLOW_UP = 60.0
TRANSIENT = (TransportError, RateLimitError, ServiceUnavailableError, ServerError, ProtocolError)
T = TypeVar("T")


class _Plan:
    """The scheduler's own bookkeeping for one task."""

    __slots__ = (
        "busy",
        "callback_news",
        "callbacks_expected",
        "claim_until",
        "confirm",
        "due",
        "failures",
        "first_seen",
        "in_flight",
        "last_reply",
        "news_stage",
        "polls",
        "released",
        "watchers",
    )

    def __init__(self, now: float) -> None:
        self.due: float | None = None  # when the next poll is planned
        self.in_flight = False  # a scheduled poll is running
        self.busy = False  # a record-info attempt is on the wire
        self.released: asyncio.Future[None] | None = None  # made by whoever waits for it
        self.failures = 0
        self.first_seen = now
        self.last_reply = float("-inf")  # when the last poll's reply came (the floor counts)
        self.polls = 0
        self.watchers = 0
        self.confirm = False  # a final callback awaits its confirming poll
        # Two facts about callbacks, each with one meaning:
        self.callbacks_expected = False  # Kie will call back for this task (polls: safety net)
        self.callback_news = now  # when a callback last moved it (or callbacks began)
        self.news_stage: Stage | None = None  # the stage that news was about
        self.claim_until: float | None = None  # normal polling after a final claim, until


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
        on_overdue: Callable[[TaskState], None] | None = None,
        on_recovered: Callable[[], None] | None = None,
    ) -> None:
        self._fetch = fetch
        self.policy = policy
        self._rand = rand
        self._heap: list[tuple[float, int, TaskState]] = []
        self._urgent: list[tuple[float, int, TaskState]] = []  # confirming polls
        self._seq = itertools.count()
        self._slots = Gate(max_in_flight)
        self._runner: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._polls: set[asyncio.Task[None]] = set()
        self._clock: Callable[[], float] | None = None  # the running loop's, once known
        self._on_crash = on_crash
        self._on_overdue = on_overdue
        self._on_recovered = on_recovered
        self.callbacks_overdue = False  # a probe found a task ahead of its callbacks
        # How long the next callback typically follows each stage's (learned, by stage).
        # Samples of each gap (the last 9 tasks'), and their typical value once known.
        self._gap_samples: list[deque[float]] = [deque(maxlen=9) for _ in range(3)]
        self._gaps: list[float | None] = [None, None, None]
        self.closed = False
        self.lateness: list[float] | None = None  # set to [] to record (benchmarks)

    # --- the plan -----------------------------------------------------------------------------

    def _plan_of(self, state: TaskState) -> _Plan:
        plan = state.plan
        if plan is None:
            plan = state.plan = _Plan(self.now())
        return cast(_Plan, plan)

    def polls(self, state: TaskState) -> int:
        """How many record-info requests this client has sent for ``state``'s task."""
        return 0 if state.plan is None else self._plan_of(state).polls

    # --- interest ---------------------------------------------------------------------------

    def watch(self, state: TaskState) -> None:
        """Someone waits on ``state``: make sure a poll is planned."""
        plan = self._plan_of(state)
        plan.watchers += 1
        if plan.watchers == 1 and plan.due is None and not plan.in_flight:
            self._plan(state, plan, self._first_delay(state, plan))

    def _floor(self, plan: _Plan) -> float:
        """Seconds until ``plan``'s task may be polled again (Kie's per-task limit)."""
        if plan.last_reply == float("-inf"):
            return 0.0  # never polled: now (the one rule below is what counts otherwise)
        now = self.now()
        return next_poll_at(plan.last_reply, now, self.policy) - now

    def unwatch(self, state: TaskState) -> None:
        """A waiter left; the task stops being polled when nobody is left."""
        self._plan_of(state).watchers -= 1

    def now(self) -> float:
        """The event loop's clock (its ``time`` method, looked up once: this path is hot)."""
        clock = self._clock
        if clock is None:
            clock = self._clock = asyncio.get_running_loop().time
        return clock()

    # --- callbacks (told by the client) ---------------------------------------------------------

    def expect_callbacks(self, state: TaskState) -> None:
        """Kie will call back for this task (its submit carried a callback URL)."""
        plan = self._plan_of(state)
        plan.callbacks_expected = True
        plan.callback_news = self.now()
        plan.news_stage = state.latest.stage if state.latest is not None else Stage.PENDING

    def callback_news(self, state: TaskState) -> None:
        """A callback moved this task forward: polls go back to being a safety net."""
        plan = self._plan_of(state)
        self._learn(state, plan)
        plan.callbacks_expected = True
        if self.callbacks_overdue:
            self.callbacks_overdue = False
            if self._on_recovered is not None:
                self._on_recovered()
        self.replan(state)

    def confirm(self, state: TaskState, *, final: bool = True) -> None:
        """Poll ``state`` before anything else (waiters or not): a callback needs a poll.

        ``final``: a complete or error callback came; until a poll agrees, the task is
        polled at the normal cadence. Otherwise a waiter wants the FIRST a callback
        announced (``TaskState.wants_confirmation``).
        """
        plan = self._plan_of(state)
        if final:
            self._learn(state, plan, Stage.COMPLETE)
            if plan.callbacks_expected:  # not if callbacks are overdue anyway
                plan.callbacks_expected = False
                plan.claim_until = self.now() + FINAL_CLAIM_FOLLOW_UP
        plan.confirm = True
        if not plan.in_flight and not self.closed:
            self._plan(state, plan, self._floor(plan))

    def _learn(self, state: TaskState, plan: _Plan, stage: Stage | None = None) -> None:
        """Record callback news at ``stage`` (default: the task's own); learn the stage gap."""
        now = self.now()
        if stage is None:
            stage = state.latest.stage if state.latest is not None else Stage.PENDING
        came_from = plan.news_stage
        if plan.callbacks_expected and came_from is not None and stage == came_from + 1:
            known = self._gaps[came_from]
            samples = self._gap_samples[came_from]
            samples.append(now - plan.callback_news)
            self._gaps[came_from] = typical_gap(samples)
            if known is None and self._gaps[came_from] is not None:
                # The first estimate: tasks planned without one may go sooner.
                self._sooner(lambda other: other.news_stage == came_from)
        plan.callback_news = now
        plan.news_stage = stage

    # --- planning -----------------------------------------------------------------------------

    def _first_delay(self, state: TaskState, plan: _Plan) -> float:
        latest = state.latest
        # A task we submitted, or whose callbacks flow (updates() re-watching between
        # stages), is not "re-attached": polling it at once would cost a poll per stage.
        if latest is None or (latest.source != "submit" and not plan.callbacks_expected):
            return self._floor(plan)  # a re-attached task: look at it now
        return self.next_delay(state)

    def next_delay(self, state: TaskState) -> float:
        """Seconds until ``state``'s next poll, by stage, age, outages and callbacks."""
        plan = self._plan_of(state)
        now = self.now()
        policy = self.policy
        rand = self._rand()
        claim_until = plan.claim_until
        if claim_until is not None and now >= claim_until:
            # A final callback no poll has confirmed for a while: a forgery, most likely.
            plan.claim_until = None
            plan.callbacks_expected = True
        if plan.failures:
            delay = outage_interval(plan.failures, policy, rand)
        else:
            stage = state.latest.stage if state.latest is not None else Stage.PENDING
            delay = poll_interval(stage, now - plan.first_seen, policy, rand)
            expecting = plan.callbacks_expected and not state.wants_confirmation()
            if expecting and self.callbacks_overdue:
                # Callbacks are not arriving: the normal cadence, counted from the last
                # thing heard of the task (one not heard of for long is polled now).
                delay += max(plan.last_reply, plan.callback_news) - now
            elif expecting:
                # Callbacks flow: the next poll is only a probe for when one is overdue.
                # A probe that found nothing new restarts the wait: the next one comes a
                # whole deadline later, not at the normal cadence.
                known = plan.news_stage if plan.news_stage is not None else stage
                typical = self._gaps[known] if known < Stage.COMPLETE else None
                heard = max(plan.callback_news, plan.last_reply)
                overdue_at = heard + callback_deadline(known, policy, typical)
                delay = max(delay, overdue_at - now)
        return max(delay, self._floor(plan))

    def _plan(self, state: TaskState, plan: _Plan, delay: float) -> None:
        due = self.now() + delay
        plan.due = due
        heap = self._urgent if plan.confirm else self._heap
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
        for _due, _seq, state in self._heap + self._urgent:
            state.fail_waiters(error)
        if self._on_crash is not None:  # the owner knows the tasks that are off the heap
            self._on_crash(error)

    def replan(self, state: TaskState) -> None:
        """Re-plan ``state`` after news from elsewhere (a callback) changed its cadence."""
        plan = self._plan_of(state)
        if plan.watchers > 0 and not plan.in_flight and not plan.confirm and not self.closed:
            self._plan(state, plan, self.next_delay(state))

    def _wake_runner(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    # --- the per-task floor -------------------------------------------------------------------

    async def paced(self, state: TaskState, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run one record-info ``attempt`` for ``state`` inside Kie's per-task limit.

        Every attempt (scheduled polls, their retries, ``refresh()``) goes through
        here: one attempt per task on the wire at a time, each sent no earlier than
        ``timing.next_poll_at`` after the previous reply.
        """
        plan = self._plan_of(state)
        loop = asyncio.get_running_loop()
        while True:
            if plan.busy:  # another attempt for this task is on the wire: wait for its reply
                released = plan.released
                if released is None:
                    released = plan.released = loop.create_future()
                await asyncio.wait((released,))  # never cancels the shared future
                continue
            wait = next_poll_at(plan.last_reply, loop.time(), self.policy) - loop.time()
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        plan.busy = True
        plan.polls += 1
        try:
            return await attempt()
        finally:
            plan.last_reply = loop.time()
            plan.busy = False
            released = plan.released
            if released is not None:
                plan.released = None
                released.set_result(None)

    # --- running ------------------------------------------------------------------------------

    def _pop_due(self, now: float) -> TaskState | float | None:
        """The next task to poll, else the earliest due time (None: nothing planned)."""
        earliest: float | None = None
        for heap in (self._urgent, self._heap):
            while heap:
                due, _seq, state = heap[0]
                plan = cast(_Plan, state.plan)
                wanted = plan.watchers > 0 or plan.confirm
                if plan.due != due or not wanted or plan.in_flight:
                    heapq.heappop(heap)  # stale entry, or nobody waits any more
                    if plan.due == due:
                        plan.due = None
                    continue
                if due <= now:
                    heapq.heappop(heap)
                    if self.lateness is not None:
                        self.lateness.append(now - due)
                    plan.due = None
                    return state
                earliest = due if earliest is None else min(earliest, due)
                break
        return earliest

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.closed:
            await self._slots.enter()
            state: TaskState | None = None
            try:
                while state is None and not self.closed:
                    found = self._pop_due(loop.time())
                    if isinstance(found, TaskState):
                        state = found
                    else:
                        await self._sleep_until(found)
            finally:
                if state is None:
                    self._slots.leave()
            if state is None:
                return
            cast(_Plan, state.plan).in_flight = True
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
        plan = cast(_Plan, state.plan)
        confirming, plan.confirm = plan.confirm, False
        probing = plan.callbacks_expected and not confirming
        try:
            snapshot = await self._fetch(state)
        except TRANSIENT:
            plan.failures += 1  # outage: back off, keep the waiters waiting
        except Exception as exc:  # unfixable by retrying (a bad key), or a bug: tell the waiters
            plan.failures += 1
            state.fail_waiters(exc)
        else:
            plan.failures = 0
            known = state.latest.stage if state.latest is not None else Stage.PENDING
            if state.offer(snapshot) and probing and snapshot.stage > known:
                self._overdue(state, plan)
        finally:
            self._slots.leave()
            plan.in_flight = False
        latest = state.latest
        wanted = plan.watchers > 0 or plan.confirm
        if wanted and not self.closed and not (latest and latest.is_terminal):
            self._plan(state, plan, self._floor(plan) if plan.confirm else self.next_delay(state))

    def _overdue(self, state: TaskState, plan: _Plan) -> None:
        """A probe found ``state`` ahead of its callbacks: they are not arriving."""
        plan.callbacks_expected = False  # this task: normal cadence until its own news
        if self.callbacks_overdue:
            return
        self.callbacks_overdue = True
        if self._on_overdue is not None:
            self._on_overdue(state)
        # Every other task waiting on callbacks now polls at the normal cadence too.
        self._sooner(lambda _other: True)

    def _sooner(self, which: Callable[[_Plan], bool]) -> None:
        """Re-plan planned tasks expecting callbacks (``which`` of them) if due sooner now."""
        now = self.now()
        for due, _seq, other in list(self._heap):
            plan = cast(_Plan, other.plan)
            if plan.callbacks_expected and plan.due == due and which(plan):
                sooner = self.next_delay(other)
                if now + sooner < due:
                    self._plan(other, plan, sooner)

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
        self._urgent.clear()
        self._runner = None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
