"""The loky backend: loky's robust ``ProcessPoolExecutor``.

Workers are fresh interpreters (not forks of the caller); the function and the
classes it needs travel with the work (see ``parmap._serialization``).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import re

from parmap._worker import prepare_pool_worker
from parmap.backends._process import ProcessPoolBackend

__all__ = ["LokyBackend"]


class LokyBackend(ProcessPoolBackend):
    """Process pool from loky."""

    name = "loky"

    def _new_executor(self) -> cf.Executor:
        import loky

        return loky.ProcessPoolExecutor(
            max_workers=self.workers,
            initializer=prepare_pool_worker,
            initargs=(os.getpid(),),
        )

    def _kill(self, pool: cf.Executor) -> None:
        pool.shutdown(wait=True, kill_workers=True)  # type: ignore[call-arg]

    def _shutdown(self, pool: cf.Executor) -> None:
        pool.shutdown(wait=True)

    def _exitcode(self, exc: BaseException, pool: cf.Executor | None) -> int | None:
        # loky kills the surviving workers itself (SIGKILL) once one dies, but its
        # error names the exit codes of the ones that died first: "{SIGSEGV(-11)}".
        codes = re.findall(r"\((-?\d+)\)", str(exc).rpartition("exit codes of the workers are")[2])
        return int(codes[0]) if codes else super()._exitcode(exc, pool)
