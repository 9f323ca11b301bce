"""The only module that uses the aiohttp client. Knows HTTP, not tasks.

It owns (or borrows) one ``aiohttp.ClientSession``. Every request -- API calls,
uploads and downloads -- goes through ``send`` or ``stream``, which apply the
client-wide caps on request rate and requests in flight, count requests, and
translate aiohttp errors into ``TransportError`` (``raise ... from``). ``retrying`` is
the one retry loop; each caller passes what may be retried. A submit costs credits,
so it is retried only when the server certainly created nothing
(``_core.protocol.submit_may_retry``); once its POST has left, its exchange is
finished even if the caller is cancelled, and the outcome is handed to ``on_orphan``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
import attrs

from kiemashup._backend import CreationSlots, SharedBudget
from kiemashup._core.errors import (
    ClientClosedError,
    KieError,
    ProtocolError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    SubmitOutcomeUnknown,
    TransportError,
)
from kiemashup._core.policy import RateLimits, RetryPolicy, Timeouts
from kiemashup._core.protocol import (
    certainly_not_created,
    parse_envelope,
    parse_submit,
    submit_may_retry,
)
from kiemashup._core.timing import CreationWindow, RequestBudget, retry_delay
from kiemashup._gate import Gate

log = logging.getLogger("kiemashup.transport")
USER_AGENT = "kiemashup/0.1 (+https://pypi.org/project/kiemashup)"

Sleep = Callable[[float], Awaitable[None]]
#: What a submit's reply says of its creation: (refused with a 429, that 429's Retry-After).
Verdict = tuple[bool, float | None]
T = TypeVar("T")


def translate(exc: BaseException, what: str) -> TransportError:
    """aiohttp/timeout errors -> ``TransportError``; ``sent`` is False only when provably unsent."""
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return TransportError(f"{what}: could not connect ({type(exc).__name__})", sent=False)
    if isinstance(exc, TimeoutError):
        return TransportError(f"{what}: timed out waiting for the reply", sent=True)
    return TransportError(f"{what}: connection failed ({type(exc).__name__})", sent=True)


RETRYABLE_READ = (
    TransportError,
    RateLimitError,
    ServiceUnavailableError,
    ServerError,
    ProtocolError,
)
#: What may be retried: exception types, or a rule taking the exception.
Retryable = tuple[type[Exception], ...] | Callable[[Exception], bool]


def new_submit_key() -> str:
    """A fresh per-submit key: "k" and 96 random bits, URL-safe (17 characters).

    The receiver serves ``<url>/<key>`` for keys of exactly this shape (``KEY_PATTERN``).
    """
    return "k" + secrets.token_urlsafe(12)


@attrs.frozen
class OrphanedSubmit:
    """A submit whose caller was cancelled after its POST left; the exchange was finished.

    ``task_id`` is the task it created; otherwise ``error`` says what came back:
    ``SubmitOutcomeUnknown`` (the task may exist), or an error that proves nothing was
    created. ``MashupClient.orphans`` keeps those with a task id or an unknown outcome.
    """

    request: object
    key: str | None
    task_id: str | None
    error: Exception | None = None

    @property
    def maybe_created(self) -> bool:
        """True unless the reply proved that no task was created."""
        return self.task_id is not None or isinstance(self.error, SubmitOutcomeUnknown)


OnOrphan = Callable[[OrphanedSubmit], None]


@attrs.frozen
class Multipart:
    """A multipart/form-data body: text ``fields`` then one file part (streamed)."""

    fields: tuple[tuple[str, str], ...]
    file_field: str
    file: object  # a binary file or an async iterator of bytes
    file_name: str
    content_type: str

    def form(self) -> aiohttp.FormData:
        form = aiohttp.FormData()
        for name, value in self.fields:
            form.add_field(name, value)
        form.add_field(
            self.file_field, self.file, filename=self.file_name, content_type=self.content_type
        )
        return form


class Stream:
    """A reply being streamed (downloads): status, headers and the body in chunks."""

    def __init__(self, resp: aiohttp.ClientResponse, what: str) -> None:
        self._resp = resp
        self._what = what
        self.status = resp.status
        self.retry_after = resp.headers.get("Retry-After")
        # Compressed bodies arrive decoded: their Content-Length says nothing about them.
        self.content_length = (
            resp.content_length if "Content-Encoding" not in resp.headers else None
        )

    async def chunks(self, size: int) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_chunked(size):
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise translate(exc, self._what) from exc


async def finish_exchange(
    exchange: asyncio.Future[T],
    report: Callable[[asyncio.Future[T]], None],
    left: Callable[[], bool] = lambda: True,
) -> T:
    """Await ``exchange``; if the caller is cancelled after it ``left()``, finish it first.

    Cancelled before the request left, the exchange is cancelled too (nothing is sent).
    Cancelled after, the first cancellation waits for the exchange (bounded by the
    request timeouts), so its outcome is ``report``-ed before the cancellation goes on;
    a second one stops waiting, and the outcome is reported in the background.
    """
    try:
        return await asyncio.shield(exchange)
    except asyncio.CancelledError:
        if not left():
            exchange.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await exchange
            if not left():
                raise
        reported = False

        def once(done: asyncio.Future[T]) -> None:
            nonlocal reported
            if not reported:
                reported = True
                report(done)

        exchange.add_done_callback(once)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.shield(exchange)
        if exchange.done():
            once(exchange)
        raise


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
        clock: Callable[[], float] = time.monotonic,
        shared_creations: CreationSlots | None = None,
        shared_budget: SharedBudget | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._owns_session = session is None
        self._limits = limits
        self._retry = retry
        # An API reply is small: it arrives in one read, so ``read`` bounds the whole
        # exchange, as one timer. aiohttp's per-read timer (sock_read) is re-armed on every
        # chunk received; on the poll path it cost 15 % of the client's CPU per poll
        # (docs/performance.md).
        self._timeout = aiohttp.ClientTimeout(
            total=min(timeouts.total, timeouts.read),
            connect=timeouts.connect,  # DNS, a pool wait and connecting (none for a pooled one)
            sock_connect=timeouts.connect,
        )
        # Uploads and downloads of big files can be long: bound connect and each read
        # (a stall), not the whole transfer.
        self._long_timeout = aiohttp.ClientTimeout(
            total=None,
            connect=timeouts.connect,
            sock_connect=timeouts.connect,
            sock_read=timeouts.read,
        )
        # Built once: requests are hot, and the key never needs formatting again.
        self._auth_headers = {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT}
        self._anon_headers = {"User-Agent": USER_AGENT}  # public result URLs get no key
        self._sleep = sleep
        self._rand = rand
        self._wall_clock = wall_clock
        self._clock = clock  # monotonic: the request budget and the creation window
        self._in_flight = Gate(limits.max_in_flight)
        # The total request rate adapts to Kie's push-back (429/455 on API reads);
        # requests_per_second, when set, is a fixed ceiling.
        self.budget = RequestBudget(limits.requests_per_second)
        # Kie's creation limit, counted by arrival with a margin (see CreationWindow).
        self._creations = CreationWindow(limits.submits_per_window, limits.submit_window)
        self._creation_line = Gate(1)  # submits take their places first come, first served
        self._creation_news = asyncio.Event()
        # A backend (kiemashup.redis) shares the window and push-back with other processes.
        self._shared_creations = shared_creations
        self._shared_budget = shared_budget
        self.requests_sent = 0
        self.closed = False

    def __repr__(self) -> str:
        return f"<Transport {self.base_url}>"

    def now(self) -> float:
        """Wall-clock seconds (for Retry-After dates)."""
        return self._wall_clock()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self.closed:
            raise ClientClosedError("the client is closed")
        if self._session is None:
            # No session-wide headers: every request sends its own (merging costs CPU).
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limits.connection_limit)
            )
        return self._session

    async def aclose(self) -> None:
        self.closed = True
        if self._shared_creations is not None:
            await self._shared_creations.aclose()
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    def _turn_now(self) -> bool:
        """Take a slot of the request budget if one is free now (no coroutine: hot path).

        While the budget limits nothing (no push-back from Kie, no fixed cap, no pause)
        there is no slot to book: nothing is recorded. With a shared budget the turn is
        always taken in ``_wait_turn`` (it may pause).
        """
        if self._shared_budget is not None:
            return False
        budget = self.budget
        if budget.rate is None:
            return self._clock() >= budget.paused_until
        return budget.reserve(self._clock(), horizon=0.0) <= 0

    async def _wait_turn(self) -> None:
        """The client's request budget: wait for this request's slot."""
        budget = self.budget
        if self._shared_budget is not None:
            await self._shared_budget.wait()
        while True:  # a slot taken before the budget was cut is given up for a new one
            cuts = budget.cuts
            delay = budget.reserve(self._clock(), horizon=budget.window)
            if delay <= 0:
                return
            if delay > budget.window:  # not taken: ask again once the rate may have grown
                await self._sleep(budget.window)
                continue
            await self._sleep(delay)
            if budget.cuts == cuts:
                return

    async def send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        multipart: Multipart | None = None,
        long: bool = False,
        before_leaving: Callable[[], Awaitable[None]] | None = None,
    ) -> tuple[int, str | None, bytes]:
        """One HTTP exchange under the client's caps: (status, Retry-After, body).

        ``multipart`` is sent as multipart/form-data (uploads); ``long`` drops the total
        time limit (big transfers) but keeps the connect and per-read ones.
        ``before_leaving()`` is awaited once the request holds its caps, just before
        it is handed to aiohttp.
        """
        session = self.session
        if not self._turn_now():
            await self._wait_turn()
        in_flight = self._in_flight
        if not in_flight.try_enter():
            await in_flight.enter()
        try:
            if before_leaving is not None:
                await before_leaving()
            self.requests_sent += 1
            try:
                async with session.request(
                    method,
                    url,
                    params=params,
                    json=json,
                    data=multipart.form() if multipart is not None else None,
                    headers=self._auth_headers,
                    timeout=self._long_timeout if long else self._timeout,
                ) as resp:
                    body = await resp.read()
                    return resp.status, resp.headers.get("Retry-After"), body
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise translate(exc, f"{method} {url.split('?')[0]}") from exc
        finally:
            in_flight.leave()

    @contextlib.asynccontextmanager
    async def stream(self, url: str) -> AsyncIterator[Stream]:
        """GET a public URL without the API key, under the client's caps; stream its body."""
        session = self.session
        what = f"GET {url.split('?')[0]}"
        if not self._turn_now():
            await self._wait_turn()
        await self._in_flight.enter()
        try:
            self.requests_sent += 1
            async with session.get(
                url, headers=self._anon_headers, timeout=self._long_timeout
            ) as resp:
                yield Stream(resp, what)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise translate(exc, what) from exc
        finally:
            self._in_flight.leave()

    async def call(
        self, method: str, url: str, *, params: Mapping[str, str] | None = None, json: Any = None
    ) -> Any:
        """One exchange, its envelope checked: the ``data`` or a typed error.

        Kie's rate limit (429), when it is a real share of the replies, slows the
        whole client down (``budget``); a stray one is left to the request's retry.
        """
        clock = self._clock
        sent_at = clock()
        status, retry_after, body = await self.send(method, url, params=params, json=json)
        # The wall clock only matters for a Retry-After date.
        now = self._wall_clock() if retry_after is not None else 0.0
        try:
            data = parse_envelope(status, body, retry_after=retry_after, now=now)
        except RateLimitError as exc:
            wait = exc.retry_after
            if wait is not None:
                wait = min(wait, self._retry.max_retry_after)
            cut = self.budget.pushed_back(clock(), sent_at, wait)
            if cut and self._shared_budget is not None:  # a real push-back: tell them all
                self._shared_budget.pushed_back(wait, self.budget.rate)
            raise
        except ServiceUnavailableError:
            raise  # maintenance: each request backs off (retry, then the outage cadence)
        except KieError:
            self.budget.accepted(clock())
            raise
        self.budget.accepted(clock())
        return data

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """A GET that is safe to repeat: retried on transient failures, then raised."""
        url = self.base_url + path
        return await self.retrying(lambda: self.call("GET", url, params=params), what=f"GET {path}")

    async def retrying(
        self,
        op: Callable[[], Awaitable[T]],
        retryable: Retryable = RETRYABLE_READ,
        *,
        attempts: int | None = None,
        min_delay: float = 0.0,
        what: str = "request",
        first_failure: Exception | None = None,
    ) -> T:
        """``op()`` retried while ``retryable`` allows, with the client's backoff; the last raised.

        The one retry loop for every request: polls, credits, uploads, downloads (with
        exception types) and submits (with ``submit_may_retry``). ``first_failure`` is
        what a first attempt made outside the loop raised (the poll path tries once
        without it: most polls succeed), counted as attempt 1.
        """
        may_retry: Callable[[Exception], bool] = (
            retryable if callable(retryable) else lambda exc: isinstance(exc, retryable)
        )
        limit = attempts or self._retry.attempts
        attempt = 1
        failure = first_failure
        while True:
            if failure is None:
                try:
                    return await op()
                except Exception as exc:
                    failure = exc
            if attempt >= limit or not may_retry(failure):
                raise failure
            delay = max(min_delay, retry_delay(failure, attempt, self._retry, self._rand()))
            log.debug("%s failed (%s); retry %d in %.2fs", what, failure, attempt, delay)
            failure = None
            await self._sleep(delay)
            attempt += 1

    async def pace_submit(self) -> object:
        """Wait for a place in Kie's creation limit and take it (first come, first served).

        Cancelled while waiting, it takes nothing; the place taken (returned) is freed by
        ``_creation_closed`` (the POST left) or ``_creation_abandoned`` (it never did).
        With a backend, the place is in the window every process of the account shares.
        """
        line = self._creation_line
        if not line.try_enter():
            await line.enter()
        try:
            if self._shared_creations is not None:
                return await self._shared_creations.take()
            while True:
                wait = self._creations.wait(self._clock())
                if wait == 0:
                    break
                if wait is None:  # a full window of submits still in flight: wait for a reply
                    self._creation_news.clear()
                    await self._creation_news.wait()
                else:
                    await self._sleep(wait)
            self._creations.opened()
            return None
        finally:
            line.leave()

    def _creation_closed(self, reply: Verdict | None, place: object = None) -> None:
        """A submit ended (``reply`` None: no reply); a 429 holds the next ones back."""
        rejected, wait = reply if reply is not None else (False, None)
        if self._shared_creations is not None:
            self._shared_creations.closed(place, rejected=rejected, retry_after=wait)
            return
        self._creations.closed(self._clock(), rejected=rejected, retry_after=wait)
        self._creation_news.set()

    def _creation_abandoned(self, place: object = None) -> None:
        """A submit that held a place was given up before its POST left: nothing was sent."""
        if self._shared_creations is not None:
            self._shared_creations.abandoned(place)
            return
        self._creations.abandoned()
        self._creation_news.set()

    async def submit(
        self,
        path: str,
        payload: dict[str, Any],
        request: object,
        *,
        key: str | None = None,
        before_send: Callable[[], Awaitable[None]] | None = None,
        on_orphan: OnOrphan | None = None,
        on_sent: Callable[[asyncio.Future[str]], None] | None = None,
    ) -> str:
        """POST a creation; the task id. Retried only when the server certainly created nothing.

        Each attempt waits for a creation slot and the client's request caps, then
        awaits ``before_send()`` (the batch journals its intent there), then sends;
        ``on_sent(exchange)`` sees the exchange (done when its reply is handled).
        Cancelled before the POST left, nothing is sent and the slot is given back;
        after, the exchange is finished first and its outcome goes to ``on_orphan``.
        """
        url = self.base_url + path

        report = _orphan_reporter(request, key, on_orphan)

        async def attempt() -> str:
            place = await self.pace_submit()
            left = False
            got: list[Verdict] = []  # what the reply said of the creation, once it came

            async def leave() -> None:
                nonlocal left
                if before_send is not None:
                    await before_send()
                left = True  # synchronously followed by the request itself

            exchange = asyncio.ensure_future(
                self._submit_once(url, payload, request, key, leave, lambda: left, got)
            )
            exchange.add_done_callback(
                lambda _done: (
                    self._creation_closed(got[0] if got else None, place)
                    if left
                    else self._creation_abandoned(place)
                )
            )
            if on_sent is not None:
                on_sent(exchange)
            return await finish_exchange(exchange, report, lambda: left)

        try:  # the first attempt outside the retry loop: most submits succeed (hot path)
            return await attempt()
        except Exception as exc:
            failure = exc
        # Retried outside the handler: no chained tracebacks.
        return await self.retrying(
            attempt, submit_may_retry, what=f"POST {path}", first_failure=failure
        )

    async def _submit_once(
        self,
        url: str,
        payload: dict[str, Any],
        request: object,
        key: str | None,
        leave: Callable[[], Awaitable[None]],
        left: Callable[[], bool],
        got: list[Verdict],
    ) -> str:
        """One submit exchange: the task id, a not-created error, or ``SubmitOutcomeUnknown``.

        An error before the request left (``left()`` still False) is raised as is.
        """
        try:
            status, retry_after, body = await self.send(
                "POST", url, json=payload, before_leaving=leave
            )
            verdict: Verdict = (False, None)
            try:
                data = parse_envelope(status, body, retry_after=retry_after, now=self._wall_clock())
            except RateLimitError as exc:
                verdict = (True, exc.retry_after)
                raise
            finally:
                got.append(verdict)  # read once this exchange is done (_creation_closed)
            return parse_submit(data)
        except Exception as exc:
            if not left() or certainly_not_created(exc):
                raise
            raise SubmitOutcomeUnknown(request, str(exc), key=key) from exc


def _orphan_reporter(
    request: object, key: str | None, on_orphan: OnOrphan | None
) -> Callable[[asyncio.Future[str]], None]:
    """What to do with the outcome of an exchange whose caller was cancelled."""

    def report(done: asyncio.Future[str]) -> None:
        if done.cancelled():
            return
        error = done.exception()
        if error is None:
            orphan = OrphanedSubmit(request, key, done.result())
        elif isinstance(error, Exception):
            orphan = OrphanedSubmit(request, key, None, error)
        else:
            return
        if orphan.maybe_created:
            log.warning(
                "a submit finished after its caller was cancelled: %s",
                f"task {orphan.task_id}" if orphan.task_id else f"outcome unknown (key {key})",
            )
        if on_orphan is not None:
            on_orphan(orphan)

    return report
