"""The benchmark's GIL-free workload and the threads backend in its tables (additions to
the harness; tests/test_bench.py covers the rest)."""

from __future__ import annotations

import json
import pickle
import threading
import time

import pytest

from parmap.bench import main, workloads


def test_the_gil_free_workload_is_real_picklable_and_releases_the_gil():
    fitness = workloads.HashFitness.for_cost(2000.0, workloads.hash_rate())
    assert fitness.nbytes >= 4096
    assert pickle.loads(pickle.dumps(fitness))(7) == fitness(7) != fitness(8)
    done = threading.Event()
    spins = 0

    def hash_a_while():
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            fitness(1)
        done.set()

    worker = threading.Thread(target=hash_a_while)
    worker.start()
    while not done.is_set():  # this thread runs Python meanwhile: the GIL was let go
        spins += 1
    worker.join()
    assert spins > 1000


@pytest.mark.timeout(120)
def test_threads_and_the_gil_free_workload_in_a_run(tmp_path, census):
    out = tmp_path / "results"
    argv = ["--backends", "serial,threads", "--baselines", "none", "--counts", "2,8",
            "--repeats", "1", "--workloads", "cpu,gilfree", "--costs", "1000",
            "--no-plots", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    cells = {(r["target"], r["label"], r["n_items"]) for r in rows}
    assert ("threads", "gil-free 1 ms", 8) in cells
    assert ("threads", "cpu 1 ms", 8) in cells
