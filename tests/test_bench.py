"""The benchmark harness: its arithmetic on known numbers, a tiny real run, its errors."""

from __future__ import annotations

import json
import math
import pickle
import signal
import subprocess
import sys
import time

import cloudpickle
import pytest
from test_bench_fn import assert_png_readable

from parmap._model import (
    OverheadModel,
    batch_count,
    choose,
    load_models,
    save_models,
)
from parmap.bench import main, workloads
from parmap.bench.analysis import Observation, crossover, fit_model, residuals, speedup

pytest.importorskip("numpy")
pytest.importorskip("matplotlib")

# -- crossover ---------------------------------------------------------------------


def test_crossover_is_interpolated_on_log_log_axes():
    # speed-up 0.5 at 10 items and 2.0 at 100: log-speed-up crosses 0 half-way, at sqrt(1000)
    c = crossover([(10, 0.5), (100, 2.0), (1000, 3.0)])
    assert c.kind == "between"
    assert c.at == pytest.approx(math.sqrt(1000))
    assert (c.low, c.high) == (10, 100)
    assert c.label() == "≈31.6"


def test_crossover_needs_a_win_at_every_larger_value():
    # a lucky win at 10 that does not last does not count; the crossover is past 100
    c = crossover([(1000, 1.5), (10, 1.2), (100, 0.8)])
    assert c.kind == "between"
    assert 100 < c.at < 1000


def test_crossover_edges():
    assert crossover([(10, 1.1), (100, 1.9)]).label() == "≤10"
    assert crossover([(10, 0.1), (10_000, 0.9)]).label() == ">10,000"
    assert crossover([]).label() == "—"
    assert crossover([(10, 1.0)]).kind == "never"  # equal to serial is not beating it


def test_crossover_along_the_cost_axis_formats_seconds():
    c = crossover([(1e-6, 0.1), (1e-4, 10.0)])
    assert c.at == pytest.approx(1e-5)
    assert c.label(lambda s: f"{s * 1e6:g} µs") == "≈10 µs"


def test_speedup():
    assert speedup(2.0, 0.5) == 4.0
    assert speedup(1.0, 0.0) == math.inf


# -- model fit ---------------------------------------------------------------------


def _grid(model, sizes=(100,)):
    return [
        Observation(n, c, size, model.predict(n, c, size))
        for n in (10, 100, 1_000, 10_000)
        for c in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
        for size in sizes
    ]


def test_fit_recovers_known_constants():
    true = OverheadModel(
        "loky", 2, "parmap", 2e-4, fixed=1e-3, per_item=5e-6, per_batch=3e-4, work_factor=1.1
    )
    model = fit_model(_grid(true), OverheadModel("loky", 2, "parmap", 2e-4))
    assert model.fixed == pytest.approx(1e-3, rel=1e-6)
    assert model.per_item == pytest.approx(5e-6, rel=1e-6)
    assert model.per_batch == pytest.approx(3e-4, rel=1e-6)
    assert model.work_factor == pytest.approx(1.1, rel=1e-6)
    assert model.per_byte == 0.0  # one item size only: not fitted
    assert model.quality["points"] == 20
    assert model.quality["max_rel"] < 1e-9


def test_fit_recovers_the_per_byte_cost_when_sizes_vary():
    true = OverheadModel("mp-pool", 2, "pool", fixed=5e-4, per_item=2e-6, per_byte=1e-9)
    model = fit_model(_grid(true, sizes=(100, 10_000, 1_000_000)), OverheadModel("x", 2, "pool"))
    assert model.per_byte == pytest.approx(1e-9, rel=1e-6)
    assert model.per_item == pytest.approx(2e-6, rel=1e-5)


def test_fit_keeps_constants_non_negative_and_reports_residuals():
    # times a straight line cannot match: a least-squares fit would go negative somewhere
    points = [Observation(n, 1e-4, 50, t) for n, t in ((10, 0.05), (100, 0.002), (1000, 0.1))]
    model = fit_model(points, OverheadModel("x", 2, "single"))
    assert all(v >= 0 for v in model.coefficients())
    found = residuals(model, points)
    assert [r.observation for r in found] == points
    assert found[0].relative == pytest.approx((found[0].predicted - 0.05) / 0.05)
    assert model.quality["max_rel"] == pytest.approx(max(abs(r.relative) for r in found))


def test_fit_without_points_says_so():
    with pytest.raises(ValueError, match="no measured point"):
        fit_model([], OverheadModel("loky", 2))


def test_model_round_trips_through_a_file(tmp_path):
    model = OverheadModel("ray", 4, "parmap", 1e-3, fixed=2e-3, per_item=1e-6, quality={"x": 1})
    assert OverheadModel.from_dict(json.loads(json.dumps(model.to_dict()))) == model
    save_models(tmp_path / "m.json", {"ray": model}, {"cpu_count": 4})
    loaded = load_models(tmp_path / "m.json")
    assert loaded["models"]["ray"] == model
    assert loaded["machine"] == {"cpu_count": 4}
    (tmp_path / "old.json").write_text(json.dumps({"schema": 0, "models": {}}))
    with pytest.raises(ValueError, match="re-run `parmap bench`"):
        load_models(tmp_path / "old.json")


def test_model_rejects_an_unknown_batching_policy():
    with pytest.raises(ValueError, match="parmap, pool, joblib"):
        OverheadModel("x", 2, "guess")


def test_batch_counts():
    # multiprocessing.Pool.map: chunksize = ceil(n / (4 * workers))
    assert batch_count("pool", 100, 1e-3, 2) == 8  # chunks of 13
    assert batch_count("pool", 5, 1e-3, 2) == 5
    assert batch_count("per-item", 77, 1e-3, 2) == 77
    assert batch_count("single", 77, 1e-3, 2) == 1
    assert batch_count("parmap", 0, 1e-3, 2) == 0
    for n in (1, 10, 1_000, 100_000):
        count = batch_count("parmap", n, 1e-5, 2, 2e-4)
        assert 1 <= count <= n
    # expensive items: parmap keeps every worker busy; cheap ones: few big batches
    assert batch_count("parmap", 200, 1e-2, 2, 2e-4) >= 4
    assert batch_count("parmap", 100_000, 1e-7, 2, 2e-4) <= 4
    assert batch_count("joblib", 10_000, 1e-6, 2) < 10_000


def test_breakeven_and_choice():
    # time = 1 ms + cost * ceil(n / 2): beats n * cost once n * cost / 2 > 1 ms
    model = OverheadModel("p", 2, "single", fixed=1e-3)
    assert model.breakeven_items(1e-4) == 22  # 21 items: 10 * 1e-4 = 1 ms, not better
    assert model.breakeven_items(1e-9, limit=1000) is None
    assert choose({"p": model}, 10, 1e-4) == ("serial", pytest.approx(1e-3))
    name, seconds = choose({"p": model}, 1000, 1e-2)
    assert name == "p"
    assert seconds == pytest.approx(1e-3 + 500 * 1e-2)


# -- workloads ---------------------------------------------------------------------


def test_workloads_are_real_and_picklable():
    assert workloads.onemax([1, 0, 1, 1]) == (3,)
    assert all(len(b) == 100 for b in workloads.bitstrings(3))
    fn = workloads.CpuFitness.for_cost(10, workloads.calibrate(seconds=0.005, rounds=2))
    assert fn.iterations > 0
    assert pickle.loads(pickle.dumps(fn))(12345) == fn(12345)
    regression = workloads.SymbolicRegression(50)
    blob = cloudpickle.dumps(regression)
    assert len(blob) < 200  # ships the point count, not the data
    assert pickle.loads(blob) == regression
    quartic = ("add", ("mul", "x", ("mul", "x", ("add", ("mul", "x", "x"), "x"))),
               ("add", ("mul", "x", "x"), "x"))  # fmt: skip
    assert workloads.evaluate_tree(quartic, 2.0) == 30.0
    assert regression(quartic) == (pytest.approx(0.0),)
    assert workloads.evaluate_tree(("div", 1.0, 0.0), 0.0) == 1.0  # protected division
    assert workloads.tree_size(quartic) == 15
    items = workloads.payloads(3, 1000)
    assert [len(i) for i in items] == [1000] * 3 and len(set(items)) == 3


# -- the harness ---------------------------------------------------------------------

TINY = [
    "--backends", "serial,multiprocessing", "--baselines", "none", "--costs", "1000",
    "--counts", "2,8", "--repeats", "1", "--workloads", "onemax,cpu,symreg",
]  # fmt: skip


@pytest.mark.timeout(120)
def test_tiny_run_writes_every_file(tmp_path, census, capsys):
    out = tmp_path / "results"
    assert main([*TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Smallest item count from which each backend beats serial map" in printed
    assert "multiprocessing" in printed
    for name in ("results.json", "results.csv", "residuals.csv", "models.json", "report.md"):
        assert (out / name).stat().st_size > 0, name
    for name in ("speedup_vs_cost.png", "speedup_heatmap.png", "crossover_curves.png",
                 "model_fit.png", "cold_start.png"):  # fmt: skip
        assert_png_readable(out / name)
    data = json.loads((out / "results.json").read_text())
    assert data["machine"]["cpu_count"] >= 1
    assert data["machine"]["packages"]["cloudpickle"]
    assert data["interrupted"] is False
    targets = {row["target"] for row in data["rows"]}
    assert targets == {"map", "serial", "multiprocessing"}
    cells = {(r["label"], r["n_items"]) for r in data["rows"] if r["target"] == "multiprocessing"}
    assert ("cpu 1 ms", 8) in cells and ("OneMax 100 bits", 2) in cells
    assert {c["target"] for c in data["cold"]} == {"serial", "multiprocessing"}
    assert set(data["models"]) == {"serial", "multiprocessing"}
    report = (out / "report.md").read_text()
    for heading in ("## Crossover points", "## Cold start", "## Fitted overhead model"):
        assert heading in report
    assert len((out / "results.csv").read_text().splitlines()) == 1 + len(data["rows"])
    assert load_models(out / "models.json")["models"]["multiprocessing"].workers >= 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backends", "nope"], "unknown name 'nope'; valid names are: auto, dask, loky"),
        (
            ["--baselines", "pool"],
            "valid names are: mp-pool, joblib-loky, ray-tasks, dask-map, none",
        ),
        (["--costs", "-5"], "-5 must be a positive number"),
        (["--costs=10,-1"], "-1 must be a positive number"),
        (["--costs", "ten"], "'ten' is not a number"),
        (["--counts", "0"], "0 must be a positive whole number"),
        (["--workers", "0"], "0 must be a positive whole number"),
        (["--workloads", "sleep"], "valid names are: onemax, cpu, symreg, payload"),
    ],
)
def test_bad_arguments_get_a_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_ctrl_c_stops_and_keeps_what_was_measured(tmp_path, census):
    out = tmp_path / "interrupted"
    argv = ["--backends", "serial", "--baselines", "none", "--costs", "2000", "--counts",
            "10,100,200", "--repeats", "20", "--workloads", "cpu", "--no-plots"]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "parmap.bench", *argv, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().startswith("parmap bench (")  # the sweep is starting
    time.sleep(3.0)  # long enough to measure a cell or two, far from the end
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Interrupted" in stdout
    data = json.loads((out / "results.json").read_text())
    assert data["interrupted"] is True
    assert data["rows"], "the cells measured before Ctrl-C are kept"
    assert {r["target"] for r in data["rows"]} <= set(data["targets"])  # facts for every row
    assert "Interrupted (Ctrl-C)" in (out / "report.md").read_text()
