"""Write docs/configuration.md from the configuration tree (defaults and docstrings).

Run ``python scripts/config_docs.py`` after changing ``wsgate.config``; a test
fails while the committed page differs from what this renders.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
from pathlib import Path
from typing import Any

from wsgate import config as config_module
from wsgate.config import _SECTIONS, _TOP_LEVEL, Config

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

HEADER = """# Configuration

Every setting has one default, held in `wsgate.config`. Sources, later ones winning:
defaults < TOML file (`--config FILE` or `WSGATE_CONFIG`) < `WSGATE_*` environment
variables < command-line flags of `wsgate serve`. Unknown keys and invalid values are
refused at start with a message naming the setting.

Environment variables are `WSGATE_` + the setting's name in upper case; lists are
comma-separated; booleans accept `true/false/yes/no/1/0/on/off`.

```toml
# wsgate.toml
[server]
host = "0.0.0.0"
allowed_origins = ["https://app.example.com"]

[auth]
jwt_secret = "at least 32 random bytes, shared with wsgate token"

[broker]
broker = "redis://localhost:6379/0"
```
"""


def _docstrings() -> dict[str, str]:
    """Field name -> the docstring written under it in wsgate/config.py."""
    tree = ast.parse(inspect.getsource(config_module))
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        for current, following in zip(node.body, node.body[1:], strict=False):
            if (
                isinstance(current, ast.AnnAssign)
                and isinstance(current.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
            ):
                found[current.target.id] = " ".join(str(following.value.value).split())
    return found


def _default(cls: type[Any], name: str) -> str:
    spec = {f.name: f for f in dataclasses.fields(cls)}[name]
    if name == "node_id":
        return "random"
    factory: Any = spec.default_factory
    value = spec.default if spec.default is not dataclasses.MISSING else factory()
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`"


def render() -> str:
    """The whole page."""
    docs = _docstrings()
    lines = [HEADER]

    def table(title: str, cls: type[Any], names: list[str]) -> None:
        lines.extend([f"## {title}", "", "| key | environment | default | meaning |"])
        lines.append("|---|---|---|---|")
        for name in names:
            meaning = docs.get(name, "").replace("``", "`").replace("|", "\\|")
            lines.append(
                f"| `{name}` | `WSGATE_{name.upper()}` | {_default(cls, name)} | {meaning} |"
            )
        lines.append("")

    table("Top level", Config, list(_TOP_LEVEL))
    for section, cls in _SECTIONS.items():
        table(f"[{section}]", cls, [f.name for f in dataclasses.fields(cls)])
    return "\n".join(lines)


if __name__ == "__main__":
    PAGE.write_text(render(), encoding="utf-8")
    sys.stdout.write(f"wrote {PAGE}\n")
