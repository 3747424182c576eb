"""Backends: thin adapters that start workers, run one batch, and stop.

All policy (batching, the in-flight window, ordering, errors, retries,
timeouts, progress) lives in ``parmap._api``; see :class:`Backend`.
"""

from parmap.backends._base import Backend

__all__ = ["Backend"]
