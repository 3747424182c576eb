"""A user's mpi4py ``MPIPoolExecutor`` passed as ``backend=``, under a real ``mpiexec``
(MPICH, from the ``mpich`` wheel of the test extra). tests/test_mpi.py tests the ``mpi``
backend; here parmap adopts an executor the script made itself.

Skipped, saying how to install them, where mpi4py or mpiexec is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "mpi_scripts" / "map_on_mpi.py"
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
        reason="needs mpi4py and an mpiexec: pip install -e '.[mpi,test]' (mpi4py, mpich)",
    ),
]


def test_parmap_on_a_users_mpi_pool_executor(census):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    env.pop("PARMAP_BACKEND", None)
    command = [MPIEXEC, "-n", "3", sys.executable, "-m", "mpi4py.futures", str(SCRIPT)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=150,
                         stdin=subprocess.DEVNULL)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("ok ")]
    assert lines == [
        "ok results: 200 in order on 2 MPI workers",
        "ok a closure travels by value",
        "ok the user's KeyError names item 17",
        "ok imap, unordered",
        "ok done",
    ], run.stdout + run.stderr
