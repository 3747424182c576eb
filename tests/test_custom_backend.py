"""The external backend of examples/custom_backend: public names only, found, chosen by auto.

The contract suite (test_contract.py) runs on it like on every installed backend
once the package is installed (`pip install -e examples/custom_backend`, as CI does).
"""

from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path

import funcs
import pytest

import parmap
import parmap.backends

EXAMPLE = Path(__file__).parent.parent / "examples" / "custom_backend" / "parmap_pebble"
INSTALLED = any(
    ep.name == "pebble" for ep in importlib.metadata.entry_points(group="parmap.backends")
)
needs_install = pytest.mark.skipif(
    not INSTALLED, reason="pip install -e examples/custom_backend (CI installs it)"
)

pytestmark = pytest.mark.timeout(180)


def test_the_example_uses_public_names_only():
    tree = ast.parse((EXAMPLE / "__init__.py").read_text())
    used = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("parmap"):
            used[node.module] = {alias.name for alias in node.names}
    assert set(used) <= {"parmap", "parmap.backends"}, used
    assert used["parmap.backends"] <= set(parmap.backends.__all__)
    assert used.get("parmap", set()) <= set(parmap.__all__)


def test_the_example_is_about_a_hundred_lines():
    code = [
        line
        for line in (EXAMPLE / "__init__.py").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert len(code) <= 110, f"{len(code)} lines"


@needs_install
def test_found_through_its_entry_point_and_described():
    assert "pebble" in parmap.available_backends()
    assert parmap.parmap(abs, range(-3, 3), backend="pebble") == [3, 2, 1, 0, 1, 2]
    from parmap._cli import info

    assert "pebble" in info()


def slow(x):
    funcs.hold_gil(0.02)  # holds the GIL: threads of one process would not run it in parallel
    return x


@needs_install
def test_auto_chooses_it_where_it_is_the_fastest(census, monkeypatch):
    """Warm pebble against cold loky and multiprocessing (each would pay its start-up
    first): for 40 items of 20 ms, pebble is the fastest way, and auto takes it."""
    for variable in ("RAY_ADDRESS", "DASK_SCHEDULER_ADDRESS"):
        monkeypatch.delenv(variable, raising=False)
    parmap.shutdown()
    assert parmap.parmap(abs, range(4), backend="pebble", workers=2) == [0, 1, 2, 3]
    decision = parmap.explain(slow, range(40), workers=2)
    assert decision.chosen == "pebble", str(decision)
    assert "pebble" in parmap._auto.candidates()
    assert parmap.parmap(slow, range(40), backend="auto", workers=2) == list(range(40))
    # auto may have measured on the caller's threads how fn scales there (no process)
    live = {backend.name for backend in parmap._registry.live_backends()} - {"threads"}
    assert live == {"pebble"}, f"auto started {live - {'pebble'}} besides the warm pebble"
