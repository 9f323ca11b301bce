"""The kiemashup command: demo, status, wait, credits, exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys

import aiohttp

import kiemashup
from kiemashup._cli import EXIT_API, EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from kiemashup.testing import FakeKieServer, Timeline


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kiemashup",
        *args,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_demo_runs_round_trips_offline() -> None:
    """`kiemashup demo` completes every mashup against its embedded fake server, no key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIE_")}
    code, out, err = await run_cli(
        "demo", "--count", "3", "--time-scale", "0.3", "--json", env={"KIE_API_KEY": ""} | env
    )
    assert code == EXIT_OK, err
    summary = json.loads(out)
    assert len(summary["tasks"]) == 3
    assert all(t["status"] == "SUCCESS" and len(t["tracks"]) == 2 for t in summary["tasks"])
    assert summary["requests"] >= 3
    assert summary["callbacks_received"] >= 9  # text, first, complete for each task
    assert all(t["polls"] <= 2 for t in summary["tasks"])  # callbacks did the waking
    downloads = [d for t in summary["tasks"] for d in t["downloads"]]
    assert len(downloads) == 6
    assert all(d["bytes"] > 0 for d in downloads)
    assert "mashup 3" in err  # the live display went to stderr because of --json


async def test_demo_without_callbacks_polls() -> None:
    """`kiemashup demo --no-callbacks` completes every mashup by polling alone."""
    code, out, err = await run_cli(
        "demo", "--count", "2", "--time-scale", "0.3", "--no-callbacks", "--json"
    )
    assert code == EXIT_OK, err
    summary = json.loads(out)
    assert summary["callbacks_received"] == 0
    assert all(t["status"] == "SUCCESS" and t["polls"] >= 1 for t in summary["tasks"])


async def test_status_and_wait_against_fake_server() -> None:
    """`status` polls once and `wait --stage first` waits, both with --json output."""
    async with FakeKieServer() as server:
        server.script(Timeline.success(text=0.01, first=0.02, complete=0.03))
        env = {"KIE_API_KEY": "k", "KIE_BASE_URL": server.url}
        task_id = await _create(server.url)
        await asyncio.sleep(0.05)
        code, out, err = await run_cli("status", task_id, "--json", env=env)
        assert code == EXIT_OK, err
        assert json.loads(out)["status"] == "SUCCESS"
        code, out, _ = await run_cli("wait", task_id, "--stage", "first", env=env)
        assert code == EXIT_OK
        assert task_id in out


async def test_failed_task_exit_code() -> None:
    """A failed task exits 1 and prints one line, not a traceback."""
    async with FakeKieServer() as server:
        server.script(Timeline.failure(at=0.0))
        env = {"KIE_API_KEY": "k", "KIE_BASE_URL": server.url}
        task_id = await _create(server.url)
        await asyncio.sleep(0.05)
        code, _out, err = await run_cli("wait", task_id, env=env)
        assert code == EXIT_FAILED
        assert "Traceback" not in err
        assert "failed" in err


async def test_api_error_and_missing_key_exit_codes() -> None:
    """A bad key exits 3 with one clear line; no key at all exits 4."""
    async with FakeKieServer(api_key="right") as server:
        code, _out, err = await run_cli(
            "credits", env={"KIE_API_KEY": "wrong", "KIE_BASE_URL": server.url}
        )
        assert code == EXIT_API
        assert "AuthenticationError" in err
        assert "wrong" not in err
        assert "Traceback" not in err
    code, _out, err = await run_cli("credits", env={"KIE_API_KEY": ""})
    assert code == EXIT_CONFIG
    assert "KIE_API_KEY" in err


async def test_usage_error_exit_code() -> None:
    """Bad usage exits 2."""
    code, _out, _err = await run_cli("demo", "--count", "0")
    assert code == EXIT_USAGE


async def _create(url: str) -> str:
    """Create a task on the fake server with a raw POST (not through the SDK)."""
    async with aiohttp.ClientSession() as s:
        body = {
            "uploadUrlList": ["https://a.example/1.mp3", "https://a.example/2.mp3"],
            "customMode": False,
            "model": "V5",
            "prompt": "p",
            "callBackUrl": "https://cb.example/x",
        }
        async with s.post(
            url + "/api/v1/generate/mashup", json=body, headers={"Authorization": "Bearer k"}
        ) as r:
            return str((await r.json())["data"]["taskId"])


async def test_network_failure_names_the_public_error() -> None:
    """An unreachable API exits 3 and names TransportError, not an internal class."""
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, _out, err = await run_cli(
        "credits", env={"KIE_API_KEY": "k", "KIE_BASE_URL": f"http://127.0.0.1:{port}"}
    )
    assert code == EXIT_API
    assert "TransportError" in err
    named = re.findall(r"kiemashup: (\w+):", err)
    assert named, err
    assert all(name in kiemashup.__all__ for name in named), named  # public classes only
    assert "Traceback" not in err
