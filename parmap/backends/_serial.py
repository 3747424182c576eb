"""The serial backend: runs every item in the caller, in order. The oracle."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Sequence
from typing import Any

from parmap._worker import CallSpec, run_local
from parmap.backends._base import Backend

__all__ = ["SerialBackend"]


class SerialBackend(Backend):
    """Runs batches synchronously in the calling thread, on live objects."""

    name = "serial"
    batch_overhead: float = 5e-6
    serializes = False
    startup_seconds = 0.0
    auto = False  # auto's own serial choice runs in place, without a backend
    stops_running = False  # fn runs in the caller's thread

    @property
    def workers(self) -> int:
        return 1

    def submit(self, prepared: CallSpec, items: Sequence[Any]) -> cf.Future[Any]:
        future: cf.Future[Any] = cf.Future()
        future.set_result(run_local(prepared, items))
        return future

    def shutdown(self) -> None:
        pass
