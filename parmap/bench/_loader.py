"""``parmap bench --fn``: find the user's function and sample items from their specs.

A spec names an object as ``package.module:attribute`` (the module is imported
with the current directory on the path, as ``python -m`` does) or as
``path/to/file.py:attribute`` (the file's folder goes on the path; the module is
shipped to workers by value, so workers need not import it). The attribute may
be dotted: ``onemax:toolbox.evaluate``.

Items come from ``--items-from``:

==========================  ====================================================
``module:factory``          called once, as ``factory(N)`` with ``--items N``,
                            else ``factory()``; returns the items
``module:NAME``             a list (or any iterable) of items, used as it is
``items.json``              a JSON list
``items.pkl`` / ``.pickle`` a pickled list (pickle or cloudpickle)
==========================  ====================================================

With ``--items N`` the first N items are used; fewer than N is an error: the
benchmark never invents items. Each item is one argument: ``fn(item)``.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["Loaded", "SpecError", "load_function", "load_items", "worker_path"]

FILE_SUFFIXES = (".json", ".pkl", ".pickle")


class SpecError(ValueError):
    """A spec that does not name a usable object; the message says what to write instead."""


@dataclass
class Loaded:
    """An object found from a spec, and the folders its module needs on the path."""

    obj: Any
    module: ModuleType | None
    paths: list[str] = field(default_factory=list)


def load_function(spec: str) -> Loaded:
    """The callable ``spec`` names (see the module docstring).

    Args:
        spec: ``package.module:function`` or ``path/file.py:function``.

    Returns:
        The callable, its module and the folders workers need on their path.

    Raises:
        SpecError: a malformed spec, a missing module or attribute, or not callable.
    """
    loaded = _load(spec, "--fn")
    if not callable(loaded.obj):
        raise SpecError(f"--fn {spec}: {type(loaded.obj).__name__} object is not callable")
    return loaded


def load_items(spec: str, n_items: int | None) -> tuple[list[Any], list[str]]:
    """The sample items ``spec`` gives (see the module docstring), and the folders they need.

    Args:
        spec: ``module:factory``, ``module:NAME``, or a ``.json`` / ``.pkl`` file.
        n_items: how many items to use (None: all the source gives).

    Returns:
        The items (a new list) and the folders their module needs on the path.

    Raises:
        SpecError: a bad spec, an unreadable file, no items, or fewer than ``n_items``.
    """
    paths: list[str] = []
    if spec.endswith(FILE_SUFFIXES) and ":" not in Path(spec).name:
        source: Any = _read_file(Path(spec))
    else:
        loaded = _load(spec, "--items-from")
        paths = loaded.paths
        source = loaded.obj
        if callable(source):
            source = source() if n_items is None else source(n_items)
    try:
        items = list(source)
    except TypeError:
        raise SpecError(
            f"--items-from {spec}: gave a {type(source).__name__}, not a list of items"
        ) from None
    if not items:
        raise SpecError(f"--items-from {spec}: gave no items")
    if n_items is not None and len(items) < n_items:
        raise SpecError(
            f"--items-from {spec}: gave {len(items)} items, fewer than --items {n_items}; "
            f"give --items {len(items)} or a source with more items (none are invented)"
        )
    return items[:n_items] if n_items is not None else items, paths


def _read_file(path: Path) -> Any:
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text())
        with path.open("rb") as file:
            return pickle.load(file)
    except FileNotFoundError:
        raise SpecError(f"--items-from {path}: no such file") from None
    except (OSError, ValueError, pickle.UnpicklingError, EOFError) as exc:
        raise SpecError(f"--items-from {path}: cannot read it: {exc}") from None


def _load(spec: str, option: str) -> Loaded:
    module_part, colon, attribute = spec.rpartition(":")
    if not colon or not module_part or not attribute:
        raise SpecError(f"{option} {spec!r}: expected package.module:name or path/to/file.py:name")
    if module_part.endswith(".py") or os.sep in module_part:
        module, paths = _import_file(Path(module_part), option, spec)
    else:
        module, paths = _import_module(module_part, option, spec)
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SpecError(
                f"{option} {spec}: {module_part} has no attribute {attribute!r}"
            ) from None
    return Loaded(obj, module, paths)


def _import_module(name: str, option: str, spec: str) -> tuple[ModuleType, list[str]]:
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:  # console scripts lack it; python -m has it
        sys.path.insert(0, here)
    try:
        return importlib.import_module(name), [here]
    except ModuleNotFoundError as exc:
        if exc.name is None or not name.startswith(exc.name):
            raise  # the user's module imports something missing: their traceback
        raise SpecError(
            f"{option} {spec}: no module named {exc.name!r} (importable from {here}); "
            "for a script, give its path: path/to/file.py:name"
        ) from None


def _import_file(path: Path, option: str, spec: str) -> tuple[ModuleType, list[str]]:
    path = path.resolve()
    if not path.is_file():
        raise SpecError(f"{option} {spec}: no such file: {path}")
    folder, name = str(path.parent), path.stem
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module = importlib.import_module(name)
    found = Path(getattr(module, "__file__", "") or "").resolve()
    if found != path:
        raise SpecError(
            f"{option} {spec}: a module named {name!r} is already imported from {found}; "
            "rename the file"
        )
    _by_value(module)
    return module, [folder]


def _by_value(module: ModuleType) -> None:
    """Ship a script's functions by value: workers then need not import the script
    (which would re-run its top level, e.g. DEAP's ``creator.create``)."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(module)


def worker_path(paths: list[str], environ: dict[str, str] | None = None) -> str:
    """``$PYTHONPATH`` with ``paths`` in front: how workers started later find the user's
    modules (Ray and Dask workers do not inherit this process's ``sys.path``)."""
    current = (environ if environ is not None else os.environ).get("PYTHONPATH", "")
    parts = [*paths, *(p for p in current.split(os.pathsep) if p)]
    return os.pathsep.join(dict.fromkeys(parts))
