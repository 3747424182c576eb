"""backend="mpi" under a real ``mpiexec`` (MPICH, from the ``mpich`` wheel of the test set-up).

Each test starts ``mpiexec -n 3 python -m mpi4py.futures ...`` (rank 0 runs the script,
ranks 1-2 are its workers) and checks what it printed, that it ended by its deadline,
and that no process is left. Skipped, saying how to install them, without mpi4py or an
``mpiexec``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import parmap

TESTS = Path(__file__).resolve().parent
SCRIPTS = TESTS / "mpi_scripts"
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
POOL = [sys.executable, "-m", "mpi4py.futures"]  # rank 0 runs the script, the rest serve it

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
        reason="needs mpi4py and an mpiexec: pip install -e '.[mpi,test]' (mpi4py; the mpich "
        "wheel of the test set-up brings an MPI and its mpiexec)",
    ),
]


def mpiexec(*args: str, ranks: int = 3, deadline: float = 60.0, env: dict | None = None, flags=()):
    """Run ``mpiexec flags -n ranks args...`` to its end, killed after ``deadline`` seconds."""
    environment = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    environment.pop("PARMAP_BACKEND", None)
    started = time.monotonic()
    run = subprocess.run(
        [MPIEXEC, *flags, "-n", str(ranks), *args], env=environment, capture_output=True, text=True,
        timeout=deadline, stdin=subprocess.DEVNULL, cwd=TESTS.parent,
    )  # fmt: skip
    run.seconds = time.monotonic() - started  # type: ignore[attr-defined]
    return run


def test_contract_suite_on_the_ranks(census):
    """tests/test_contract.py and test_item_policy.py, run by pytest as rank 0's script,
    on backend="mpi" and on auto (which may choose mpi there). A dead rank ends the job
    (MPI's rule), so the crash cases are tested below, each in a job of its own."""
    run = mpiexec(
        *POOL, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_contract.py",
        "tests/test_item_policy.py", "-k", "(test_contract or mpi) and not crash",
        env={"PARMAP_TEST_BACKENDS": "mpi,auto"}, deadline=100,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    passed = int(re.search(r"(\d+) passed", out).group(1))
    assert passed >= 55 and " failed" not in out, out[-2000:]


def test_deap_onemax_with_delta_penalty_matches_serial(census):
    run = mpiexec(*POOL, str(SCRIPTS / "onemax_side_by_side.py"), "--pop", "60", "--ngen", "3")
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["same_as_serial"], report
    assert len(report["hof"]) == 5


def test_rank_zero_facts(census):
    """auto chooses mpi in rank 0 of the pool; N-1 ranks work; nested calls run on the
    ranks; item_timeout is refused (a rank cannot be stopped); parmap.shutdown() and on."""
    run = mpiexec(*POOL, str(SCRIPTS / "facts.py"))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert [line for line in run.stdout.splitlines() if line.startswith("ok ")] == [
        "ok attached: auto may choose mpi",
        "ok 2 worker ranks, not rank 0",
        "ok auto chooses mpi for 400 x 2 ms",
        "ok auto runs it",
        "ok nested calls run in place on the ranks",
        "ok item_timeout refused",
        "ok works again after parmap.shutdown()",
    ]


@pytest.mark.parametrize("mode", ["exit", "segv"])
def test_a_dead_rank_ends_the_job_within_seconds(mode, census):
    """MPI's launcher ends the whole job when a rank dies (its exit status is the dead
    rank's, or that of rank 0, which it killed: 9); a segfault prints the rank's Python
    stack (the function that crashed)."""
    run = mpiexec(*POOL, str(SCRIPTS / "crash.py"), env={"CRASH_MODE": mode}, deadline=30)
    assert run.stdout.startswith("calling")
    assert "no crash?" not in run.stdout and "WorkerCrashedError" not in run.stdout
    assert run.returncode in ((3, 9) if mode == "exit" else (11, 9, 139)), run.stderr[-2000:]
    if mode == "segv":
        assert "Segmentation fault" in run.stderr and 'crash.py", line' in run.stderr
    assert run.seconds < 20, f"the job took {run.seconds:.1f}s to end"


def test_a_dead_rank_in_a_job_kept_alive_is_ended_by_parmap(census):
    """With MPICH's `mpiexec -disable-auto-cleanup` the job outlives a rank, but the lost
    batch never returns and mpi4py.futures would wait for that rank forever: parmap
    notices the rank gone and ends the job, saying why."""
    version = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True).stdout
    if "HYDRA" not in version:
        pytest.skip("-disable-auto-cleanup is an option of MPICH's mpiexec (Hydra)")
    run = mpiexec(
        *POOL, str(SCRIPTS / "crash.py"), env={"CRASH_MODE": "exit"}, deadline=40,
        flags=["-disable-auto-cleanup"],
    )  # fmt: skip
    assert run.returncode != 0
    assert "a worker rank of this MPI job (pid" in run.stderr, run.stderr[-2000:]
    assert "MPI_Abort" in run.stderr
    assert run.seconds < 30


def test_ctrl_c_ends_the_job(census):
    process = subprocess.Popen(
        [MPIEXEC, "-n", "3", *POOL, str(SCRIPTS / "long_call.py")],
        env={**os.environ, "PYTHONPATH": str(TESTS)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=TESTS.parent, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert process.stdout.readline().strip() == "calling"
        process.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends mpiexec
        started = time.monotonic()
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 128 + signal.SIGINT, err[-2000:]
    assert time.monotonic() - started < 10
    assert "KeyboardInterrupt" in err


def test_outside_a_pool_says_how_to_start(census):
    """No pool of ranks: a plain process, every rank running the script, one rank only."""
    script = str(SCRIPTS / "not_a_pool.py")
    plain = subprocess.run(
        [sys.executable, script], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
    )  # fmt: skip
    assert "refused: backend='mpi' runs on the ranks of an MPI job" in plain.stdout, plain.stderr
    every_rank = mpiexec(sys.executable, script, ranks=2)
    assert every_rank.stdout.count("each running the script") == 2, every_rank.stderr
    assert "mpiexec -n N python -m mpi4py.futures script.py" in every_rank.stdout
    one_rank = mpiexec(*POOL, script, ranks=1)
    assert "this MPI job has one rank" in one_rank.stdout, one_rank.stderr


def test_facts_outside_a_pool_do_not_import_mpi():
    """auto and calibration never consider mpi outside its job, and reading that costs
    no import of mpi4py (which would start MPI in this process)."""
    from parmap._auto import candidates
    from parmap._registry import backend_class

    assert "mpi" not in parmap.available_backends(), "installed, but not usable here"
    cls = backend_class("mpi")
    assert cls.usable() is not None and "mpiexec -n N" in cls.usable()
    assert cls.stops_running is False
    assert "mpi" not in candidates()
    assert "mpi4py.MPI" not in sys.modules
    with pytest.raises(ValueError, match="item_timeout"):
        parmap.parmap(abs, range(3), backend="mpi", item_timeout=1)


def test_an_unmodified_scoop_script_on_the_ranks(census):
    """SCOOP's launcher of parmap as rank 0's module: the script's futures.map runs on the
    two worker ranks (scoop.SIZE says 2), not in rank 0."""
    run = mpiexec(*POOL, "-m", "parmap.scoop", "--backend", "mpi", str(SCRIPTS / "scoop_pids.py"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "size 2, 2 worker pids, here: False"
