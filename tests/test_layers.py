"""The core knows no engine by name, and its layers hold (checked on the source).

The core is the top-level modules of ``parmap/``: what a backend's class says
about itself (``parmap.backends.Backend``) is all it knows of engines. Engine
names may stand in ``parmap/backends/`` and in the registry's table, and in the
leaf packages that use engines on purpose (``parmap.bench`` measures peers
such as ``multiprocessing.Pool``; ``parmap.scoop`` starts clusters for SCOOP's
host options). Import layers are checked by import-linter (pyproject.toml).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import parmap

CORE = sorted(Path(parmap.__file__).parent.glob("*.py"))
ENGINES = {"ray", "dask", "distributed", "loky", "multiprocessing", "threads", "mpi", "mpi4py"}
# Where the registry names the built-in backends: its table and its default order.
REGISTRY_TABLE = {("_registry.py", "_specs"), ("_registry.py", "DEFAULTS")}


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _table_nodes(path: Path, tree: ast.Module) -> set[int]:
    """The nodes inside the registry's table (its assignments named in REGISTRY_TABLE)."""
    inside = set()
    for node in tree.body:
        targets = getattr(node, "targets", None) or [getattr(node, "target", None)]
        names = {getattr(target, "id", None) for target in targets}
        if any((path.name, name) in REGISTRY_TABLE for name in names):
            inside |= {id(sub) for sub in ast.walk(node)}
    return inside


def engine_names(path: Path) -> list[str]:
    """Where ``path`` names an engine: a string constant or a name, with its line."""
    tree = ast.parse(path.read_text())
    skip = _docstrings(tree) | _table_nodes(path, tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.strip().lower() in ENGINES:
                found.append(f"{path.name}:{node.lineno}: {node.value!r}")
        elif isinstance(node, ast.Name) and node.id in ENGINES - {"multiprocessing"}:
            found.append(f"{path.name}:{node.lineno}: {node.id}")
    return found


@pytest.mark.parametrize("path", CORE, ids=[p.name for p in CORE])
def test_the_core_names_no_engine(path):
    assert engine_names(path) == [], "engine facts belong on the backend's class"


def test_the_check_sees_an_engine_name(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""Ray is fine in a docstring."""\nif name == "ray":\n    import ray\n')
    assert engine_names(bad) == ["bad.py:2: 'ray'"]


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter not installed")
def test_import_layers_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    command = [str(lint) if lint.exists() else "lint-imports"]
    root = Path(parmap.__file__).parent.parent
    run = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:]
