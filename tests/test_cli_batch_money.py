"""`kiemashup batch --out`: a failed download is one item's result; reruns fetch nothing twice."""

from __future__ import annotations

import json
import os
from pathlib import Path

from test_cli_files import URL_B, run_cli

from kiemashup._cli import EXIT_USAGE
from kiemashup._cli.common import EXIT_API
from kiemashup.testing import FakeKieServer, Fault


def write_lines(tmp_path: Path, count: int) -> Path:
    """A batch file of ``count`` distinct requests."""
    path = tmp_path / "pairs.jsonl"
    lines = [{"upload_urls": [URL_B, URL_B], "prompt": f"song {i}"} for i in range(count)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


async def test_failed_download_is_the_items_result_and_reruns_skip_saved_files(
    fake_server: FakeKieServer, tmp_path: Path
) -> None:
    """A download failing for good is that item's result (exit 3); a rerun fetches only the rest."""
    batch, journal, out = write_lines(tmp_path, 2), tmp_path / "j", tmp_path / "out"
    fake_server.inject(Fault("audio", "reset_mid_body", times=5))  # the first download's 5 tries
    args = ("batch", str(batch), "--out", str(out), "--journal", str(journal), "--json")
    code, stdout, _ = await run_cli(fake_server, *args, "--concurrency", "1")
    assert code == EXIT_API
    rows = json.loads(stdout)["items"]
    assert sorted(row["error"] or "ok" for row in rows) == ["DownloadError", "ok"]
    assert len(os.listdir(out)) == 2  # the other item's two tracks
    fetched = fake_server.count("audio")
    code, stdout, _ = await run_cli(fake_server, *args)
    assert code == 0
    assert all(row["ok"] for row in json.loads(stdout)["items"])
    assert fake_server.count("audio") == fetched + 2  # only the tracks not saved before
    assert len(os.listdir(out)) == 4
    assert fake_server.creations == 2


async def test_unusable_out_is_refused_before_anything_is_paid(
    fake_server: FakeKieServer, tmp_path: Path
) -> None:
    """`--out` naming a file (not a folder) exits 2 and submits nothing."""
    batch = write_lines(tmp_path, 1)
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    code, _, err = await run_cli(fake_server, "batch", str(batch), "--out", str(blocker))
    assert code == EXIT_USAGE
    assert "--out" in err
    assert fake_server.creations == 0
