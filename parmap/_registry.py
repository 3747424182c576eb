"""Backend names, lazy loading, and the live backend instances.

A backend is named by a string and imported only when first needed, so
``import parmap`` imports none of the engines. The table below is the one
place that names the built-in ones; everything else the core knows about a
backend it reads from its class (:class:`parmap.backends.Backend`). Third-party
backends register with :func:`register_backend` or an entry point in the
``parmap.backends`` group (``name = "package.module:BackendClass"``), and are
then chosen, calibrated and described like the built-in ones.

Live instances are kept per name and options, and leased to calls::

    lease(name, options)    the instance for these options, started on first use;
                            a call holds it until it ends
    another option set      a new instance; the instances of the two option sets
                            used last stay (two threads with different options
                            do not restart each other's workers at every call);
                            an older one is shut down once no call holds it (a
                            thread still using it is never cut off)
    shutdown()              at parmap.shutdown() or interpreter exit

A ``concurrent.futures.Executor`` passed as ``backend=`` is adopted: it becomes
a backend of its own (a class made by ``parmap.backends.ExecutorBackend``),
named after its type and identity (:func:`name_of`) and forgotten when it is
collected, so parmap never keeps a user's executor alive.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import contextlib
import difflib
import functools
import importlib
import importlib.metadata
import importlib.util
import logging
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from parmap._errors import BackendNotInstalledError, UnknownBackendError

if TYPE_CHECKING:
    from parmap.backends._base import Backend

__all__ = [
    "AUTO",
    "BackendSpec",
    "available_backends",
    "backend_class",
    "backend_names",
    "check_name",
    "default_backend",
    "installed_classes",
    "is_installed",
    "lease",
    "live_backends",
    "name_of",
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
        provider: the distribution whose entry point registered it (None: parmap
            itself, or a register_backend() call).
    """

    name: str
    target: Any
    requires: tuple[str, ...] = ()
    extra: str | None = None
    provider: str | None = None


_specs: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec("serial", "parmap.backends._serial:SerialBackend"),
        BackendSpec("threads", "parmap.backends._threads:ThreadsBackend"),
        BackendSpec("multiprocessing", "parmap.backends._multiprocessing:MultiprocessingBackend"),
        BackendSpec("loky", "parmap.backends._loky:LokyBackend", ("loky",), "loky"),
        BackendSpec("ray", "parmap.backends._ray:RayBackend", ("ray",), "ray"),
        BackendSpec("dask", "parmap.backends._dask:DaskBackend", ("dask", "distributed"), "dask"),
        BackendSpec("mpi", "parmap.backends._mpi:MPIBackend", ("mpi4py",), "mpi"),
    )
}
# What adapts a user's executor passed as backend= (see name_of).
EXECUTOR_BACKEND = "parmap.backends._executor:ExecutorBackend"
DEFAULTS = ("ray", "loky")  # the default backend: the first of these that is installed
AUTO = "auto"  # not an engine: parmap._auto picks serial or one of the backends per call
_specs[AUTO] = BackendSpec(AUTO, None)
_entry_points_loaded = False
_lock = threading.RLock()


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
        _classes.pop(name, None)


def unregister_backend(name: str) -> None:
    """Forget a backend registered with :func:`register_backend` (shutting it down)."""
    shutdown(name)
    with _lock:
        _specs.pop(name, None)
        _classes.pop(name, None)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        provider = ep.dist.name if ep.dist is not None else None
        _specs.setdefault(ep.name, BackendSpec(ep.name, ep.value, provider=provider))


def backend_names() -> list[str]:
    """Every known backend name, installed or not, sorted."""
    with _lock:
        _load_entry_points()
        return sorted(_specs)


def spec(name: str) -> BackendSpec:
    """The registry entry of ``name`` (see :func:`check_name` for the errors)."""
    return _spec(name, source="argument")


def is_installed(name: str) -> bool:
    """Whether the packages backend ``name`` needs can be imported (without importing them)."""
    return all(_importable(module) for module in _spec(name, source="argument").requires)


@functools.cache
def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def available_backends() -> list[str]:
    """The backends that can run here: their packages installed, and usable in this process
    (see :meth:`parmap.backends.Backend.usable`; ``"auto"`` is a choice, not one)."""
    return list(installed_classes())


def unusable_reason(name: str) -> str | None:
    """Why installed backend ``name`` cannot run in this process, or None."""
    return backend_class(name).usable()


def default_backend() -> str:
    """The first installed backend of :data:`DEFAULTS`."""
    return next((name for name in DEFAULTS if is_installed(name)), DEFAULTS[-1])


def default_reason(name: str) -> str:
    """Why ``name`` is the default, for :class:`parmap.BackendChoice`."""
    skipped = [other for other in DEFAULTS[: DEFAULTS.index(name)]] if name in DEFAULTS else []
    if not skipped:
        return f"{name} is installed"
    hints = ", ".join(f"pip install 'parmap-backends[{_specs[s].extra or s}]'" for s in skipped)
    return f"{' and '.join(skipped)} is not installed ({hints})"


def check_name(name: Any, *, source: str) -> None:
    """Raise :class:`UnknownBackendError` unless ``name`` is a known backend (or an
    executor, see :func:`name_of`)."""
    name_of(name, source=source)


def name_of(backend: Any, *, source: str) -> str:
    """The registered name of a ``backend=`` value: a known name as is; a
    ``concurrent.futures.Executor`` adopted as a backend of its own.

    Raises:
        UnknownBackendError: neither a known name nor an executor.
    """
    if isinstance(backend, cf.Executor):
        return _adopt(backend)
    return _spec(backend, source=source).name


def _spec(name: Any, *, source: str) -> BackendSpec:
    found = _specs.get(name) if isinstance(name, str) else None  # the common case: no lock
    if found is None:
        with _lock:
            _load_entry_points()
            found = (_specs.get(name) or _adopted.get(name)) if isinstance(name, str) else None
    if found is None:
        raise UnknownBackendError(_unknown(name, source))
    return found


def _unknown(name: Any, source: str) -> str:
    origin = {
        "environment": f" (from $PARMAP_BACKEND={name!r})",
        "config": " (from parmap.config())",
    }.get(source, "")
    names = backend_names()
    hint = ""
    if isinstance(name, str):
        lowered = {known.lower(): known for known in names}
        close = difflib.get_close_matches(name.strip().lower(), list(lowered), n=1, cutoff=0.6)
        if close:
            hint = f" (did you mean {lowered[close[0]]!r}?)"
    return (
        f"unknown parmap backend {name!r}{origin}{hint}; valid names are: {', '.join(names)}"
        " (or pass a concurrent.futures.Executor)"
    )


# -- executors passed as backend= -------------------------------------------------------

_adopted: dict[str, BackendSpec] = {}  # name -> the spec of an adopted executor's class
_adopted_ids: dict[int, str] = {}  # id(executor) -> name, while it lives


def _adopt(executor: cf.Executor) -> str:
    """The name of a user's executor as a backend; its class is made on first sight."""
    key = id(executor)
    name = _adopted_ids.get(key)
    if name is not None:
        return name
    module_name, _, attr = EXECUTOR_BACKEND.partition(":")
    adapter = getattr(importlib.import_module(module_name), attr)
    with _lock:
        name = _adopted_ids.get(key)
        if name is not None:
            return name
        name = f"executor:{type(executor).__qualname__}@{key:x}"
        _adopted[name] = BackendSpec(name, adapter.adopting(executor, name))
        _adopted_ids[key] = name
    with contextlib.suppress(TypeError):  # no weak references: forgotten at shutdown()
        weakref.finalize(executor, _forget_adopted, key, name).atexit = False
    return name


def _forget_adopted(key: int, name: str) -> None:
    """The executor was collected: forget its backend (its id may name another object)."""
    with _lock:
        if _adopted_ids.get(key) == name:
            del _adopted_ids[key]
        _adopted.pop(name, None)
        _classes.pop(name, None)
    shutdown(name)


_classes: dict[str, type[Backend]] = {}


def backend_class(name: str, *, source: str = "argument") -> type[Backend]:
    """Import and return the class of backend ``name``.

    Raises:
        UnknownBackendError: ``name`` is not known.
        BackendNotInstalledError: a package the backend needs is missing.
    """
    cls = _classes.get(name)
    if cls is not None:
        return cls
    entry = _spec(name, source=source)
    missing = [m for m in entry.requires if not _importable(m)]
    if missing:
        extra = entry.extra or missing[0]
        verb = "is" if len(missing) == 1 else "are"
        raise BackendNotInstalledError(
            f"parmap backend {name!r} needs {' and '.join(missing)}, which {verb} not "
            f"installed; install with: pip install 'parmap-backends[{extra}]'"
        )
    if entry.target is None:
        raise TypeError(f"{name!r} chooses a backend per call; it has no backend class")
    if isinstance(entry.target, str):
        module_name, _, attr = entry.target.partition(":")
        cls = getattr(importlib.import_module(module_name), attr)
    else:
        cls = entry.target
    _classes[name] = cls
    return cls


def installed_classes() -> dict[str, type[Backend]]:
    """The class of every backend that can run here, by name: installed, importable (one
    that fails to import is left out, with a warning) and usable in this process. What
    ``auto``, calibration and the benchmarks look at."""
    found = {}
    for name in backend_names():
        if name == AUTO or not is_installed(name):
            continue
        try:
            cls = backend_class(name)
        except Exception as exc:
            log.warning("parmap: backend %r cannot be loaded: %s", name, exc)
            continue
        if cls.usable() is None:
            found[name] = cls
    return found


# -- live instances -----------------------------------------------------------------------


@dataclass(eq=False)
class _Live:
    backend: Backend
    key: tuple[Any, ...]
    leases: int = 0
    retired: bool = False  # superseded by another option set: shut down when unleased


_live: dict[str, list[_Live]] = {}  # name -> instances, the one used last at the end
KEEP = 2  # instances per backend name kept for the option sets used last


@contextlib.contextmanager
def lease(name: str, options: dict[str, Any], *, source: str = "argument") -> Iterator[Backend]:
    """The live instance of backend ``name`` for these options, held for one call.

    Started on first use and reused by later calls with the same options. A call
    with other options gets its own instance; the instances of the :data:`KEEP`
    option sets used last stay, and an older one is shut down as soon as no call
    holds it, so threads with different options never stop each other's backend.

    Raises:
        UnknownBackendError, BackendNotInstalledError: see :func:`backend_class`.
    """
    entry = _acquire(name, options, source)
    try:
        yield entry.backend
    finally:
        _release(entry)


def _acquire(name: str, options: dict[str, Any], source: str) -> _Live:
    key = tuple(sorted((k, v) for k, v in options.items() if v is not None))
    with _lock:
        instances = _live.setdefault(name, [])
        for entry in reversed(instances):
            if entry.key == key and not entry.retired:
                entry.leases += 1
                if instances[-1] is not entry:  # used last: at the end
                    instances.remove(entry)
                    instances.append(entry)
                return entry
        cls = backend_class(name, source=source)
        entry = _Live(cls(**dict(key)), key, leases=1)
        instances.append(entry)
        doomed = _retire(instances, [e for e in instances if not e.retired][:-KEEP])
    _stop(doomed)
    return entry


def _retire(instances: list[_Live], older: list[_Live]) -> list[_Live]:
    """Mark ``older`` superseded; remove and return those no call holds (lock held)."""
    doomed = []
    for entry in older:
        entry.retired = True
        if entry.leases == 0:
            doomed.append(entry)
    for entry in doomed:
        instances.remove(entry)
    return doomed


def _release(entry: _Live) -> None:
    with _lock:
        entry.leases -= 1
        doomed = entry.retired and entry.leases == 0
        if doomed:
            instances = _live.get(entry.backend.name, [])
            if entry in instances:
                instances.remove(entry)
    if doomed:
        log.debug("parmap: stopping backend %r with options %s", entry.backend.name, entry.key)
        _stop([entry])


def _stop(entries: list[_Live]) -> None:
    for entry in entries:
        try:
            entry.backend.shutdown()
        except Exception:  # pragma: no cover - best effort
            log.warning("parmap: error while shutting down %s", entry.backend.name, exc_info=True)


def running(name: str) -> bool:
    """Whether an instance of backend ``name`` is live (its workers are, or were, started)."""
    return bool(_live.get(name))


def live_backends() -> list[Backend]:
    """The backend instances started so far and not shut down."""
    with _lock:
        return [entry.backend for instances in _live.values() for entry in instances]


def shutdown(name: str | None = None) -> None:
    """Stop the workers of one live backend (by name) or of all of them.

    Instances a call is using right now are stopped too: that call then fails
    with :class:`parmap.WorkerCrashedError`, as for any lost worker.
    """
    with _lock:
        names = [name] if name is not None else list(_live)
        doomed = [entry for n in names for entry in _live.pop(n, [])]
        if name is None:  # adopted executors are the caller's: only parmap's view of them goes
            for adopted in list(_adopted):
                _classes.pop(adopted, None)
            _adopted.clear()
            _adopted_ids.clear()
    _stop(doomed)


atexit.register(shutdown)
