"""The benchmark scripts name only package code that exists.

They are run by hand (BENCHMARKS.md gives each command), not in CI, so a
function the package renames or removes would break them unseen: two did,
when the real preset's TinyBERT student changed. Read without running them:
every `from mbert_jax... import NAME` (at the top or inside a function) must
import, and every `ALIAS.attr` on a package module they import must exist.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))
PACKAGES = ("mbert_jax", "configs")


def references(tree: ast.AST) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
    """(imports as (module, name, line), attribute uses as (alias's module, attr, line))."""
    imports, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGES):
            for a in node.names:
                imports.append((node.module, a.name, node.lineno))
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith(PACKAGES) and a.asname:
                    aliases[a.asname] = a.name
    uses = [
        (aliases[node.value.id], node.attr, node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in aliases
    ]
    return imports, uses


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_package_name_a_benchmark_uses_exists(script):
    imports, uses = references(ast.parse(script.read_text()))
    missing = []
    for module, name, line in imports:
        target = importlib.import_module(module)
        if not hasattr(target, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                missing.append(f"line {line}: from {module} import {name}")
    for dotted, attr, line in uses:
        try:
            target = importlib.import_module(dotted)
        except ModuleNotFoundError:
            continue  # a function or class imported by name: its attributes are not modules'
        if not hasattr(target, attr):
            missing.append(f"line {line}: {dotted}.{attr}")
    assert not missing, f"{script.name} uses names the package lacks: {missing}"


def test_the_check_finds_a_removed_function():
    source = "def f(q):\n    from mbert_jax.quickstart import real\n    return real.gone(q)\n"
    imports, uses = references(ast.parse(source))
    assert imports == [("mbert_jax.quickstart", "real", 2)]
    assert uses == [("mbert_jax.quickstart.real", "gone", 3)]
