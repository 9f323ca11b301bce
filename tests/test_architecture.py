"""docs/architecture.md names every module of the package, so the map cannot drift."""

from __future__ import annotations

from pathlib import Path

import kiemashup

PACKAGE = Path(kiemashup.__file__).parent
DOC = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")


def test_every_module_of_the_io_layer_and_core_is_on_the_map() -> None:
    """Each module at the top of kiemashup/ and in _core/ is named in docs/architecture.md."""
    modules = [p for p in PACKAGE.glob("*.py") if p.name != "py.typed"]
    modules += list((PACKAGE / "_core").glob("*.py"))
    missing = [p.name for p in modules if p.name != "__init__.py" and p.name not in DOC]
    assert missing == []


def test_every_package_is_on_the_map() -> None:
    """Each sub-package of kiemashup/ (``_cli/``, ``_core/``, ``testing/``...) is named."""
    packages = [p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()]
    assert [name for name in packages if f"{name}/" not in DOC] == []
