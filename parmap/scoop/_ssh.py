"""Workers on other machines over SSH, started by Dask's own SSH deployment (asyncssh).

parmap logs in nowhere itself: ``distributed``'s SSH processes (the ones
``distributed.SSHCluster`` is made of) open the connections and start the
workers; parmap only says where, how many, and stops them all::

    ssh_cluster(hosts, workers=N)        hosts: SCOOP's --hosts / --hostfile lists, or the
        │                                batch job's allocation (SLURM, PBS, Grid Engine)
        │  _hosts.divide: N over the hosts, as SCOOP's -n does
        ├─ a Dask scheduler in this process (or, with scheduler_on_first_host, on the
        │  first host over SSH, where SCOOP put its broker)
        ├─ per other host: one SSH login running `python -m distributed.cli.dask_spec`,
        │  which starts that host's single-threaded worker processes (nannies);
        │  hosts that are this machine get the same workers without SSH
        ├─ wait until all N workers joined the scheduler
        ├─ yield the scheduler's address ──► parmap.parmap(fn, xs, backend="dask", address=...)
        └─ at the end, on an error, Ctrl-C or (in the launcher) SIGTERM: parmap.shutdown(),
           then the cluster closes: each remote process is killed over its SSH
           channel and the connection closed, then the scheduler stops

Each host's process runs through ``parmap.scoop._remote``, which ends it
when its SSH session closes, however that happens (the launcher killed
included). What it prints and logs arrives on the SSH channel and is read
for as long as the cluster lives (``_drain_logs``; prints go to this
process's stdout, as SCOOP showed them): an unread channel eventually
blocks the process that writes to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import json
import logging
import math
import shlex
import socket
import sys
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from parmap.scoop import _hosts

__all__ = ["ssh_cluster"]

log = logging.getLogger("parmap.scoop.ssh")

START_TIMEOUT = 120.0  # seconds for every worker to join once its process started
STOP_TIMEOUT = 30  # seconds for the workers to close, then for the cluster to stop
DEATH_TIMEOUT = 60  # a worker that cannot reach the scheduler gives up after this long
_REMOTE_LOGGER = "distributed.deploy.ssh"  # where distributed logs what the remote printed
_SSH_WORKER_PARAMETERS = {"scheduler", "address", "connect_options", "kwargs", "remote_python"}

Hosts = Sequence[str] | Sequence[tuple[str, int]]


@contextlib.contextmanager
def ssh_cluster(
    hosts: Hosts | None = None,
    *,
    workers: int | None = None,
    python: str | None = None,
    ssh_config: str | None = None,
    scheduler_address: str | None = None,
    scheduler_on_first_host: bool = False,
    paths: Sequence[str] = (),
    quiet: bool = True,
) -> Iterator[str]:
    """A Dask cluster on SSH hosts for the duration of a ``with`` block.

    Example::

        import parmap
        from parmap.scoop import ssh_cluster

        with ssh_cluster(["node1", "node2"], workers=16) as address:
            fitnesses = parmap.parmap(evaluate, population, backend="dask", address=address)

    Leaving the block, however it is left, calls ``parmap.shutdown()`` (parmap's
    client is connected to this cluster) and stops every process it started,
    on every host.

    Args:
        hosts: host names as on SCOOP's ``--hosts`` (a name once per worker,
            ``["a", "a", "b"]``) or ``(name, workers)`` pairs; None: the hosts
            and task counts of the SLURM, PBS or Grid Engine job this runs in.
        workers: the total worker count, spread over the hosts as SCOOP's
            ``-n`` does; None: the hosts' own counts.
        python: the Python interpreter on the hosts (default: this one's path).
        ssh_config: an OpenSSH client configuration file for the logins
            (default ``~/.ssh/config``): port, user, keys, known hosts, jumps.
        scheduler_address: the host name or IP the workers reach this machine
            by (SCOOP's ``--external-hostname``); default: 127.0.0.1 when every
            host is a loopback address, else every interface of this machine.
        scheduler_on_first_host: run the scheduler on the first host, over SSH
            (where SCOOP ran its broker), for when the hosts cannot reach this
            machine but it can reach them.
        paths: folders put first on the workers' ``sys.path`` (the launcher
            passes the script's folder, as SCOOP ran scripts from the same path
            on every host); a folder missing on a host is harmless.
        quiet: keep Dask's informational logs in this process quiet.

    Returns:
        A context manager; ``with`` gives the scheduler's address.

    Raises:
        ValueError: no hosts and no batch job, or a malformed host list.
        ConnectionError: a host refused the login, or the workers did not join.
        BackendNotInstalledError: ``dask[distributed]`` or ``asyncssh`` is missing.
    """
    plan = _plan(hosts, workers)
    cluster = _start(plan, python, ssh_config, scheduler_address, scheduler_on_first_host,
                     paths, quiet)  # fmt: skip
    try:
        yield cluster.scheduler_address
    finally:
        _stop_uninterrupted(cluster)


# -- the plan: which hosts, how many workers each ----------------------------------


def _plan(hosts: Hosts | None, workers: int | None) -> _hosts.HostList:
    if hosts is None:
        found = _hosts.allocation()
        if found is None:
            raise ValueError(
                "no hosts given, and this is not a SLURM, PBS or Grid Engine job: pass "
                "hosts=['node1', 'node2'] (or --hosts / --hostfile to the launcher)"
            )
        listed = found[1]
    else:
        listed = _listed(hosts)
    return _hosts.divide(listed, workers)


def _listed(hosts: Hosts) -> _hosts.HostList:
    if all(isinstance(host, str) for host in hosts):
        return _hosts.from_names([str(host) for host in hosts])
    lines = []
    for entry in hosts:
        if isinstance(entry, str) or len(entry) != 2:
            raise ValueError(f"hosts: give names, or (name, workers) pairs; got {entry!r}")
        lines.append(f"{entry[0]} {entry[1]}")
    return _hosts.parse_hostfile("\n".join(lines), source="hosts")


def is_this_machine(host: str) -> bool:
    """Whether ``host`` names this machine the way SCOOP recognised it (no SSH needed).

    Args:
        host: a host name or address.

    Returns:
        True for localhost, 127.0.0.1, ::1 and this machine's own host name.
    """
    name = socket.gethostname()
    return host in {"localhost", "127.0.0.1", "::1", name, name.split(".")[0], socket.getfqdn()}


def _listen_address(plan: _hosts.HostList, *, on_first_host: bool) -> str | None:
    """Where the scheduler listens: loopback for loopback hosts; the first host's
    address when it runs there; else every interface (None)."""
    if on_first_host:
        first = plan[0][0]
        return first if _is_address(first) else None
    return "127.0.0.1" if all(_is_loopback(host) for host, _ in plan) else None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- starting ---------------------------------------------------------------------


def _start(
    plan: _hosts.HostList,
    python: str | None,
    ssh_config: str | None,
    scheduler_address: str | None,
    on_first_host: bool,
    paths: Sequence[str],
    quiet: bool,
) -> Any:
    distributed = _import_engine()
    remote = None if on_first_host else _SSHWorker()
    if remote is None and not on_first_host:
        log.warning("parmap: this distributed release has no SSH worker class parmap knows; "
                    "the scheduler runs on the first host instead")  # fmt: skip
    settings = _Settings(
        connect={"config": [ssh_config]} if ssh_config else {},
        options=_worker_options(paths),
        python=_remote_command(python),
        listen=scheduler_address or _listen_address(plan, on_first_host=remote is None),
        silence=logging.WARNING if quiet else False,
    )
    with _RemoteOutput() as output:
        try:
            cluster = _make_cluster(distributed, plan, remote, settings)
        except Exception as exc:
            raise _start_error(exc, plan, output.lines()) from exc
    total = sum(count for _, count in plan)
    _wait_for_workers(cluster, total, plan)
    _drain_logs(cluster)
    log.info("parmap: %d Dask workers on %s, scheduler %s", total,
             ", ".join(f"{h} ({n})" for h, n in plan), cluster.scheduler_address)  # fmt: skip
    return cluster


@dataclass
class _Settings:
    """How every host's processes start."""

    connect: dict[str, Any]  # asyncssh.connect options
    options: dict[str, Any]  # each worker's (Nanny's) options
    python: str  # the command that runs Python on the hosts
    listen: str | None  # the scheduler's host; None: every interface
    silence: int | bool  # SpecCluster's silence_logs


def _make_cluster(
    distributed: Any, plan: _hosts.HostList, remote: type | None, settings: _Settings
) -> Any:
    if remote is None:
        return _first_host_cluster(distributed, plan, settings)
    return distributed.SpecCluster(
        workers=_worker_specs(plan, remote, settings),
        scheduler={"cls": distributed.Scheduler, "options": _scheduler_options(settings.listen)},
        name="parmap-ssh",
        silence_logs=settings.silence,
    )


def _import_engine() -> Any:
    from parmap._errors import BackendNotInstalledError

    try:
        import asyncssh  # noqa: F401  (distributed imports it only when a host is reached)
        import distributed
    except ImportError as exc:
        raise BackendNotInstalledError(
            f"workers on SSH hosts need Dask's distributed and asyncssh ({exc}); "
            "install them with: pip install 'parmap-backends[ssh]'"
        ) from exc
    return distributed


def _SSHWorker() -> type | None:
    """``distributed.deploy.ssh.Worker``, the class SSHCluster builds its workers from.

    Not in Dask's API reference, so it is checked here: when it is missing or takes
    other arguments, the caller uses the public ``SSHCluster`` (scheduler on the first
    host) instead.
    """
    try:
        from distributed.deploy.ssh import Worker
    except ImportError:
        return None
    parameters = set(inspect.signature(Worker).parameters)
    return Worker if parameters >= _SSH_WORKER_PARAMETERS else None


def _remote_command(python: str | None) -> str:
    """The hosts' "Python": theirs, running Dask's module through ``_remote``, which ends
    the process when its SSH session closes."""
    return f"{shlex.quote(python or sys.executable)} -m parmap.scoop._remote"


def _worker_options(paths: Sequence[str]) -> dict[str, Any]:
    """Each worker process: one thread (SCOOP's worker), and the script's folders on its path."""
    options: dict[str, Any] = {"nthreads": 1, "death_timeout": DEATH_TIMEOUT}
    usable = [path for path in paths if "'" not in path]  # the spec travels in '...' quotes
    if usable:
        # distributed runs a preload that is not a module name as Python source
        options["preload"] = [f"import sys; sys.path[:0] = {json.dumps(usable)}"]
    return options


def _scheduler_options(listen: str | None) -> dict[str, Any]:
    """No dashboard; its HTTP server (health checks) on a free port, not 8787."""
    return {"host": listen, "port": 0, "dashboard": False,
            "dashboard_address": f"{listen or ''}:0"}  # fmt: skip


def _worker_specs(
    plan: _hosts.HostList, remote: type, settings: _Settings
) -> dict[str, dict[str, Any]]:
    specs: dict[str, dict[str, Any]] = {}
    for host, count in plan:
        if is_this_machine(host):
            for index in range(count):
                specs[f"{host}-{index}"] = {"cls": "distributed.Nanny",
                                            "options": dict(settings.options)}  # fmt: skip
        else:
            specs[host] = {"cls": remote, "options": {
                "address": host, "connect_options": settings.connect,
                "remote_python": settings.python,
                "kwargs": {**settings.options, "n_workers": count},
            }}  # fmt: skip
    return specs


def _first_host_cluster(distributed: Any, plan: _hosts.HostList, settings: _Settings) -> Any:
    """Dask's public ``SSHCluster``: the scheduler on the first host, workers on all.

    Its worker options are the same for every host, so a host's count is made of
    repeated entries of ``gcd(counts)`` workers each (one SSH login per entry).
    """
    each = math.gcd(*(count for _, count in plan))
    entries = [host for host, count in plan for _ in range(count // each)]
    return distributed.SSHCluster(
        [plan[0][0], *entries], connect_options=settings.connect,
        remote_python=settings.python, worker_options={**settings.options, "n_workers": each},
        scheduler_options=_scheduler_options(settings.listen), silence_logs=settings.silence,
    )  # fmt: skip


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _wait_for_workers(cluster: Any, total: int, plan: _hosts.HostList) -> None:
    try:
        cluster.wait_for_workers(total, timeout=START_TIMEOUT)
    except Exception as exc:
        _stop_uninterrupted(cluster)
        joined = len(cluster.scheduler_info.get("workers", {}))
        raise ConnectionError(
            f"{joined} of {total} Dask workers joined the scheduler at "
            f"{cluster.scheduler_address} within {START_TIMEOUT:.0f} s ({exc!r}); the hosts "
            f"{', '.join(h for h, _ in plan)} must reach this machine's address and port "
            f"(firewall?); name an address they can reach with --external-hostname "
            f"(scheduler_address=), or start the scheduler on the first host "
            f"(--scheduler-on-first-host)"
        ) from exc


class _RemoteOutput(logging.Handler):
    """Keeps the last lines the remote processes printed while the cluster starts."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._lines: deque[str] = deque(maxlen=15)
        self._logger = logging.getLogger(_REMOTE_LOGGER)
        self._level = self._logger.level

    def emit(self, record: logging.LogRecord) -> None:
        self._lines.append(record.getMessage())

    def lines(self) -> list[str]:
        return list(self._lines)

    def __enter__(self) -> _RemoteOutput:
        self._logger.addHandler(self)
        if self._logger.getEffectiveLevel() > logging.INFO:
            self._logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)


def _start_error(exc: Exception, plan: _hosts.HostList, lines: list[str]) -> Exception:
    cause = exc.__cause__ or exc
    said = "".join(f"\n    {line}" for line in lines)
    hint = (
        "check that `ssh HOST` logs in without a password (keys in ~/.ssh or the "
        "ssh_config file), and that every host has this Python with parmap-backends, "
        "dask[distributed] and the script's packages at the same path (or pass "
        "--python-interpreter / python=)"
    )
    where = ", ".join(host for host, _ in plan)
    text = f"could not start Dask workers on {where}: {cause!r}; {hint}"
    return ConnectionError(text + (f"; the hosts printed:{said}" if said else ""))


def _drain_logs(cluster: Any) -> None:
    """Read what the remote processes write, for as long as they run.

    What the workers print (the mapped functions' ``print``) is copied to this
    process's standard output, as SCOOP showed its remote workers' output; their
    logs are logged here at debug level.
    """
    for process in [*cluster.workers.values(), cluster.scheduler]:
        remote = getattr(process, "proc", None)  # a local Nanny or scheduler has none
        host = getattr(process, "address", "?")
        for name, write in (("stdout", _to_stdout), ("stderr", _to_log)):
            stream = getattr(remote, name, None)
            if stream is not None:
                cluster.loop.add_callback(_forward, stream, host, write)


def _to_stdout(host: str, line: str) -> None:
    sys.stdout.write(line if line.endswith("\n") else line + "\n")
    sys.stdout.flush()


def _to_log(host: str, line: str) -> None:
    log.debug("%s: %s", host, line.rstrip())


async def _forward(stream: Any, host: str, write: Any) -> None:
    with contextlib.suppress(Exception):
        while True:
            line = await stream.readline()
            if not line:
                return
            write(host, line)


# -- stopping -----------------------------------------------------------------------


def _stop_uninterrupted(cluster: Any) -> None:
    """Stop parmap's use of the cluster, then the cluster, even through Ctrl-C.

    The stop runs on its own thread, which a second Ctrl-C cannot interrupt
    (SCOOP did the same); the caller waits for it, saying why once.
    """
    import parmap

    stopper = threading.Thread(target=_stop, args=(cluster, parmap), name="parmap-ssh-stop")
    stopper.start()
    told = False
    while stopper.is_alive():
        try:
            stopper.join()
        except KeyboardInterrupt:
            if not told:
                print("parmap: stopping the workers on the hosts, please wait", file=sys.stderr)
                told = True


def _stop(cluster: Any, parmap: Any) -> None:
    try:
        parmap.shutdown()
    except Exception:  # pragma: no cover - the cluster must still stop
        log.warning("parmap: error while shutting parmap's backends down", exc_info=True)
    try:
        cluster.sync(_retire, cluster)
    except (Exception, asyncio.CancelledError):
        log.warning("parmap: error while stopping the workers", exc_info=True)
    try:
        cluster.close(timeout=STOP_TIMEOUT)
    except (Exception, asyncio.CancelledError):
        log.warning("parmap: error while stopping the SSH cluster", exc_info=True)


async def _retire(cluster: Any) -> None:
    """Close every worker through the scheduler, then wait for the remote processes to end.

    Closing a worker closes its nanny, and ``dask_spec`` exits once its nannies
    are closed. Without this, the cluster's close kills the remote processes
    with an SSH signal, which OpenSSH does not deliver to every session (not to
    a root login's, for one), and a process that missed it would outlive its
    connection until it noticed the scheduler was gone.
    """
    addresses = list(cluster.scheduler_info.get("workers", {}))
    if addresses:
        await asyncio.wait_for(
            cluster.scheduler_comm.retire_workers(
                workers=addresses, close_workers=True, remove=False
            ),
            STOP_TIMEOUT,
        )
    ended = [p.proc.wait() for p in cluster.workers.values() if getattr(p, "proc", None)]
    if ended:
        try:
            await asyncio.wait_for(asyncio.gather(*ended, return_exceptions=True), STOP_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("parmap: worker processes on the hosts did not end within %d s",
                        STOP_TIMEOUT)  # fmt: skip
