"""The kiemashup command's file and batch commands, end to end against FakeKieServer."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from conftest import TEST_API_KEY

from kiemashup._cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from kiemashup.testing import FakeKieServer, Timeline

MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 8
URL_B = "https://example.com/b.mp3"


async def run_cli(server: FakeKieServer, *args: str) -> tuple[int, str, str]:
    """Run ``python -m kiemashup *args`` pointed at ``server``; (exit code, stdout, stderr)."""
    env = {
        **os.environ,
        "KIE_API_KEY": TEST_API_KEY,
        "KIE_BASE_URL": server.url,
        "KIE_UPLOAD_BASE_URL": server.url,
        "KIEMASHUP_POLL_INITIAL": "0.02",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kiemashup", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def sizes(files: list[str]) -> list[int]:
    """The size of each file."""
    return [os.path.getsize(f) for f in files]


def song(tmp_path: Path, name: str = "a.mp3", data: bytes = MP3) -> Path:
    """A small local 'mp3' file."""
    path = tmp_path / name
    path.write_bytes(data)
    return path


async def test_upload_prints_the_url(fake_server: FakeKieServer, tmp_path: Path) -> None:
    """`upload FILE` prints the public URL; `--json` wraps it."""
    code, out, _ = await run_cli(fake_server, "upload", str(song(tmp_path)), "--json")
    assert code == EXIT_OK
    url = json.loads(out)["url"]
    assert url.startswith(fake_server.url)
    assert url.rsplit("/", 1)[1].startswith("a-")  # the name carries a digest of the content
    assert url.endswith(".mp3")
    code, out, _ = await run_cli(fake_server, "upload", url, "--file-name", "copy.mp3")
    assert code == EXIT_OK
    assert out.strip().endswith("/copy.mp3")


async def test_upload_of_a_bad_file_is_a_usage_error(
    fake_server: FakeKieServer, tmp_path: Path
) -> None:
    """A non-audio file exits 2 with one line on stderr and uploads nothing."""
    code, _, err = await run_cli(fake_server, "upload", str(song(tmp_path, "x.mp3", b"hello")))
    assert code == EXIT_USAGE
    assert "FileValidationError" in err
    assert "Traceback" not in err
    assert fake_server.count("upload") == 0


async def test_submit_uploads_waits_and_downloads(
    fake_server: FakeKieServer, tmp_path: Path
) -> None:
    """`submit FILE URL --download DIR` uploads, submits, waits and saves every track."""
    out_dir = tmp_path / "out"
    code, out, _ = await run_cli(
        fake_server, "submit", str(song(tmp_path)), URL_B,
        "--custom", "--style", "Funk", "--title", "Mirror Ball", "--instrumental",
        "--style-weight", "0.5", "--model", "V4_5PLUS", "--download", str(out_dir), "--json",
    )  # fmt: skip
    assert code == EXIT_OK
    result = json.loads(out)
    assert result["stage"] == "COMPLETE"
    assert len(result["files"]) == 2
    assert {Path(f).parent for f in result["files"]} == {out_dir}
    assert all(size > 0 for size in sizes(result["files"]))
    [task] = fake_server.tasks.values()
    assert task.payload["uploadUrlList"][0].startswith(fake_server.url + "/uploads/")
    assert task.payload["styleWeight"] == 0.5
    assert task.payload["customMode"] is True


async def test_submit_without_wait_prints_the_task_id(fake_server: FakeKieServer) -> None:
    """Without --wait, submit prints the task id and returns at once."""
    code, out, _ = await run_cli(fake_server, "submit", URL_B, URL_B, "--prompt", "two")
    assert code == EXIT_OK
    assert out.strip() in fake_server.tasks


async def test_submit_validates_before_uploading(
    fake_server: FakeKieServer, tmp_path: Path
) -> None:
    """An invalid request exits 2 before any upload or submit, naming every problem by flag."""
    code, _, err = await run_cli(fake_server, "submit", str(song(tmp_path)), URL_B, "--custom")
    assert code == EXIT_USAGE
    lines = err.splitlines()
    assert lines[0] == "kiemashup: invalid request (3 problems):"
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["--style", "--title", "--prompt"]
    assert "Traceback" not in err
    assert fake_server.count("upload") == 0
    assert fake_server.count("submit") == 0


def write_batch(tmp_path: Path, lines: list[dict[str, Any]]) -> Path:
    """A JSON-lines batch file, with a comment and a blank line for good measure."""
    path = tmp_path / "pairs.jsonl"
    body = "# mashups\n\n" + "".join(json.dumps(line) + "\n" for line in lines)
    path.write_text(body, encoding="utf-8")
    return path


async def test_batch_runs_downloads_and_resumes(fake_server: FakeKieServer, tmp_path: Path) -> None:
    """`batch` runs every line, saves tracks, reports failures; a rerun replays the journal."""
    fake_server.timeline_for = lambda p: Timeline.failure() if p["prompt"] == "bad" else None
    lines = [{"upload_urls": [URL_B, URL_B], "prompt": f"song {i}"} for i in range(3)]
    lines.append({"upload_urls": [URL_B, URL_B], "prompt": "bad", "model": "V4"})
    batch = write_batch(tmp_path, lines)
    journal, out_dir = tmp_path / "pairs.journal", tmp_path / "out"
    args = ("batch", str(batch), "--out", str(out_dir), "--journal", str(journal))
    code, out, err = await run_cli(fake_server, *args, "--concurrency", "2", "--json")
    assert code == EXIT_FAILED
    result = json.loads(out)
    assert [row["index"] for row in result["items"]] == [0, 1, 2, 3]
    assert [row["ok"] for row in result["items"]] == [True, True, True, False]
    assert result["items"][3]["error"] == "TaskFailedError"
    assert result["counts"]["done"] == 3
    assert result["counts"]["failed"] == 1
    assert len(os.listdir(out_dir)) == 6
    assert err.count("item ") == 4  # plain progress lines: stderr is not a TTY
    code, out, _ = await run_cli(fake_server, *args)
    assert code == EXIT_FAILED
    assert "3/4 succeeded" in out
    assert fake_server.creations == 4


async def test_batch_rejects_a_bad_line(fake_server: FakeKieServer, tmp_path: Path) -> None:
    """A line that is not a valid request exits 2 naming the line, and submits nothing."""
    batch = write_batch(tmp_path, [{"upload_urls": [URL_B, URL_B], "custom_mode": True}])
    code, _, err = await run_cli(fake_server, "batch", str(batch))
    assert code == EXIT_USAGE
    assert "pairs.jsonl: 1 bad line(s), nothing was submitted:" in err
    assert "  line 3: " in err
    assert fake_server.count("submit") == 0


async def test_download_saves_a_tasks_tracks(fake_server: FakeKieServer, tmp_path: Path) -> None:
    """`download TASK DIR --wait` saves every track; a failed task exits 1."""
    code, task_id, _ = await run_cli(fake_server, "submit", URL_B, URL_B, "--prompt", "x")
    assert code == EXIT_OK
    code, out, _ = await run_cli(fake_server, "download", task_id.strip(), str(tmp_path), "--wait")
    assert code == EXIT_OK
    assert len(out.splitlines()) == 2
    assert len(os.listdir(tmp_path)) == 2
    fake_server.script(Timeline.failure(at=0.01))
    code, task_id, _ = await run_cli(fake_server, "submit", URL_B, URL_B, "--prompt", "y")
    code, _, err = await run_cli(fake_server, "download", task_id.strip(), str(tmp_path), "--wait")
    assert code == EXIT_FAILED
    assert "failed" in err
