"""backend="auto": serial or the predicted-fastest backend, per call, observably."""

from __future__ import annotations

import gc
import io
import json
import logging
import multiprocessing
import os
import subprocess
import sys
import threading
import time

import funcs
import pytest

import parmap
from parmap import _auto, _calibration, _costs
from parmap._calibration import Calibration
from parmap._costs import costs
from parmap._model import OverheadModel

pytestmark = pytest.mark.timeout(180)


def slow(x):
    funcs.hold_gil(0.02)  # holds the GIL: threads of one process would not run it in parallel
    return x * 2


def test_cheap_function_runs_serially_and_matches():
    decision = parmap.explain(funcs.square, range(300), file=None)
    assert decision.chosen == "serial"
    assert parmap.parmap(funcs.square, range(300), backend="auto") == [i * i for i in range(300)]


def test_probe_results_are_kept_not_recomputed():
    calls = []

    def counted(x):
        calls.append(x)
        return -x

    assert parmap.parmap(counted, range(100), backend="auto") == [-i for i in range(100)]
    assert sorted(calls) == list(range(100))


def test_expensive_work_goes_to_a_running_backend(census):
    assert "loky" in parmap.available_backends()
    parmap.shutdown()  # only loky running: the others would pay their start-up
    parmap.parmap(abs, range(4), backend="loky")
    costs.clear()
    out = io.StringIO()
    decision = parmap.explain(slow, range(100), file=out)
    assert decision.chosen == "loky", str(decision)
    assert "-> loky" in out.getvalue() and "serial" in out.getvalue()
    assert parmap.parmap(slow, range(100), backend="auto") == [2 * i for i in range(100)]


def here():
    return os.getpid(), threading.get_ident()


class _Fitness:
    """A fitness whose cost the test changes between calls."""

    delay = 0.0

    def __call__(self, x: int) -> int:
        if self.delay:
            time.sleep(self.delay)
        return os.getpid(), threading.get_ident()


def test_a_cheap_function_that_turns_costly_goes_parallel(census):
    parmap.shutdown()
    parmap.parmap(abs, range(4), backend="loky")  # warm: no start-up to pay
    fitness, items = _Fitness(), list(range(40))
    for _ in range(10):  # cheap: each call runs here, on auto's fast path
        assert set(parmap.parmap(fitness, items, backend="auto")) == {here()}
    fitness.delay = 0.02  # 0.8 s a call from now on
    parmap.parmap(fitness, items, backend="auto")  # still here: auto learns from it
    # on loky's processes or on threads (a sleep releases the GIL); a few may have run
    # here, measuring how it scales on threads
    assert parmap.parmap(fitness, items, backend="auto").count(here()) < len(items) // 2


def test_start_up_cost_keeps_small_jobs_serial():
    parmap.shutdown()
    costs.clear()
    decision = parmap.explain(slow, range(10), file=None)
    assert decision.chosen == "serial", str(decision)


def test_environment_selects_auto_and_logs_each_decision(monkeypatch, caplog):
    monkeypatch.setenv("PARMAP_BACKEND", "auto")
    with caplog.at_level(logging.DEBUG, logger="parmap"):
        assert parmap.parmap(funcs.add, [1, 2], [3, 4]) == [4, 6]
    assert any("parmap auto" in record.getMessage() for record in caplog.records)


def test_errors_keep_type_and_index_in_the_probe_and_after():
    with pytest.raises(KeyError) as info:
        parmap.parmap(funcs.fail_at(0, KeyError), range(50), backend="auto")
    assert "item 0" in "\n".join(info.value.__notes__)
    with pytest.raises(ValueError) as info:
        parmap.parmap(funcs.fail_at(40), range(50), backend="auto")
    assert "item 40" in "\n".join(info.value.__notes__)


def test_unsized_input_is_read_ahead_in_bounded_amount():
    got = list(parmap.imap(funcs.square, (i for i in range(10_000)), backend="auto"))
    assert got == [i * i for i in range(10_000)]
    decision = parmap.explain(funcs.square, (i for i in range(10_000)), file=None)
    assert not decision.n_exact and decision.n_items == _auto.READ_AHEAD


def test_initializer_runs_before_the_probe():
    got = parmap.parmap(
        funcs.init_count, range(5), backend="auto", initializer=funcs.record_init, initargs=("a",)
    )
    assert all(count >= 1 for _, count in got)


def test_a_cluster_address_makes_its_engine_the_candidate(monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:1")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    expected = ["dask"] if parmap._registry.is_installed("dask") else []
    assert _auto.candidates() == expected


class Scaled:
    """A callable object: each instance its own cost."""

    def __init__(self, factor):
        self.factor = factor

    def __call__(self, x):
        return x * self.factor


def test_what_was_learned_about_a_callable_object_dies_with_it():
    fitness = Scaled(3)
    assert parmap.parmap(fitness, range(50), backend="auto") == [3 * i for i in range(50)]
    name = _costs.cost_name(fitness)
    assert name.startswith(f"{__name__}.Scaled@") and costs.get("name:" + name) is not None
    other = Scaled(4)
    assert _costs.cost_name(other) != name  # each instance learns on its own
    del fitness
    gc.collect()
    assert costs.get("name:" + name) is None  # a later object given the same id starts afresh
    assert name not in _costs._live_objects.values()


def test_decision_math_on_a_known_calibration(monkeypatch):
    model = OverheadModel("loky", 2, "parmap", 2e-4, fixed=1e-3, per_batch=2e-4)
    calibration = Calibration({"loky": model}, {"loky": 0.0}, time.time(), "test")
    monkeypatch.setattr(_calibration, "load", lambda workers, **_: calibration)
    monkeypatch.setattr(_auto, "candidates", lambda options=frozenset(), **_: ["loky"])
    cheap = _auto.decide("f", 300, True, 1e-6, "given", 2)
    heavy = _auto.decide("f", 200, True, 10e-3, "given", 2)
    assert cheap.chosen == "serial" and heavy.chosen == "loky"
    assert heavy.predictions["loky"] < heavy.predictions["serial"] / 1.8


def test_large_items_keep_auto_off_the_backends_that_copy_them(monkeypatch):
    """48 items of 3 ms each: two worker processes win, unless each item is 4 MiB to
    copy there and back (then pickling and pipes cost more than the work); the decision
    takes the item's size from the item itself, and says it."""
    monkeypatch.setattr(_auto, "candidates", lambda options=frozenset(), **_: ["loky"])
    monkeypatch.setattr(_auto, "_running", lambda name: True)
    assert _auto.decide("s", 48, True, 3e-3, "given", 2).chosen == "loky"
    big = _auto.decide("s", 48, True, 3e-3, "given", 2, item_bytes=4 << 20)
    assert big.chosen == "serial" and "4.0 MiB pickled" in str(big), str(big)
    decision = parmap.explain(funcs.sleep_then(0.002), [bytes(1 << 20)] * 8)
    assert decision.item_bytes > 1 << 20 and "1.0 MiB pickled" in str(decision)


def test_auto_learns_from_the_time_it_predicted_not_its_probes(monkeypatch):
    """The first item(s) and the scaling probe run before the decision, outside its
    prediction: the time auto learns from starts after them (else each probing call
    made the chosen backend look slower than it is)."""
    learned = []
    monkeypatch.setattr(_auto, "learn", lambda decision, seconds: learned.append(seconds))
    costs.clear()
    started = time.perf_counter()
    parmap.parmap(funcs.sleep_then(0.005), range(40), backend="auto", workers=2)
    wall = time.perf_counter() - started
    # at least the first item (5 ms) ran alone before the decision
    assert learned and learned[0] <= wall - 0.005, (learned, wall)


def test_a_call_slower_than_predicted_corrects_later_decisions(monkeypatch):
    model = OverheadModel("loky", 2, "parmap", 2e-4, fixed=1e-3, per_batch=2e-4)
    calibration = Calibration({"loky": model}, {"loky": 0.0}, time.time(), "test")
    monkeypatch.setattr(_calibration, "load", lambda workers, **_: calibration)
    monkeypatch.setattr(_auto, "candidates", lambda options=frozenset(), **_: ["loky"])
    monkeypatch.setattr(_auto, "_running", lambda name: True)
    monkeypatch.setattr(_auto, "_corrections", {})
    monkeypatch.setattr(_auto, "_first_calls", set())
    first = _auto.decide("g", 1000, True, 20e-6, "given", 2)
    assert first.chosen == "loky", str(first)
    _auto.learn(first, 100.0)  # the first call warms the workers: not learned from
    assert _auto.decide("g", 1000, True, 20e-6, "given", 2).chosen == "loky"
    for _ in range(4):  # each call took 4x the serial time: loky is a bad choice for g
        decision = _auto.decide("g", 1000, True, 20e-6, "given", 2)
        if decision.chosen == "serial":
            break
        _auto.learn(decision, 4 * 1000 * 20e-6)
    assert decision.chosen == "serial", str(decision)
    assert _auto.decide("other", 1000, True, 20e-6, "given", 2).chosen == "loky"


def test_a_backend_predicted_close_to_serial_is_tried_and_learned(monkeypatch):
    model = OverheadModel("loky", 2, "parmap", 2e-4, fixed=6e-3)  # pessimistic
    calibration = Calibration({"loky": model}, {"loky": 0.0}, time.time(), "test")
    monkeypatch.setattr(_calibration, "load", lambda workers, **_: calibration)
    monkeypatch.setattr(_auto, "candidates", lambda options=frozenset(), **_: ["loky"])
    monkeypatch.setattr(_auto, "_running", lambda name: True)
    for table in ("_corrections", "_explored"):
        monkeypatch.setattr(_auto, table, {})
    monkeypatch.setattr(_auto, "_first_calls", set())

    def decide():
        return _auto.decide("h", 10, True, 1e-3, "given", 2)  # serial 10 ms, loky ~11 ms

    chosen = []
    for _ in range(3 * _auto.EXPLORE_EVERY):
        decision = decide()
        chosen.append(decision.chosen)
        if decision.chosen == "loky":
            _auto.learn(decision, 6e-3)  # it really takes 6 ms
    assert chosen[: _auto.EXPLORE_EVERY - 1] == ["serial"] * (_auto.EXPLORE_EVERY - 1)
    assert chosen[-1] == "loky" and decide().chosen == "loky"


def test_calibration_is_measured_written_and_shown(tmp_path, monkeypatch, census):
    pytest.importorskip("numpy")
    path = tmp_path / "calibration.json"
    env = {**os.environ, "PARMAP_CALIBRATION": str(path)}
    command = ["--calibrate", "--backends", "loky", "--no-progress"]
    run = subprocess.run(
        [sys.executable, "-m", "parmap.bench", *command],
        env=env, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    document = json.loads(path.read_text())
    assert set(document["models"]) == {"loky"} and document["startup"]["loky"] > 0
    monkeypatch.setenv("PARMAP_CALIBRATION", str(path))
    info = subprocess.run(
        [sys.executable, "-m", "parmap._cli", "info"], capture_output=True, text=True,
        env=env, timeout=60,
    ).stdout  # fmt: skip
    assert str(path) in info and "days ago" in info
    calibration = _calibration.load(2, calibrate=False)
    assert calibration.source == str(path) and "loky" in calibration.models


def test_a_child_process_never_calibrates(tmp_path, monkeypatch):
    """A worker, or a child re-running a script that lacks the __main__ guard, uses the
    built-in defaults rather than starting pools of its own."""
    path = tmp_path / "calibration.json"
    monkeypatch.setenv("PARMAP_CALIBRATION", str(path))
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        source = pool.apply(_child_calibration_source)
    assert source.startswith("built-in defaults") and not path.exists()


def _child_calibration_source():
    return _calibration.load(2).source


def test_auto_never_keeps_a_calibration_that_missed_a_backend(tmp_path):
    pytest.importorskip("numpy")
    from parmap import _registry
    from parmap.bench._calibrate import calibrate

    parmap.register_backend("imaginary", "imaginary_engine:Backend", requires=("imaginary_engine",))
    path = tmp_path / "calibration.json"
    try:
        with pytest.raises(RuntimeError, match="no model for imaginary"):
            calibrate(path, backends=["loky", "imaginary"], progress=False, complete=True)
    finally:
        _registry.unregister_backend("imaginary")
    assert not path.exists()


def test_a_loop_of_short_calls_starts_the_pool_once_staying_serial_cost_as_much(monkeypatch):
    """Each call alone is too short to repay loky's start-up, a GA's hundred calls are not:
    auto counts what staying serial cost each call and starts the pool when that adds up
    to the start-up (the ski-rental rule), then stays on it."""
    model = OverheadModel("loky", 2, "parmap", 2e-4, fixed=1e-3, per_batch=2e-4)
    calibration = Calibration({"loky": model}, {"loky": 0.5}, time.time(), "test")
    monkeypatch.setattr(_calibration, "load", lambda workers, **_: calibration)
    monkeypatch.setattr(_auto, "candidates", lambda options=frozenset(), **_: ["loky"])
    running = set()
    monkeypatch.setattr(_auto, "_running", lambda name: name in running)
    monkeypatch.setattr(_auto, "_missed", {})
    chosen = []
    for _ in range(20):  # 100 items of 1 ms: 0.1 s serial, about 0.05 s on a warm pool
        decision = _auto.decide("ga", 100, True, 1e-3, "given", 2)
        _auto.commit(decision)
        chosen.append(decision.chosen)
        if decision.chosen == "loky":
            running.add("loky")
    first = chosen.index("loky")
    assert 5 <= first <= 12, chosen  # about 0.5 s / 0.05 s saved per call
    assert chosen[first:] == ["loky"] * (20 - first)
    assert _auto.decide("other", 100, True, 1e-3, "given", 2).chosen == "loky"  # warm now
