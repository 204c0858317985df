"""The architecture holds: the core never imports the shells, and nothing imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "layerwatch"
CORE = ["reference", "chain", "documents", "manifest", "observation", "verdict", "report", "check", "config"]
SHELL_IMPORTS = ("kopf", "kubernetes", "aiohttp.web", "layerwatch.kube", "layerwatch.cli", "layerwatch.serve")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", CORE)
def test_the_core_imports_no_shell(module: str) -> None:
    imported = _imports(PACKAGE / f"{module}.py")
    leaks = sorted(name for name in imported if name.startswith(SHELL_IMPORTS))
    assert not leaks, f"layerwatch.{module} imports {leaks}"


def test_nothing_imports_the_cli() -> None:
    """Except ``python3 -m layerwatch``, which is the CLI."""
    users = [
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if path.name not in ("cli.py", "__main__.py") and "layerwatch.cli" in _imports(path)
    ]
    assert not users


def test_only_the_kube_shell_imports_kopf_and_the_kubernetes_client() -> None:
    users = [
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if path.parent.name != "kube"
        and any(n.split(".")[0] in ("kopf", "kubernetes") for n in _imports(path))
    ]
    assert not users
