"""SCOOP's ``scoop.shared``: constants set once in the program, readable on every worker.

::

    from parmap.scoop import futures, shared

    shared.setConst(table=big_table)          # in the program, before the work

    def lookup(i):
        return shared.getConst("table")[i]    # on any worker

    list(futures.map(lookup, range(10)))

Each constant is a ``parmap.share()`` handle travelling with the calls made
after ``setConst``: a backend receives its value once, a worker loads it once.
"""

from __future__ import annotations

from typing import Any

from parmap.scoop import _runtime

__all__ = ["getConst", "setConst"]


def setConst(**kwargs: Any) -> None:
    """Define constants for the calls made after this one, like SCOOP.

    Usage: ``setConst(name=value)``. A name can be defined once.

    Args:
        **kwargs: ``name=value`` pairs; any picklable value (functions too).

    Raises:
        TypeError: a name is already defined (SCOOP's error and message).
        RuntimeError: called on a worker: constants go from the program to
            the workers; define them in the program before the work.
    """
    _runtime.define(kwargs)


def getConst(name: str, timeout: float = 0.1) -> Any:
    """The value of a constant, or None if it is not defined, like SCOOP.

    Args:
        name: the constant's name.
        timeout: seconds to wait for another thread of the program to define
            it (SCOOP's default 0.1). A worker has every constant defined
            before its work was submitted, so it does not wait.

    Returns:
        The value, or None.
    """
    return _runtime.lookup(name, timeout)
