"""``MashupClient``: where transport, scheduler, handles and the receiver meet."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from kiemashup._backend import ClientBackend
from kiemashup._batch import RECOVER_WAIT, Batch, OnProgress, SharedJournal, run_batch
from kiemashup._core.callbacks import ReplayGuard, body_bytes, read_callback
from kiemashup._core.errors import (
    APIError,
    CallbackRejected,
    ClientClosedError,
    KieError,
    SubmitOutcomeUnknown,
)
from kiemashup._core.models import Stage, TaskSnapshot, Track
from kiemashup._core.policy import PollPolicy, RateLimits, RetryPolicy, Timeouts
from kiemashup._core.protocol import (
    CREDITS_PATH,
    DEFAULT_UPLOAD_PATH,
    PLACEHOLDER_CALLBACK_URL,
    RECORD_INFO_PATH,
    SUBMIT_PATH,
    callback_url_key,
    check_task_id,
    parse_credits,
    parse_record_info,
    record_info_callback_url,
    record_info_query,
)
from kiemashup._core.request import MashupRequest
from kiemashup._core.state import final_claim, make_snapshot
from kiemashup._handle import Hooks, LiveStates, TaskHandle, TaskState
from kiemashup._receiver import MAX_BODY, CallbackReceiver, usable_hmac_key
from kiemashup._scheduler import PollScheduler
from kiemashup._transfer import FileTransfer, Progress, UploadSource
from kiemashup._transport import OnOrphan, OrphanedSubmit, Transport, new_submit_key

if TYPE_CHECKING:  # the session is only passed through to the transport
    import aiohttp

log = logging.getLogger("kiemashup.client")

DEFAULT_BASE_URL = "https://api.kie.ai"
DEFAULT_UPLOAD_BASE_URL = "https://kieai.redpandaai.co"
EARLY_MAX = 10_000  # callbacks kept for unknown task ids, at most
EARLY_TTL = 600.0  # seconds such a callback is kept
EARLY_BYTES = 4 * 1024 * 1024  # and about this many bytes of them, at most
KEYS_MAX = 10_000  # per-submit keys remembered from keyed callbacks, at most


def _early_weight(snapshots: list[TaskSnapshot]) -> int:
    """About how many bytes kept callbacks hold (a claim has no tracks: ids and message).

    Task ids are ASCII (longer ones are refused); a message may not be, so its
    characters count four bytes each then, as Python may store them.
    """
    return sum(256 + len(s.task_id) + _text_bytes(s.error_message) for s in snapshots)


def _text_bytes(text: str | None) -> int:
    if not text:
        return 0
    return len(text) if text.isascii() else 4 * len(text)


def _usable_webhook_key(key: str | None, receiver: CallbackReceiver | None) -> str | None:
    """The key callbacks are verified with; a key the client cannot use is an error."""
    if key is None:
        return receiver.hmac_key if receiver is not None else None
    usable_hmac_key(key, "webhook_hmac_key")
    if receiver is not None and key != receiver.hmac_key:
        # The receiver verifies its own deliveries: a different key here would leave
        # them checked against another key than the one you meant.
        raise KieError(
            "webhook_hmac_key differs from the receiver's: pass the same key as "
            "CallbackReceiver(hmac_key=...)"
        )
    return key


def redact_url(url: str | None) -> str:
    """``url`` for a log line: scheme and host in full, path segments cut to 4 characters.

    A callback URL carries a secret path token (``CallbackReceiver.url``); a log
    names where callbacks should go without handing the token to whoever reads it.
    """
    if not url:
        return "(no callback URL)"
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    host, _, path = rest.partition("/")
    host = host.rpartition("@")[2]  # never user:password
    path = path.split("?")[0].split("#")[0]
    segments = [seg if len(seg) <= 4 else seg[:4] + "…" for seg in path.split("/") if seg]
    return f"{scheme}{sep}{host}/" + "/".join(segments)


class MashupClient:
    """An async client for Kie's Suno mashup API. Use it as ``async with MashupClient() as c``.

    One aiohttp session serves the client's whole life (yours if you pass
    ``session=``, closed only if the client made it). All waiting handles share one
    poll scheduler, and all requests share the client-wide caps in ``rate_limits``.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        upload_base_url: str | None = None,
        callback_url: str | None = None,
        receiver: CallbackReceiver | None = None,
        webhook_hmac_key: str | None = None,
        session: aiohttp.ClientSession | None = None,
        poll_policy: PollPolicy | None = None,
        retry_policy: RetryPolicy | None = None,
        rate_limits: RateLimits | None = None,
        timeouts: Timeouts | None = None,
        rand: Callable[[], float] | None = None,
        backend: ClientBackend | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("KIE_API_KEY")
        if not key or not key.strip():  # a blank key would only fail later, as a 401
            raise KieError("no API key: pass api_key= or set KIE_API_KEY (it is blank)")
        self.base_url = (base_url or os.environ.get("KIE_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.upload_base_url = (
            upload_base_url or os.environ.get("KIE_UPLOAD_BASE_URL") or DEFAULT_UPLOAD_BASE_URL
        ).rstrip("/")
        self.callback_url = callback_url
        self.receiver = receiver
        self._webhook_key = _usable_webhook_key(webhook_hmac_key, receiver)
        self._replays = ReplayGuard()  # handle_callback's, as the receiver has its own
        self.poll_policy = poll_policy or PollPolicy()
        self.rate_limits = rate_limits or RateLimits()
        self.retry_policy = retry_policy or RetryPolicy()
        self.timeouts = timeouts or Timeouts()
        rand = rand or random.random
        # Many processes, one account (docs/scaling.md): the creation window, Kie's
        # push-back, callbacks and polls are shared through the backend.
        self.backend = backend
        if backend is not None:
            backend.check_api_key(key)
        self._transport = Transport(
            api_key=key,
            base_url=self.base_url,
            session=session,
            limits=self.rate_limits,
            retry=self.retry_policy,
            timeouts=self.timeouts,
            rand=rand,
            shared_creations=(
                backend.creation_slots(self.rate_limits, self.timeouts) if backend else None
            ),
            shared_budget=backend.request_budget() if backend else None,
        )
        self._files = FileTransfer(self._transport, upload_base_url=self.upload_base_url)
        self._scheduler = PollScheduler(
            self._fetch,
            self.poll_policy,
            max_in_flight=self.rate_limits.max_in_flight,
            rand=rand,
            on_crash=self._fail_all,
            on_overdue=self._callbacks_overdue,
            on_recovered=self._callbacks_recovered,
        )
        self._hooks = Hooks(fetch=self._fetch, watch=self._watch, unwatch=self._scheduler.unwatch)
        self._record_info_url = self.base_url + RECORD_INFO_PATH
        self._states = LiveStates()
        self._closed = False
        # Callbacks for tasks we do not know yet (one can beat submit()'s reply),
        # bounded in count and in bytes.
        self._early: OrderedDict[str, tuple[float, list[TaskSnapshot]]] = OrderedDict()
        self._early_bytes = 0
        # Submits whose caller was cancelled after the POST left (docs/errors.md).
        self.orphans: list[OrphanedSubmit] = []
        # Per-submit keys seen in callBackUrls of callbacks -> the task ids claiming them.
        self._keys: OrderedDict[str, list[str]] = OrderedDict()
        self._key_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._unsubscribe = receiver.subscribe(self._delivered) if receiver is not None else None
        # Callbacks received by any process of the backend, and polls shared per task.
        self._link = (
            backend.link(self.feed, self.poll_policy, self._claimed)
            if backend is not None
            else None
        )

    def __repr__(self) -> str:
        return f"<MashupClient {self.base_url}>"

    async def __aenter__(self) -> MashupClient:
        if self._link is not None:
            await self._link.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop all polling, fail pending waits with ``ClientClosedError``, close the session."""
        if self._closed:
            return
        self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._link is not None:
            await self._link.aclose()
        await self._scheduler.aclose()
        self._fail_all(ClientClosedError("the client was closed"))
        for waiters in self._key_waiters.values():  # recover() calls still waiting
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(ClientClosedError("the client was closed"))
        await self._transport.aclose()

    def _fail_all(self, error: BaseException) -> None:
        """Hand ``error`` to every pending wait (closing, or the scheduler crashed)."""
        for state in list(self._states.values()):
            state.fail_waiters(error)

    # --- state ---------------------------------------------------------------------------------

    @property
    def requests_sent(self) -> int:
        """How many HTTP requests this client has sent to the API (all kinds)."""
        return self._transport.requests_sent

    def _state(self, task_id: str) -> TaskState:
        state = self._states.get(task_id)
        if state is None:
            state = TaskState(task_id)
            self._states[task_id] = state
            if self._link is not None:
                self._link.interest(task_id)
        return state

    def _now(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return 0.0

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("the client is closed")

    def _watch(self, state: TaskState) -> None:
        self._scheduler.watch(state)
        if state.wants_confirmation():  # a wait for a FIRST that only a callback announced
            self._scheduler.confirm(state, final=False)
        if self._closed:
            # A wait begun after aclose() would hang forever (nothing polls any more):
            # fail it the way aclose() fails the waits that were pending.
            state.fail_waiters(ClientClosedError("the client is closed"))

    def _fetch(self, state: TaskState) -> Awaitable[TaskSnapshot]:
        """One poll of ``state``'s task (retried), every attempt inside Kie's per-task limit.

        A plain function returning the coroutine: the poll path is hot, and every
        coroutine layer costs CPU on each resumption.
        """
        self._check_open()  # refresh() after aclose(): ClientClosedError, not a bare KieError
        if self._link is not None:  # one poll of the task serves every process
            return self._link.poll(state.task_id, lambda: self._get_snapshot(state.task_id, state))
        return self._get_snapshot(state.task_id, state)

    async def _get_snapshot(self, task_id: str, state: TaskState | None) -> TaskSnapshot:
        """One record-info poll (retried); with ``state``, inside the task's per-task limit."""
        url = self._record_info_url + record_info_query(task_id)
        call = self._transport.call

        def attempt() -> Awaitable[Any]:
            if state is None:
                return call("GET", url)
            return self._scheduler.paced(state, lambda: call("GET", url))

        failure: Exception | None = None
        try:  # the first attempt outside the retry loop: most polls succeed (hot path)
            data = await attempt()
        except Exception as exc:
            failure = exc
        if failure is not None:  # retried outside the handler: no chained tracebacks
            data = await self._transport.retrying(
                attempt, what="GET record-info", first_failure=failure
            )
        return parse_record_info(data, task_id=task_id)

    def _callbacks_overdue(self, state: TaskState) -> None:
        url = redact_url(self.receiver.url if self.receiver is not None else self.callback_url)
        log.warning(
            "kiemashup: no callback came for task %s although it moved on; callbacks to %s "
            "are not arriving (is the callback URL reachable from the internet?). Polling "
            "every task whose callbacks are overdue until callbacks arrive again.",
            state.task_id,
            url,
        )

    def _callbacks_recovered(self) -> None:
        log.info("kiemashup: callbacks are arriving again; polling is a safety net again")

    # --- public calls --------------------------------------------------------------------------

    def callback_url_for(self, request: MashupRequest, key: str | None = None) -> str:
        """The ``callBackUrl`` a submit will send for ``request`` (with its ``key``, if any).

        With a receiver, the per-submit ``key`` rides in the URL so ``recover()`` can
        find the task a submit created; a URL of your own is sent unchanged, except
        with a ``backend``, where ``callback_url`` is a ``CallbackReceiver``'s URL
        elsewhere and the key is appended the same way (docs/scaling.md).
        """
        if request.callback_url is not None:
            return request.callback_url
        if self.receiver is not None:
            return self.receiver.url_with_key(key) if key else self.receiver.url
        if self._link is not None and self.callback_url and key:
            return f"{self.callback_url.rstrip('/')}/{key}"
        return self.callback_url or PLACEHOLDER_CALLBACK_URL

    async def submit(self, request: MashupRequest) -> TaskHandle:
        """Create a mashup task and return its handle (paced to Kie's creation limit).

        Raises ``SubmitOutcomeUnknown`` (``.key``) if the request was sent but no usable
        reply came: the task may exist, it is never sent again behind your back, and
        ``recover(exc)`` can find it when the client has a receiver. Cancelled while
        waiting for a creation slot, nothing is sent; cancelled after the POST left,
        the exchange is finished first and its outcome lands in ``orphans``.
        """
        return await self._submit_tracked(request)

    async def _submit_tracked(
        self,
        request: MashupRequest,
        *,
        key: str | None = None,
        before_send: Callable[[], Awaitable[None]] | None = None,
        on_orphan: OnOrphan | None = None,
        on_sent: Callable[[asyncio.Future[str]], None] | None = None,
    ) -> TaskHandle:
        """``submit()`` with hooks (used by ``run_batch``): the submit ``key`` to use,
        ``before_send()`` awaited once the creation slot is held and just before the POST
        leaves, ``on_sent(exchange)`` as it leaves (the future is done once its reply is
        handled), and ``on_orphan(orphan)`` when the caller was cancelled after it left.
        """
        self._check_open()
        if not isinstance(request, MashupRequest):
            raise TypeError(f"submit() takes a MashupRequest, not {type(request).__name__}")
        if self._link is not None:
            await self._link.start()  # before the task exists: no callback falls between
        key = key or new_submit_key()
        url = self.callback_url_for(request, key)
        payload = request.to_payload()
        payload["callBackUrl"] = url  # not evolve(): that would validate the request again

        def orphaned(orphan: OrphanedSubmit) -> None:
            if orphan.maybe_created:
                self.orphans.append(orphan)
            if on_orphan is not None:
                on_orphan(orphan)

        task_id = await self._transport.submit(
            SUBMIT_PATH,
            payload,
            request,
            key=key,
            before_send=before_send,
            on_orphan=orphaned,
            on_sent=on_sent,
        )
        state = self._state(task_id)
        state.offer(make_snapshot(task_id, "PENDING", source="submit"))
        if url != PLACEHOLDER_CALLBACK_URL:
            self._scheduler.expect_callbacks(state)  # polls are only a safety net
        self._drain_early(state)
        return TaskHandle(state, self._hooks)

    async def recover(self, error: SubmitOutcomeUnknown) -> TaskHandle:
        """The handle of the task a submit of unknown outcome created, once that is proven.

        Waits for Kie's first callback to the submit's keyed ``callBackUrl`` (``error.key``),
        then confirms it with one record-info poll whose ``param.callBackUrl`` must hold
        the key; a callback that fails the check is ignored and the wait goes on. Deadlines
        are yours (``asyncio.timeout``): if no task was created, no callback ever comes.
        Raises ``SubmitOutcomeUnknown`` at once when recovery is impossible (no receiver,
        or no key). See docs/errors.md.
        """
        self._check_open()
        if not isinstance(error, SubmitOutcomeUnknown):
            raise TypeError(f"recover() takes a SubmitOutcomeUnknown, not {type(error).__name__}")
        key = error.key
        # Keyed callbacks come to a receiver here, or to one elsewhere through the backend.
        hears = self.receiver is not None or (self._link is not None and bool(self.callback_url))
        if not hears or not key:
            why = "no receiver" if not hears else "the submit has no key"
            raise SubmitOutcomeUnknown(
                error.request, f"{error.reason}; cannot recover: {why}", key=key
            ) from error
        tried: set[str] = set()
        if self._link is not None:  # keyed callbacks another process received earlier
            await self._link.start()
            for task_id in await self._link.claims(key):
                self._claimed(key, task_id)
        while True:
            task_id = await self._next_claim(key, tried)
            tried.add(task_id)
            try:
                # One confirming poll per claimed task id (a task new to this client).
                data = await self._transport.get(RECORD_INFO_PATH, {"taskId": task_id})
            except APIError as exc:
                if 400 <= exc.code < 500 and exc.code != 429:
                    continue  # no such task: a forged or mistaken callback
                raise
            if callback_url_key(record_info_callback_url(data)) != key:
                continue  # the task was not created by this submit: not confirmed
            handle = self.task(task_id)
            handle_state = self._state(task_id)
            handle_state.offer(parse_record_info(data, task_id=task_id))
            return handle

    async def _next_claim(self, key: str, tried: set[str]) -> str:
        """The next task id a keyed callback named for ``key`` that is not in ``tried``."""
        while True:
            for task_id in self._keys.get(key, ()):
                if task_id not in tried:
                    return task_id
            self._check_open()
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._key_waiters.setdefault(key, []).append(waiter)
            try:
                await waiter
            finally:
                waiters = self._key_waiters.get(key, [])
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    self._key_waiters.pop(key, None)

    def _delivered(self, snapshot: TaskSnapshot) -> bool:
        """The receiver's listener: note the delivery's submit key, then ``feed`` it."""
        receiver = self.receiver
        key = receiver.current_key if receiver is not None else None
        if key:
            self._claimed(key, snapshot.task_id)
        return self.feed(snapshot)

    def _claimed(self, key: str, task_id: str) -> None:
        """A keyed callback named ``task_id`` for the submit ``key`` (``recover`` checks it)."""
        claims = self._keys.setdefault(key, [])
        if task_id not in claims and len(claims) < 8:
            claims.append(task_id)
        self._keys.move_to_end(key)
        while len(self._keys) > KEYS_MAX:
            self._keys.popitem(last=False)
        for waiter in self._key_waiters.get(key, ()):
            if not waiter.done():
                waiter.set_result(None)

    def task(self, task_id: str) -> TaskHandle:
        """A handle for an existing task (no I/O); handles for one id share their state."""
        self._check_open()
        state = self._state(check_task_id(task_id))
        self._drain_early(state)
        return TaskHandle(state, self._hooks)

    async def get_task(self, task_id: str) -> TaskSnapshot:
        """One record-info call: the task's snapshot now."""
        self._check_open()
        state = self._states.get(
            check_task_id(task_id)
        )  # a live task's polls share its per-task limit
        snapshot = await self._get_snapshot(task_id, state)
        if state is not None:
            state.offer(snapshot)
        return snapshot

    async def credits(self) -> int:
        """The account's remaining credits."""
        self._check_open()
        return parse_credits(await self._transport.get(CREDITS_PATH))

    # --- files and batches (docs/files.md, docs/batch.md) ---------------------------------------

    async def upload(
        self,
        source: UploadSource,
        *,
        file_name: str | None = None,
        upload_path: str = DEFAULT_UPLOAD_PATH,
    ) -> str:
        """Upload a local audio file, bytes or a binary file object; return its public URL.

        Files are streamed (never read whole into memory); bytes up to 1 MiB go as
        base64. Raises ``FileValidationError`` for a missing, empty or non-audio file
        and ``UploadError`` (or a finer ``APIError``) when the upload host refuses it.
        Kie deletes uploaded files after 3 days.
        """
        self._check_open()
        return await self._files.upload(source, file_name=file_name, upload_path=upload_path)

    async def upload_url(
        self, url: str, *, file_name: str | None = None, upload_path: str = DEFAULT_UPLOAD_PATH
    ) -> str:
        """Have Kie copy the file at ``url`` to its upload host; return the new public URL."""
        self._check_open()
        return await self._files.upload_url(url, file_name=file_name, upload_path=upload_path)

    async def download(
        self,
        track_or_url: Track | str,
        dest: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Stream a track's audio (or any URL) to ``dest``, a folder or a file path.

        ``dest`` is a folder if it is one, ends with a separator, or is missing and has
        no extension (then it is created). Written to a temporary file and moved into
        place only when complete; Content-Length is verified and transient failures
        retried. An existing file is never replaced unless ``overwrite=True``
        (``DownloadError`` with ``.path`` otherwise). Result URLs expire: download promptly.
        """
        self._check_open()
        return await self._files.download(
            track_or_url, dest, progress=progress, overwrite=overwrite
        )

    def run_batch(
        self,
        requests: Iterable[MashupRequest],
        *,
        journal: str | os.PathLike[str] | SharedJournal | None = None,
        concurrency: int | None = None,
        resubmit_unknown: bool = False,
        stage: Stage = Stage.COMPLETE,
        on_progress: OnProgress | None = None,
        recover_wait: float = RECOVER_WAIT,
    ) -> Batch:
        """Submit and wait for many requests; yield a ``BatchItem`` per request as it finishes.

        Use it as ``async with client.run_batch(...) as items: async for item in items``:
        leaving the block stops all submitting at once. ``recover_wait`` bounds the wait
        for an unknown submit's callback (with a receiver). See docs/batch.md for the
        journal, resuming, recovery and ``resubmit_unknown``. ``journal`` may also be
        ``RedisBackend.journal(name)``: several processes run it at once, each item
        submitted once (docs/scaling.md).
        """
        self._check_open()
        return run_batch(
            self,
            requests,
            journal=journal,
            concurrency=concurrency,
            resubmit_unknown=resubmit_unknown,
            stage=stage,
            on_progress=on_progress,
            recover_wait=recover_wait,
        )

    def handle_callback(self, headers: Mapping[str, str], body: bytes | str) -> TaskSnapshot:
        """Verify, parse and feed one callback delivery; for endpoints on other frameworks.

        The signature is checked with ``webhook_hmac_key`` (or the receiver's key; with
        neither, deliveries are taken unsigned), a replayed signed delivery is
        recognised and fed to nobody, and the claim is fed as ``feed`` does. Returns the
        callback's snapshot (Kie's unconfirmed word: see ``feed``). Raises
        ``CallbackRejected``, whose ``http_status`` is the status to answer; answer 200
        otherwise. Never blocks.
        """
        raw = body_bytes(body)
        if len(raw) > MAX_BODY:
            raise CallbackRejected("body too large", http_status=413)
        delivery = read_callback(headers, raw, hmac_key=self._webhook_key, now=time.time())
        if not self._replays.replayed(delivery):
            self.feed(delivery.snapshot)
        return delivery.snapshot

    def feed(self, snapshot: TaskSnapshot) -> bool:
        """Hand a callback's snapshot (parsed elsewhere) to the task's waiters. Never blocks.

        A callback is Kie's unconfirmed word: it can move a task to TEXT or FIRST, never
        to COMPLETE or failed, and brings no audio URLs. A complete or error callback
        makes the client poll the task at once; only that poll, agreeing, ends a wait
        (and a wait for FIRST returns the poll's snapshot, with the track's URL). A
        callback for a task this client does not know yet is kept for a while, so one
        that arrives before ``submit()`` returns is not lost. Returns True when it
        moved a task forward.
        """
        state = self._states.get(snapshot.task_id)
        if state is None:
            self._keep_early(snapshot)
            return False
        return self._accept_callback(state, snapshot)

    def _accept_callback(self, state: TaskState, snapshot: TaskSnapshot) -> bool:
        if self._closed:
            return False
        latest = state.latest
        if latest is not None and latest.is_terminal:
            return False  # duplicates and late deliveries change nothing
        if final_claim(snapshot):
            # Confirming polls go first; until one agrees, poll at the normal cadence.
            self._scheduler.confirm(state)
            return False
        moved = state.offer(snapshot)
        if moved:
            # Only news restarts the grace clock: a duplicate or stale callback
            # (say, "first" re-sent every minute) must not postpone the safety-net poll
            # that rescues a task whose next callback was dropped.
            self._scheduler.callback_news(state)
            if state.wants_confirmation():  # someone waits for this FIRST: poll it now
                self._scheduler.confirm(state, final=False)
        return moved

    def _keep_early(self, snapshot: TaskSnapshot) -> None:
        now = self._now()
        early = self._early
        while early and (
            len(early) >= EARLY_MAX
            or self._early_bytes > EARLY_BYTES
            or next(iter(early.values()))[0] < now - EARLY_TTL
        ):
            self._early_bytes -= _early_weight(early.popitem(last=False)[1][1])
        entry = early.get(snapshot.task_id)
        if entry is None:
            early[snapshot.task_id] = (now, [snapshot])
        elif len(entry[1]) < 8:
            entry[1].append(snapshot)
        else:
            return
        self._early_bytes += _early_weight([snapshot])

    def _drain_early(self, state: TaskState) -> None:
        entry = self._early.pop(state.task_id, None)
        if entry is not None:
            self._early_bytes -= _early_weight(entry[1])
        if entry is not None and entry[0] >= self._now() - EARLY_TTL:
            for snapshot in entry[1]:
                self._accept_callback(state, snapshot)
