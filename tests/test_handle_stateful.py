"""Hypothesis stateful test: handles under arbitrary interleavings of news, waits and closes."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kiemashup._core.errors import KieError, TaskFailedError
from kiemashup._core.models import Stage, TaskSnapshot, Track
from kiemashup._core.policy import PollPolicy
from kiemashup._core.state import make_snapshot
from kiemashup._handle import Hooks, TaskHandle, TaskState
from kiemashup._scheduler import PollScheduler

STATUSES = [
    "PENDING", "TEXT_SUCCESS", "FIRST_SUCCESS", "SUCCESS", "GENERATE_AUDIO_FAILED",
    "CREATE_TASK_FAILED", "SENSITIVE_WORD_ERROR", "CALLBACK_EXCEPTION", "SOMETHING_NEW",
]  # fmt: skip
PLAYABLE = Track(id="a", audio_url="https://x.example/a.mp3")
SILENT = Track(id="b", audio_url=None)
TRACK_SETS = [(), (SILENT, SILENT), (PLAYABLE, SILENT), (PLAYABLE, PLAYABLE)]
FAST = PollPolicy(initial=0.001, growth=0.0, maximum=0.002, after_first=0.002, min_interval=0.001,
                  jitter=0.0, outage_maximum=0.002)  # fmt: skip


def snapshots() -> st.SearchStrategy[TaskSnapshot]:
    return st.builds(
        lambda status, tracks, source: make_snapshot(
            "t", status, tracks, source=source, error_code=500 if "FAIL" in status else None
        ),
        st.sampled_from(STATUSES),
        st.sampled_from(TRACK_SETS),
        st.sampled_from(["poll", "callback"]),
    )


class HandleMachine(RuleBasedStateMachine):
    """One task, two handles, a real scheduler whose polls return what the 'server' says."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.server_truth: TaskSnapshot = make_snapshot("t", "PENDING", source="submit")
        self.state = TaskState("t")
        self.state.offer(self.server_truth)
        self.scheduler = PollScheduler(self._fetch, FAST, max_in_flight=2)
        hooks = Hooks(fetch=self._fetch, watch=self.scheduler.watch, unwatch=self.scheduler.unwatch)
        self.handles = [TaskHandle(self.state, hooks), TaskHandle(self.state, hooks)]
        self.waits: list[tuple[Stage, asyncio.Task[TaskSnapshot]]] = []
        self.update_runs: list[tuple[list[TaskSnapshot], asyncio.Task[Any]]] = []
        self.history: list[TaskSnapshot] = [self.server_truth]
        self.closed = False

    async def _fetch(self, _state: TaskState) -> TaskSnapshot:
        await asyncio.sleep(0)
        return self.server_truth

    def _spin(self, seconds: float = 0.003) -> None:
        self.loop.run_until_complete(asyncio.sleep(seconds))
        latest = self.state.latest
        if latest is not None and latest is not self.history[-1]:
            self.history.append(latest)

    @rule(snapshot=snapshots())
    def server_moves(self, snapshot: TaskSnapshot) -> None:
        """What polls will see from now on (may go 'backwards', as a stale replica would)."""
        self.server_truth = snapshot

    @rule(snapshot=snapshots())
    def callback_arrives(self, snapshot: TaskSnapshot) -> None:
        """A callback (possibly duplicated, reordered or stale) is offered directly."""
        self.state.offer(snapshot)
        self._spin(0)

    @precondition(lambda self: not self.closed)
    @rule(stage=st.sampled_from(list(Stage)), which=st.integers(0, 1))
    def start_wait(self, stage: Stage, which: int) -> None:
        self.waits.append((stage, self.loop.create_task(self.handles[which].wait(stage))))
        self._spin(0)

    @precondition(lambda self: not self.closed)
    @rule()
    def start_updates(self) -> None:
        seen: list[TaskSnapshot] = []

        async def consume() -> None:
            async for snap in self.handles[0].updates():
                seen.append(snap)

        self.update_runs.append((seen, self.loop.create_task(consume())))
        self._spin(0)

    @rule(index=st.integers(0, 50))
    def cancel_one(self, index: int) -> None:
        pending = [t for _s, t in self.waits if not t.done()]
        if pending:
            pending[index % len(pending)].cancel()
        self._spin(0)

    @rule()
    def time_passes(self) -> None:
        self._spin()

    @precondition(lambda self: not self.closed)
    @rule()
    def close(self) -> None:
        self.closed = True
        self.loop.run_until_complete(self.scheduler.aclose())
        self.state.fail_waiters(KieError("closed"))
        self._spin(0)

    @invariant()
    def never_backwards(self) -> None:
        """Stages never decrease, and a terminal snapshot is final."""
        for before, after in zip(self.history, self.history[1:], strict=False):
            assert after.stage >= before.stage or after.is_terminal
            assert not before.is_terminal

    @invariant()
    def waiters_released_correctly(self) -> None:
        """A finished wait returned a snapshot that satisfies it, or a fitting error."""
        for stage, task in self.waits:
            if not task.done() or task.cancelled():
                continue
            exc = task.exception()
            if exc is None:
                result = task.result()
                assert result.stage >= stage or result.is_terminal
                assert not result.failed
            elif isinstance(exc, TaskFailedError):
                assert exc.snapshot.failed
            else:
                assert self.closed
        live = {id(fut) for fut, _stage in self.state.waiters}
        assert len(live) == len(self.state.waiters)  # each waiter registered once

    @invariant()
    def updates_strictly_increase(self) -> None:
        """updates() yields strictly increasing stages."""
        for seen, _task in self.update_runs:
            stages = [s.stage for s in seen]
            assert stages == sorted(set(stages))

    def teardown(self) -> None:
        try:
            if not self.closed:
                self.loop.run_until_complete(self.scheduler.aclose())
                self.state.fail_waiters(KieError("closed"))
            tasks = [t for _s, t in self.waits] + [t for _seen, t in self.update_runs]
            for task in tasks:
                if not task.done():
                    self._spin(0)
            # Every wait has ended: nobody is left registered, nothing runs in the background.
            assert all(t.done() for t in tasks)
            assert self.state.waiters == []
            for task in tasks:
                if not task.cancelled():
                    task.exception()  # retrieve, so none is reported as never retrieved
        finally:
            self.loop.close()


HandleMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestHandleMachine = HandleMachine.TestCase


def test_a_crashed_scheduler_fails_its_waiters() -> None:
    """A bug that kills the poll scheduler reaches every waiter instead of hanging them."""

    async def scenario() -> None:
        async def fetch(_state: TaskState) -> TaskSnapshot:
            raise AssertionError("unreachable")

        state = TaskState("t")
        scheduler = PollScheduler(fetch, FAST, max_in_flight=1, on_crash=state.fail_waiters)
        state.offer(make_snapshot("t", "PENDING", source="submit"))
        handle = TaskHandle(
            state, Hooks(fetch=fetch, watch=scheduler.watch, unwatch=scheduler.unwatch)
        )
        waiter = asyncio.ensure_future(handle.wait())
        await asyncio.sleep(0)  # the wait is registered and the runner started
        scheduler._slots = None  # type: ignore[assignment]  # a bug inside the runner
        try:
            async with asyncio.timeout(5):
                await waiter
        except AttributeError:
            pass  # the runner's own error, handed to the waiter
        else:
            raise AssertionError("the wait should have failed")
        assert scheduler.closed
        await scheduler.aclose()

    import logging

    logging.disable(logging.CRITICAL)
    try:
        asyncio.run(scenario())
    finally:
        logging.disable(logging.NOTSET)
