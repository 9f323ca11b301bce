"""How FakeKieServer delivers callbacks: Kie POSTs each stage to the task's ``callBackUrl``.

At submit, ``CallbackSender.schedule`` turns the task's ``Timeline`` into deliveries
(``TEXT_SUCCESS`` -> ``text``, ``FIRST_SUCCESS`` -> ``first``, ``SUCCESS`` ->
``complete``, a failure status -> ``error``; ``CALLBACK_EXCEPTION`` and unknown
statuses send nothing), applies the ``CallbackFaults`` in force and pushes them on
one heap keyed by server-clock time. One background task pops what is due and
starts one short task per attempt; a failed attempt (non-2xx, connection error,
timeout) is retried up to ``MAX_RETRIES`` times, as Kie does. A delivery due at
creation (a step at 0.0) is sent before the submit reply, as a fast Kie can.

Only ``http://`` URLs on a loopback host get deliveries: the polling placeholder
and public URLs are skipped. Every task and the one ``aiohttp.ClientSession`` are
owned here and ended by ``aclose()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import ipaddress
import itertools
import json
import random
import time
from collections.abc import Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp

from kiemashup._core.callbacks import sign
from kiemashup.testing._task import FakeTask, callback_payload

__all__ = [
    "CALLBACK_FOR_STATUS",
    "MAX_RETRIES",
    "CallbackDelivery",
    "CallbackFaults",
    "CallbackSender",
    "is_loopback_url",
    "signed_headers",
]

#: The callback Kie sends when a task reaches each status.
CALLBACK_FOR_STATUS: dict[str, str] = {
    "TEXT_SUCCESS": "text",
    "FIRST_SUCCESS": "first",
    "SUCCESS": "complete",
    "CREATE_TASK_FAILED": "error",
    "GENERATE_AUDIO_FAILED": "error",
    "SENSITIVE_WORD_ERROR": "error",
}
#: Retries after a failed attempt ("if 3 consecutive retries fail, ... stop", KIE-API.md §3.1).
MAX_RETRIES = 3
_TICK = 0.02  # longest sleep between clock checks: a hand-moved clock is noticed this fast

#: A fault applies to a callback with this probability (drawn with ``seed``), or to
#: the callback types listed (``{"first"}``).
Which = float | Collection[str]


@dataclass(frozen=True)
class CallbackFaults:
    """Misbehaviours of the callback sender, for tasks created while they are set.

    ``duplicate``: send the callback twice. ``reorder``: hold it back until just after
    the task's next callback (``{"first"}`` sends ``complete`` before ``first``).
    ``drop``: never send it. ``delay``: seconds added to every callback, or per type
    (``{"complete": 2.0}``). ``fail_first_attempts``: the first N attempts of each
    callback fail without reaching the receiver (N > ``MAX_RETRIES`` loses it).
    Probabilities are drawn from ``random.Random(seed)``.
    """

    duplicate: Which = 0.0
    reorder: Which = 0.0
    drop: Which = 0.0
    delay: float | Mapping[str, float] = 0.0
    fail_first_attempts: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("duplicate", "reorder", "drop"):
            which = getattr(self, name)
            if isinstance(which, float | int) and not 0 <= which <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {which!r}")
            if isinstance(which, str):
                raise ValueError(f"{name} takes a collection of callback types, not a string")
        if self.fail_first_attempts < 0:
            raise ValueError(f"fail_first_attempts must be >= 0, got {self.fail_first_attempts}")

    def applies(self, which: Which, callback_type: str, rng: random.Random) -> bool:
        """Whether a fault given as ``which`` hits this callback."""
        if isinstance(which, float | int):
            return which > 0 and rng.random() < which
        return callback_type in which

    def delay_for(self, callback_type: str) -> float:
        if isinstance(self.delay, Mapping):
            return float(self.delay.get(callback_type, 0.0))
        return float(self.delay)


@dataclass(frozen=True)
class CallbackDelivery:
    """One attempt (or a drop) the fake made to deliver a callback.

    ``outcome``: ``"delivered"`` (2xx), ``"rejected"`` (other HTTP status), ``"error"``
    (connection error or timeout), ``"simulated_failure"`` (``fail_first_attempts``)
    or ``"dropped"`` (``drop``; never sent, ``attempt`` 0).
    """

    task_id: str
    type: str
    attempt: int
    status: int | None
    outcome: str
    at: float
    duplicate: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome == "delivered"


@dataclass
class _Job:
    task_id: str
    type: str
    url: str
    body: bytes
    fail_first: int
    duplicate: bool = False
    attempt: int = 1


class _Settings(Protocol):
    webhook_hmac_key: str | None
    callback_faults: CallbackFaults
    callback_retry_delay: float
    callback_timeout: float


def is_loopback_url(url: object) -> bool:
    """True for an ``http://`` URL whose host is a loopback name or address."""
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return False
    if parts.scheme != "http" or not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def signed_headers(task_id: str, key: str, *, timestamp: int | None = None) -> dict[str, str]:
    """The webhook headers Kie sends for ``task_id`` (``timestamp`` defaults to now)."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return {"X-Webhook-Timestamp": stamp, "X-Webhook-Signature": sign(task_id, stamp, key)}


class CallbackSender:
    """The fake server's callback machinery (see the module docstring)."""

    def __init__(self, settings: _Settings, clock: Callable[[], float]) -> None:
        self._settings = settings
        self._clock = clock
        self.sent: list[CallbackDelivery] = []
        self._heap: list[tuple[float, int, _Job]] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._attempts: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    # --- planning ------------------------------------------------------------------------

    def plan(self, task: FakeTask, faults: CallbackFaults) -> list[tuple[float, _Job]]:
        """The (due, job) deliveries for ``task``, faults applied, in sending order."""
        url = str(task.payload.get("callBackUrl"))
        rng = random.Random(faults.seed)
        planned: list[tuple[float, _Job]] = []
        for at, status in task.timeline.steps:
            kind = CALLBACK_FOR_STATUS.get(status)
            if kind is None:
                continue
            body = json.dumps(callback_payload(task, kind)).encode()
            due = task.created_at + at + faults.delay_for(kind)
            planned.append((due, _Job(task.task_id, kind, url, body, faults.fail_first_attempts)))
        planned.sort(key=lambda entry: entry[0])
        # Reorder: a chosen callback goes out just after the one that follows it.
        index = 0
        while index < len(planned) - 1:
            due, job = planned[index]
            if faults.applies(faults.reorder, job.type, rng):
                later_due, later = planned[index + 1]
                planned[index : index + 2] = [(later_due, later), (later_due, job)]
                index += 1
            index += 1
        result: list[tuple[float, _Job]] = []
        for due, job in planned:
            if faults.applies(faults.drop, job.type, rng):
                self._record(job, 0, None, "dropped", duplicate=False)
                continue
            result.append((due, job))
            if faults.applies(faults.duplicate, job.type, rng):
                copy = _Job(job.task_id, job.type, job.url, job.body, job.fail_first, True)
                result.append((due, copy))
        return result

    async def schedule(self, task: FakeTask) -> None:
        """Plan ``task``'s callbacks; those already due are sent before this returns."""
        if not is_loopback_url(task.payload.get("callBackUrl")):
            return
        now = self._clock()
        for due, job in self.plan(task, self._settings.callback_faults):
            if due <= now:
                await self._attempt(job)  # beats the submit reply, as a fast Kie can
            else:
                self._push(due, job)

    def _push(self, due: float, job: _Job) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), job))
        self._wakeup.set()
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(
                self._run(), name="kiemashup-fake-callbacks"
            )

    # --- sending -------------------------------------------------------------------------

    async def _run(self) -> None:
        heap = self._heap
        while True:
            timeout = None
            if heap:
                wait = heap[0][0] - self._clock()
                if wait <= 0:
                    _due, _seq, job = heapq.heappop(heap)
                    self._spawn(self._attempt(job))
                    continue
                timeout = min(wait, _TICK)  # the clock may be moved by hand: look again soon
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        attempt = asyncio.get_running_loop().create_task(coro)
        self._attempts.add(attempt)
        attempt.add_done_callback(self._attempts.discard)

    async def _attempt(self, job: _Job) -> None:
        status: int | None = None
        if job.attempt <= job.fail_first:
            outcome = "simulated_failure"
        else:
            settings = self._settings
            headers = {"Content-Type": "application/json"}
            if settings.webhook_hmac_key is not None:
                headers.update(signed_headers(job.task_id, settings.webhook_hmac_key))
            timeout = aiohttp.ClientTimeout(total=settings.callback_timeout)
            try:
                async with self._client().post(
                    job.url, data=job.body, headers=headers, timeout=timeout
                ) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                outcome = "error"
            else:
                outcome = "delivered" if 200 <= status < 300 else "rejected"
        self._record(job, job.attempt, status, outcome, duplicate=job.duplicate)
        if outcome != "delivered" and job.attempt <= MAX_RETRIES:
            job.attempt += 1
            self._push(self._clock() + self._settings.callback_retry_delay, job)

    def _record(
        self, job: _Job, attempt: int, status: int | None, outcome: str, *, duplicate: bool
    ) -> None:
        self.sent.append(
            CallbackDelivery(
                task_id=job.task_id,
                type=job.type,
                attempt=attempt,
                status=status,
                outcome=outcome,
                at=self._clock(),
                duplicate=duplicate,
            )
        )

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def send(
        self,
        url: str,
        payload: Mapping[str, Any] | bytes,
        headers: Mapping[str, str] | None = None,
    ) -> int:
        """POST ``payload`` to ``url`` with exactly ``headers``; the HTTP status answered."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        sent = {"Content-Type": "application/json", **(headers or {})}
        async with self._client().post(url, data=body, headers=sent) as response:
            await response.read()
            return response.status

    @property
    def pending(self) -> int:
        """Deliveries planned or in flight."""
        return len(self._heap) + len(self._attempts)

    async def aclose(self) -> None:
        """Cancel the runner and every attempt in flight, then close the session."""
        tasks = [*self._attempts, *([self._runner] if self._runner is not None else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._runner = None
        self._heap.clear()
        self._wakeup = asyncio.Event()  # a restarted server may run on another loop
        session, self._session = self._session, None
        if session is not None:
            await session.close()
