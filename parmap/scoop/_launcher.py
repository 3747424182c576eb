"""``python -m parmap.scoop [-n N] [--backend NAME | --hosts H... | --hostfile F] script [args]``.

Runs a script written for ``python -m scoop`` as ``python script.py`` would
run it, with the ``scoop`` package replaced by ``parmap.scoop``::

    parse the options (SCOOP options no engine here can honour get an error that says why)
    where the workers run:
        --hosts / --hostfile, or a SLURM, PBS or Grid Engine job's hosts (no backend chosen)
            -> _ssh.ssh_cluster: Dask starts them over SSH; the dask backend uses its address;
               they stop when the script ends, fails, or gets Ctrl-C or SIGTERM
        hosts that are all this machine, or none -> the chosen (or default) backend here
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
import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import signal
import sys
import types
from collections.abc import Iterator, Sequence
from typing import Any

import parmap.scoop
from parmap._errors import ParmapError
from parmap.scoop import _hosts, _runtime, _ssh

__all__ = ["install_aliases", "main", "run_script"]

log = logging.getLogger("parmap.scoop")

PROG = "python -m parmap.scoop"
_PUBLIC = ("scoop", "scoop.futures", "scoop.shared")
_REFUSED: dict[str, tuple[dict[str, Any], str]] = {  # SCOOP options no engine here can honour
    "--tunnel": ({"action": "store_const", "const": True},
                 "Dask has no SSH tunnels: the hosts must reach the scheduler's port; give an "
                 "address they reach with --external-hostname, or use --scheduler-on-first-host"),
    "--rsh": ({"action": "store_const", "const": True},
              "Dask starts workers over SSH only (asyncssh)"),
    "--ssh-executable": ({}, "Dask logs in with asyncssh, not an ssh program: put that "
                             "program's settings (Port, User, IdentityFile, ProxyJump) in "
                             "~/.ssh/config or in a file given with --ssh-config"),
    "--prolog": ({}, "run that setup in the hosts' shell start-up files, or point "
                     "--python-interpreter at a wrapper script that runs it"),
}  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run a SCOOP program (written for 'python -m scoop') on a parmap backend, "
        "or on workers started over SSH on other hosts.",
        epilog="The script's own options go after its name. With --hosts, --hostfile, or "
        "inside a SLURM, PBS or Grid Engine job, Dask starts the workers on the hosts over "
        "SSH and stops them at the end; see docs/migrating-from-scoop.md.",
    )
    parser.add_argument(
        "-n",
        "--workers",
        type=int,
        metavar="N",
        help="number of workers (default: the hosts' counts, else the backend's, e.g. all CPUs)",
    )
    parser.add_argument(
        "--backend",
        metavar="NAME",
        help="parmap backend: serial, multiprocessing, loky, ray, dask "
        "(default: $PARMAP_BACKEND, else parmap's default; dask with hosts)",
    )
    parser.add_argument(
        "--address",
        metavar="ADDRESS",
        help="Ray cluster or Dask scheduler address (without it, the ray and dask "
        "backends read $RAY_ADDRESS and $DASK_SCHEDULER_ADDRESS)",
    )
    _host_options(parser)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="say what starts where")
    parser.add_argument("-q", "--quiet", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-b", type=int, help=argparse.SUPPRESS)  # SCOOP's broker count
    for name, (how, _) in _REFUSED.items():
        parser.add_argument(name, dest=f"refused{name}", help=argparse.SUPPRESS, **how)
    parser.add_argument("script", nargs="?", help="the SCOOP program to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the program's arguments")
    return parser


def _host_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("workers on other hosts (over SSH, started by Dask)")
    where = group.add_mutually_exclusive_group()
    where.add_argument(
        "--hosts",
        "--host",
        nargs="*",
        metavar="HOST",
        help="hosts, each listed once per worker (A A B: 2 on A, 1 on B)",
    )
    where.add_argument(
        "--hostfile", metavar="FILE", help="SCOOP's hostfile: a host and its worker count per line"
    )
    group.add_argument(
        "--python-interpreter",
        metavar="PATH",
        help="the Python on the hosts (default: this one's path)",
    )
    group.add_argument(
        "--external-hostname",
        metavar="ADDRESS",
        help="the name or IP the hosts reach this machine by",
    )
    group.add_argument(
        "--ssh-config",
        metavar="FILE",
        help="OpenSSH client configuration for the logins (default ~/.ssh/config)",
    )
    group.add_argument("--scheduler-on-first-host", action="store_true",
                       help="run the Dask scheduler on the first host (where SCOOP ran its "
                            "broker) when the hosts cannot reach this machine")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, then run the script (on SSH hosts if asked).

    Args:
        argv: the arguments after ``-m parmap.scoop`` (default ``sys.argv[1:]``).

    Returns:
        The process exit code: the script's.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.script is None:
        swallowed = args.hosts and os.path.isfile(args.hosts[-1])
        parser.error(
            f"--hosts took {args.hosts[-1]!r} as a host: end the host list with another "
            f"option or '--' (--hosts A B -- {args.hosts[-1]})"
            if swallowed
            else "the following arguments are required: script"
        )
    refused = [name for name in _REFUSED if getattr(args, f"refused{name}") is not None]
    if refused:
        parser.error("; ".join(f"{name}: {_REFUSED[name][1]}" for name in refused))
    _notes(args)
    backend = args.backend
    if backend is not None and backend.upper() in ("ZMQ", "TCP"):  # SCOOP's transport option
        print(f"{PROG}: ignoring SCOOP's '--backend {backend}' (its message transport); "
              "pass a parmap backend name to choose one", file=sys.stderr)  # fmt: skip
        backend = None
    try:
        hosts = _cluster_hosts(args, backend)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    if hosts is None:
        return _run_here(parser, args, backend)
    if backend not in (None, "dask") or args.address:
        parser.error(
            "workers on hosts run on a Dask cluster that the launcher starts: leave out "
            "--backend (or pass --backend dask) and --address"
        )
    return _run_on_hosts(args, hosts)


def _notes(args: argparse.Namespace) -> None:
    if args.verbose:
        logging.basicConfig(level=logging.INFO if args.verbose == 1 else logging.DEBUG)
    if args.b is not None:
        print(f"{PROG}: ignoring SCOOP's '-b {args.b}': one Dask scheduler serves all "
              "workers", file=sys.stderr)  # fmt: skip


def _cluster_hosts(args: argparse.Namespace, backend: str | None) -> _hosts.HostList | None:
    """The hosts to start workers on; None: run on a backend on this machine."""
    if args.hosts is not None:
        if not args.hosts:
            raise ValueError("--hosts needs at least one host name")
        listed = _hosts.from_names(args.hosts)
    elif args.hostfile:
        listed = _hosts.read_hostfile(args.hostfile)
    elif backend or args.address or os.environ.get("PARMAP_BACKEND", "").strip():
        return None  # a backend was chosen: it wins over the batch job's hosts
    else:
        found = _hosts.allocation()
        if found is None:
            return None
        _check_started_once(found[0])
        log.info("%s job: hosts %s", found[0], found[1])
        listed = found[1]
    plan = _hosts.divide(listed, args.workers)
    if all(_ssh.is_this_machine(host) for host, _ in plan):
        args.workers = sum(count for _, count in plan)
        return None  # SCOOP started these workers locally too
    return plan


# Set in each task that srun or mpiexec starts (not in a batch script itself).
_PER_TASK = ("SLURM_STEP_ID", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")


def _check_started_once(scheduler: str) -> None:
    """A job's hosts get workers from one launcher: not from each task of srun or mpiexec."""
    task = next((name for name in _PER_TASK if name in os.environ), None)
    if task is not None:
        raise ValueError(
            f"this runs as one task of a parallel launch (${task} is set), and would start "
            f"workers on all of the {scheduler} job's hosts from every task: run "
            f"'python -m parmap.scoop script.py' once, from the batch script itself "
            f"(not under srun or mpiexec), or choose a backend with --backend"
        )


def _run_here(
    parser: argparse.ArgumentParser, args: argparse.Namespace, backend: str | None
) -> int:
    if args.python_interpreter or args.external_hostname or args.ssh_config:
        print(f"{PROG}: no hosts: the host options (--python-interpreter, "
              "--external-hostname, --ssh-config) do not apply", file=sys.stderr)  # fmt: skip
    try:
        _runtime.configure(backend, args.workers, args.address)
    except (ParmapError, ValueError) as exc:
        parser.error(str(exc))
    install_aliases()
    return run_script(args.script, args.args)


def _run_on_hosts(args: argparse.Namespace, hosts: _hosts.HostList) -> int:
    """Start the workers on the hosts, run the script against them, stop them whatever happens."""
    folder = os.path.dirname(os.path.abspath(args.script))
    try:
        cluster = _ssh.ssh_cluster(
            hosts,
            python=args.python_interpreter,
            ssh_config=args.ssh_config,
            scheduler_address=args.external_hostname,
            scheduler_on_first_host=args.scheduler_on_first_host,
            paths=[folder],
            quiet=not args.verbose,
        )
        with _terminate_as_exit(), cluster as address:
            _runtime.configure("dask", None, address)
            install_aliases()
            return run_script(args.script, args.args)
    except (ConnectionError, ParmapError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM (a batch system's cancel) leaves like ``sys.exit(143)``: the workers stop first."""

    def leave(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, leave)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
