"""The per-machine calibration ``backend="auto"`` predicts with.

``parmap bench --calibrate`` measures each installed backend's overhead model
and start-up time and writes them to a file (``$PARMAP_CALIBRATION``, else
``~/.cache/parmap/calibration.json``). The first ``auto`` call of a machine
without that file measures it once::

    load(workers)
      the file, read once per process and setting     ─► Calibration
      no file: first use, in this process's main program only (not on a worker,
      not in a child re-running a script that lacks the __main__ guard)
        one thread of the process and one process of the machine (a lock file)
        runs `python -m parmap.bench._calibrate`; meanwhile the others use
        the built-in defaults for their calls, and read the file once it exists
        the child writes the file whole (a temporary file, then a rename) only
        if every backend was measured; Ctrl-C stops it, leaving no file
      failed, or PARMAP_CALIBRATION=defaults          ─► built-in defaults

The measurement runs in a child process: it starts and stops pools and
clusters of its own, draws no random numbers in the caller and holds none of
the caller's locks. The built-in defaults are each backend class's
``default_model`` and ``startup_seconds``, conservative so that ``auto`` errs
towards serial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parmap import _registry, _worker
from parmap._config import getenv
from parmap._model import OverheadModel

__all__ = ["Calibration", "calibration_path", "defaults", "load", "reload", "save"]

log = logging.getLogger("parmap")

SCHEMA = 1
FIRST_USE_DEADLINE = 300.0  # seconds before a first-use calibration is given up


@dataclass(frozen=True)
class Calibration:
    """The overhead models ``auto`` predicts with.

    Attributes:
        models: backend name -> fitted model.
        startup: backend name -> seconds its first call costs (pools, clusters).
        created: when it was measured (epoch seconds), None for built-in defaults.
        source: the file it came from, or ``"built-in defaults"``.
        threaded: the backends among them whose workers are the caller's threads
            (their class's ``shares_gil``): how much of a function's work runs in
            parallel there is measured per function (see ``parmap._auto``).
    """

    models: dict[str, OverheadModel]
    startup: dict[str, float]
    created: float | None
    source: str
    threaded: frozenset[str] = frozenset()  # the models of backends that share the GIL

    def floor(self, n_items: int, cost: float, workers: int, parallel: float = 1.0) -> float:
        """No backend is predicted to run this call faster: a lower bound of every model.

        It counts one batch per worker and no start-up, so it is cheap enough for
        every call; when serial is below it, the predictions can be skipped.
        ``parallel`` is the share of the work that runs in parallel on the backends
        whose workers share the GIL (:attr:`threaded`); the rest counts at its serial
        cost there, and with none they cannot beat serial: they are left out.
        """
        with_threads = parallel > 0.0
        fixed_floor = self._fixed_floor(workers, with_threads)
        if n_items >= workers and n_items * cost <= fixed_floor:
            return fixed_floor  # a quick answer for most cheap calls
        rounds = math.ceil(n_items / workers)
        batches, work = min(n_items, workers), cost * rounds
        shared = cost * ((1.0 - parallel) * n_items + parallel * rounds)
        lowest = math.inf if self.models else 0.0
        for name, m in self.models.items():
            if name in self.threaded and not with_threads:
                continue
            done = shared if name in self.threaded else work
            bound = m.fixed + m.per_item * n_items + m.per_batch * batches + m.work_factor * done
            lowest = min(lowest, bound)
        return lowest

    def _fixed_floor(self, workers: int, with_threads: bool = True) -> float:
        """The least any backend spends on a call of ``workers`` items or more, work aside
        (leaving out those whose workers share the GIL, unless ``with_threads``)."""
        floors = self.__dict__.get("_fixed_floors")
        if floors is None:
            floors = self.__dict__["_fixed_floors"] = {}
        floor = floors.get((workers, with_threads))
        if floor is None:
            floor = floors[(workers, with_threads)] = min(
                (m.fixed + m.per_batch * workers for name, m in self.models.items()
                 if with_threads or name not in self.threaded),
                default=0.0,
            )  # fmt: skip
        return floor

    def model(self, name: str, workers: int) -> OverheadModel | None:
        """Backend ``name``'s model, for ``workers`` workers."""
        model = self.models.get(name)
        if model is not None and model.workers != workers:
            model = dataclasses.replace(model, workers=workers)
        return model

    def describe(self) -> str:
        """One line for ``parmap info``."""
        if self.created is None:
            return self.source
        age = (time.time() - self.created) / 86400
        names = ", ".join(sorted(self.models))
        return f"{self.source}, measured {age:.1f} days ago, for {names}"


def calibration_path() -> Path:
    """Where the calibration lives: ``$PARMAP_CALIBRATION`` or the user's cache folder."""
    override = getenv("PARMAP_CALIBRATION").strip()
    if override and override != "defaults":
        return Path(override).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "parmap" / "calibration.json"


def defaults(workers: int, why: str = "built-in defaults") -> Calibration:
    """Conservative models for ``workers`` workers, from each backend class's facts."""
    models, startup = {}, {}
    for name, cls in _registry.installed_classes().items():
        if not cls.auto or not cls.default_model:
            continue
        constants = {"backend": name, "workers": workers, "batch_overhead": cls.batch_overhead}
        models[name] = OverheadModel.from_dict({**constants, **cls.default_model})
        startup[name] = cls.startup_seconds
    return Calibration(models, startup, None, why, _threaded(models))


def save(
    path: Path,
    models: dict[str, OverheadModel],
    startup: dict[str, float],
    machine: dict[str, Any],
) -> None:
    """Write a calibration file whole: into a temporary file, renamed over ``path``.

    Readers never see half a document, and a writer stopped half-way leaves
    none behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "schema": SCHEMA,
        "created": time.time(),
        "machine": machine,
        "models": {name: model.to_dict() for name, model in models.items()},
        "startup": startup,
    }
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        temporary.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        temporary.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def read(path: Path) -> Calibration | None:
    """The calibration in ``path``, or None if there is none (or it is unreadable)."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("parmap: ignoring unreadable calibration %s (%s)", path, exc)
        return None
    if document.get("schema") != SCHEMA:
        log.warning("parmap: calibration %s is of another version; measuring again", path)
        return None
    models = {k: _overheads_only(OverheadModel.from_dict(v)) for k, v in document["models"].items()}
    startup = dict(document.get("startup", {}))
    _add_unmeasured(models, startup)
    return Calibration(models, startup, document.get("created"), str(path), _threaded(models))


def _threaded(models: dict[str, OverheadModel]) -> frozenset[str]:
    """The backends among ``models`` whose workers share the GIL (their class says so)."""
    found = set()
    for name in models:
        try:
            if _registry.backend_class(name).shares_gil:
                found.add(name)
        except Exception:  # not installed here any more: auto will not consider it
            continue
    return frozenset(found)


def _add_unmeasured(models: dict[str, OverheadModel], startup: dict[str, float]) -> None:
    """Give a backend installed since the calibration ran (or newer than it) its class's
    conservative constants, so that auto considers it until it is measured."""
    workers = next(iter(models.values())).workers if models else 1
    stand_in = defaults(workers)
    for name, model in stand_in.models.items():
        if name not in models:
            models[name] = model
            startup.setdefault(name, stand_in.startup[name])


def gil_enabled() -> bool:
    """Whether this interpreter runs Python code one thread at a time (a free-threaded
    build says no, unless a module turned the GIL back on)."""
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


def _overheads_only(model: OverheadModel) -> OverheadModel:
    """A model of a backend whose workers share the GIL, fitted on work that (under a GIL)
    could not run in parallel on them: its work factor says so, not how parallel work
    runs there. Keep its overheads and its class's work factor; ``auto`` measures how each
    function scales on threads itself (see ``parmap._auto``)."""
    try:
        cls = _registry.backend_class(model.backend)
    except Exception:  # not installed here any more: auto will not consider it
        return model
    if not cls.shares_gil or not cls.default_model or not gil_enabled():
        return model
    return dataclasses.replace(model, work_factor=cls.default_model["work_factor"])


_loaded: dict[tuple[str, int], Calibration] = {}  # ($PARMAP_CALIBRATION, workers) -> it
_failed: set[str] = set()  # files whose first-use calibration failed in this process
_measuring = threading.Lock()


def load(workers: int, *, calibrate: bool = True) -> Calibration:
    """The calibration in use, measuring it first when there is none (see the module doc).

    Args:
        workers: the worker count the built-in defaults are for, when used.
        calibrate: run the first-use calibration if no file exists.

    Returns:
        A :class:`Calibration`; built-in defaults when none can be had (yet).
    """
    setting = getenv("PARMAP_CALIBRATION").strip()
    cached = _loaded.get((setting, workers))
    if cached is not None:
        return cached
    if setting == "defaults":
        return _keep(setting, workers, defaults(workers))
    path = calibration_path()
    found = read(path)
    if found is None and calibrate and str(path) not in _failed and _may_measure():
        found = _first_use(path)
    if found is not None:
        return _keep(setting, workers, found)
    if str(path) in _failed:
        return _keep(setting, workers, defaults(workers, _why_none(path)))
    if not calibrate:  # not kept: the next call that may calibrate will
        return defaults(workers, _why_none(path))
    return defaults(workers, "built-in defaults, while this machine's calibration runs")


def _keep(setting: str, workers: int, calibration: Calibration) -> Calibration:
    _loaded[(setting, workers)] = calibration
    return calibration


def _why_none(path: Path) -> str:
    if str(path) in _failed:
        return "built-in defaults (measuring this machine failed; see the warning above)"
    return (
        f"built-in defaults: {path} does not exist yet; the first backend='auto' call "
        "measures this machine (under a minute), or run `parmap bench --calibrate`"
    )


def reload() -> None:
    """Read the calibration file again at the next ``auto`` call (after writing one)."""
    _loaded.clear()
    _failed.clear()


def _may_measure() -> bool:
    """Not on a worker, nor in a child process re-running a script without the
    __main__ guard: pools started there would nest, or start again in each child."""
    return not _worker.on_worker() and multiprocessing.parent_process() is None


def _first_use(path: Path) -> Calibration | None:
    """Measure this machine in a child process, once per machine; None if another thread
    or process is doing it now (this call uses the defaults) or it failed."""
    if not _measuring.acquire(blocking=False):
        return None
    try:
        with _machine_lock(path) as mine:
            if not mine:
                return read(path)  # another process measures; it may have finished
            found = read(path)  # it may have finished just before we took the lock
            if found is None:
                found = _measure(path)
            return found
    finally:
        _measuring.release()


@contextlib.contextmanager
def _machine_lock(path: Path) -> Any:
    """An exclusive lock shared by the processes of this machine (``fcntl.flock``); yields
    whether this process holds it. Released by the kernel if the process dies."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock, measure anyway
        yield True
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _measure(path: Path) -> Calibration | None:
    print(
        "parmap: calibrating backend='auto' for this machine, once (under a minute); "
        f"writing {path}",
        file=sys.stderr,
        flush=True,
    )
    command = [sys.executable, "-m", "parmap.bench._calibrate", "--first-use", str(path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARMAP_")}
    env["PARMAP_CALIBRATION"] = "defaults"  # the child itself never calibrates
    started = time.monotonic()
    try:  # its own session: a Ctrl-C at the terminal reaches this process only
        child = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                 start_new_session=True)  # fmt: skip
    except OSError as exc:
        _give_up(path, f"could not start {sys.executable}: {exc}")
        return None
    try:
        code = child.wait(timeout=FIRST_USE_DEADLINE)
    except BaseException as exc:  # KeyboardInterrupt, the deadline: stop it, keep nothing
        _stop_child(child)
        if isinstance(exc, subprocess.TimeoutExpired):
            _give_up(path, f"it took over {FIRST_USE_DEADLINE:.0f} s")
            return None
        raise
    if code != 0:
        _give_up(path, f"the measuring process exited with code {code}")
        return None
    found = read(path)
    if found is not None:
        seconds = time.monotonic() - started
        print(f"parmap: calibrated in {seconds:.0f} s", file=sys.stderr, flush=True)
    return found


def _stop_child(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM: the child stops its pools and clusters and exits, writing nothing.

    Waits a moment only: the caller's Ctrl-C must answer at once, and the child,
    in its own session, finishes stopping its engines by itself.
    """
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=1.0)


def _give_up(path: Path, why: str) -> None:
    log.warning(
        "parmap: could not calibrate backend='auto' for this machine (%s); using built-in "
        "defaults in this process. Run `parmap bench --calibrate` to see why",
        why,
    )
    _failed.add(str(path))
