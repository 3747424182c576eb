"""parmap: one parallel map call over Ray, Dask, loky or multiprocessing.

    import parmap
    squares = parmap.parmap(lambda x: x * x, range(1000), backend="loky")

See the README for the backends, their selection and the guarantees.
"""

from parmap._api import imap, parmap, starmap
from parmap._call import explain
from parmap._config import BackendChoice, config, get_backend
from parmap._errors import (
    BackendNotInstalledError,
    ItemTimeoutError,
    ParmapError,
    SerializationError,
    TimeoutError,
    UnknownBackendError,
    WorkerCrashedError,
    WorkerInitializationError,
)
from parmap._local import PerWorker, per_worker
from parmap._registry import available_backends, backend_names, register_backend, shutdown
from parmap._share import Shared, share
from parmap.backends._base import Backend

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendChoice",
    "BackendNotInstalledError",
    "ItemTimeoutError",
    "ParmapError",
    "PerWorker",
    "SerializationError",
    "Shared",
    "TimeoutError",
    "UnknownBackendError",
    "WorkerCrashedError",
    "WorkerInitializationError",
    "__version__",
    "available_backends",
    "backend_names",
    "config",
    "explain",
    "get_backend",
    "imap",
    "parmap",
    "per_worker",
    "register_backend",
    "share",
    "shutdown",
    "starmap",
]
