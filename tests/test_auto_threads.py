"""backend="auto" and threads: it measures whether a function scales on threads.

Work that releases the GIL is a sleep here, work that holds it a wait in C that keeps
the GIL: neither depends on how busy the machine is, as CPU work would.
"""

from __future__ import annotations

import sys
import threading
import time

import funcs
import pytest

import parmap
from parmap import _auto
from parmap._costs import costs

pytestmark = pytest.mark.timeout(120)


def releases_gil(x):
    time.sleep(0.02)  # long beside a busy machine's wake-up delays
    return x * 2


def holds_gil(x):
    funcs.hold_gil(0.005)
    return x


@pytest.fixture(autouse=True)
def _cold(monkeypatch):
    """No backend running, nothing remembered: each would pay its start-up."""
    for variable in ("RAY_ADDRESS", "DASK_SCHEDULER_ADDRESS"):
        monkeypatch.delenv(variable, raising=False)
    parmap.shutdown()
    costs.clear()
    _auto._thread_speedups.clear()
    _auto._thread_probes.clear()
    _auto._corrections.clear()
    yield
    parmap.shutdown()


def test_work_that_releases_the_gil_goes_to_threads():
    decision = parmap.explain(releases_gil, range(40), workers=2)
    assert decision.chosen == "threads", str(decision)
    assert "releases the GIL" in str(decision) and "on 2 threads" in str(decision)
    assert _auto._thread_speedups[decision.fn] > 1.3


def test_work_that_holds_the_gil_does_not():
    decision = parmap.explain(holds_gil, range(60), workers=2)
    assert decision.chosen != "threads", str(decision)
    assert _auto._thread_speedups[decision.fn] < 1.2, str(decision)
    assert "holds the GIL, so threads run it one at a time" in str(decision)


def test_the_probe_keeps_its_results_in_order_and_runs_each_item_once():
    calls = []
    lock = threading.Lock()

    def counted(x):
        with lock:
            calls.append(x)
        time.sleep(0.004)
        return -x

    assert parmap.parmap(counted, range(80), backend="auto", workers=2) == [-i for i in range(80)]
    assert sorted(calls) == list(range(80))
    assert "test_auto_threads" in next(iter(_auto._thread_speedups))


def test_an_error_in_the_thread_probe_names_its_item():
    def fails_late(x):
        time.sleep(0.004)
        if x == 4:
            raise KeyError(f"bad item {x}")
        return x

    with pytest.raises(KeyError) as info:
        parmap.parmap(fails_late, range(60), backend="auto", workers=2)
    assert "item 4" in "\n".join(info.value.__notes__)


def test_the_median_of_three_measurements_is_kept_per_function():
    for _ in range(_auto.SCALING_PROBES):
        parmap.parmap(releases_gil, range(40), backend="auto", workers=2)
    (name,) = _auto._thread_probes
    measured = list(_auto._thread_probes[name])
    assert len(measured) == _auto.SCALING_PROBES
    assert _auto._thread_speedups[name] == sorted(measured)[1]
    assert parmap.parmap(releases_gil, range(40), backend="auto", workers=2)[-1] == 78
    assert _auto._thread_probes[name] == measured  # not measured again
    assert "median of 3 measurements" in str(parmap.explain(releases_gil, range(40), workers=2))


def test_without_a_gil_threads_are_taken_as_parallel(monkeypatch):
    """A free-threaded interpreter (sys._is_gil_enabled() false): no probe, threads win."""
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    decision = parmap.explain(holds_gil, range(60), workers=2)
    assert decision.chosen == "threads", str(decision)
    assert "no GIL" in str(decision)
    assert decision.fn not in _auto._thread_speedups


def test_nested_calls_in_the_probe_run_in_place():
    def outer(x):
        time.sleep(0.004)
        return sum(parmap.parmap(funcs.square, range(x % 5)))

    got = parmap.parmap(outer, range(60), backend="auto", workers=2)
    assert got == [sum(i * i for i in range(x % 5)) for x in range(60)]


def test_a_calibration_without_threads_still_lets_auto_choose_them(tmp_path, monkeypatch):
    """A machine calibrated before the threads backend existed: its class's constants
    stand in, with the file's measured models for the rest."""
    from parmap import _calibration
    from parmap._model import OverheadModel

    path = tmp_path / "calibration.json"
    measured = OverheadModel("loky", 2, fixed=2e-3, per_batch=3e-4, work_factor=1.1)
    _calibration.save(path, {"loky": measured}, {"loky": 0.8}, {})
    monkeypatch.setenv("PARMAP_CALIBRATION", str(path))
    _calibration.reload()
    try:
        calibration = _calibration.load(2, calibrate=False)
        assert calibration.models["loky"] == measured
        assert "threads" in calibration.models and calibration.startup["threads"] < 0.01
        decision = parmap.explain(releases_gil, range(40), workers=2)
        assert decision.chosen == "threads", str(decision)
    finally:
        _calibration.reload()


def test_a_function_that_holds_the_gil_keeps_auto_s_fast_path():
    """Once measured at about 1x on threads, a cheap call's floor leaves threads out: the
    call is decided serial without predictions (stays_serial), as before threads existed."""
    from parmap._calibration import defaults

    name = "tests.holds_the_gil"
    costs.observe(("name:" + name,), 1000, 1000 * 1e-6)  # 1 µs an item
    floor = defaults(2).floor(1000, 1e-6, 2)  # unmeasured: threads count, taken as parallel
    assert floor < 1000 * 1e-6 * _auto.EXPLORE_BAND
    assert not _auto.stays_serial(name, 1000, 2)
    _auto._thread_speedups[name] = 1.0
    assert defaults(2).floor(1000, 1e-6, 2, parallel=0.0) > floor
    assert _auto.stays_serial(name, 1000, 2)
