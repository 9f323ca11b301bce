"""run_batch: bounded workers, one result per item, and a journal that survives SIGKILL."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest_asyncio
from conftest import FAST_POLL, FAST_RETRY, TEST_API_KEY

from kiemashup import (
    APIError,
    BatchItem,
    MashupClient,
    MashupRequest,
    RateLimits,
    Stage,
    SubmitOutcomeUnknown,
    TaskFailedError,
    TaskHandle,
    Timeouts,
)
from kiemashup._batch import run_batch
from kiemashup._core.state import make_snapshot
from kiemashup._handle import Hooks, TaskState
from kiemashup.testing import FakeKieServer, Fault, Timeline

URLS = ("https://example.com/a.mp3", "https://example.com/b.mp3")


def item_request(index: int) -> MashupRequest:
    """A distinct, valid request for item ``index`` (its prompt names it)."""
    return MashupRequest(URLS, prompt=f"item {index}")


def item_of(payload: dict[str, Any]) -> int:
    """The item index a submitted payload belongs to."""
    return int(str(payload["prompt"]).split()[1])


@pytest_asyncio.fixture
async def server() -> AsyncIterator[FakeKieServer]:
    """A fake server without the creation limit (batches here are large and fast)."""
    async with FakeKieServer(
        api_key=TEST_API_KEY, creation_limit=100_000, credits=10_000_000
    ) as server:
        yield server


@pytest_asyncio.fixture
async def client(server: FakeKieServer) -> AsyncIterator[MashupClient]:
    """A fast client for ``server`` whose creation pacing is lifted too."""
    async with MashupClient(
        TEST_API_KEY,
        base_url=server.url,
        poll_policy=FAST_POLL,
        retry_policy=FAST_RETRY,
        rate_limits=RateLimits(submits_per_window=100_000, requests_per_second=5000),
        timeouts=Timeouts(connect=2.0, read=5.0, total=10.0),
    ) as client:
        yield client


async def collect(batch: AsyncIterator[BatchItem]) -> list[BatchItem]:
    """Every item of a batch."""
    return [item async for item in batch]


async def test_mixed_batch_ends_every_item_exactly_once(
    server: FakeKieServer, client: MashupClient
) -> None:
    """200 items with successes, task failures, refused and unknown submits: one result each."""

    def timeline(payload: dict[str, Any]) -> Timeline | None:
        return Timeline.failure(at=0.03) if item_of(payload) % 5 == 0 else None

    server.timeline_for = timeline
    server.inject(
        Fault("submit", "body_code", code=422, times=3),
        Fault("submit", "drop_after_create", times=2),
    )
    items = await collect(client.run_batch(map(item_request, range(200)), concurrency=40))
    assert sorted(item.index for item in items) == list(range(200))
    by_kind = collections.Counter(
        type(item.error).__name__ if item.error else "ok" for item in items
    )
    assert by_kind["APIError"] == 3
    assert by_kind["SubmitOutcomeUnknown"] == 2
    assert by_kind["TaskFailedError"] + by_kind["ok"] == 195
    assert by_kind["TaskFailedError"] >= 30
    for item in items:
        assert item.request == item_request(item.index)
        if item.ok:
            assert item.snapshot is not None
            assert item.snapshot.stage is Stage.COMPLETE
        elif isinstance(item.error, TaskFailedError):
            assert item.index % 5 == 0
            assert item.task_id is not None
    assert server.creations == 197  # 195 answered, 2 created but their replies lost


async def test_batch_can_stop_at_an_earlier_stage(client: MashupClient) -> None:
    """stage=Stage.FIRST yields each item once its first track is playable."""
    items = await collect(client.run_batch([item_request(0)], stage=Stage.FIRST))
    [item] = items
    assert item.ok
    assert item.snapshot is not None
    assert item.snapshot.stage >= Stage.FIRST


async def test_journal_replays_finished_items_without_io(
    server: FakeKieServer, client: MashupClient, tmp_path: Path
) -> None:
    """A rerun yields finished items from the journal with no request sent at all."""
    journal = tmp_path / "run.journal"
    server.timeline_for = lambda p: Timeline.failure(at=0.02) if item_of(p) == 1 else None
    first = await collect(client.run_batch(map(item_request, range(4)), journal=journal))
    assert sum(item.ok for item in first) == 3
    sent = client.requests_sent
    again = await collect(client.run_batch(map(item_request, range(4)), journal=journal))
    assert client.requests_sent == sent
    assert all(item.from_journal for item in again)
    assert {i.index: i.task_id for i in again} == {i.index: i.task_id for i in first}
    [failed] = [item for item in again if not item.ok]
    assert isinstance(failed.error, TaskFailedError)
    assert failed.index == 1
    assert server.creations == 4


async def test_reordered_input_resumes_from_the_journal(
    server: FakeKieServer, client: MashupClient, tmp_path: Path
) -> None:
    """Items are matched by content and occurrence: a reordered or grown input resumes."""
    journal = tmp_path / "run.journal"
    first = [item_request(0), item_request(1), item_request(0)]  # item 0 twice: two tasks
    done = await collect(client.run_batch(first, journal=journal))
    assert server.creations == 3
    again = [item_request(2), item_request(0), item_request(1), item_request(0)]
    items = await collect(client.run_batch(again, journal=journal))
    assert server.creations == 4  # only the new request was paid for
    replayed = {item.index: item.task_id for item in items if item.from_journal}
    assert sorted(replayed) == [1, 2, 3]
    assert set(replayed.values()) == {item.task_id for item in done}


async def test_unknown_submits_are_not_resubmitted_unless_asked(
    server: FakeKieServer, client: MashupClient, tmp_path: Path
) -> None:
    """A lost submit reply stays SubmitOutcomeUnknown on rerun; resubmit_unknown=True resends."""
    journal = tmp_path / "run.journal"
    server.inject(Fault("submit", "drop_after_create"))
    [item] = await collect(client.run_batch([item_request(0)], journal=journal))
    assert isinstance(item.error, SubmitOutcomeUnknown)
    [item] = await collect(client.run_batch([item_request(0)], journal=journal))
    assert isinstance(item.error, SubmitOutcomeUnknown)
    assert item.from_journal
    assert server.creations == 1
    [item] = await collect(
        client.run_batch([item_request(0)], journal=journal, resubmit_unknown=True)
    )
    assert item.ok
    assert server.creations == 2


async def test_refused_submits_are_retried_on_rerun(
    server: FakeKieServer, client: MashupClient, tmp_path: Path
) -> None:
    """A submit the API refused created nothing, so a rerun submits it again."""
    journal = tmp_path / "run.journal"
    server.inject(Fault("submit", "body_code", code=402))
    [item] = await collect(client.run_batch([item_request(0)], journal=journal))
    assert isinstance(item.error, APIError)
    assert item.error.code == 402
    [item] = await collect(client.run_batch([item_request(0)], journal=journal))
    assert item.ok
    assert server.creations == 1


async def test_torn_last_line_is_tolerated(client: MashupClient, tmp_path: Path) -> None:
    """A journal whose last record was cut mid-write is read up to it, then appended to."""
    journal = tmp_path / "run.journal"
    await collect(client.run_batch(map(item_request, range(2)), journal=journal))
    with journal.open("ab") as fh:
        fh.write(b'{"i":2,"fp":"abc","ev":"int')
    items = await collect(client.run_batch(map(item_request, range(3)), journal=journal))
    assert sorted(item.index for item in items) == [0, 1, 2]
    lines = journal.read_bytes().splitlines()
    assert all(json.loads(line) for line in lines)


class InstantClient:
    """A BatchClient whose tasks are complete the moment they are submitted."""

    def __init__(self) -> None:
        self.submits = 0
        self.peak_tasks = 0

    async def _submit_tracked(self, _request: MashupRequest, **_hooks: Any) -> TaskHandle:
        self.submits += 1
        self.peak_tasks = max(self.peak_tasks, len(asyncio.all_tasks()))
        await asyncio.sleep(0)
        return self.task(f"t{self.submits}")

    async def recover(self, error: SubmitOutcomeUnknown) -> TaskHandle:
        raise error

    def task(self, task_id: str) -> TaskHandle:
        state = TaskState(task_id)
        state.offer(make_snapshot(task_id, "SUCCESS", source="poll"))

        async def fetch(_state: TaskState) -> Any:
            raise AssertionError("no polling needed")

        return TaskHandle(state, Hooks(fetch=fetch, watch=lambda _s: None, unwatch=lambda _s: None))


async def test_ten_thousand_items_use_a_bounded_pool() -> None:
    """10 000 lazily produced items run on `concurrency` workers, never 10 000 coroutines."""
    consumed = 0

    def requests() -> Iterator[MashupRequest]:
        nonlocal consumed
        for index in range(10_000):
            consumed += 1
            yield item_request(index % 50)

    fake = InstantClient()
    seen = 0
    async for item in run_batch(fake, requests(), concurrency=8):
        if seen == 0:
            assert consumed <= 8 + 8 + 1  # workers plus the results queue, not the whole input
        seen += 1
        assert item.ok
    assert seen == 10_000
    assert fake.submits == 10_000
    assert fake.peak_tasks <= 8 + 2


def journal_done(journal: Path) -> int:
    """How many items the journal records as done."""
    return journal.read_bytes().count(b'"ev":"done"') if journal.exists() else 0


SCRIPT = """
import asyncio, sys
from kiemashup import MashupClient, MashupRequest, PollPolicy, RateLimits
urls = ("https://example.com/a.mp3", "https://example.com/b.mp3")
requests = [MashupRequest(urls, prompt=f"item {i}") for i in range(int(sys.argv[1]))]
async def main():
    async with MashupClient(
        poll_policy=PollPolicy(initial=0.02, growth=0.0, maximum=0.05, after_first=0.05),
        rate_limits=RateLimits(submits_per_window=10_000, requests_per_second=2000),
    ) as client:
        async for item in client.run_batch(requests, journal=sys.argv[2], concurrency=3):
            print(item.index, flush=True)
asyncio.run(main())
"""


async def test_sigkilled_batch_resumes_from_its_journal(
    server: FakeKieServer, client: MashupClient, tmp_path: Path
) -> None:
    """SIGKILL mid-batch, rerun with the journal: every item once, no task created twice."""
    count = 24
    journal = tmp_path / "killed.journal"
    server.default_timeline = Timeline.success(text=0.05, first=0.1, complete=0.2)
    env = {**os.environ, "KIE_API_KEY": TEST_API_KEY, "KIE_BASE_URL": server.url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRIPT, str(count), str(journal), env=env,
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(6000):  # at most ~60 s
            if journal_done(journal) >= 6:
                break
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    done_before = journal_done(journal)
    assert done_before < count  # killed part-way

    items = await collect(client.run_batch(map(item_request, range(count)), journal=journal))
    assert sorted(item.index for item in items) == list(range(count))
    created = collections.Counter(item_of(task.payload) for task in server.tasks.values())
    assert max(created.values()) == 1  # nothing was paid for twice
    unknown = [item.index for item in items if isinstance(item.error, SubmitOutcomeUnknown)]
    assert all(item.ok for item in items if item.index not in unknown)
    assert sum(item.from_journal for item in items) >= done_before
    # An item killed between its intent record and the POST was (maybe) never created.
    assert server.creations == count - sum(1 for i in unknown if i not in created)
    assert len(unknown) <= 3  # at most one per worker of the killed run
