"""A newcomer's first ten minutes, scripted: a built wheel in a fresh venv, then the CLI.

Builds the wheel, installs it (runtime dependencies only, no extras) into a new
virtual environment outside the source tree, and runs what the README and
docs/testing.md tell a newcomer to run: ``kiemashup --version``, ``kiemashup demo
--count 3``, then the standalone fake server with ``kiemashup submit ... --wait
--timeout 30`` against it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAIR = ["https://cdn.example/a.mp3", "https://cdn.example/b.mp3"]


def run(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (bounded), capturing its text output."""
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip


@pytest.mark.slow
def test_a_fresh_venv_from_the_wheel_runs_version_demo_and_submit(tmp_path: Path) -> None:
    """The wheel installs alone; --version, demo --count 3 and submit --wait against serve pass."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    built = run(*pip, "wheel", "-q", "--no-deps", "-w", tmp_path / "dist", ROOT, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "dist").glob("kiemashup-*.whl")
    venv = tmp_path / "venv"
    made = run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    python, kiemashup = venv / "bin" / "python", venv / "bin" / "kiemashup"
    installed = run(*pip, "--python", python, "install", "-q", wheel, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr

    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIE", "PYTHON", "VIRTUAL"))}
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    shown = run(kiemashup, "--version", cwd=tmp_path, env=env)
    assert (shown.returncode, shown.stdout) == (0, f"kiemashup {version}\n")
    where = run(python, "-c", "import kiemashup; print(kiemashup.__file__)", cwd=tmp_path, env=env)
    assert where.stdout.startswith(str(venv))  # the installed copy, not the source tree

    demo = run(kiemashup, "demo", "--count", "3", cwd=tmp_path, env=env)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "3 mashups, " in demo.stdout
    assert "Traceback" not in demo.stderr

    server = subprocess.Popen(
        [python, "-m", "kiemashup.testing", "serve", "--time-scale", "0.05"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        lines = [server.stdout.readline() for _ in range(4)]
        exports = dict(line.removeprefix("export ").strip().split("=", 1) for line in lines[1:])
        submit = run(
            kiemashup, "submit", *PAIR, "--prompt", "lo-fi", "--wait", "--timeout", "30",
            cwd=tmp_path, env={**env, **exports},
        )  # fmt: skip
        assert submit.returncode == 0, submit.stderr
        assert "SUCCESS (stage COMPLETE)" in submit.stdout
        assert "submitted task " in submit.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    assert server.returncode == 0
