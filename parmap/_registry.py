"""Backend names, lazy loading, and the live backend instances.

A backend is named by a string and imported only when a call first uses it, so
``import parmap`` imports none of ray, dask, distributed or loky. Third-party
backends register with :func:`register_backend` or an entry point in the
``parmap.backends`` group (``name = "package.module:BackendClass"``).
"""

from __future__ import annotations

import atexit
import functools
import importlib
import importlib.metadata
import importlib.util
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from parmap._errors import BackendNotInstalledError, UnknownBackendError

if TYPE_CHECKING:
    from parmap.backends._base import Backend

__all__ = [
    "BackendSpec",
    "acquire",
    "available_backends",
    "backend_names",
    "check_name",
    "default_backend",
    "is_installed",
    "live_backends",
    "register_backend",
    "shutdown",
]

ENTRY_POINT_GROUP = "parmap.backends"
log = logging.getLogger("parmap")


@dataclass(frozen=True)
class BackendSpec:
    """Where a backend lives and what it needs.

    Attributes:
        name: the name users pass as ``backend=``.
        target: ``"module:Class"`` or the class itself.
        requires: top-level modules that must be importable.
        extra: the pip extra that installs them, for the error message.
    """

    name: str
    target: Any
    requires: tuple[str, ...] = ()
    extra: str | None = None


_specs: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec("serial", "parmap.backends._serial:SerialBackend"),
        BackendSpec("multiprocessing", "parmap.backends._multiprocessing:MultiprocessingBackend"),
        BackendSpec("loky", "parmap.backends._loky:LokyBackend", ("loky",), "loky"),
        BackendSpec("ray", "parmap.backends._ray:RayBackend", ("ray",), "ray"),
        BackendSpec("dask", "parmap.backends._dask:DaskBackend", ("dask", "distributed"), "dask"),
    )
}
AUTO = "auto"  # not an engine: parmap._auto picks serial or one of the backends per call
_specs[AUTO] = BackendSpec(AUTO, None)
_entry_points_loaded = False
_lock = threading.RLock()
_live: dict[str, tuple[tuple[Any, ...], Backend]] = {}


def register_backend(
    name: str,
    target: Any,
    *,
    requires: tuple[str, ...] = (),
    extra: str | None = None,
    replace: bool = False,
) -> None:
    """Make a backend available under ``name``.

    Args:
        name: the name for ``backend=`` and ``$PARMAP_BACKEND``.
        target: a :class:`parmap.Backend` subclass, or ``"module:Class"`` to import lazily.
        requires: modules that must be importable for the backend to work.
        extra: the pip extra (or package) that provides them, named in errors.
        replace: allow replacing an existing backend of the same name.

    Raises:
        ValueError: ``name`` is taken and ``replace`` is false.
    """
    with _lock:
        if name in _specs and not replace:
            raise ValueError(f"a parmap backend named {name!r} exists; pass replace=True")
        _specs[name] = BackendSpec(name, target, tuple(requires), extra)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        _specs.setdefault(ep.name, BackendSpec(ep.name, ep.value))


def backend_names() -> list[str]:
    """Every known backend name, installed or not, sorted."""
    with _lock:
        _load_entry_points()
        return sorted(_specs)


def is_installed(name: str) -> bool:
    """Whether the packages backend ``name`` needs can be imported (without importing them)."""
    spec = _spec(name, source="argument")
    return all(_importable(module) for module in spec.requires)


@functools.cache
def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def available_backends() -> list[str]:
    """The known backends whose packages are installed (``"auto"`` is a choice, not one)."""
    return [name for name in backend_names() if name != AUTO and is_installed(name)]


def default_backend() -> str:
    """``"ray"`` when Ray is installed, else ``"loky"``."""
    return "ray" if is_installed("ray") else "loky"


def check_name(name: Any, *, source: str) -> None:
    """Raise :class:`UnknownBackendError` unless ``name`` is a known backend."""
    _spec(name, source=source)


def _spec(name: Any, *, source: str) -> BackendSpec:
    spec = _specs.get(name) if isinstance(name, str) else None  # the common case: no lock
    if spec is None:
        with _lock:
            _load_entry_points()
            spec = _specs.get(name) if isinstance(name, str) else None
    if spec is None:
        origin = {
            "environment": f" (from $PARMAP_BACKEND={name!r})",
            "config": " (from parmap.config())",
        }.get(source, "")
        raise UnknownBackendError(
            f"unknown parmap backend {name!r}{origin}; valid names are: "
            f"{', '.join(backend_names())}"
        )
    return spec


def backend_class(name: str, *, source: str = "argument") -> type[Backend]:
    """Import and return the class of backend ``name``.

    Raises:
        UnknownBackendError: ``name`` is not known.
        BackendNotInstalledError: a package the backend needs is missing.
    """
    spec = _spec(name, source=source)
    missing = [m for m in spec.requires if not _importable(m)]
    if missing:
        extra = spec.extra or missing[0]
        raise BackendNotInstalledError(
            f"parmap backend {name!r} needs {', '.join(missing)}, which is not installed; "
            f"install it with: pip install 'parmap-backends[{extra}]'"
        )
    if spec.target is None:
        raise TypeError(f"{name!r} chooses a backend per call; it has no backend class")
    if not isinstance(spec.target, str):
        return spec.target
    module_name, _, attr = spec.target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def acquire(name: str, options: dict[str, Any], *, source: str = "argument") -> Backend:
    """The live backend instance for ``name`` with these options, started on first use.

    One instance per name is kept (pools persist across calls); asking for the
    same name with different options shuts the old instance down first.
    """
    key = tuple(sorted((k, v) for k, v in options.items() if v is not None))
    with _lock:
        live = _live.get(name)
        if live is not None and live[0] == key:
            return live[1]
        cls = backend_class(name, source=source)
        if live is not None:
            log.debug("parmap: restarting backend %r with options %s", name, dict(key))
            _live.pop(name)[1].shutdown()
        backend = cls(**dict(key))
        _live[name] = (key, backend)
        return backend


def live_backends() -> list[Backend]:
    """The backend instances started so far and not shut down."""
    with _lock:
        return [backend for _, backend in _live.values()]


def shutdown(name: str | None = None) -> None:
    """Stop the workers of one live backend (by name) or of all of them."""
    with _lock:
        names = [name] if name is not None else list(_live)
        doomed = [_live.pop(n)[1] for n in names if n in _live]
    for backend in doomed:
        try:
            backend.shutdown()
        except Exception:  # pragma: no cover - best effort at exit
            log.warning("parmap: error while shutting down %s", backend.name, exc_info=True)


atexit.register(shutdown)
