"""SCOOP compatibility: run SCOOP programs on any parmap backend.

Two ways in:

1. Unmodified scripts, with the launcher instead of ``python -m scoop``::

       python -m parmap.scoop -n 4 --backend loky script.py [args...]

   ``import scoop``, ``from scoop import futures`` and ``from scoop import
   shared`` inside the script resolve to this package (whether or not SCOOP
   is installed).

2. A one-line change, then plain ``python script.py``::

       from parmap.scoop import futures, shared

SCOOP's host options work too (``--hosts A B``, ``--hostfile F``, a SLURM, PBS
or Grid Engine job's hosts): Dask starts the workers over SSH for the run.
From Python, :func:`ssh_cluster` does the same for any parmap call::

    with parmap.scoop.ssh_cluster(["node1", "node2"], workers=16) as address:
        parmap.parmap(fn, items, backend="dask", address=address)

The module-level flags SCOOP scripts test are here too: ``IS_RUNNING``
(always True), ``IS_ORIGIN`` (True in the program, False on a worker),
``SIZE`` (the worker count), ``worker`` (this process's name), ``DEBUG``,
``CONFIGURATION``, ``MAIN_MODULE`` and ``logger``.

See docs/migrating-from-scoop.md for the table of equivalents and the differences.
"""

from __future__ import annotations

import logging
from typing import Any

from parmap.scoop import futures, shared
from parmap.scoop._runtime import configure, settings
from parmap.scoop._ssh import ssh_cluster

__all__ = [
    "DEBUG",
    "IS_RUNNING",
    "SHUTDOWN_REQUESTED",
    "configure",
    "futures",
    "logger",
    "shared",
    "ssh_cluster",
]

__version__ = "0.7"  # the SCOOP API this layer follows (SCOOP 0.7.2)

IS_RUNNING = True
DEBUG = False
SHUTDOWN_REQUESTED = False
logger = logging.getLogger("parmap.scoop")

_DYNAMIC = ("CONFIGURATION", "IS_ORIGIN", "MAIN_MODULE", "SIZE", "worker")


def __getattr__(name: str) -> Any:
    """Flags that depend on where (program or worker) and how the code runs."""
    from parmap.scoop import _runtime

    if name == "IS_ORIGIN":
        return _runtime.is_origin()
    if name == "SIZE":
        return _runtime.size()
    if name == "worker":
        return _runtime.worker_name()
    if name == "MAIN_MODULE":
        return settings.main_module
    if name == "CONFIGURATION":
        return {"headless": False, "backend": settings.backend}
    raise AttributeError(f"module 'parmap.scoop' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_DYNAMIC])
