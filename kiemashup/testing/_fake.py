"""FakeKieServer: a real aiohttp server on loopback that speaks the Kie wire format.

Every request goes through ``_serve``: it is recorded, matched against injected
faults, checked for auth, then handed to the endpoint's handler. Endpoints are
rows of ``_routes()``; adding one (uploads, say) means adding a row, a handler
and its name in ``_faults.ENDPOINTS``. Task state lives in ``FakeTask`` and its
JSON is rendered by the pure functions of ``_task`` (``callback_payload`` is
ready for a future callback sender).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from aiohttp import web

from kiemashup.testing._callbacks import CallbackDelivery, CallbackFaults, CallbackSender
from kiemashup.testing._faults import Fault, FaultQueue
from kiemashup.testing._replies import envelope, fault_response, hang_up, mangle, redact
from kiemashup.testing._schema import payload_problems
from kiemashup.testing._task import (
    SHAPES,
    FakeTask,
    FakeTrack,
    RecordedRequest,
    audio_body,
    count_in_window,
    events_over_limit,
    max_events_in_window,
    record_info_data,
)
from kiemashup.testing._timeline import Timeline
from kiemashup.testing._uploads import BODY_FAULT_KINDS, UploadStore, body_fault

__all__ = ["FakeKieServer"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

POLLS_PER_SECOND = 3
#: Paths whose body Kie reads as JSON: anything but ``Content-Type: application/json``
#: gets Kie's answer to wrong headers, code 401 (KIE-API.md §0).
_JSON_PATHS = frozenset(
    {
        "/api/v1/generate/mashup",
        "/api/v1/common/download-url",
        "/api/file-url-upload",
        "/api/file-base64-upload",
    }
)
#: How long a link from /api/v1/common/download-url stays valid (KIE-API.md §5.3).
DOWNLOAD_LINK_SECONDS = 20 * 60
_SHUTDOWN_TIMEOUT = 1.0


class FakeKieServer:
    """A Kie API look-alike on ``host``:``port`` (``port=0`` picks a free one).

    Use ``async with FakeKieServer() as server:`` and point a client at
    ``server.url``. Tasks follow their ``Timeline``, taken in order from
    ``script()``, else from ``timeline_for(payload)``, else ``default_timeline``.
    Time is read from ``clock`` (default ``time.monotonic``). Faults come from
    ``inject()``, else from ``fault_for(recorded_request)`` when set (seeded chaos).
    ``restart(down_for=...)`` takes the server down and back on the same port.

    ``api_key=None`` accepts any non-blank Bearer key; a string accepts only itself.
    ``shape`` chooses how replies fill in what Kie's docs leave open: ``"friendly"``
    (everything filled in) or ``"least-friendly"`` (see ``_task.SHAPES``), so code
    that only works with the convenient shape fails in your tests, not in production.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        default_timeline: Timeline | None = None,
        credits: int = 1000,
        credits_per_task: int = 12,
        creation_limit: int = 20,
        creation_window: float = 10.0,
        enforce_rate_limits: bool = True,
        audio_bytes: int = 32768,
        clock: Callable[[], float] | None = None,
        webhook_hmac_key: str | None = None,
        shape: str = "friendly",
    ) -> None:
        if shape not in SHAPES:
            raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")
        self.shape = shape
        self.api_key = api_key
        self.host = host
        self.port = port
        self.default_timeline = default_timeline or Timeline.success()
        self.credits = credits
        self.credits_per_task = credits_per_task
        self.creation_limit = creation_limit
        self.creation_window = creation_window
        self.enforce_rate_limits = enforce_rate_limits
        self.audio_bytes = audio_bytes
        self.clock: Callable[[], float] = clock or time.monotonic
        self.timeline_for: Callable[[dict[str, Any]], Timeline | None] | None = None
        # Asked for a fault when no injected one matches (seeded chaos, tests/test_soak.py).
        self.fault_for: Callable[[RecordedRequest], Fault | None] | None = None
        self.tasks: dict[str, FakeTask] = {}
        self.requests: list[RecordedRequest] = []
        self._script: deque[Timeline] = deque()
        self._faults = FaultQueue()
        self._creation_times: list[float] = []
        self._creation_violations = 0
        self.restarts = 0
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        # Callbacks (see _callbacks.py): signed with this key when set; faults apply to
        # tasks created while they are set.
        self.webhook_hmac_key = webhook_hmac_key
        self.callback_faults = CallbackFaults()
        self.callback_retry_delay = 0.05
        self.callback_timeout = 15.0
        self._callbacks = CallbackSender(self, lambda: self.clock())
        self.uploads = UploadStore(lambda: self.url)  # the fake File Upload API (_uploads.py)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving; ``url`` is valid afterwards."""
        if self._runner is not None:
            raise RuntimeError("FakeKieServer is already started")
        app = web.Application(client_max_size=64 * 1024 * 1024)  # base64 uploads are big
        for method, path, endpoint, handler, auth in self._routes():
            app.router.add_route(method, path, self._serve(endpoint, handler, auth=auth))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = runner.addresses[0][1]
        self.port = port  # fix: restart() rebinds the same port, not a new free one
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._url = f"http://{host}:{port}"

    async def close(self) -> None:
        """Stop serving and close every connection, idle keep-alive ones included."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        await self._callbacks.aclose()  # after the handlers: a submit may be delivering

    async def restart(self, down_for: float = 0.0) -> None:
        """Stop serving, stay down ``down_for`` seconds (connections are refused), serve again.

        Tasks, uploads, recorded requests, faults and pending callbacks are kept, and
        the same port is bound again, so clients reconnect to the same ``url``.
        Cancelled while down, it still binds again before the cancellation goes on.
        """
        runner, self._runner = self._runner, None
        if runner is None:
            raise RuntimeError("FakeKieServer is not started")
        await runner.cleanup()  # closes every connection; the callback sender keeps going
        self.restarts += 1
        try:
            await asyncio.sleep(down_for)
        finally:
            await self.start()

    async def __aenter__(self) -> FakeKieServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. ``http://127.0.0.1:54321``."""
        if self._url is None:
            raise RuntimeError("FakeKieServer is not started")
        return self._url

    # -- scripting ---------------------------------------------------------

    def script(self, *timelines: Timeline) -> None:
        """Use ``timelines``, in order, for the next tasks created."""
        self._script.extend(timelines)

    def inject(self, *faults: Fault) -> None:
        """Add ``faults``; each request takes the oldest one matching its endpoint."""
        self._faults.add(*faults)

    # -- observation -------------------------------------------------------

    @property
    def creations(self) -> int:
        """How many tasks were actually created."""
        return len(self.tasks)

    @property
    def callbacks_sent(self) -> list[CallbackDelivery]:
        """Every callback attempt (and drop), in the order they happened."""
        return self._callbacks.sent

    @property
    def callbacks_pending(self) -> int:
        """Callback deliveries planned (retries included) or in flight."""
        return self._callbacks.pending

    async def send_forged_callback(
        self,
        url: str,
        payload: dict[str, Any] | bytes,
        headers: dict[str, str] | None = None,
    ) -> int:
        """POST ``payload`` to ``url`` with exactly ``headers`` (no signing); the HTTP status."""
        return await self._callbacks.send(url, payload, headers)

    def count(self, endpoint: str) -> int:
        """Requests received for ``endpoint`` ("submit", "record-info", "credits", "audio")."""
        return sum(1 for request in self.requests if request.endpoint == endpoint)

    def max_polls_per_second(self, task_id: str | None = None) -> int:
        """Most record-info polls of one task in any sliding 1 s window."""
        tasks = [self.tasks[task_id]] if task_id is not None else self.tasks.values()
        return max((max_events_in_window(t.poll_times, 1.0) for t in tasks), default=0)

    def poll_rate_violations(self) -> int:
        """Polls that found more than 3 polls of their task in the last second."""
        return sum(
            events_over_limit(t.poll_times, 1.0, POLLS_PER_SECOND) for t in self.tasks.values()
        )

    def creation_rate_violations(self) -> int:
        """Creation attempts beyond ``creation_limit`` in a sliding ``creation_window``."""
        return self._creation_violations

    # -- plumbing ----------------------------------------------------------

    def _routes(self) -> list[tuple[str, str, str, Handler, bool]]:
        """(method, path, endpoint name, handler, needs auth); the catch-all comes last."""
        return [
            ("POST", "/api/v1/generate/mashup", "submit", self._submit, True),
            ("GET", "/api/v1/generate/record-info", "record-info", self._record_info, True),
            ("GET", "/api/v1/chat/credit", "credits", self._credits, True),
            ("POST", "/api/v1/common/download-url", "download-url", self._download_url, True),
            ("GET", "/files/{task_id}/{name}", "audio", self._file, False),
            ("POST", "/api/file-stream-upload", "upload", self.uploads.stream, True),
            ("POST", "/api/file-base64-upload", "upload", self.uploads.base64, True),
            ("POST", "/api/file-url-upload", "upload", self.uploads.url, True),
            ("GET", "/uploads/{path:.+}", "file", self.uploads.serve, False),
            ("*", "/{tail:.*}", "unknown", self._unknown, False),
        ]

    def _serve(self, endpoint: str, handler: Handler, *, auth: bool) -> Handler:
        async def serve(request: web.Request) -> web.StreamResponse:
            recorded = await self._record(request, endpoint)
            fault = self._faults.take(endpoint) if endpoint != "unknown" else None
            if fault is None and self.fault_for is not None and endpoint != "unknown":
                fault = self.fault_for(recorded)
            kind = fault.kind if fault is not None else None
            if kind == "slow":
                assert fault is not None
                await asyncio.sleep(fault.delay)
            elif fault is not None and kind not in (
                "drop_after_create",
                "mangle",
                *BODY_FAULT_KINDS,
            ):
                return fault_response(fault, request)
            if auth and not self._authorized(request):
                return envelope(401)
            json_path = auth and request.path in _JSON_PATHS
            if json_path and request.content_type != "application/json":
                return envelope(401)  # Kie's answer to missing or wrong headers
            response = await handler(request)
            if kind == "drop_after_create":  # the work is done, the reply is lost
                return hang_up(request)
            if kind == "mangle":
                return mangle(response)
            if fault is not None and kind in BODY_FAULT_KINDS:
                return await body_fault(fault, request, response)
            return response

        return serve

    async def _record(self, request: web.Request, endpoint: str) -> RecordedRequest:
        body: object | None = None
        if request.body_exists and request.content_type.endswith("json"):
            try:
                body = json.loads(await request.read())
            except ValueError:
                body = None
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            json=body,
            headers=redact(dict(request.headers)),
            endpoint=endpoint,
        )
        self.requests.append(recorded)
        return recorded

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return False
        return self.api_key is None or key.strip() == self.api_key

    def _choose_timeline(self, payload: dict[str, Any]) -> Timeline:
        if self._script:
            return self._script.popleft()
        if self.timeline_for is not None:
            chosen = self.timeline_for(payload)
            if chosen is not None:
                return chosen
        return self.default_timeline

    def _create(self, payload: dict[str, Any], now: float) -> FakeTask:
        task_id = uuid.uuid4().hex
        number = len(self.tasks) + 1
        timeline = self._choose_timeline(payload)
        create_time = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        tracks = tuple(
            FakeTrack.build(
                base_url=self.url,
                task_id=task_id,
                audio_id=str(uuid.uuid4()),
                payload=payload,
                number=number,
                create_time=create_time,
                index=index,
            )
            for index in range(timeline.tracks)
        )
        task = FakeTask(task_id, payload, now, timeline, tracks, shape=self.shape)
        self.tasks[task_id] = task
        self._creation_times.append(now)
        self.credits -= self.credits_per_task
        return task

    # -- endpoints ---------------------------------------------------------

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        try:
            payload: object = json.loads(await request.read())
        except ValueError:
            return envelope(422, "body: not valid JSON")
        problems = payload_problems(payload)
        if problems or not isinstance(payload, dict):
            return envelope(422, "; ".join(problems))
        now = self.clock()
        since = now - self.creation_window
        if sum(1 for t in self._creation_times if t > since) >= self.creation_limit:
            self._creation_violations += 1
            if self.enforce_rate_limits:
                return envelope(429, status=429)
        if self.credits < self.credits_per_task:
            return envelope(402)
        task = self._create(payload, now)
        await self._callbacks.schedule(task)
        return envelope(200, "success", {"taskId": task.task_id})

    async def _record_info(self, request: web.Request) -> web.StreamResponse:
        task_id = request.query.get("taskId", "")
        if not task_id:
            return envelope(422, "taskId: required")
        task = self.tasks.get(task_id)
        if task is None:
            return envelope(404, "task not found")
        now = self.clock()
        task.poll_times.append(now)
        over = count_in_window(task.poll_times, len(task.poll_times) - 1, 1.0) > POLLS_PER_SECOND
        if self.enforce_rate_limits and over:
            return envelope(429, status=429)
        return envelope(200, "success", record_info_data(task, task.status_at(now)))

    async def _credits(self, _request: web.Request) -> web.StreamResponse:
        return envelope(200, "success", self.credits)

    async def _download_url(self, request: web.Request) -> web.StreamResponse:
        """A temporary link for a URL of a generated file; 422 for any other URL."""
        try:
            body: object = json.loads(await request.read())
        except ValueError:
            return envelope(422, "body: not valid JSON")
        url = body.get("url") if isinstance(body, dict) else None
        prefix = f"{self.url}/files/"
        if not isinstance(url, str) or not url.startswith(prefix):
            return envelope(422, "url: must be the URL of a file Kie generated")
        task_id = url[len(prefix) :].split("/", 1)[0]
        if task_id not in self.tasks:
            return envelope(404, "file not found")
        expires = int(time.time()) + DOWNLOAD_LINK_SECONDS
        return envelope(200, "success", f"{url.split('?', 1)[0]}?expires={expires}")

    async def _file(self, request: web.Request) -> web.StreamResponse:
        task_id, name = request.match_info["task_id"], request.match_info["name"]
        if task_id not in self.tasks:
            return envelope(404, "file not found", status=404)
        content_type = "image/jpeg" if name.endswith(".jpeg") else "audio/mpeg"
        body = audio_body(f"{task_id}/{name}", self.audio_bytes)
        return web.Response(body=body, content_type=content_type)

    async def _unknown(self, request: web.Request) -> web.StreamResponse:
        return envelope(404, f"no such endpoint: {request.method} {request.path}", status=404)
