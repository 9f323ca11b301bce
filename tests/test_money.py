"""Never pay twice, never lose a paid task: submits, batches and the journal (issue 10).

Every test drives real HTTP against FakeKieServer on loopback (a small gateway in
front of it where a 5xx after creation is needed) and counts creations.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from conftest import FAST_POLL, FAST_RETRY, TEST_API_KEY

import kiemashup._journal as journal_module
from kiemashup import (
    APIError,
    AuthenticationError,
    BatchItem,
    CallbackReceiver,
    ClientClosedError,
    InsufficientCreditsError,
    JournalError,
    MashupClient,
    MashupRequest,
    ProtocolError,
    RateLimitError,
    RateLimits,
    RequestValidationError,
    ServerError,
    ServiceUnavailableError,
    SubmitOutcomeUnknown,
    Timeouts,
    TransportError,
)
from kiemashup._core.protocol import certainly_not_created
from kiemashup._journal import Journal, fingerprint
from kiemashup.testing import FakeKieServer, Fault, Timeline, callback_payload, signed_headers

URLS = ("https://example.com/a.mp3", "https://example.com/b.mp3")
HMAC_KEY = "whk-money-5a1e"


def item_request(index: int) -> MashupRequest:
    """A distinct, valid request for item ``index`` (its prompt names it)."""
    return MashupRequest(URLS, prompt=f"item {index}")


def item_of(payload: dict[str, Any]) -> int:
    """The item index a submitted payload belongs to."""
    return int(str(payload["prompt"]).split()[1])


async def collect(batch: AsyncIterator[BatchItem]) -> list[BatchItem]:
    """Every item of a batch."""
    return [item async for item in batch]


def journal_tasks(path: Path) -> set[str]:
    """Every task id the journal at ``path`` records."""
    lines = path.read_bytes().splitlines()[1:]
    return {record["task"] for record in map(json.loads, lines) if "task" in record}


def journal_events(path: Path) -> collections.Counter[str]:
    """How many records of each event the journal holds."""
    return collections.Counter(
        json.loads(line)["ev"] for line in path.read_bytes().splitlines()[1:]
    )


@pytest_asyncio.fixture
async def server() -> AsyncIterator[FakeKieServer]:
    """A fake Kie without a creation limit that signs its callbacks."""
    async with FakeKieServer(
        api_key=TEST_API_KEY, creation_limit=100_000, credits=10**7, webhook_hmac_key=HMAC_KEY
    ) as fake:
        yield fake


def make(server_url: str, **overrides: Any) -> MashupClient:
    """A fast client for ``server_url``; creation pacing lifted unless overridden."""
    options: dict[str, Any] = {
        "base_url": server_url,
        "poll_policy": FAST_POLL,
        "retry_policy": FAST_RETRY,
        "rate_limits": RateLimits(submits_per_window=100_000, requests_per_second=5000),
        "timeouts": Timeouts(connect=2.0, read=5.0, total=10.0),
    }
    options.update(overrides)
    return MashupClient(TEST_API_KEY, **options)


@pytest_asyncio.fixture
async def gateway(server: FakeKieServer) -> AsyncIterator[str]:
    """A gateway in front of the fake that forwards every submit, then answers 504."""
    session = aiohttp.ClientSession()

    async def forward(request: web.Request) -> web.StreamResponse:
        async with session.request(
            request.method,
            server.url + request.path_qs,
            data=await request.read(),
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
        ) as upstream:
            body = await upstream.read()
            if request.path.endswith("/generate/mashup"):
                return web.Response(status=504, text="<html>Gateway Time-out</html>")
            return web.Response(status=upstream.status, body=body, headers=upstream.headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
        await session.close()


# --- 1. what counts as created ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "not_created"),
    [
        (RateLimitError(429, "slow", http_status=429), True),
        (ServiceUnavailableError(455, "maintenance"), True),
        (AuthenticationError(401, "bad key"), True),
        (InsufficientCreditsError(402, "no credits"), True),
        (APIError(422, "bad field"), True),
        (TransportError("refused", sent=False), True),
        (ClientClosedError("closed"), True),
        (TransportError("timed out", sent=True), False),
        (ServerError(504, "gateway", http_status=504), False),
        (ServerError(500, "body code", http_status=200), False),
        (APIError(422, "4xx code in a 5xx", http_status=502), False),
        (APIError(302, "odd code"), False),
        (ProtocolError("unreadable 2xx"), False),
        (RuntimeError("anything else"), False),
    ],
)
def test_one_rule_says_what_counts_as_created(error: Exception, not_created: bool) -> None:
    """Only 429, 455, a 4xx refusal or a connection never opened prove nothing was created."""
    assert certainly_not_created(error) is not_created


async def test_gateway_504_after_creation_is_unknown_and_a_rerun_pays_nothing(
    server: FakeKieServer, gateway: str, tmp_path: Path
) -> None:
    """A 504 after Kie created the task: SubmitOutcomeUnknown, journaled; the rerun creates 0."""
    journal = tmp_path / "run.journal"
    async with make(gateway) as client:
        with pytest.raises(SubmitOutcomeUnknown) as info:
            await client.submit(item_request(99))
        assert isinstance(info.value.__cause__, ServerError)
        assert server.creations == 1
        [item] = await collect(client.run_batch([item_request(0)], journal=journal))
        assert isinstance(item.error, SubmitOutcomeUnknown)
        [again] = await collect(client.run_batch([item_request(0)], journal=journal))
        assert isinstance(again.error, SubmitOutcomeUnknown)
    assert server.creations == 2  # one per distinct request: the rerun sent nothing
    assert server.count("submit") == 2


# --- 2. a paid task is never lost -------------------------------------------------------------


async def test_submit_under_a_short_deadline_keeps_the_task_id(server: FakeKieServer) -> None:
    """asyncio.timeout shorter than the reply: TimeoutError, and the id is in client.orphans."""
    server.inject(Fault("submit", "slow", delay=0.6))
    async with make(server.url) as client:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await client.submit(item_request(0))
        [orphan] = client.orphans
        assert orphan.task_id in server.tasks
        assert orphan.request == item_request(0)
        assert orphan.key
        snapshot = await client.task(orphan.task_id).wait()
        assert snapshot.task_id == orphan.task_id
    assert server.creations == 1


async def test_cancelled_while_waiting_for_a_slot_sends_nothing_and_frees_it(
    server: FakeKieServer,
) -> None:
    """A submit cancelled in the pacing queue sends nothing; its slot goes to the next one."""
    limits = RateLimits(submits_per_window=1, submit_window=3.0, requests_per_second=5000)
    loop = asyncio.get_running_loop()
    async with make(server.url, rate_limits=limits) as client:
        await client.submit(item_request(0))
        start = loop.time()
        waiting = asyncio.create_task(client.submit(item_request(1)))
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await client.submit(item_request(2))  # takes the freed slot (~3 s), not the next (~6 s)
        assert loop.time() - start < 5.0
        assert client.orphans == []
    assert sorted(item_of(t.payload) for t in server.tasks.values()) == [0, 2]


async def test_cancelled_batch_with_slow_fsync_loses_no_id_and_rerun_pays_nothing_more(
    server: FakeKieServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancel a batch while journal writes queue behind a slow fsync: every id is on disk."""
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        import time

        time.sleep(0.005)
        real_fsync(fd)

    monkeypatch.setattr(journal_module, "_fsync", slow_fsync)
    server.default_timeline = Timeline.success(text=0.5, first=1.0, complete=1.5)
    journal = tmp_path / "run.journal"
    count = 60
    async with make(server.url) as client:
        submitted = 0
        enough = asyncio.Event()

        def progress(_index: int, event: str) -> None:
            nonlocal submitted
            submitted += event == "submitted"
            if submitted >= 15:
                enough.set()

        async def run() -> None:
            batch = client.run_batch(
                map(item_request, range(count)), journal=journal, on_progress=progress
            )
            async with batch as items:
                async for _ in items:
                    pass

        task = asyncio.create_task(run())
        async with asyncio.timeout(30):
            await enough.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        created = set(server.tasks)
        assert created <= journal_tasks(journal)  # 0 lost ids
        monkeypatch.setattr(journal_module, "_fsync", real_fsync)
        server.default_timeline = Timeline.success()
        items = await collect(client.run_batch(map(item_request, range(count)), journal=journal))
    assert sorted(item.index for item in items) == list(range(count))
    assert all(item.ok for item in items)
    per_item = collections.Counter(item_of(t.payload) for t in server.tasks.values())
    assert server.creations == count  # 0 extra creations
    assert max(per_item.values()) == 1


# --- 4. the journal is a database -------------------------------------------------------------

PACED = """
import asyncio, sys
from kiemashup import MashupClient, MashupRequest, PollPolicy, RateLimits
urls = ("https://example.com/a.mp3", "https://example.com/b.mp3")
requests = [MashupRequest(urls, prompt=f"item {i}") for i in range(int(sys.argv[1]))]
async def main():
    async with MashupClient(
        poll_policy=PollPolicy(initial=0.02, growth=0.0, maximum=0.05, after_first=0.05),
        rate_limits=RateLimits(submits_per_window=4, submit_window=30.0, requests_per_second=2000),
    ) as client:
        async for item in client.run_batch(requests, journal=sys.argv[2], concurrency=12):
            print(item.index, flush=True)
asyncio.run(main())
"""


async def test_sigkill_while_items_wait_for_slots_leaves_only_sent_ones_unknown(
    server: FakeKieServer, tmp_path: Path
) -> None:
    """SIGKILL while 8 items wait for pacing slots: no intent for them, the rerun sends them."""
    journal = tmp_path / "paced.journal"
    env = {**os.environ, "KIE_API_KEY": TEST_API_KEY, "KIE_BASE_URL": server.url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PACED, "12", str(journal), env=env,
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(3000):  # at most ~30 s
            if journal.exists() and journal_events(journal)["submitted"] >= 4:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the other 8 are waiting for slots 30 s away
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    assert server.creations == 4
    assert journal_events(journal)["intent"] == 4  # intents only for POSTs that left
    async with make(server.url) as client:
        items = await collect(client.run_batch(map(item_request, range(12)), journal=journal))
    assert all(item.ok for item in items)
    assert server.creations == 12
    assert max(collections.Counter(item_of(t.payload) for t in server.tasks.values()).values()) == 1


def test_lone_surrogates_are_rejected_at_validation() -> None:
    """A lone surrogate in any text field is a RequestValidationError naming the field."""
    with pytest.raises(RequestValidationError) as info:
        MashupRequest(URLS, custom_mode=True, style="pop", title="t\ud800", instrumental=True)
    assert [p.field for p in info.value.problems] == ["title"]
    with pytest.raises(RequestValidationError):
        MashupRequest(URLS, prompt="fine \udfff")


def test_journal_never_crashes_on_a_lone_surrogate_from_the_server(tmp_path: Path) -> None:
    """Server text with a lone surrogate is written as an ASCII escape and read back as is."""
    journal = Journal(tmp_path / "j")
    item = (fingerprint({"prompt": "x"}), 0)
    journal.append_soon(item, 0, "unknown", key="k", reason="odd \ud800 reply")
    journal.close()
    again = Journal(tmp_path / "j")
    entry = again.entry(item)
    again.close()
    assert entry is not None
    assert entry.reason == "odd \ud800 reply"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\n\n\n", "blank"),
        (b"my shopping list\n", "not a kiemashup batch journal"),
        (b"just one line, no newline", "not a kiemashup batch journal"),
        (b'{"journal":"kiemashup-batch","v":1}\n', "format 1"),
        (b'{"journal":"kiemashup-batch","v":2}\n{"fp":"x","n":0,"ev":"intent"}\n', "line 2"),
        (
            b'{"journal":"kiemashup-batch","v":2}\n'
            b'{"fp":"' + b"a" * 64 + b'","n":0,"i":0,"ev":"done","task":"t","snapshot":{}}\n',
            "bad snapshot",
        ),
    ],
    ids=["blank", "text", "one line", "old format", "tampered", "bad snapshot"],
)
async def test_a_non_journal_file_is_a_journal_error_and_never_overwritten(
    server: FakeKieServer, tmp_path: Path, content: bytes, reason: str
) -> None:
    """Blank, foreign, old or tampered files: JournalError naming the path; unchanged; 0 paid."""
    path = tmp_path / "given.journal"
    path.write_bytes(content)
    async with make(server.url) as client:
        for _ in range(2):
            with pytest.raises(JournalError) as info:
                await collect(client.run_batch([item_request(0)], journal=path))
            assert info.value.path == path
            assert reason in str(info.value)
    assert path.read_bytes() == content
    assert server.creations == 0


async def test_unusable_journal_paths_are_journal_errors(
    server: FakeKieServer, tmp_path: Path
) -> None:
    """A folder, or a file in a missing folder: JournalError naming the path; nothing paid."""
    async with make(server.url) as client:
        for path, reason in [
            (tmp_path, "folder"),
            (tmp_path / "missing" / "run.journal", "folder does not exist"),
        ]:
            with pytest.raises(JournalError) as info:
                async with client.run_batch([item_request(0)], journal=path):
                    pass
            assert info.value.path == path
            assert reason in info.value.reason
    assert server.creations == 0


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Any:
    """A 64 KiB tmpfs where the machine allows mounting one (root), else None."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or os.system(f"mount -t tmpfs -o size=64k tmpfs {mount} 2>/dev/null"):
        yield None
        return
    try:
        yield mount
    finally:
        os.system(f"umount {mount}")


async def test_disk_full_between_intent_and_submitted_names_the_task(
    server: FakeKieServer, tmp_path: Path, tiny_fs: Path | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC writing `submitted`: JournalError with the path and the created task's id.

    On a tiny tmpfs (root) the disk is really full: the journal is padded so that the
    `intent` record fills its last page exactly. Elsewhere the write error is injected.
    """
    folder = tiny_fs or tmp_path
    path = folder / "run.journal"
    if tiny_fs is not None:
        payload = item_request(0).to_payload()
        intent = {"fp": fingerprint(payload), "n": 0, "i": 0, "ev": "intent", "key": "k" * 17}
        room = len(json.dumps(intent, separators=(",", ":"))) + 1
        path.write_bytes(_padded_journal(4096 - room))
        _fill(folder / "filler")
    else:
        real_write = os.write

        def write(fd: int, data: Any) -> int:
            if b'"ev":"submitted"' in bytes(data):
                real_write(fd, bytes(data)[:10])  # a partial line, as a full disk may leave
                raise OSError(28, "No space left on device")
            return real_write(fd, data)

        monkeypatch.setattr(journal_module, "_os_write", write)
    async with make(server.url) as client:
        with pytest.raises(JournalError) as info:
            await collect(client.run_batch([item_request(0)], journal=path))
    [task_id] = server.tasks
    assert info.value.path == path
    assert info.value.task_id == task_id
    assert task_id in str(info.value)
    assert "No space left" in info.value.reason
    lines = path.read_bytes().splitlines()
    assert all(json.loads(line) for line in lines)  # a partial line was cut back off
    assert json.loads(lines[-1])["ev"] == "intent"


async def test_read_only_journal_is_a_journal_error(
    server: FakeKieServer, tiny_fs: Path | None
) -> None:
    """A journal on a read-only file system: JournalError naming the path, nothing paid."""
    if tiny_fs is None:
        pytest.skip("needs a read-only mount (root); root ignores file modes")
    path = tiny_fs / "run.journal"
    path.write_bytes(b'{"journal":"kiemashup-batch","v":2}\n')
    assert await asyncio.to_thread(os.system, f"mount -o remount,ro {tiny_fs}") == 0
    try:
        async with make(server.url) as client:
            with pytest.raises(JournalError) as info:
                await collect(client.run_batch([item_request(0)], journal=path))
        assert info.value.path == path
    finally:
        await asyncio.to_thread(os.system, f"mount -o remount,rw {tiny_fs}")
    assert server.creations == 0


# --- 5. batches end cleanly -------------------------------------------------------------------


@pytest.mark.parametrize("form", ["async with", "plain async for"])
async def test_break_after_one_item_stops_all_submitting(
    server: FakeKieServer, tmp_path: Path, form: str
) -> None:
    """After `break` on the first item no submit leaves, with either form of run_batch."""
    limits = RateLimits(submits_per_window=2, submit_window=0.6, requests_per_second=5000)
    journal = tmp_path / "run.journal"
    async with make(server.url, rate_limits=limits) as client:
        requests = map(item_request, range(10))
        if form == "async with":
            async with client.run_batch(requests, journal=journal, concurrency=10) as items:
                async for _ in items:
                    break
        else:
            async for _ in client.run_batch(requests, journal=journal, concurrency=10):
                break
        at_break = server.creations
        await asyncio.sleep(1.5)  # two more windows: 4 more submits if anything kept going
        assert server.creations == at_break <= 2
        assert server.count("submit") == at_break
        assert set(server.tasks) <= journal_tasks(journal)
        # The journal was closed (its lock released); the rerun finds no unknown item.
        items = await collect(client.run_batch(map(item_request, range(10)), journal=journal))
    assert all(item.ok for item in items)
    assert server.creations == 10


# --- 3. unknowns recovered --------------------------------------------------------------------


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    """A started receiver on loopback that checks the fake's signatures."""
    async with CallbackReceiver(port=0, hmac_key=HMAC_KEY, path_token="fixed-token") as started:
        yield started


async def test_recover_finds_the_task_a_lost_reply_created(
    server: FakeKieServer, receiver: CallbackReceiver
) -> None:
    """A dropped submit reply: recover(exc) returns the created task once its callback came."""
    server.inject(Fault("submit", "drop_after_create"))
    async with make(server.url, receiver=receiver) as client:
        with pytest.raises(SubmitOutcomeUnknown) as info:
            await client.submit(item_request(0))
        assert info.value.key
        async with asyncio.timeout(10):
            handle = await client.recover(info.value)
        [task_id] = server.tasks
        assert handle.task_id == task_id
        assert server.tasks[task_id].payload["callBackUrl"].endswith("/" + info.value.key)
        assert (await handle.wait()).task_id == task_id
    assert server.creations == 1


async def test_recover_ignores_a_forged_callback_that_the_poll_does_not_confirm(
    server: FakeKieServer, receiver: CallbackReceiver
) -> None:
    """A callback naming another task under the key is not trusted: the poll's param decides."""
    server.default_timeline = Timeline.success(text=0.4, first=0.5, complete=0.6)
    async with make(server.url, receiver=receiver) as client:
        other = await client.submit(item_request(1))  # a real task, but not this submit's
        server.inject(Fault("submit", "drop_after_create"))
        with pytest.raises(SubmitOutcomeUnknown) as info:
            await client.submit(item_request(0))
        key = info.value.key
        assert key is not None
        recovering = asyncio.create_task(client.recover(info.value))
        await asyncio.sleep(0.05)
        receiver_url = receiver.url_with_key(key)
        forged = callback_payload(server.tasks[other.task_id], "text")
        body = json.dumps(forged).encode()
        status = await server.send_forged_callback(
            receiver_url, body, signed_headers(other.task_id, HMAC_KEY)
        )
        assert status == 200
        async with asyncio.timeout(10):
            handle = await recovering
        assert handle.task_id != other.task_id
        assert item_of(server.tasks[handle.task_id].payload) == 0


async def test_recover_without_a_receiver_says_it_cannot(server: FakeKieServer) -> None:
    """Without a receiver an unknown stays unknown, and recover() says why at once."""
    server.inject(Fault("submit", "drop_after_create"))
    async with make(server.url) as client:
        with pytest.raises(SubmitOutcomeUnknown) as info:
            await client.submit(item_request(0))
        with pytest.raises(SubmitOutcomeUnknown) as again:
            await client.recover(info.value)
    assert "no receiver" in again.value.reason


async def test_batch_recovers_unknown_items_in_the_run_and_across_reruns(
    server: FakeKieServer, gateway: str, receiver: CallbackReceiver, tmp_path: Path
) -> None:
    """Unknown items are resolved by key: in the run, and on a rerun with the same receiver."""
    journal = tmp_path / "run.journal"
    async with make(gateway, receiver=receiver) as client:
        [item] = await collect(client.run_batch([item_request(0)], journal=journal))
    assert item.ok
    assert item.task_id in server.tasks
    # Across reruns: the first run gives up at once, the rerun (new client) finds the task.
    server.default_timeline = Timeline.success(text=0.5, first=0.6, complete=0.7)
    async with make(gateway, receiver=receiver) as client:
        [item] = await collect(
            client.run_batch([item_request(1)], journal=journal, recover_wait=0.01)
        )
    assert isinstance(item.error, SubmitOutcomeUnknown)
    async with make(server.url, receiver=receiver) as client:
        items = await collect(client.run_batch([item_request(0), item_request(1)], journal=journal))
    assert all(i.ok for i in items)
    assert server.creations == 2


async def test_closing_the_client_ends_a_pending_recover(
    server: FakeKieServer, receiver: CallbackReceiver
) -> None:
    """recover() waiting for a callback that never comes ends with ClientClosedError on aclose."""
    server.inject(Fault("submit", "http_500"))  # nothing created: no callback will come
    client = make(server.url, receiver=receiver)
    with pytest.raises(SubmitOutcomeUnknown) as info:
        await client.submit(item_request(0))
    recovering = asyncio.create_task(client.recover(info.value))
    await asyncio.sleep(0.05)
    await client.aclose()
    with pytest.raises(ClientClosedError):
        async with asyncio.timeout(5):
            await recovering


async def test_batch_cancelled_while_a_refused_submit_waits_to_retry_is_not_unknown(
    server: FakeKieServer, tmp_path: Path
) -> None:
    """Cancelled in the backoff after a 429: journaled `unsent`, so the rerun just submits it."""
    from kiemashup import RetryPolicy

    journal = tmp_path / "run.journal"
    server.inject(Fault("submit", "rate_limit", retry_after="30"))
    slow_retry = RetryPolicy(attempts=3, base=0.01, cap=0.05, max_retry_after=30.0)
    async with make(server.url, retry_policy=slow_retry) as client:

        async def run() -> None:
            async with client.run_batch([item_request(0)], journal=journal) as items:
                async for _ in items:
                    pass

        task = asyncio.create_task(run())
        for _ in range(1000):  # at most ~10 s for the first (refused) POST
            if server.count("submit"):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        last = json.loads(journal.read_bytes().splitlines()[-1])
        assert last["ev"] == "unsent"
        assert server.creations == 0
        [item] = await collect(client.run_batch([item_request(0)], journal=journal))
    assert item.ok
    assert server.creations == 1


def _padded_journal(size: int) -> bytes:
    """A valid journal of exactly ``size`` bytes (header plus `rejected` records)."""
    data = b'{"journal":"kiemashup-batch","v":2}\n'
    n = 0
    while True:
        record = {"fp": "a" * 64, "n": n, "i": n, "ev": "rejected", "error": {"message": ""}}
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        room = size - len(data)
        if room < len(line) + 200:
            record["error"] = {"message": "x" * (room - len(line))}
            return data + json.dumps(record, separators=(",", ":")).encode() + b"\n"
        data += line
        n += 1


def _fill(path: Path) -> None:
    """Write zeros to ``path`` until its file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
    finally:
        os.close(fd)


async def test_a_really_full_disk_before_the_post_pays_nothing(
    server: FakeKieServer, tiny_fs: Path | None
) -> None:
    """On a full tmpfs the `intent` write fails: JournalError naming the path, 0 creations."""
    if tiny_fs is None:
        pytest.skip("needs a tmpfs mount (root)")
    path = tiny_fs / "run.journal"
    content = _padded_journal(4096)  # a page exactly: the next record needs a new one
    path.write_bytes(content)
    _fill(tiny_fs / "filler")
    async with make(server.url) as client:
        with pytest.raises(JournalError) as info:
            await collect(client.run_batch([item_request(0)], journal=path))
    assert info.value.path == path
    assert info.value.task_id is None
    assert "No space left" in info.value.reason
    assert server.creations == 0
    assert path.read_bytes() == content  # the failed record was cut back off


async def test_batch_cancelled_mid_exchange_journals_the_ids_the_replies_bring(
    server: FakeKieServer, tmp_path: Path
) -> None:
    """Cancel while POSTs await slow replies: the replies are awaited and their ids journaled."""
    journal = tmp_path / "run.journal"
    server.inject(Fault("submit", "slow", delay=0.5, times=5))
    async with make(server.url) as client:

        async def run() -> None:
            async with client.run_batch(map(item_request, range(5)), journal=journal) as items:
                async for _ in items:
                    pass

        task = asyncio.create_task(run())
        for _ in range(1000):  # at most ~10 s for the five POSTs to arrive
            if server.count("submit") == 5:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert journal_events(journal)["submitted"] == 5
        assert journal_tasks(journal) == set(server.tasks)
        # A fresh creation window sends one probe alone first, so its reply may come
        # before the cancel; every reply that came after it is an orphan with its id.
        orphans = [str(o.task_id) for o in client.orphans]
        assert orphans
        assert set(orphans) <= set(server.tasks)
        items = await collect(client.run_batch(map(item_request, range(5)), journal=journal))
    assert all(item.ok for item in items)
    assert server.creations == 5


async def test_no_intent_while_a_submit_waits_for_the_in_flight_cap(
    server: FakeKieServer, tmp_path: Path
) -> None:
    """Queued behind the client's in-flight cap: no intent yet; cancelled there, never unknown."""
    journal = tmp_path / "run.journal"
    limits = RateLimits(
        submits_per_window=100, requests_per_second=5000, max_in_flight=1, connection_limit=4
    )
    async with make(server.url, rate_limits=limits) as client:
        first = await client.submit(item_request(9))
        server.inject(Fault("record-info", "slow", delay=1.0))
        hog = asyncio.create_task(client.get_task(first.task_id))  # holds the only place
        await asyncio.sleep(0.1)

        async def run() -> None:
            async with client.run_batch([item_request(0)], journal=journal) as items:
                async for _ in items:
                    pass

        task = asyncio.create_task(run())
        await asyncio.sleep(0.3)
        assert journal_events(journal)["intent"] == 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await hog
        assert server.creations == 1
        [item] = await collect(client.run_batch([item_request(0)], journal=journal))
    assert item.ok
    assert server.creations == 2
