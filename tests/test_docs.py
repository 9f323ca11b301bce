"""The docs stay true: the stage table matches the code and every example runs."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from kiemashup._core.state import TABLE
from kiemashup.testing import FakeKieServer

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- no-run -->\s*)?```python\n(.*?)```", re.S)


def _runnable_blocks() -> list[tuple[str, str]]:
    blocks = []
    for path in DOCS:
        for i, match in enumerate(BLOCK.finditer(path.read_text())):
            skip, source = match.groups()
            if skip:
                continue
            try:  # fragments with a bare `await` are illustrations, not programs
                compile(source, str(path), "exec")
            except SyntaxError:
                continue
            blocks.append((f"{path.name}#{i}", source))
    return blocks


def test_stage_table_in_docs_matches_code() -> None:
    """docs/waiting.md draws the stage table from kiemashup._core.state.TABLE."""
    text = (ROOT / "docs" / "waiting.md").read_text()
    table = text.split("<!-- stage-table -->")[1].split("<!-- /stage-table -->")[0]
    rows = list(table.strip().splitlines()[2:])
    expected = [
        f"| `{status.value}` | {row.stage.name} | {'yes' if row.terminal else 'no'} | "
        f"{'yes' if row.failed else 'no'} |"
        for status, row in TABLE.items()
    ]
    assert rows == expected


BLOCKS = _runnable_blocks()


@pytest.mark.parametrize(("name", "source"), BLOCKS, ids=[b[0] for b in BLOCKS])
async def test_docs_example_runs(name: str, source: str, tmp_path: Path) -> None:
    """Each complete python example in README.md and docs/ runs against a FakeKieServer."""
    script = tmp_path / "example.py"
    script.write_text(source)
    async with FakeKieServer() as server:
        env = {
            **os.environ,
            "KIE_API_KEY": "docs-test-key",
            "KIE_BASE_URL": server.url,
            "KIE_UPLOAD_BASE_URL": server.url,
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(90):
            out, err = await proc.communicate()
    assert proc.returncode == 0, f"{name} failed:\n{out.decode()}\n{err.decode()}"
