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


def _reference_sections() -> dict[str, str]:
    """docs/reference.md split at its ``### `Name` `` headings."""
    text = (ROOT / "docs" / "reference.md").read_text()
    parts = re.split(r"^### `(\w+)`\s*$", text, flags=re.M)
    return {
        name: re.split(r"^## ", body, flags=re.M)[0]
        for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def _documented_names(obj: object) -> list[str]:
    """What a reference section must mention: fields, members, methods, error attributes."""
    import enum
    import inspect

    import attrs

    if not inspect.isclass(obj):
        return []
    if issubclass(obj, enum.Enum):
        return [member.name for member in obj]
    public = [n for n in vars(obj) if not n.startswith("_")]
    if attrs.has(obj):
        return [f.name for f in attrs.fields(obj)] + [
            n for n in public if n not in attrs.fields_dict(obj)
        ]
    if issubclass(obj, BaseException):
        init = obj.__dict__.get("__init__")
        source = inspect.getsource(init) if init is not None else ""
        return sorted(
            {n for n in re.findall(r"self\.(\w+)\s*[:=]", source) if not n.startswith("_")}
        )
    return public


@pytest.mark.parametrize("name", sorted(__import__("kiemashup").__all__))
def test_reference_documents_every_public_name(name: str) -> None:
    """docs/reference.md has a section for each name in kiemashup.__all__ naming all its parts."""
    import kiemashup

    sections = _reference_sections()
    assert name in sections, f"docs/reference.md: add a '### `{name}`' section"
    obj = getattr(kiemashup, name)
    missing = [
        part
        for part in _documented_names(obj)
        if not re.search(rf"`(?:await )?(?:\w+\.)?{part}\b", sections[name])
    ]
    assert not missing, f"docs/reference.md, section {name}: document {missing}"
    if isinstance(obj, type) and issubclass(obj, BaseException) and name != "KieError":
        parent = obj.__bases__[0].__name__
        assert f"Subclass of `{parent}`" in sections[name]


def test_reference_has_no_section_for_a_name_that_is_not_public() -> None:
    """Every section of docs/reference.md is a name kiemashup exports."""
    import kiemashup

    assert set(_reference_sections()) <= set(kiemashup.__all__)
