"""Fault-mix soak: many tasks through FakeKieServer while a seeded chaos monkey misbehaves.

Default run: ``N = 1000`` tasks with outage windows compressed 20x
(``KIEMASHUP_SOAK_SCALE=0.05``: the 30 s refused window lasts 1.5 s). Long mode::

    KIEMASHUP_SOAK_N=10000 KIEMASHUP_SOAK_SCALE=1 pytest tests/test_soak.py -s

runs 10 000 tasks with real 30 s windows (about 10 minutes). ``KIEMASHUP_SOAK_SEED``
replays a run; every assertion message names the seed. ``-s`` prints the figures
(docs/reliability.md quotes them).

What misbehaves, drawn from ``random.Random(seed)``: per request, 5xx (also in
bursts), 429 with Retry-After in seconds or as an HTTP-date, 455, resets before and
in the middle of a reply, replies slower than the client's read timeout, truncated
JSON, record-info ``data`` with fields dropped, renamed and added, and submits
whose task is created but whose reply is lost; maintenance windows (every request
455); server restarts and one long window of refused connections; callbacks lost,
duplicated, reordered, stages skipped by the timelines, and forged callbacks.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from kiemashup import (
    APIError,
    CallbackReceiver,
    MashupClient,
    MashupRequest,
    PollPolicy,
    RateLimitError,
    RateLimits,
    RetryPolicy,
    ServiceUnavailableError,
    Stage,
    SubmitOutcomeUnknown,
    TaskFailedError,
    TaskHandle,
    TaskSnapshot,
    Timeouts,
    TransportError,
)
from kiemashup.testing import (
    CallbackFaults,
    FakeKieServer,
    Fault,
    RecordedRequest,
    Timeline,
    callback_payload,
    signed_headers,
)

pytestmark = pytest.mark.slow

N = int(os.environ.get("KIEMASHUP_SOAK_N", "1000"))
SCALE = float(os.environ.get("KIEMASHUP_SOAK_SCALE", "0.05"))
SEED = int(os.environ.get("KIEMASHUP_SOAK_SEED", "0")) or random.SystemRandom().randrange(1, 2**31)
#: The whole run must end within this (a hung wait fails the soak, naming the seed).
DEADLINE = float(os.environ.get("KIEMASHUP_SOAK_DEADLINE", "0")) or 50.0 + N * 0.03 + 600 * SCALE

API_KEY = "sk-soak-4b1e"
HMAC_KEY = "whk-soak-93ad"
READ_TIMEOUT = 0.5
SLOW = READ_TIMEOUT + 0.4  # a "slow" fault answers after the client gave up
REFUSED_WINDOW = 30.0 * SCALE  # one window of refused connections (30 s in long mode)
RESTART_DOWN = 3.0 * SCALE  # a restart's downtime
MAINTENANCE_WINDOW = 10.0 * SCALE  # every request answered 455
EVENT_GAP = max(1.0, 20.0 * SCALE)  # mean seconds between chaos events
SPREAD = 0.004  # seconds between item starts: submits overlap the chaos windows
MAX_RESUBMITS = 200  # a caller's patience with submits refused for sure (429/455/unsent)

POLL = PollPolicy(
    initial=0.2,
    growth=0.0,
    maximum=0.5,
    after_first=0.3,
    callback_grace=1.0,
    outage_maximum=max(0.5, 30.0 * SCALE),
)
RETRY = RetryPolicy(attempts=4, base=0.05, cap=0.2, max_retry_after=0.3)
LIMITS = RateLimits(submits_per_window=400, submit_window=1.0, requests_per_second=3000)

#: (weight, timeline, final status, expected outcome)
TIMELINES: list[tuple[float, Timeline, str, str]] = [
    (40, Timeline.success(text=0.1, first=0.4, complete=0.8), "SUCCESS", "done"),
    (10, Timeline.custom(((0.3, "FIRST_SUCCESS"), (0.6, "SUCCESS"))), "SUCCESS", "done"),
    (10, Timeline.custom(((0.4, "SUCCESS"),)), "SUCCESS", "done"),
    (
        10,
        Timeline.failure(at=0.6, after="TEXT_SUCCESS"),
        "GENERATE_AUDIO_FAILED",
        "failed",
    ),
    (
        5,
        Timeline.failure("SENSITIVE_WORD_ERROR", at=0.0, error_code=400),
        "SENSITIVE_WORD_ERROR",
        "failed",
    ),
    (5, Timeline.failure("CREATE_TASK_FAILED", at=0.2), "CREATE_TASK_FAILED", "failed"),
    (
        5,
        Timeline.custom(((0.5, "CALLBACK_EXCEPTION"),), tracks_at_terminal=2),
        "CALLBACK_EXCEPTION",
        "done",
    ),
    (5, Timeline.custom(((0.5, "CALLBACK_EXCEPTION"),)), "CALLBACK_EXCEPTION", "failed"),
]

#: Submit faults after which the SDK may (and the soak's caller does) send again:
#: the reply proves nothing was created.
SURELY_NOT_CREATED = frozenset({"rate_limit", "maintenance"})
#: Submit faults whose request may have created the task.
MAY_CREATE = frozenset({None, "drop_after_create", "slow", "reset_mid_body"})


def http_date(seconds_from_now: float) -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds_from_now), usegmt=True)


class Chaos:
    """The seeded fault plan: answers ``FakeKieServer.fault_for`` and counts what it did."""

    def __init__(self, server: FakeKieServer, seed: int) -> None:
        self.server = server
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.burst_until = 0.0
        self.maintenance_until = 0.0
        self.submits: dict[str, list[str | None]] = {}  # prompt -> fault of each POST

    def __call__(self, recorded: RecordedRequest) -> Fault | None:
        label, fault = self.choose(recorded.endpoint)
        kind = fault.kind if fault is not None else None
        if fault is not None:
            self.counts[f"{recorded.endpoint}:{label}"] += 1
        if recorded.endpoint == "submit" and isinstance(recorded.json, dict):
            self.submits.setdefault(str(recorded.json.get("prompt")), []).append(kind)
            # Fresh callback faults per task (CallbackFaults draws them from its seed).
            self.server.callback_faults = CallbackFaults(
                duplicate=0.15, reorder=0.15, drop=0.15, seed=self.rng.randrange(2**32)
            )
        return fault

    def choose(self, endpoint: str) -> tuple[str, Fault | None]:
        """(label for the figures, fault) for one request to ``endpoint``."""
        rng = self.rng
        if time.monotonic() < self.maintenance_until:
            return "maintenance_window", Fault(endpoint, "maintenance")
        if time.monotonic() < self.burst_until:
            kind = rng.choice(("http_500", "http_503"))
            return f"burst_{kind}", Fault(endpoint, kind)
        if endpoint == "record-info" and rng.random() < 0.2:
            kind = rng.choice(
                (
                    "http_500",
                    "http_503",
                    "rate_limit",
                    "rate_limit_date",
                    "maintenance",
                    "reset",
                    "reset_mid_body",
                    "slow",
                    "invalid_json",
                    "mangle",
                    "mangle",
                )
            )
            return kind, self.fault(endpoint, kind)
        if endpoint == "submit" and rng.random() < 0.12:
            kind = rng.choice(
                (
                    "rate_limit",
                    "rate_limit_date",
                    "maintenance",
                    "http_503",
                    "drop_after_create",
                    "reset",
                    "reset_mid_body",
                    "slow",
                    "invalid_json",
                )
            )
            return kind, self.fault(endpoint, kind)
        return "", None

    def fault(self, endpoint: str, kind: str) -> Fault:
        if kind == "rate_limit":
            return Fault(endpoint, kind, retry_after=self.rng.choice(("0", "1")))
        if kind == "rate_limit_date":
            return Fault(endpoint, "rate_limit", retry_after=http_date(self.rng.uniform(-2, 2)))
        if kind == "slow":
            return Fault(endpoint, kind, delay=SLOW)
        return Fault(endpoint, kind)

    async def run(self, stop: asyncio.Event, period: float) -> None:
        """Windows and bursts at random times for ``period`` seconds (or until ``stop``).

        Each kind comes once, in a seeded order, early in the run (one long window of
        refused connections among them); then more restarts, maintenance windows and
        bursts at random. After ``period`` only the per-request faults go on: an outage
        without end would (rightly) keep the last waits waiting forever.
        """
        rng = self.rng
        first = ["refused", "restart", "maintenance", "burst"]
        rng.shuffle(first)
        end = time.monotonic() + period
        while not stop.is_set() and (first or time.monotonic() < end):
            gap = rng.uniform(0.3, 0.8) * EVENT_GAP
            try:
                async with asyncio.timeout(gap):
                    await stop.wait()
            except TimeoutError:
                pass
            if stop.is_set():
                return
            event = first.pop() if first else rng.choice(("restart", "maintenance", "burst"))
            self.counts[f"window:{event}"] += 1
            if event == "refused":
                await self.server.restart(down_for=REFUSED_WINDOW)
            elif event == "restart":
                await self.server.restart(down_for=RESTART_DOWN)
            elif event == "maintenance":
                self.maintenance_until = time.monotonic() + MAINTENANCE_WINDOW
            else:
                self.burst_until = time.monotonic() + rng.uniform(0.05, 0.3) * EVENT_GAP


@dataclass
class Result:
    """How one item ended (exactly one per item)."""

    outcome: str  # done | failed | unknown | rejected
    task_id: str | None = None
    snapshot: TaskSnapshot | None = None
    error: Exception | None = None
    stages: list[Stage] = field(default_factory=list)
    submits: int = 0


class Forger:
    """Sends forged callbacks for real tasks at the receiver; every one must be refused."""

    def __init__(self, server: FakeKieServer, receiver: CallbackReceiver, seed: int) -> None:
        self.server = server
        self.receiver = receiver
        self.rng = random.Random(seed ^ 0x5EED)
        self.sent: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()

    async def run(self, stop: asyncio.Event, count: int) -> None:
        rng = self.rng
        while not stop.is_set() and sum(self.sent.values()) < count:
            await asyncio.sleep(rng.uniform(0.0, 0.02))
            tasks = list(self.server.tasks.values())
            if len(tasks) < 2:
                continue
            task, other = rng.sample(tasks, 2)
            kind = rng.choice(("complete", "error"))
            payload = callback_payload(task, kind)
            now = int(time.time())
            how = rng.choice(("wrong_key", "other_task", "past", "future", "unsigned"))
            if how == "wrong_key":
                headers = signed_headers(task.task_id, "not-the-key")
            elif how == "other_task":
                headers = signed_headers(other.task_id, HMAC_KEY)
            elif how == "past":
                headers = signed_headers(task.task_id, HMAC_KEY, timestamp=now - 1000)
            elif how == "future":
                headers = signed_headers(task.task_id, HMAC_KEY, timestamp=now + 1000)
            else:
                headers = {}
            status = await self.server.send_forged_callback(self.receiver.url, payload, headers)
            self.sent[how] += 1
            self.statuses[status] += 1


def debug_state(client: MashupClient, task_id: str) -> str:
    """The scheduler's view of one task (for the failure message of a stuck item)."""
    state = client._states.get(task_id)
    sched = client._scheduler
    now = asyncio.get_running_loop().time()
    if state is None:
        return "no state"
    plan: Any = state.plan  # the scheduler's private plan, read for diagnosis only
    if plan is None:
        return f"no plan, waiters={len(state.waiters)}"
    return (
        f"due_in={None if plan.due is None else round(plan.due - now, 2)} "
        f"in_flight={plan.in_flight} watchers={plan.watchers} failures={plan.failures} "
        f"polls={plan.polls} last_reply_ago={now - plan.last_reply:.1f} confirm={plan.confirm} "
        f"waiters={len(state.waiters)} heap={len(sched._heap)} in_heap="
        f"{sum(1 for e in sched._heap if e[2] is state)} runner={sched._runner} "
        f"polls_in_flight={len(sched._polls)} slots={sched._slots._value}"
    )


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# One seeded scenario whose invariants are checked together against shared state at the
# end; split into helpers, the closures that record that state would be harder to follow.
async def test_soak_every_task_ends_once_and_nothing_is_paid_twice() -> None:  # noqa: C901
    """Under a seeded fault mix every task ends exactly once and no submit is sent twice."""
    seed = SEED
    tag = f"[soak seed={seed} N={N} scale={SCALE}]"
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    old_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    gc.collect()
    fds_before = fd_count()
    tasks_before = asyncio.all_tasks()
    started = time.monotonic()

    rng = random.Random(seed)
    weights = [w for w, *_ in TIMELINES]
    plan = [rng.choices(range(len(TIMELINES)), weights)[0] for _ in range(N)]
    requests = [
        MashupRequest(
            ("https://example.com/a.mp3", "https://example.com/b.mp3"),
            prompt=f"soak item {i} seed {seed}",
        )
        for i in range(N)
    ]
    index_of = {request.prompt: i for i, request in enumerate(requests)}
    results: dict[int, Result] = {}
    resubmitted: Counter[str] = Counter()  # submits sent again after a sure refusal, by error
    waiting: dict[int, TaskHandle] = {}  # items past submit, not yet ended (for diagnosis)
    submitting: dict[int, str] = {}  # items still submitting: attempts and last error
    forged_target = max(50, N // 10)

    server = FakeKieServer(
        api_key=API_KEY,
        webhook_hmac_key=HMAC_KEY,
        creation_limit=10**9,
        credits=10**9,
    )
    server.timeline_for = lambda payload: TIMELINES[plan[index_of[payload["prompt"]]]][1]
    chaos = Chaos(server, seed)
    server.fault_for = chaos
    receiver = CallbackReceiver(port=0, hmac_key=HMAC_KEY)
    stop = asyncio.Event()
    forger = Forger(server, receiver, seed)

    def finish(i: int, result: Result) -> None:
        assert i not in results, f"{tag} item {i} ended twice: {results[i]} and {result}"
        results[i] = result
        submitting.pop(i, None)
        waiting.pop(i, None)

    async def run_item(i: int, client: MashupClient) -> None:
        await asyncio.sleep(i * SPREAD)
        request = requests[i]
        submits = 0
        item_rng = random.Random(seed * 7919 + i)
        while True:
            submits += 1
            submitting[i] = f"submit #{submits} in flight (last: {submitting.get(i)})"
            try:
                handle: TaskHandle = await client.submit(request)
            except SubmitOutcomeUnknown as exc:
                finish(i, Result("unknown", error=exc, submits=submits))
                return
            except (RateLimitError, ServiceUnavailableError, TransportError) as exc:
                # Certainly not created (SubmitOutcomeUnknown is raised otherwise): a
                # patient caller sends it again, after a pause.
                if submits >= MAX_RESUBMITS:
                    finish(i, Result("rejected", error=exc, submits=submits))
                    return
                resubmitted[type(exc).__name__] += 1
                submitting[i] = f"{submits} submits, last {exc!r}"
                await asyncio.sleep(item_rng.uniform(0.05, 0.3) * max(1.0, 20 * SCALE))
                continue
            except APIError as exc:  # 5xx on submit: typed, and not retried
                finish(i, Result("rejected", error=exc, submits=submits))
                return
            break
        submitting.pop(i, None)
        stages: list[Stage] = []
        waiting[i] = handle
        try:
            if i % 4 == 0:
                final = None
                async for snapshot in handle.updates():
                    stages.append(snapshot.stage)
                    final = snapshot
                assert final is not None
            else:
                final = await handle.wait()
        except TaskFailedError as exc:
            finish(i, Result("failed", handle.task_id, exc.snapshot, exc, stages, submits))
            return
        finish(i, Result("done", handle.task_id, final, None, stages, submits))

    hybrid: MashupClient | None = None
    polling: MashupClient | None = None
    try:
        await server.start()
        await receiver.start()
        options: dict[str, Any] = {
            "api_key": API_KEY,
            "base_url": server.url,
            "poll_policy": POLL,
            "retry_policy": RETRY,
            "rate_limits": LIMITS,
            "timeouts": Timeouts(connect=1.0, read=READ_TIMEOUT, total=5.0),
            "rand": random.Random(seed + 1).random,
        }
        hybrid = MashupClient(receiver=receiver, **options)
        polling = MashupClient(**{**options, "rand": random.Random(seed + 2).random})
        chaos_task = asyncio.create_task(chaos.run(stop, N * SPREAD + 2 * EVENT_GAP))
        forger_task = asyncio.create_task(forger.run(stop, forged_target))
        clients = (hybrid, polling)
        try:
            async with asyncio.timeout(DEADLINE):
                await asyncio.gather(*(run_item(i, clients[i % 2]) for i in range(N)))
        except TimeoutError:
            missing = sorted(set(range(N)) - set(results))
            now = server.clock()
            stuck = [
                f"{i}: {h!r} server={server.tasks[h.task_id].status_at(now)} "
                f"polls={len(server.tasks[h.task_id].poll_times)} "
                f"last_poll_ago={now - (server.tasks[h.task_id].poll_times or [0])[-1]:.1f}"
                f" client={debug_state(clients[i % 2], h.task_id)}"
                for i, h in list(waiting.items())[:10]
            ] + [f"{i}: {what}" for i, what in list(submitting.items())[:10]]
            pytest.fail(f"{tag} {len(missing)} items never ended, e.g. {missing[:10]}: {stuck}")
        finally:
            stop.set()
            await asyncio.gather(chaos_task, forger_task)
        await asyncio.sleep(SLOW + 0.2)  # a "slow" submit still sleeping creates its task now
        elapsed = time.monotonic() - started
    finally:
        for client in (hybrid, polling):
            if client is not None:
                await client.aclose()
        await receiver.close()
        await server.close()

    # --- every item ended exactly once, as its timeline says ------------------------------
    assert sorted(results) == list(range(N)), f"{tag} items without a result"
    created: dict[str, list[str]] = {}
    for task in server.tasks.values():
        created.setdefault(str(task.payload.get("prompt")), []).append(task.task_id)
    outcomes: Counter[str] = Counter()
    unknown_created = 0
    unknown_causes: Counter[str] = Counter()
    for i, result in results.items():
        prompt = requests[i].prompt
        assert prompt is not None
        _w, _timeline, final_status, expected = TIMELINES[plan[i]]
        made = created.get(prompt, [])
        posts = chaos.submits.get(prompt, [])
        where = f"{tag} item {i} ({final_status}): {result.outcome}, POST faults {posts}"
        outcomes[result.outcome] += 1
        # Nothing paid twice: at most one task per item, and no POST after one that may
        # have created it (only a 429/455 reply proves that nothing was created).
        assert len(made) <= 1, f"{where}: {len(made)} tasks created"
        for fault in posts[:-1]:
            assert fault in SURELY_NOT_CREATED, f"{where}: submit re-sent after {fault}"
        if result.outcome in ("done", "failed"):
            assert made == [result.task_id], f"{where}: created {made}"
            assert result.outcome == expected, where
            snapshot = result.snapshot
            assert snapshot is not None
            assert str(snapshot.status) == final_status, f"{where}: {snapshot.status}"
            if expected == "done":
                ids = {track.id for track in snapshot.tracks}
                assert ids == set(server.tasks[made[0]].audio_ids), where
            if result.stages:
                assert result.stages == sorted(set(result.stages)), f"{where}: {result.stages}"
        elif result.outcome == "unknown":
            unknown_created += len(made)
            unknown_causes[str(posts[-1]) if posts else "no POST arrived"] += 1
        else:
            assert made == [], f"{where}: refused for sure, yet created"
            assert not isinstance(result.error, SubmitOutcomeUnknown)
    handles = outcomes["done"] + outcomes["failed"]
    assert server.creations == handles + unknown_created, tag
    assert sum(len(ids) for ids in created.values()) == server.creations, tag
    assert server.creation_rate_violations() == 0, tag

    # --- forged callbacks: every one refused -----------------------------------------------
    forged = sum(forger.sent.values())
    assert forged > 0, tag
    assert set(forger.statuses) <= {401}, f"{tag} forged callbacks answered {forger.statuses}"
    assert receiver.rejected == forged, f"{tag} rejected {receiver.rejected} of {forged}"

    # --- nothing left behind -----------------------------------------------------------------
    for _ in range(5):
        await asyncio.sleep(0.02)
    gc.collect()
    await asyncio.sleep(0)
    leftover = asyncio.all_tasks() - tasks_before - {asyncio.current_task()}
    assert not leftover, f"{tag} tasks left running: {leftover}"
    fds_after = fd_count()
    assert fds_after <= fds_before, f"{tag} file descriptors: {fds_before} -> {fds_after}"
    loop.set_exception_handler(old_handler)
    messages = [str(context.get("message")) for context in loop_errors]
    assert not loop_errors, f"{tag} unhandled errors in background tasks: {messages[:5]}"

    # --- the figures (docs/reliability.md) ----------------------------------------------------
    deliveries = server.callbacks_sent
    report = {
        "seed": seed,
        "n": N,
        "scale": SCALE,
        "seconds": round(elapsed, 1),
        "outcomes": dict(outcomes),
        "unknown_created": unknown_created,
        "unknown_by_last_post_fault": dict(unknown_causes),
        "resubmitted_after": dict(resubmitted),
        "creations": server.creations,
        "submit_posts": server.count("submit"),
        "record_info_requests": server.count("record-info"),
        "requests_sent": hybrid.requests_sent + polling.requests_sent if hybrid and polling else 0,
        "faults": dict(sorted(chaos.counts.items())),
        "restarts": server.restarts,
        "callbacks": {
            "delivered": sum(1 for d in deliveries if d.ok),
            "dropped": sum(1 for d in deliveries if d.outcome == "dropped"),
            "duplicated": sum(1 for d in deliveries if d.duplicate),
            "forged": dict(forger.sent),
            "rejected_by_receiver": receiver.rejected,
        },
        "fds": [fds_before, fds_after],
    }
    print(f"\nsoak report {json.dumps(report)}")
    out = os.environ.get("KIEMASHUP_SOAK_REPORT")
    if out:
        await asyncio.to_thread(Path(out).write_text, json.dumps(report, indent=2) + "\n")
