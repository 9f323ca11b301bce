"""The only module that uses the aiohttp client. Knows HTTP, not tasks.

It owns (or borrows) one ``aiohttp.ClientSession``, applies the client-wide caps on
request rate and requests in flight, translates aiohttp errors into ``TransportError``
(``raise ... from``) and retries what is safe to retry. A submit costs credits, so it
is retried only when the server certainly created nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp

from kiemashup._core.errors import (
    KieError,
    ProtocolError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    SubmitOutcomeUnknown,
    TransportError,
)
from kiemashup._core.policy import RateLimits, RetryPolicy, Timeouts
from kiemashup._core.protocol import parse_envelope, parse_submit
from kiemashup._core.timing import SlidingWindow, retry_delay

log = logging.getLogger("kiemashup.transport")
USER_AGENT = "kiemashup/0.1 (+https://pypi.org/project/kiemashup)"

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")


def translate(exc: BaseException, what: str) -> TransportError:
    """aiohttp/timeout errors -> ``TransportError``; ``sent`` is False only when provably unsent."""
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return TransportError(f"{what}: could not connect ({type(exc).__name__})", sent=False)
    if isinstance(exc, TimeoutError):
        return TransportError(f"{what}: timed out waiting for the reply", sent=True)
    return TransportError(f"{what}: connection failed ({type(exc).__name__})", sent=True)


class RateGate:
    """Spaces requests at most ``rate`` per second, first come first served."""

    __slots__ = ("_clock", "_interval", "_next", "_sleep")

    def __init__(self, rate: float, clock: Callable[[], float], sleep: Sleep) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0
        self._clock = clock
        self._sleep = sleep

    def reserve(self) -> float:
        """Take the next slot; the seconds to wait for it (synchronous: no coroutine per call)."""
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + self._interval
        return slot - now


RETRYABLE_READ = (
    TransportError,
    RateLimitError,
    ServiceUnavailableError,
    ServerError,
    ProtocolError,
)
RETRYABLE_SUBMIT = (RateLimitError, ServiceUnavailableError)


class Transport:
    """HTTP for one client: auth, caps, retries and error translation."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        session: aiohttp.ClientSession | None,
        limits: RateLimits,
        retry: RetryPolicy,
        timeouts: Timeouts,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._owns_session = session is None
        self._limits = limits
        self._retry = retry
        self._timeout = aiohttp.ClientTimeout(
            total=timeouts.total, connect=timeouts.connect, sock_read=timeouts.read
        )
        # Built once: requests are hot, and the key never needs formatting again.
        self._auth_headers = {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT}
        self._sleep = sleep
        self._rand = rand
        self._wall_clock = wall_clock
        self._in_flight = asyncio.Semaphore(limits.max_in_flight)
        self._gate = RateGate(limits.requests_per_second, time.monotonic, sleep)
        # A little slack over Kie's window: the server counts arrivals, we count sends.
        self._submit_window = SlidingWindow(
            limits.submits_per_window, limits.submit_window * 1.02 + 0.05
        )
        self.requests_sent = 0
        self.closed = False

    def __repr__(self) -> str:
        return f"<Transport {self.base_url}>"

    @property
    def session(self) -> aiohttp.ClientSession:
        if self.closed:
            raise KieError("the client is closed")
        if self._session is None:
            # No session-wide headers: every request sends its own (merging costs CPU).
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limits.connection_limit)
            )
        return self._session

    async def aclose(self) -> None:
        self.closed = True
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        data: Any = None,
        http_timeout: aiohttp.ClientTimeout | None = None,
    ) -> tuple[int, str | None, bytes]:
        """One HTTP exchange under the client's caps: (status, Retry-After, body).

        ``data`` is passed to aiohttp as is (a ``FormData`` for multipart uploads);
        ``http_timeout`` replaces the per-request timeouts (uploads have no total limit).
        """
        delay = self._gate.reserve()
        if delay > 0:
            await self._sleep(delay)
        async with self._in_flight:
            self.requests_sent += 1
            try:
                async with self.session.request(
                    method,
                    url,
                    params=params,
                    json=json,
                    data=data,
                    headers=self._auth_headers,
                    timeout=http_timeout or self._timeout,
                ) as resp:
                    body = await resp.read()
                    return resp.status, resp.headers.get("Retry-After"), body
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise translate(exc, f"{method} {url.split('?')[0]}") from exc

    async def call(
        self, method: str, url: str, *, params: Mapping[str, str] | None = None, json: Any = None
    ) -> Any:
        """One exchange, its envelope checked: the ``data`` or a typed error."""
        status, retry_after, body = await self.send(method, url, params=params, json=json)
        return parse_envelope(status, body, retry_after=retry_after, now=self._wall_clock())

    async def get(
        self, path: str, params: Mapping[str, str] | None = None, *, min_delay: float = 0.0
    ) -> Any:
        """A GET that is safe to repeat: retried on transient failures, then raised.

        ``min_delay`` floors each retry's delay (a poll's retries count against Kie's
        per-task limit of 3 per second).
        """
        url = self.base_url + path
        return await self.retrying(
            lambda: self.call("GET", url, params=params), min_delay=min_delay, what=f"GET {path}"
        )

    async def retrying(
        self,
        op: Callable[[], Awaitable[T]],
        retryable: tuple[type[Exception], ...] = RETRYABLE_READ,
        *,
        attempts: int | None = None,
        min_delay: float = 0.0,
        what: str = "request",
    ) -> T:
        """``op()`` retried on ``retryable`` errors with the client's backoff; the last one raised.

        The one retry loop for everything safe to repeat (polls, credits, uploads,
        downloads). Submits are not: see ``submit``.
        """
        limit = attempts or self._retry.attempts
        attempt = 1
        while True:
            try:
                return await op()
            except retryable as exc:
                if attempt >= limit:
                    raise
                delay = max(min_delay, retry_delay(exc, attempt, self._retry, self._rand()))
                log.debug("%s failed (%s); retry %d in %.2fs", what, exc, attempt, delay)
                await self._sleep(delay)
                attempt += 1

    async def pace_submit(self) -> None:
        """Wait for a free slot in Kie's creation limit (reserving it)."""
        now = time.monotonic()
        delay = self._submit_window.delay(now)
        self._submit_window.record(now + delay)
        if delay > 0:
            await self._sleep(delay)

    async def submit(self, path: str, payload: dict[str, Any], request: object) -> str:
        """POST a creation; retried only when the server certainly created nothing."""
        url = self.base_url + path
        attempt = 1
        while True:
            await self.pace_submit()
            try:
                status, retry_after, body = await self.send("POST", url, json=payload)
            except TransportError as exc:
                if exc.sent:
                    raise SubmitOutcomeUnknown(request, str(exc)) from exc
                error: Exception = exc
            else:
                try:
                    data = parse_envelope(
                        status, body, retry_after=retry_after, now=self._wall_clock()
                    )
                    return parse_submit(data)
                except RETRYABLE_SUBMIT as exc:
                    error = exc
                except ProtocolError as exc:
                    if status < 400:  # a 2xx reply we cannot read: the task may exist
                        raise SubmitOutcomeUnknown(request, str(exc)) from exc
                    raise
            if attempt >= self._retry.attempts:
                raise error
            await self._sleep(retry_delay(error, attempt, self._retry, self._rand()))
            attempt += 1
