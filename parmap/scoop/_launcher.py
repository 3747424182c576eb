"""``python -m parmap.scoop [-n N] [--backend NAME] script.py [args...]``.

Runs a script written for ``python -m scoop`` as ``python script.py`` would
run it, with the ``scoop`` package replaced by ``parmap.scoop``::

    parse the options (SCOOP's SSH/host options get an error that says what to do)
    configure parmap.scoop: backend, workers (-n), cluster address
    alias: sys.modules["scoop"], ["scoop.futures"], ["scoop.shared"] = parmap.scoop's,
           and a finder that answers any other "scoop.*" import
    run the script as __main__: sys.argv = [script, *args], sys.path[0] = its folder
    exit code: 0, the script's sys.exit() code, or 1 with its traceback

The script's own ``__main__`` runs in this process only. Workers receive its
functions and classes by value (cloudpickle), so worker processes never
re-run the script, whatever the backend or start method (see ``_main_spec``).
"""

from __future__ import annotations

import argparse
import builtins
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from collections.abc import Sequence
from typing import Any

import parmap.scoop
from parmap._errors import ParmapError
from parmap.scoop import _runtime

__all__ = ["install_aliases", "main", "run_script"]

PROG = "python -m parmap.scoop"
_PUBLIC = ("scoop", "scoop.futures", "scoop.shared")
_CLUSTER_HINT = (
    "parmap does not start workers over SSH: start a Ray or Dask cluster on those hosts and "
    "pass its address with --address (or set $RAY_ADDRESS with --backend ray, "
    "$DASK_SCHEDULER_ADDRESS with --backend dask); see docs/migrating-from-scoop.md"
)
_SSH_OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (  # as SCOOP parses them
    (("--hosts", "--host"), {"nargs": "*"}),
    (("--hostfile",), {}),
    (("--tunnel",), {"action": "store_const", "const": True}),
    (("--rsh",), {"action": "store_const", "const": True}),
    (("--ssh-executable",), {}),
    (("--external-hostname",), {}),
    (("--python-interpreter",), {}),
    (("--prolog",), {}),
    (("-b",), {}),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run a SCOOP program (written for 'python -m scoop') on a parmap backend.",
        epilog="The script's own options go after its name. " + _CLUSTER_HINT + ".",
    )
    parser.add_argument(
        "-n",
        "--workers",
        type=int,
        metavar="N",
        help="number of workers (default: the backend's, e.g. all CPUs)",
    )
    parser.add_argument(
        "--backend",
        metavar="NAME",
        help="parmap backend: serial, multiprocessing, loky, ray, dask "
        "(default: $PARMAP_BACKEND, else parmap's default)",
    )
    parser.add_argument(
        "--address",
        metavar="ADDRESS",
        help="Ray cluster or Dask scheduler address (without it, the ray and dask "
        "backends read $RAY_ADDRESS and $DASK_SCHEDULER_ADDRESS)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help=argparse.SUPPRESS)
    parser.add_argument("-q", "--quiet", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    for names, how in _SSH_OPTIONS:
        parser.add_argument(*names, dest=f"ssh{names[0]}", help=argparse.SUPPRESS, **how)
    parser.add_argument("script", help="the SCOOP program to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the program's arguments")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, then run the script.

    Args:
        argv: the arguments after ``-m parmap.scoop`` (default ``sys.argv[1:]``).

    Returns:
        The process exit code: the script's.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    used = [names[0] for names, _ in _SSH_OPTIONS if getattr(args, f"ssh{names[0]}") is not None]
    if used:
        parser.error(
            f"{', '.join(used)}: SCOOP's host and SSH options do not apply; {_CLUSTER_HINT}"
        )
    backend = args.backend
    if backend is not None and backend.upper() in ("ZMQ", "TCP"):  # SCOOP's transport option
        print(f"{PROG}: ignoring SCOOP's '--backend {backend}' (its message transport); "
              "pass a parmap backend name to choose one", file=sys.stderr)  # fmt: skip
        backend = None
    try:
        _runtime.configure(backend, args.workers, args.address)
    except (ParmapError, ValueError) as exc:
        parser.error(str(exc))
    install_aliases()
    return run_script(args.script, args.args)


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Answers ``import scoop.<anything else>`` with an error that says what exists."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.partition(".")[0] != "scoop" or fullname in sys.modules:
            return None
        raise ModuleNotFoundError(
            f"No module named {fullname!r}: under {PROG}, 'scoop' is parmap's SCOOP "
            "compatibility layer, which provides scoop, scoop.futures and scoop.shared only",
            name=fullname,
        )


def install_aliases() -> None:
    """Make ``import scoop`` (and its ``futures``/``shared``) import parmap.scoop."""
    for name in _PUBLIC:
        target = "parmap." + name
        sys.modules[name] = sys.modules.get(target, parmap.scoop)
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())


def run_script(path: str, args: Sequence[str]) -> int:
    """Run ``path`` as ``__main__`` with ``sys.argv = [path, *args]``.

    Args:
        path: the script.
        args: its command-line arguments.

    Returns:
        0, or 1 after printing the traceback of an uncaught exception.

    Raises:
        SystemExit: the script called ``sys.exit()``.
    """
    try:
        with open(path, "rb") as file:
            source = file.read()
    except OSError as exc:
        print(
            f"{PROG}: can't open file {os.path.abspath(path)!r}: "
            f"[Errno {exc.errno}] {exc.strerror}",
            file=sys.stderr,
        )
        return 2
    filename = os.path.abspath(path)  # __file__ and tracebacks: absolute, as in Python >= 3.9
    module = _main_module(filename)
    saved = sys.modules["__main__"], sys.argv, sys.path[0]
    sys.modules["__main__"], sys.argv = module, [path, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(path))
    _runtime.settings.main_module = path
    try:
        code = compile(source, filename, "exec", dont_inherit=True)
        exec(code, module.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next  # the script's frames only, as ``python script.py`` shows
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        return 1
    finally:
        sys.modules["__main__"], sys.argv, sys.path[0] = saved
    return 0


def _main_module(path: str) -> types.ModuleType:
    """A fresh ``__main__`` module for the script, as ``python script.py`` makes it."""
    module = types.ModuleType("__main__")
    module.__dict__.update(
        __file__=path,
        __builtins__=builtins,
        __loader__=importlib.machinery.SourceFileLoader("__main__", path),
        __spec__=_main_spec(path),
        __package__=None,
        __cached__=None,
    )
    return module


def _main_spec(path: str) -> importlib.machinery.ModuleSpec:
    """The spec that keeps worker processes from re-running the script.

    multiprocessing's spawn and forkserver children (and loky's) run the
    parent's ``__main__`` again unless its spec names a package's
    ``__main__`` (``multiprocessing.spawn._fixup_main_from_name``). Workers do
    not need it: the script's functions travel by value. Not re-running it
    also spares the workers its imports, and spares them from importing the
    real ``scoop`` at its top.
    """
    return importlib.machinery.ModuleSpec("parmap.scoop.__main__", None, origin=path)
