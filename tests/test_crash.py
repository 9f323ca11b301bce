"""Crash safety: a journaled batch SIGKILLed at 20 random points, resumed each time.

The FakeKieServer runs in this process; the batch runs in a subprocess pointed at
it with KIE_API_KEY / KIE_BASE_URL, printing one JSON line per progress event and
per finished item. Each run is killed after a seeded random number of events (the
seed is in every assertion message; KIEMASHUP_CRASH_SEED replays one), then the
next run resumes from the journal. A last run goes to the end.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio

from kiemashup.testing import FakeKieServer, Timeline

API_KEY = "sk-crash-0f3a"
ITEMS = 30
KILLS = 20
SEED = int(os.environ.get("KIEMASHUP_CRASH_SEED", "0")) or random.SystemRandom().randrange(1, 2**31)

#: The batch, as a user would write it; prints {"p": event, "i": index} and
#: {"i": index, "outcome": ..., "task": ..., "journal": bool} lines.
WORKER = r"""
import asyncio, json, sys
from kiemashup import MashupClient, MashupRequest, PollPolicy, RateLimits, RetryPolicy

def emit(record):
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()

requests = [
    MashupRequest(("https://example.com/a.mp3", "https://example.com/b.mp3"), prompt=f"crash {i}")
    for i in range(int(sys.argv[1]))
]

async def main():
    async with MashupClient(
        poll_policy=PollPolicy(initial=0.05, growth=0.0, maximum=0.1, after_first=0.1),
        retry_policy=RetryPolicy(attempts=3, base=0.01, cap=0.05),
        rate_limits=RateLimits(submits_per_window=10_000, requests_per_second=2000),
    ) as client:
        batch = client.run_batch(
            requests, journal=sys.argv[2], concurrency=3,
            on_progress=lambda i, event: emit({"p": event, "i": i}),
        )
        async for item in batch:
            error = type(item.error).__name__ if item.error is not None else None
            status = str(item.snapshot.status) if item.snapshot is not None else None
            emit({"i": item.index, "outcome": error or "done", "task": item.task_id,
                  "status": status, "journal": item.from_journal})
    emit({"end": True})

asyncio.run(main())
"""


def item_of(payload: dict[str, Any]) -> int:
    return int(str(payload["prompt"]).removeprefix("crash "))


@pytest_asyncio.fixture
async def server() -> AsyncIterator[FakeKieServer]:
    """A fake Kie whose tasks take 0.6 s; every 6th item's task fails."""
    fake = FakeKieServer(api_key=API_KEY, creation_limit=10_000)

    def timeline(payload: dict[str, Any]) -> Timeline:
        if item_of(payload) % 6 == 5:
            return Timeline.failure(at=0.4, after="TEXT_SUCCESS")
        return Timeline.success(text=0.1, first=0.3, complete=0.6)

    fake.timeline_for = timeline
    async with fake:
        yield fake


async def run_once(
    server: FakeKieServer, journal: Path, kill_after: int | None, delay: float
) -> list[dict[str, Any]]:
    """One batch run, SIGKILLed ``delay`` s after ``kill_after`` lines of new work (None: never).

    Lines of new work are progress events and results not replayed from the journal.
    """
    env = {**os.environ, "KIE_API_KEY": API_KEY, "KIE_BASE_URL": server.url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WORKER, str(ITEMS), str(journal),
        env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[dict[str, Any]] = []
    work = 0
    try:
        async with asyncio.timeout(30):
            while kill_after is None or work < kill_after:
                raw = await proc.stdout.readline()
                if not raw:
                    break
                line = json.loads(raw)
                lines.append(line)
                work += "p" in line or line.get("journal") is False
            if kill_after is not None:
                await asyncio.sleep(delay)
                if proc.returncode is None:
                    proc.send_signal(signal.SIGKILL)
            lines.extend(json.loads(raw) for raw in (await proc.stdout.read()).splitlines())
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    return lines


async def test_a_batch_killed_20_times_ends_every_item_once_and_pays_once(
    server: FakeKieServer, tmp_path: Path
) -> None:
    """20 SIGKILLs at random points, resumed each time: each item ends once, none sent twice."""
    rng = random.Random(SEED)
    tag = f"[crash seed={SEED}]"
    journal = tmp_path / "batch.journal"
    fresh: collections.Counter[int] = collections.Counter()  # results not from the journal
    kills = runs = 0
    while kills < KILLS and runs < 3 * KILLS:
        runs += 1
        lines = await run_once(server, journal, rng.randint(0, 4), rng.uniform(0.0, 0.03))
        results = [line for line in lines if "outcome" in line]
        fresh.update(line["i"] for line in results if not line["journal"])
        kills += not any(line.get("end") for line in lines)
    assert kills == KILLS, f"{tag} only {kills} of {runs} runs were killed"
    final_lines = await run_once(server, journal, None, 0.0)
    final = [line for line in final_lines if "outcome" in line]
    fresh.update(line["i"] for line in final if not line["journal"])

    # Every item ends exactly once in the last run; none was finished fresh twice.
    assert any(line.get("end") for line in final_lines), f"{tag} the last run did not finish"
    assert sorted(line["i"] for line in final) == list(range(ITEMS)), tag
    assert max(fresh.values(), default=0) <= 1, f"{tag} finished twice: {fresh}"
    # Nothing paid twice: one POST at most per item, one task at most per item.
    posts = collections.Counter(
        item_of(r.json) for r in server.requests if r.endpoint == "submit" and r.json
    )
    created = {item_of(task.payload): task for task in server.tasks.values()}
    assert max(posts.values()) == 1, f"{tag} resubmitted: {posts.most_common(3)}"
    assert server.creations == len(created), tag
    outcomes = collections.Counter(line["outcome"] for line in final)
    for line in final:
        i = line["i"]
        if line["outcome"] == "SubmitOutcomeUnknown":
            continue  # killed between the journal's intent and the POST's reply
        assert i in created, f"{tag} item {i} {line} has no task"
        assert line["task"] == created[i].task_id, f"{tag} item {i}: {line}"
        expected = "TaskFailedError" if i % 6 == 5 else "done"
        assert line["outcome"] == expected, f"{tag} item {i}: {line}"
    # A kill leaves at most one unknown submit per worker (concurrency 3).
    assert outcomes["SubmitOutcomeUnknown"] <= 3 * kills, f"{tag} {outcomes}"
    print(
        f"\ncrash report seed={SEED} kills={kills} runs={runs + 1} "
        f"outcomes={dict(outcomes)} posts={sum(posts.values())} creations={server.creations} "
        f"fresh_results={sum(fresh.values())}"
    )
