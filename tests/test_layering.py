"""Import arrows point one way (the design's layering):

    engine.core  <-  policies, forecasters, actuators, engine.sources  <-  engine

Checked on the source text (every ``import`` and ``from`` statement, also
the lazy ones inside functions), so a new arrow the wrong way fails here
rather than as an import cycle months later.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import ROOT

PACKAGES = ("engine", "policies", "forecasters", "actuators")


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every forescale module ``path`` imports, resolved to absolute names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module(path)
    pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{a.name}" for a in node.names)
    return {m for m in out if m.split(".")[0] in PACKAGES}


def _layer(module: str) -> str:
    if module == "engine.core" or module.startswith("engine.core."):
        return "core"
    if module == "engine.sources" or module.startswith("engine.sources."):
        return "plugins"
    top = module.split(".")[0]
    return "orchestrator" if top == "engine" else "plugins"


FILES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _real(module: str) -> bool:
    """A name that is a module or package (not ``engine.core.types.Series``)."""
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_import_arrows_point_one_way(path):
    me = _module(path)
    mine = _layer(me)
    allowed = {"core": {"core"}, "plugins": {"core", "plugins"}, "orchestrator": {"core", "plugins", "orchestrator"}}
    wrong = sorted(m for m in _imports(path) if _real(m) and _layer(m) not in allowed[mine])
    assert not wrong, f"{me} ({mine}) imports {wrong}: only {sorted(allowed[mine])} may be imported from here"


def test_policies_import_no_other_plugin_package():
    """The pure policy depends on the vocabulary alone (no forecaster, no SDK)."""
    for path in (ROOT / "policies").rglob("*.py"):
        tops = {m.split(".")[0] for m in _imports(path) if _real(m)} - {"policies"}
        mods = {m for m in _imports(path) if _real(m) and not m.startswith("policies")}
        assert all(m.startswith("engine.core") for m in mods), (path, mods, tops)


def test_plugins_do_not_import_each_other():
    """forecasters, actuators and policies are siblings: none imports another."""
    for pkg in ("forecasters", "actuators", "policies"):
        for path in (ROOT / pkg).rglob("*.py"):
            others = {m.split(".")[0] for m in _imports(path) if _real(m)} - {pkg, "engine"}
            assert not others, f"{path.relative_to(ROOT)} imports {sorted(others)}"
