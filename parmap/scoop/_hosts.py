"""Host lists as SCOOP users write them, and as schedulers hand them out.

Every source becomes one list of ``(host, workers)`` pairs, in order, each host once::

    --hosts A A B                  [("A", 2), ("B", 1)]       a host once per worker (SCOOP)
    --hostfile F                   "A 4" / "A slots=4" / "A"  SCOOP's hostfile lines
    $SLURM_JOB_NODELIST            "node[01-04,07]"           with $SLURM_TASKS_PER_NODE
    $PBS_NODEFILE                  a host per line, once per slot (PBS Pro, Torque)
    $PE_HOSTFILE                   "host slots queue range"   (Grid Engine, as SCOOP)

then :func:`divide` spreads ``-n N`` over them as SCOOP does. Parsing only:
nothing here resolves a name or starts anything.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "HostList",
    "allocation",
    "divide",
    "expand_nodelist",
    "expand_tasks_per_node",
    "from_names",
    "parse_hostfile",
    "read_hostfile",
]

HostList = list[tuple[str, int]]

_HOST = re.compile(r"[^\s/=#]+")  # SCOOP's host name: up to a space, '/', '=' (and '#' here)
_COUNT = re.compile(r"\d+")
_HOST_COLON_COUNT = re.compile(r"[^:\s]+:\d+")  # "node1:4": not SCOOP's format (IPv6 has 2+ colons)
_BRACKETS = re.compile(r"\[([^\]]*)\]")
_TASKS = re.compile(r"(\d+)(?:\(x(\d+)\))?")


def from_names(names: Iterable[str]) -> HostList:
    """SCOOP's ``--hosts``: each listing of a host is one worker on it.

    Args:
        names: host names, repeated once per worker (``A A B``); a SLURM
            bracket expression (``node[1-3]``) names several hosts, one worker each.

    Returns:
        The hosts in order of first appearance, with their counts.

    Raises:
        ValueError: a name is empty or written ``host:count``.
    """
    counts: dict[str, int] = {}
    for name in names:
        for host in expand_nodelist(name) if "[" in name else [name]:
            _check_name(host, f"host {name!r}")
            counts[host] = counts.get(host, 0) + 1
    return list(counts.items())


def parse_hostfile(text: str, source: str = "hostfile") -> HostList:
    """SCOOP's hostfile: a host per line, then optionally its worker count.

    ``host 4``, ``host slots=4`` (the first number after the name counts) and a
    bare ``host`` (one worker) all work, as do SLURM bracket expressions
    (``node[1-4] 2``: two workers on each). Blank lines are skipped, and, unlike
    SCOOP (which takes ``#`` for a host name), so is anything after a ``#``.
    A host listed twice adds up.

    Args:
        text: the file's content.
        source: how to name the file in errors.

    Returns:
        The hosts in order of first appearance, with their counts.

    Raises:
        ValueError: a line says ``host:count`` or a count of 0, or no host at all.
    """
    counts: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}, line {number}: {raw.strip()!r}"
        name, count = _hostfile_line(line, where)
        for host in expand_nodelist(name) if "[" in name else [name]:
            counts[host] = counts.get(host, 0) + count
    if not counts:
        raise ValueError(f"{source} names no host: write one host per line, e.g. 'node1 4'")
    return list(counts.items())


def _hostfile_line(line: str, where: str) -> tuple[str, int]:
    bracketed = re.match(r"[^\s\[]*\[[^\]]*\][^\s]*", line)  # node[1-4] or a[1-2]b[3-4]
    match = bracketed or _HOST.match(line)
    if match is None:
        raise ValueError(f"{where}: no host name at the start of the line")
    name = match.group()
    _check_name(name, where)
    found = _COUNT.search(line, match.end())
    count = int(found.group()) if found else 1
    if count < 1:
        raise ValueError(f"{where}: a host needs at least 1 worker (leave the line out instead)")
    return name, count


def _check_name(name: str, where: str) -> None:
    if not name:
        raise ValueError(f"{where}: empty host name")
    if _HOST_COLON_COUNT.fullmatch(name):
        host, count = name.split(":")
        raise ValueError(
            f"{where}: 'host:count' is not SCOOP's format; write '{host} {count}' "
            "in a hostfile, or repeat the host on --hosts"
        )


def read_hostfile(path: str) -> HostList:
    """:func:`parse_hostfile` on a file.

    Args:
        path: the hostfile.

    Returns:
        The hosts and their counts.

    Raises:
        OSError: the file cannot be read.
        ValueError: as :func:`parse_hostfile`.
    """
    with open(path, encoding="utf-8") as file:
        return parse_hostfile(file.read(), source=path)


# -- SLURM -----------------------------------------------------------------------


def expand_nodelist(expression: str) -> list[str]:
    """Expand a SLURM host list, as ``scontrol show hostnames`` does.

    Names are separated by commas (outside brackets) or whitespace; a bracket
    holds numbers and ranges, and a range keeps the zero padding of its lower
    bound: ``node[01-03,07]`` is node01, node02, node03, node07; ``a[1-2],b3``
    is a1, a2, b3; several brackets multiply out (``r[1-2]n[1-2]``).

    Args:
        expression: e.g. the value of ``$SLURM_JOB_NODELIST``.

    Returns:
        The host names, in order.

    Raises:
        ValueError: unbalanced brackets, or a bracket that is not numbers and ranges.
    """
    hosts: list[str] = []
    for name in _split_outside_brackets(expression):
        hosts.extend(_expand_one(name, expression))
    if not hosts:
        raise ValueError(f"empty SLURM host list {expression!r}")
    return hosts


def _split_outside_brackets(expression: str) -> list[str]:
    names: list[str] = []
    current: list[str] = []
    depth = 0
    for char in expression:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth not in (0, 1):
            raise ValueError(f"unbalanced brackets in SLURM host list {expression!r}")
        if depth == 0 and (char == "," or char.isspace()):
            names.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise ValueError(f"unbalanced brackets in SLURM host list {expression!r}")
    return [name for name in [*names, "".join(current)] if name]


def _expand_one(name: str, expression: str) -> list[str]:
    match = _BRACKETS.search(name)
    if match is None:
        return [name]
    head, tail = name[: match.start()], name[match.end() :]
    return [head + number + rest for number in _numbers(match.group(1), expression)
            for rest in _expand_one(tail, expression)]  # fmt: skip


def _numbers(ranges: str, expression: str) -> list[str]:
    numbers: list[str] = []
    for part in ranges.split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(
                f"SLURM host list {expression!r}: [{ranges}] must hold numbers and "
                "ranges such as [1-4,7]"
            )
        width = len(low)
        stop = int(high) if high else int(low)
        if stop < int(low):
            raise ValueError(f"SLURM host list {expression!r}: range {part} runs backwards")
        numbers.extend(str(n).zfill(width) for n in range(int(low), stop + 1))
    return numbers


def expand_tasks_per_node(spec: str) -> list[int]:
    """Expand ``$SLURM_TASKS_PER_NODE``: ``2(x3),1`` is 2, 2, 2, 1.

    Args:
        spec: counts separated by commas, each optionally followed by ``(xN)``,
            N consecutive nodes with that count.

    Returns:
        One count per node, in the order of the node list.

    Raises:
        ValueError: an entry is not ``N`` or ``N(xM)``.
    """
    counts: list[int] = []
    for part in spec.split(","):
        match = _TASKS.fullmatch(part.strip())
        if match is None:
            raise ValueError(
                f"SLURM tasks per node {spec!r}: {part!r} is not a count such as 2 or 2(x3)"
            )
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts


def _slurm(env: Mapping[str, str]) -> HostList | None:
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        return None
    hosts = expand_nodelist(nodelist)
    spec = env.get("SLURM_TASKS_PER_NODE") or env.get("SLURM_JOB_CPUS_PER_NODE")
    counts = expand_tasks_per_node(spec) if spec else [1] * len(hosts)
    if len(counts) != len(hosts):
        raise ValueError(
            f"$SLURM_JOB_NODELIST names {len(hosts)} nodes ({nodelist}) but "
            f"$SLURM_TASKS_PER_NODE gives {len(counts)} counts ({spec})"
        )
    return _merge(zip(hosts, counts, strict=True))


# -- PBS and Grid Engine -------------------------------------------------------------


def _pbs(env: Mapping[str, str]) -> HostList | None:
    path = env.get("PBS_NODEFILE")
    if not path:
        return None
    with open(path, encoding="utf-8") as file:
        names = file.read().split()
    if not names:
        raise ValueError(f"$PBS_NODEFILE ({path}) is empty")
    return _merge((name, 1) for name in names)


def _sge(env: Mapping[str, str]) -> HostList | None:
    path = env.get("PE_HOSTFILE")
    if not path:
        return None
    pairs = []
    with open(path, encoding="utf-8") as file:
        for line in file:
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                pairs.append((fields[0], int(fields[1])))
    if not pairs:
        raise ValueError(f"$PE_HOSTFILE ({path}) lists no 'host slots' line")
    return _merge(pairs)


def _merge(pairs: Iterable[tuple[str, int]]) -> HostList:
    counts: dict[str, int] = {}
    for host, count in pairs:
        counts[host] = counts.get(host, 0) + count
    return [(host, count) for host, count in counts.items() if count > 0]


_SCHEDULERS = (("SLURM", _slurm), ("PBS", _pbs), ("Grid Engine", _sge))


def allocation(env: Mapping[str, str] | None = None) -> tuple[str, HostList] | None:
    """The hosts of the batch job this process runs in, if any.

    Args:
        env: the environment to read (default ``os.environ``).

    Returns:
        ``(scheduler name, hosts)``, or None outside a SLURM, PBS or Grid Engine job.

    Raises:
        ValueError: the scheduler's variables are malformed.
        OSError: its node file cannot be read.
    """
    env = os.environ if env is None else env
    for name, read in _SCHEDULERS:
        hosts = read(env)
        if hosts is not None:
            return name, hosts
    return None


def divide(hosts: Sequence[tuple[str, int]], workers: int | None) -> HostList:
    """Spread ``workers`` over the hosts as SCOOP's ``-n`` does.

    More workers than the hosts' counts: one more on each host in turn, from the
    first. Fewer: hosts are dropped or cut from the end of the list.

    Args:
        hosts: hosts and their counts.
        workers: the total wanted; None keeps the counts.

    Returns:
        The hosts that get workers, with their new counts.

    Raises:
        ValueError: ``workers`` is below 1, or there is no host.
    """
    if not hosts:
        raise ValueError("no host to start workers on")
    names, counts = [host for host, _ in hosts], [count for _, count in hosts]
    if workers is None:
        return list(zip(names, counts, strict=True))
    if workers < 1:
        raise ValueError(f"the worker count must be at least 1, got {workers}")
    turn = 0
    while sum(counts) < workers:
        counts[turn % len(counts)] += 1
        turn += 1
    while sum(counts) > workers:
        counts[-1] -= min(counts[-1], sum(counts) - workers)
        if counts[-1] == 0:
            names.pop()
            counts.pop()
    return list(zip(names, counts, strict=True))
