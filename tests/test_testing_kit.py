"""The testing kit as a user meets it: the pytest plugin and the standalone fake server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

from kiemashup._cli import EXIT_OK

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = re.compile(r"<!-- pytest-example -->\s*<!-- no-run -->\s*```python\n(.*?)```", re.S)


async def run(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run ``python *args``; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=cwd, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_documented_user_test_passes_with_the_plugin(tmp_path: Path) -> None:
    """docs/testing.md's user test, with the plugin in its conftest, passes all 3 tests."""
    [source] = EXAMPLE.findall((ROOT / "docs" / "testing.md").read_text())
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["kiemashup.testing.pytest_plugin"]\n')
    (tmp_path / "test_my_mashups.py").write_text(source)
    code, out, err = await run(
        "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", "--strict-markers",
        "-o", "asyncio_default_fixture_loop_scope=function",
        "test_my_mashups.py", cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, out + err
    assert "3 passed" in out


async def test_standalone_fake_server_serves_the_cli_until_sigterm() -> None:
    """`python -m kiemashup.testing serve` prints its URL and key; `submit --wait` completes."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kiemashup.testing", "serve", "--time-scale", "0.02",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            lines = [(await proc.stdout.readline()).decode() for _ in range(4)]
        assert lines[0].startswith("FakeKieServer on http://127.0.0.1:")
        env = dict(line.removeprefix("export ").strip().split("=", 1) for line in lines[1:])
        assert set(env) == {"KIE_BASE_URL", "KIE_UPLOAD_BASE_URL", "KIE_API_KEY"}
        code, out, err = await run(
            "-m", "kiemashup", "submit", "https://cdn.example/a.mp3", "https://cdn.example/b.mp3",
            "--prompt", "lo-fi", "--wait", "--timeout", "30", "--json",
            env={**env, "KIEMASHUP_POLL_INITIAL": "0.05"},
        )  # fmt: skip
        assert code == EXIT_OK, err
        result = json.loads(out)
        assert (result["status"], len(result["tracks"])) == ("SUCCESS", 2)
        assert result["tracks"][0]["audio_url"].startswith(env["KIE_BASE_URL"])
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, err_bytes = await proc.communicate()
    assert proc.returncode == 0
    assert "stopped" in err_bytes.decode()


async def test_standalone_fake_server_refuses_bad_options() -> None:
    """Bad --port and --time-scale values exit 2 with one line, no traceback."""
    for option in (("--port", "70000"), ("--time-scale", "nan"), ("--time-scale", "-1")):
        code, _, err = await run("-m", "kiemashup.testing", "serve", *option)
        assert code == 2
        assert option[0] in err
        assert "Traceback" not in err
