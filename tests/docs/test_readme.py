"""The README's Python snippet runs as written (against a node on a free port)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_a_python_snippet() -> None:
    assert _python_blocks(), "README lost its Python example"


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_snippet_runs(index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSGATE_ANONYMOUS", "true")
    monkeypatch.setenv("WSGATE_PORT", "0")
    code = _python_blocks()[index]
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(compile(code, f"README.md#python-{index}", "exec"), namespace)
