"""The multiprocessing backend: ``concurrent.futures.ProcessPoolExecutor``.

Not ``multiprocessing.Pool``, which hangs forever when a worker dies
(gh-66587). The start method is ``forkserver`` by default (safe with threads,
Python 3.14's default); ``start_method="fork"`` or ``"spawn"`` via
``parmap.config()`` or ``$PARMAP_START_METHOD``.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import sys
from typing import Any

from parmap._worker import prepare_pool_worker
from parmap.backends._process import ProcessPoolBackend

__all__ = ["MultiprocessingBackend"]

START_METHODS = ("fork", "forkserver", "spawn")


class MultiprocessingBackend(ProcessPoolBackend):
    """Process pool from the standard library, with a configurable start method."""

    name = "multiprocessing"
    option_names = ("start_method",)

    def __init__(self, workers: int | None = None, **options: Any) -> None:
        super().__init__(workers, **options)
        method = options.get("start_method") or "forkserver"
        available = multiprocessing.get_all_start_methods()
        if method not in available:
            raise ValueError(
                f"start_method {method!r} is not available here; choose one of {available}"
            )
        self.start_method = method

    def _new_executor(self) -> cf.Executor:
        return cf.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context(self.start_method),
            initializer=prepare_pool_worker,
            initargs=(os.getpid(),),
        )

    def _reruns_main(self) -> bool:
        main = sys.modules.get("__main__")
        return self.start_method != "fork" and getattr(main, "__file__", None) is not None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "start_method": self.start_method}
