"""The kiemashup command: demo, status, wait, credits, exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import aiohttp
import pytest

import kiemashup
from kiemashup._cli import (
    EXIT_API,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    main,
)
from kiemashup._cli.common import ENVIRONMENT, EXIT_CODES
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
    assert "mashup 3" in err  # the display went to stderr because of --json
    assert "\x1b" not in err  # not a terminal: plain lines, no escape sequences
    assert "[3/3] mashup " in err


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


# --- what a newcomer types: every problem answered in one clear line --------------------------


URL_A, URL_B = "https://cdn.example/a.mp3", "https://cdn.example/b.mp3"


def run_main(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *argv: str, **env: str
) -> tuple[int, str, str]:
    """Run the CLI in-process with ``env`` (KIE_* cleared first); (exit code, stdout, stderr)."""
    for name in [n for n in os.environ if n.startswith(("KIE_", "KIEMASHUP_"))]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("demo", "--time-scale", "0"), "argument --time-scale: must be from 0.05 to 100, got 0"),
        (("demo", "--time-scale", "-1"), "argument --time-scale: must be from 0.05 to 100"),
        (("demo", "--time-scale", "nan"), "argument --time-scale: must be a finite number"),
        (("demo", "--time-scale", "inf"), "argument --time-scale: must be a finite number"),
        (("demo", "--count", "0"), "argument --count: must be from 1 to 200, got 0"),
        (("demo", "--count", "many"), "argument --count: must be a whole number, got 'many'"),
        (("batch", "x.jsonl", "--concurrency", "0"), "argument --concurrency: must be from 1"),
        (("wait", "t1", "--timeout", "nan"), "argument --timeout: must be a finite number"),
        (("wait", "t1", "--timeout", "0"), "argument --timeout: must be above 0"),
        (("upload", "ftp://x/y.mp3"), "ftp://x/y.mp3: only http(s) URLs and local files"),
        (("submit", "http://", URL_B, "--prompt", "x"), "'http://' is not a valid http(s) URL"),
        (
            ("submit", "https://exa mple.com/a.mp3", URL_B, "--prompt", "x"),
            "'https://exa mple.com/a.mp3' is not a valid http(s) URL",
        ),
        (("status", ""), "argument task_id: must not be empty"),
        (("download", " ", "out"), "argument task_id: must not be empty"),
        (("submit", URL_A, URL_B, "--weirdness", "x"), "argument --weirdness: must be a number"),
        (("nonsense",), "argument COMMAND: invalid choice: 'nonsense'"),
    ],
)
def test_bad_values_get_one_clear_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: tuple[str, ...],
    expected: str,
) -> None:
    """Out-of-range, non-numeric, NaN and inf values and bad URLs exit 2 naming the flag."""
    code, out, err = run_main(capsys, monkeypatch, *argv, KIE_API_KEY="k")
    assert code == EXIT_USAGE
    assert err.splitlines()[0].startswith(f"kiemashup: {expected}")
    assert out == ""


def test_a_batch_file_that_is_not_utf8_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A batch file with invalid UTF-8 exits 2 with one line naming the file."""
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b'{"upload_urls": ["\xff\xfe"]}\n')
    code, _, err = run_main(capsys, monkeypatch, "batch", str(path), KIE_API_KEY="k")
    assert code == EXIT_USAGE
    assert err.splitlines() == [f"kiemashup: {path}: not UTF-8 text (byte 18)"]


def test_every_bad_batch_line_is_reported_in_plain_words(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A batch file with several bad lines lists each, with a hint for a misspelt field."""
    path = tmp_path / "pairs.jsonl"
    good = {"upload_urls": [URL_A, URL_B], "prompt": "ok"}
    lines = [
        json.dumps({"upload_urls": [URL_A], "prompt": "x"}),
        json.dumps({"upload_urls": [URL_A, URL_B], "promt": "typo"}),
        "[1, 2]",
        "{not json}",
        json.dumps(good),
        json.dumps({"prompt": "x"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    code, out, err = run_main(capsys, monkeypatch, "batch", str(path), KIE_API_KEY="k")
    assert code == EXIT_USAGE
    assert out == ""
    said = err.splitlines()
    assert said[0] == f"kiemashup: {path}: 5 bad line(s), nothing was submitted:"
    assert said[1].strip() == "line 1: upload_urls: exactly 2 URLs (got 1 URL(s))"
    assert said[2].strip().startswith("line 2: unknown field 'promt'; did you mean 'prompt'?")
    assert said[3].strip().startswith("line 3: not a JSON object")
    assert said[4].strip().startswith("line 4: not valid JSON")
    assert said[5].strip() == "line 6: upload_urls is required"
    assert "Error" not in err  # no Python exception names


def test_every_request_problem_is_listed_by_its_flag(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """submit lists every broken rule, one per line, named by the flags the user typed."""
    code, _, err = run_main(
        capsys, monkeypatch, "submit", URL_A, "ftp-less", "--weirdness", "2",
        "--style-weight", "0.123", "--custom", "--title", "t" * 81, KIE_API_KEY="k",
    )  # fmt: skip
    assert code == EXIT_USAGE
    lines = err.splitlines()
    assert lines[0] == "kiemashup: invalid request (5 problems):"
    flags = [line.strip().split(":")[0] for line in lines[1:]]
    assert sorted(flags) == sorted(
        ["--style", "--title", "--prompt", "--style-weight", "--weirdness"]
    )
    assert "weirdness_constraint" not in err
    assert "(got nothing)" in err


def test_json_errors_are_json_on_stdout(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --json, usage, request and configuration errors are a JSON object on stdout."""
    code, out, _ = run_main(capsys, monkeypatch, "demo", "--count", "0", "--json")
    assert (code, json.loads(out)["error"], json.loads(out)["exit"]) == (2, "UsageError", 2)
    code, out, _ = run_main(capsys, monkeypatch, "submit", URL_A, URL_B, "--custom", "--json")
    body = json.loads(out)
    assert (code, body["error"], len(body["details"])) == (2, "RequestValidationError", 3)
    code, out, _ = run_main(capsys, monkeypatch, "credits", "--json")
    assert json.loads(out) == {
        "error": "ConfigError",
        "message": "KIE_API_KEY is not set (export KIE_API_KEY=<your key>)",
        "details": [],
        "exit": EXIT_CONFIG,
    }


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"KIE_API_KEY": "   "}, "KIE_API_KEY is blank"),
        ({"KIE_API_KEY": "k", "KIE_BASE_URL": "notaurl"}, "KIE_BASE_URL must be an http(s) URL"),
        (
            {"KIE_API_KEY": "k", "KIE_UPLOAD_BASE_URL": "ftp://x"},
            "KIE_UPLOAD_BASE_URL must be an http(s) URL",
        ),
        ({"KIE_API_KEY": "k", "KIEMASHUP_POLL_INITIAL": "abc"}, "KIEMASHUP_POLL_INITIAL must be"),
        ({"KIE_API_KEY": "k", "KIEMASHUP_POLL_INITIAL": "0"}, "KIEMASHUP_POLL_INITIAL must be"),
        ({"KIE_API_KEY": "k", "KIEMASHUP_POLL_INITIAL": "nan"}, "KIEMASHUP_POLL_INITIAL must be"),
    ],
)
def test_the_environment_is_checked_before_any_request(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    expected: str,
) -> None:
    """A blank key, a base URL that is not a URL or a bad poll interval exits 4 at once."""
    code, _, err = run_main(capsys, monkeypatch, "status", "t1", **env)
    assert code == EXIT_CONFIG
    assert expected in err
    assert "api_key=" not in err  # shell users are not told about Python arguments


def test_version_and_help(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--version prints the version; --help lists env variables and exit codes in plain text."""
    code, out, _ = run_main(capsys, monkeypatch, "--version")
    assert code == EXIT_OK
    assert re.fullmatch(r"kiemashup \S+\n", out)
    commands = ("demo", "submit", "status", "wait", "credits", "upload", "download", "batch")
    for argv in (("--help",), *((command, "--help") for command in commands)):
        code, out, _ = run_main(capsys, monkeypatch, *argv)
        assert code == EXIT_OK
        assert "`" not in out
        for name, _meaning in ENVIRONMENT:
            assert name in out
        for number, meaning in EXIT_CODES:
            assert f"  {number:<5}{meaning}" in out


def test_docs_list_the_same_exit_codes_and_environment() -> None:
    """docs/cli.md's exit-code and environment tables are EXIT_CODES and ENVIRONMENT."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    codes = re.findall(r"^\| (\d+) \| ", text, re.M)
    assert [int(c) for c in codes] == [number for number, _ in EXIT_CODES]
    names = re.findall(r"^\| `(KIE\w+)` \|", text, re.M)
    assert names == [name for name, _ in ENVIRONMENT]


async def test_status_of_an_unknown_task_exits_not_found() -> None:
    """A task id Kie does not know exits 6, not the 'API or network failed' code."""
    async with FakeKieServer() as server:
        env = {"KIE_API_KEY": "k", "KIE_BASE_URL": server.url}
        for command in ("status", "wait"):
            code, _out, err = await run_cli(command, "no-such-task", env=env)
            assert code == EXIT_NOT_FOUND
            assert "404" in err


async def test_wait_timeout_exits_7_and_says_the_task_goes_on() -> None:
    """wait --timeout gives up with exit 7, naming the task; with --json the error is JSON."""
    async with FakeKieServer() as server:
        server.script(Timeline.success(text=0.01, first=60, complete=90))
        env = {"KIE_API_KEY": "k", "KIE_BASE_URL": server.url, "KIEMASHUP_POLL_INITIAL": "0.05"}
        task_id = await _create(server.url)
        code, out, err = await run_cli("wait", task_id, "--timeout", "1", "--json", env=env)
    assert code == EXIT_TIMEOUT
    assert json.loads(out)["error"] == "Timeout"
    assert f"task {task_id} has not reached complete after 1 s" in err
    assert f"kiemashup wait {task_id}" in err
    assert "text" in err  # the plain stage lines showed how far it got


async def test_wait_against_an_unreachable_host_fails_instead_of_waiting() -> None:
    """wait against a host nobody listens on exits 3 after its retries, not after --timeout."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"KIE_API_KEY": "k", "KIE_BASE_URL": f"http://127.0.0.1:{port}"}
    code, _out, err = await run_cli("wait", "t1", "--timeout", "600", env=env)
    assert code == EXIT_API
    assert "TransportError" in err
