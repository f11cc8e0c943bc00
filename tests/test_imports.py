"""Every petiq import in the code resolves, including those inside functions that no other test reaches.

Moving names between modules (the stage packages, the splits of long modules) breaks what a module-level
import would show at once only where the import is lazy (inside a command's function) or goes through a
module alias (``cio.load_npz``). This walks the syntax of src/, tests/, benchmarks/ and workflow/scripts/
and checks each ``from petiq… import name`` and each ``alias.name`` against the imported modules.
"""

from __future__ import annotations

import ast
import importlib
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted(p for d in ("src", "tests", "benchmarks", "workflow/scripts") for p in (ROOT / d).rglob("*.py"))


def _package(path: Path) -> str | None:
    """The package a relative import in ``path`` starts from (None outside src/)."""
    rel = path.relative_to(ROOT)
    if rel.parts[0] != "src":
        return None
    parts = rel.with_suffix("").parts[1:]
    return ".".join(parts[:-1])


def _member(module: types.ModuleType, name: str):
    if hasattr(module, name):
        return getattr(module, name)
    return importlib.import_module(f"{module.__name__}.{name}")  # a submodule not imported by the package


def _problems(path: Path, source: str | None = None) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source)
    rel = path.relative_to(ROOT)
    aliases: dict[str, types.ModuleType] = {}
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                package = _package(path)
                if package is None:
                    continue
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("petiq"):
                continue
            try:
                module = importlib.import_module(target)
            except ImportError as exc:
                problems.append(f"{rel}:{node.lineno}: cannot import {target} ({exc})")
                continue
            for alias in node.names:
                if alias.name == "*":
                    continue
                try:
                    member = _member(module, alias.name)
                except ImportError:
                    problems.append(f"{rel}:{node.lineno}: {target} has no {alias.name}")
                    continue
                if isinstance(member, types.ModuleType):
                    aliases[alias.asname or alias.name] = member
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("petiq") and alias.asname:
                    aliases[alias.asname] = importlib.import_module(alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            module = aliases[node.value.id]
            try:
                _member(module, node.attr)
            except ImportError:
                problems.append(f"{rel}:{node.lineno}: {node.value.id}.{node.attr} is not in {module.__name__}")
    return problems


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_petiq_import_and_module_attribute_resolves(path):
    problems = _problems(path)
    assert not problems, "\n".join(problems)


def test_the_check_finds_a_lazy_import_of_a_module_that_is_not_there():
    """The check itself: a relative import inside a function, one package level off (the mistake that
    broke `petiq simulate --norm` after the cli split), is reported."""
    source = "def f():\n    from .recon.norm_writer import x\n"
    assert _problems(ROOT / "src/petiq/cli/_import_probe.py", source) == [
        "src/petiq/cli/_import_probe.py:2: cannot import petiq.cli.recon.norm_writer "
        "(No module named 'petiq.cli.recon.norm_writer'; 'petiq.cli.recon' is not a package)"
    ]


def test_no_private_name_crosses_a_module_border_in_the_library():
    """A name one module of petiq takes from another is public (CONTRIBUTING.md): `from .files import
    _open_checked` in another module means the name should lose its underscore."""
    crossing = []
    for path in FILES:
        if path.relative_to(ROOT).parts[0] != "src":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("petiq")):
                crossing += [
                    f"{path.relative_to(ROOT)}:{node.lineno}: {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert not crossing, "\n".join(crossing)
