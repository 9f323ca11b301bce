"""``CallbackReceiver``: a small aiohttp server that takes Kie's callbacks.

It answers fast (Kie gives up after 15 s): the handler reads a bounded body, verifies
and parses it (cheap, pure ``_core.callbacks`` code), hands the snapshot to its listeners
(synchronous, non-blocking: a client only records it and wakes futures) and replies
200. Anything slow, such as the confirmation poll of a final callback, happens in the
client's scheduler, off the request path. A listener that raises is logged; it never
takes the receiver down.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from types import TracebackType

from aiohttp import web

from kiemashup._backend import CallbackPublisher
from kiemashup._core.callbacks import (
    Delivery,
    ReplayGuard,
    body_bytes,
    parse_callback_at,
    read_callback,
)
from kiemashup._core.errors import CallbackRejected, KieError
from kiemashup._core.models import TaskSnapshot

log = logging.getLogger("kiemashup.receiver")

MAX_BODY = 256 * 1024
REJECT_LOG_INTERVAL = 10.0  # seconds: rejected deliveries are logged at most this often


class RejectionLog:
    """Logs refused deliveries at most once per ``interval`` seconds, with a count.

    A flood of forgeries must not become a flood of log lines (nor tracebacks): the
    first refusal is logged at once, later ones are summed into the next line.
    """

    __slots__ = ("_clock", "_last", "_pending", "interval", "logger")

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = REJECT_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._last = float("-inf")
        self._pending = 0

    def rejected(self, reason: str, remote: str | None) -> None:
        """Count one refusal; log a line if the last one was ``interval`` seconds ago."""
        self._pending += 1
        now = self._clock()
        if now - self._last < self.interval:
            return
        count, self._pending, self._last = self._pending, 0, now
        self.logger.warning(
            "rejected %d callback(s) in the last %.0f s; latest from %s: %s",
            count,
            self.interval,
            remote,
            reason,
        )


PUBLISH_TIMEOUT = 2.0  # seconds to hand a callback to the backend (Kie waits 15 s)
Listener = Callable[[TaskSnapshot], object]
#: The per-submit key of the delivery being handed to listeners (see ``current_key``).
_DELIVERY_KEY: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "kiemashup_delivery_key", default=None
)


def parse_callback(
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    hmac_key: str | None = None,
    window: float = 300.0,
) -> TaskSnapshot:
    """Verify (when ``hmac_key`` is given) and parse one Kie callback into a ``TaskSnapshot``.

    For endpoints on other frameworks (``client.handle_callback`` does this, drops
    replays and feeds the client in one call). The result is a claim: see
    ``TaskSnapshot.confirmed``. Raises ``CallbackRejected`` (with ``.http_status`` to
    answer) for bad input.
    """
    raw = body_bytes(body)
    if len(raw) > MAX_BODY:
        raise CallbackRejected("body too large", http_status=413)
    return parse_callback_at(headers, raw, hmac_key=hmac_key, now=time.time(), window=window)


def usable_hmac_key(key: object, what: str) -> str | None:
    """``key`` if it can verify signatures (None: unsigned); an empty one is an error.

    An empty key would verify signatures anyone can compute: never a silent no-op.
    """
    if key is None:
        return None
    if not isinstance(key, str) or not key.strip():
        raise KieError(f"{what} must be a non-empty string (Kie's webhookHmacKey) or None")
    return key


class _Throttle(logging.Filter):
    """At most one line per ``interval`` seconds, with how many were left out; no traceback.

    On aiohttp's own server logger for the receiver: a malformed request (TLS bytes, a
    huge header, a bad chunk) is logged there with a traceback, once per request.
    """

    def __init__(self, interval: float = REJECT_LOG_INTERVAL) -> None:
        super().__init__()
        self.interval = interval
        self._last = float("-inf")
        self._left_out = 0

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        now = time.monotonic()
        if now - self._last < self.interval:
            self._left_out += 1
            return False
        if self._left_out:
            record.msg = f"{record.msg} (and {self._left_out} like it since the last line)"
            self._left_out = 0
        self._last = now
        return True


#: aiohttp's server messages for a receiver we serve: throttled, without tracebacks.
HTTP_LOG = logging.getLogger("kiemashup.receiver.http")
HTTP_LOG.addFilter(_Throttle())


class CallbackReceiver:
    """Receives Kie callbacks at ``url`` and wakes the handles of subscribed clients.

    Standalone: ``async with CallbackReceiver(port=8080, public_url=...) as receiver``.
    Mounted: ``your_app.add_subapp("/kie", receiver.app)`` with
    ``public_url="https://you.example/kie"``; then don't enter the receiver's context.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        public_url: str | None = None,
        hmac_key: str | None = None,
        *,
        window: float = 300.0,
        max_body: int = MAX_BODY,
        body_timeout: float = 10.0,
        # Below the promised 5 s: aiohttp waits this long for a request whose body is
        # still arriving when close() starts.
        shutdown_timeout: float = 3.0,
        path_token: str | None = None,
        backend: CallbackPublisher | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.public_url = public_url.rstrip("/") if public_url else None
        self._hmac_key = usable_hmac_key(hmac_key, "hmac_key")
        self.window = window
        self.max_body = max_body
        self.body_timeout = body_timeout
        self.shutdown_timeout = shutdown_timeout
        # 192 random bits: the URL itself is a capability an attacker cannot guess.
        self._token = path_token or secrets.token_urlsafe(24)
        self._listeners: list[Listener] = []
        self._replays = ReplayGuard()
        self._rejections = RejectionLog(log)
        # Many processes (docs/scaling.md): accepted callbacks also go to every client
        # of the backend's namespace, whichever process they run in.
        self.backend = backend
        self._runner: web.AppRunner | None = None
        self.accepted = 0
        self.rejected = 0
        self.replayed = 0  # signed deliveries seen before: answered 200, handed to nobody
        self.app = web.Application(client_max_size=max_body)
        self.app.router.add_post(f"/{self._token}", self._handle)
        self.app.router.add_post(f"/{self._token}/{{key:k[A-Za-z0-9_-]{{16}}}}", self._keyed)
        # Reliability: a wrong path token (or method) is a forgery too; count it in
        # ``rejected`` so that every refused delivery is accounted for (still a 404).
        self.app.router.add_route("*", "/{tail:.*}", self._not_found)

    def __repr__(self) -> str:
        signed = "signed" if self._hmac_key else "unsigned"
        return f"<CallbackReceiver {self.host}:{self.port} {signed}>"

    @property
    def hmac_key(self) -> str | None:
        """The key deliveries must be signed with (None: signatures are not checked)."""
        return self._hmac_key

    @property
    def url(self) -> str:
        """The ``callBackUrl`` to send: the public URL plus the secret path token."""
        if self.public_url is not None:
            return f"{self.public_url}/{self._token}"
        if self._runner is None:
            raise KieError("the receiver has no public_url and is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6 literal
        return f"http://{host}:{self.port}/{self._token}"

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(snapshot)`` for every accepted callback; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    # --- per-submit keys (money safety: recovering a submit of unknown outcome) ---------------
    # A submit's callBackUrl may be ``url_with_key(key)``: the same endpoint with the
    # submit's key (``k`` + 16 URL-safe characters) as one more path segment; any other
    # longer path is still a 404. Deliveries there are handled exactly like those to
    # ``url``; while listeners run, ``current_key`` names the key.

    def url_with_key(self, key: str) -> str:
        """``url`` plus ``/<key>``: the ``callBackUrl`` of one submit (``key`` is URL-safe)."""
        return f"{self.url}/{key}"

    @property
    def current_key(self) -> str | None:
        """Inside a listener: the per-submit key of the delivery's URL, else None."""
        return _DELIVERY_KEY.get()

    async def _keyed(self, request: web.Request) -> web.Response:
        reset = _DELIVERY_KEY.set(request.match_info["key"])
        try:
            return await self._handle(request)
        finally:
            _DELIVERY_KEY.reset(reset)

    # --- serving -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            raise KieError("the receiver is already started")
        runner = web.AppRunner(
            self.app,
            shutdown_timeout=self.shutdown_timeout,
            handle_signals=False,
            access_log=None,
            logger=HTTP_LOG,
            # Kie sends plain JSON: a compressed body is refused unread, never inflated
            # (200 KB of gzip inflate to 200 MB, half a second of the loop).
            auto_decompress=False,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:  # a failed bind must not leak the runner
            await runner.cleanup()
            raise
        self._runner = runner
        addresses = runner.addresses
        if self.port == 0 and addresses:
            self.port = int(addresses[0][1])

    async def close(self) -> None:
        """Finish in-flight requests and close, within ``shutdown_timeout`` seconds."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> CallbackReceiver:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            delivery = await self._read(request)
        except CallbackRejected as exc:
            return self._reject(request, exc)
        except Exception:  # a bug in reading must cost one 400, not a traceback per request
            return self._reject(request, CallbackRejected("unreadable delivery"))
        if self._replays.replayed(delivery):
            self.replayed += 1
            return web.json_response({"status": "duplicate"})
        self.accepted += 1  # after the replay check: replays are not "accepted"
        snapshot = delivery.snapshot
        for listener in list(self._listeners):
            try:
                listener(snapshot)
            except Exception:  # a listener bug must not cost Kie's delivery or our server
                log.exception("callback listener failed for task %s", snapshot.task_id)
        if self.backend is not None:
            await self._publish(self.backend, snapshot)
        return web.json_response({"status": "received"})

    async def _publish(self, backend: CallbackPublisher, snapshot: TaskSnapshot) -> None:
        """Hand the callback to the backend; on failure the other replicas fall back to polls."""
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                await backend.publish(snapshot, _DELIVERY_KEY.get())
        except Exception as exc:  # Redis trouble must not cost Kie's delivery
            log.warning(
                "callback for task %s not published to the backend (%s); other replicas "
                "will find its news by polling",
                snapshot.task_id,
                type(exc).__name__,
            )

    async def _read(self, request: web.Request) -> Delivery:
        """The delivery in ``request``: bounded in size and time, verified, parsed."""
        if request.content_length is not None and request.content_length > self.max_body:
            raise CallbackRejected("body too large", http_status=413)
        try:
            async with asyncio.timeout(self.body_timeout):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise CallbackRejected("body too large", http_status=413) from exc
        except TimeoutError as exc:  # a slow-drip sender does not hold us hostage
            raise CallbackRejected("body not received in time", http_status=408) from exc
        if len(body) > self.max_body:
            # Mounted with add_subapp, the *parent* app's client_max_size governs
            # read(), so a chunked body over our limit could get through.
            raise CallbackRejected("body too large", http_status=413)
        return read_callback(
            request.headers, body, hmac_key=self._hmac_key, now=time.time(), window=self.window
        )

    def _reject(self, request: web.Request, exc: CallbackRejected) -> web.Response:
        self.rejected += 1
        self._rejections.rejected(exc.reason, request.remote)
        return web.json_response(
            {"status": "rejected", "reason": exc.reason}, status=exc.http_status
        )

    async def _not_found(self, request: web.Request) -> web.Response:
        return self._reject(request, CallbackRejected("not found", http_status=404))
