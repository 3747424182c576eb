"""``parmap bench --fn``: the user's function, its verdict against auto's pick, the figures."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

import parmap
from parmap.bench import main
from parmap.bench._coldrun import ColdRun
from parmap.bench._loader import SpecError, load_function, load_items
from parmap.bench._style import BACKEND_COLORS, PEERS, style
from parmap.bench._userfn import AutoPick, FnConfig, FnResult, WarmCell, ladder
from parmap.bench._verdict import breakeven_calls, verdict

pytest.importorskip("numpy")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parent.parent
ONEMAX = str(ROOT / "examples" / "onemax.py")
AUTO_FACTOR = 1.5  # auto's warm call may take at most this many times its pick's


def assert_png_readable(path: Path) -> None:
    """A real picture: it decodes, is not tiny, and is not one flat colour."""
    import matplotlib.image
    import numpy

    pixels = matplotlib.image.imread(path)
    height, width = pixels.shape[:2]
    assert height >= 200 and width >= 300, f"{path.name}: only {width}x{height} pixels"
    colours = numpy.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)
    assert len(colours) > 16, f"{path.name}: {len(colours)} distinct colour(s), nothing drawn"


# -- the colour table ---------------------------------------------------------------


def test_one_colour_per_backend_and_peers_look_apart():
    colours = list(BACKEND_COLORS.values())
    assert len(set(colours)) == len(colours)
    assert {"serial", "auto", "multiprocessing", "loky", "ray", "dask", "threads", "mpi"} <= set(
        BACKEND_COLORS
    )
    for name in BACKEND_COLORS:
        look = style(name)
        assert (look.color, look.ls, look.filled, look.label) == (
            BACKEND_COLORS[name],
            "-",
            True,
            name,
        )
    markers = set()
    for peer in PEERS:
        look = style(peer)
        assert look.ls == "--" and not look.filled and look.label == f"{peer} (peer)"
        assert look.color not in colours
        markers.add(look.marker)
    assert len(markers) == len(PEERS)  # told apart by their markers
    assert style("someone-elses") == style("someone-elses")  # the same in every figure
    assert style("someone-elses").color not in colours


# -- the arithmetic ------------------------------------------------------------------


def test_breakeven_counts_measured_calls_then_extrapolates():
    # 1 s start-up, then 0.1 s a call against serial's 0.25 s: 1 + 0.1 k < 0.25 k from k = 7
    calls, serial = [1.1, 0.1, 0.1], [0.25] * 3
    assert breakeven_calls(calls, serial, 0.1, 0.25) == 7
    assert breakeven_calls([0.2, 0.1, 0.1], serial, 0.1, 0.25) == 1  # ahead from the start
    assert breakeven_calls([0.3, 0.1, 0.1], serial, 0.1, 0.25) == 2  # ahead from call 2 on
    assert breakeven_calls(calls, serial, 0.25, 0.25) is None  # warm no faster: never
    assert breakeven_calls([0.2], [0.25], 0.3, 0.25) is None  # ahead now, behind in the long run


def test_a_runs_ratio_and_its_error_come_from_the_pairs_beside_it():
    run = ColdRun("loky", 4, [2.0, 1.0, 1.2, 0.8], [1.0, 1.0, 1.0, 1.0])
    assert run.ratio == pytest.approx(5.0 / 4.0)
    assert run.startup == pytest.approx(1.0)  # first call - median warm call
    # warm pairs scatter by +-0.2 around a ratio of 1: sqrt(0.08 * 3/2) over 4 s of serial
    assert run.ratio_error == pytest.approx((0.08 * 1.5) ** 0.5 / 4.0)
    assert ColdRun("loky", 2, [2.0, 1.0], [1.0, 1.0]).ratio_error is None


def test_runs_whose_intervals_overlap_are_named_together():
    result = _result(WARM, COLD, auto="loky")
    noisy = result.cold[1]  # ray: 0.6 s a warm call, give or take 0.5 s
    noisy.times[:] = [0.7] + [0.6 + (0.5 if k % 2 else -0.5) for k in range(1, noisy.calls)]
    found = verdict(result)
    assert found.best == "loky" and "ray" in found.tied
    assert found.figures["ray"].ratio > 1.1 * found.figures["loky"].ratio  # not by the 10%


def test_ladder_goes_down_by_about_three():
    assert ladder(300) == [300, 100, 30, 10, 3]
    assert ladder(8) == [8, 3]
    assert ladder(1) == [1]


def _result(warm, cold, auto="serial", targets=("loky", "ray", "auto"), calls=40):
    config = FnConfig("m:f", "m:items", 300, calls, list(targets), 2)
    result = FnResult(config, 300, [300, 100, 30], 100, 0.9)
    result.auto = AutoPick(auto, {}, "")
    for target, n, serial, seconds in warm:
        result.warm.append(WarmCell(target, n, [serial] * 3, [seconds] * 3))
    for target, first, warm_call in cold:  # serial map takes 0.9 s a call beside each
        times = [first] + [warm_call] * (calls - 1)
        result.cold.append(ColdRun(target, calls, times, [0.9] * calls))
    return result


WARM = [
    ("loky", 300, 0.9, 0.5), ("loky", 100, 0.3, 0.2), ("loky", 30, 0.09, 0.12),
    ("ray", 300, 0.9, 0.55), ("ray", 100, 0.3, 0.25), ("ray", 30, 0.09, 0.2),
    ("auto", 300, 0.9, 0.9), ("auto", 100, 0.3, 0.3), ("auto", 30, 0.09, 0.09),
]  # fmt: skip


COLD = [("loky", 0.7, 0.5), ("ray", 4.6, 0.55), ("auto", 0.9, 0.9)]


def test_verdict_names_the_best_run_and_the_start_up_that_spoils_another():
    found = verdict(_result(WARM, COLD, auto="loky"))
    assert found.best == "loky" and found.tied == []
    assert found.headline.startswith("for 300 items x 40 calls: loky, 0.56x serial;")
    assert "ray 0.61x warm but +4.05 s start-up" in found.headline
    assert "serial wins below ~" in found.headline  # loky loses at 30 items, wins at 100
    assert found.figures["ray"].breakeven == 12  # 4.6 + 0.55 (k - 1) < 0.9 k
    assert found.lines[0].startswith("auto picks loky for the first call")
    assert "1.78x the best" in found.lines[0]  # auto's own run went serial here
    assert not any("not the measured best" in line for line in found.lines)


def test_verdict_says_when_auto_picks_otherwise_and_when_serial_wins():
    found = verdict(_result(WARM, COLD, auto="serial"))
    assert any("auto's pick is not the measured best (loky)" in line for line in found.lines)
    slow_start = [("loky", 2.5, 0.5), ("ray", 4.6, 0.55), ("auto", 0.9, 0.9)]
    short = verdict(_result(WARM, slow_start, auto="serial", calls=2))  # start-up not repaid
    assert short.winners() == ["serial"]
    assert "for 300 items x 2 calls: serial (plain map): no backend pays off" in short.headline
    assert "loky 0.56x warm but +2 s start-up (pays off from 6 calls)" in short.headline
    assert not any("not the measured best" in line for line in short.lines)


def test_verdict_names_runs_within_the_noise_together():
    cold = [("loky", 0.7, 0.5), ("ray", 0.9, 0.52), ("auto", 0.9, 0.9)]
    found = verdict(_result(WARM, cold, auto="ray"))
    assert found.winners() == ["loky", "ray"]
    assert "loky ≈ ray" in found.headline
    assert not any("not the measured best" in line for line in found.lines)


# -- finding the function and the items ----------------------------------------------


def test_specs_find_functions_and_items(tmp_path, monkeypatch):
    module = tmp_path / "fitness_mod.py"
    module.write_text(
        "class Box:\n    def evaluate(self, x):\n        return x + 1\n"
        "box = Box()\nSAMPLE = [1, 2, 3]\n"
        "def population(n):\n    return list(range(n))\n"
        "def few(n):\n    return [0]\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_function("fitness_mod:box.evaluate").obj(1) == 2
    assert load_items("fitness_mod:population", 4) == ([0, 1, 2, 3], [str(tmp_path)])
    assert load_items("fitness_mod:SAMPLE", None)[0] == [1, 2, 3]
    assert load_items("fitness_mod:SAMPLE", 2)[0] == [1, 2]
    (tmp_path / "items.json").write_text("[[1, 0], [0, 1]]")
    assert load_items("items.json", None) == ([[1, 0], [0, 1]], [])
    (tmp_path / "items.pkl").write_bytes(pickle.dumps([{"a": 1}] * 5))
    assert load_items(str(tmp_path / "items.pkl"), 3)[0] == [{"a": 1}] * 3
    for spec, n, message in [
        ("fitness_mod", None, "expected package.module:name or path/to/file.py:name"),
        ("no_such_mod:f", None, "no module named 'no_such_mod'"),
        ("fitness_mod:nope", None, "has no attribute 'nope'"),
        ("fitness_mod:few", 3, "gave 1 items, fewer than --items 3; give --items 1"),
        ("missing.json", None, "no such file"),
        (str(module) + ":SAMPLE", 9, "fewer than --items 9"),
    ]:
        with pytest.raises(SpecError, match=message):
            load_items(spec, n)
    with pytest.raises(SpecError, match="not callable"):
        load_function("fitness_mod:SAMPLE")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--fn", "m:f"], "--fn needs your sample items: --items-from module:factory"),
        (["--calls", "3"], "--calls: only with --fn"),
        (["--fn", "m:f", "--items-from", "m:i", "--costs", "10"], "--costs: not with --fn"),
        (["--fn", "nowhere_xyz:f", "--items-from", "m:i"], "no module named 'nowhere_xyz'"),
        (["--fn", ONEMAX + ":fitness", "--items-from", ONEMAX + ":population", "--items", "0"],
         "0 must be a positive whole number"),
    ],
)  # fmt: skip
def test_fn_mode_arguments_get_a_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# -- a real run on the DEAP example --------------------------------------------------


def _onemax_items(n):
    fitness = load_function(ONEMAX + ":fitness").obj
    items, _ = load_items(ONEMAX + ":population", n)
    return fitness, items


def _run_onemax(tmp_path, capsys, backends, n=8, calls=3, cold_runs=2):
    fitness, items = _onemax_items(n)
    pick = parmap.explain(fitness, items, file=None).chosen  # before the bench: nothing runs
    out = tmp_path / "fn"
    argv = ["--fn", ONEMAX + ":fitness", "--items-from", ONEMAX + ":population",
            "--items", str(n), "--calls", str(calls), "--backends", backends, "--repeats", "3",
            "--cold-runs", str(cold_runs), "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    return pick, out, capsys.readouterr().out


@pytest.mark.timeout(300)
def test_fn_on_the_onemax_example_agrees_with_auto(tmp_path, capsys, census):
    # 8 individuals x 3 generations: a serial run takes ~0.1 s, less than any pool's start-up
    pick, out, printed = _run_onemax(tmp_path, capsys, "serial,loky,auto")
    data = json.loads((out / "results.json").read_text())
    assert data["auto"]["chosen"] == pick
    assert f"auto picks {pick} for the first call" in printed
    found = data["verdict"]
    winners = {"serial" if n == "map" else n for n in [found["best"], *found["tied"]]}
    assert pick in winners, f"auto picked {pick}, the runs say {winners}: {found['headline']}"
    assert found["headline"].startswith("for 8 items x 3 calls: ")
    assert "Verdict for 8 items x 3 calls" in printed
    warm = {(c["target"], c["n_items"]): c for c in data["warm"]}
    auto, chosen = warm[("auto", 8)], warm[(pick, 8)]  # both timed in pairs with serial map
    assert chosen["speedup"] <= AUTO_FACTOR * auto["speedup"], (auto, chosen)
    assert {r["target"] for r in data["cold"]} == {"serial", "loky", "auto"}
    assert all(len(r["times"]) == len(r["serial_times"]) == 3 for r in data["cold"])
    assert all(r["results_match"] for r in data["cold"])
    assert not data["failures"], data["failures"]
    report = (out / "report.md").read_text()
    for part in ("## Verdict", "## Per target", "## Warm speed-up by item count",
                 "## What auto predicted", "![cold_start](cold_start.png)"):  # fmt: skip
        assert part in report
    for name in ("fn_speedup.png", "cold_start.png"):
        assert_png_readable(out / name)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fn_runs_the_example_on_every_installed_backend(tmp_path, capsys, census):
    # Ray and Dask workers are not forked from here: the example and its _ga helper must
    # still reach them (by value, and on $PYTHONPATH), cold and warm
    backends = [*parmap.available_backends(), "auto"]
    pick, out, printed = _run_onemax(tmp_path, capsys, ",".join(backends), n=12, calls=2,
                                     cold_runs=1)  # fmt: skip
    data = json.loads((out / "results.json").read_text())
    assert not data["failures"], data["failures"]
    assert {r["target"] for r in data["cold"]} == set(backends)
    assert all(r["results_match"] for r in data["cold"])
    assert {c["target"] for c in data["warm"]} == set(backends)
    assert not data["notes"], data["notes"]
    assert f"auto picks {pick} for the first call" in printed


def _sweep_result():
    """A sweep's result with every kind of cell, from made-up timings (no measuring)."""
    from parmap.bench._sweep import ColdStart, Row, SweepConfig, SweepResult

    targets = ["serial", "loky", "ray", "mp-pool"]
    config = SweepConfig(targets, 2, [10.0, 1000.0], [10, 100], payload_counts=[10, 100])
    result = SweepResult(config, 50.0)
    overhead = {"map": 0.0, "serial": 1e-5, "loky": 2e-3, "ray": 5e-3, "mp-pool": 1e-3}
    cells = [("onemax", 100.0, 1e-6, 100), ("cpu", 10.0, 1e-5, 8), ("cpu", 1000.0, 1e-3, 8),
             ("payload", 100.0, 5e-5, 100), ("payload", 1e4, 5e-5, 10_000)]  # fmt: skip
    for name in ["map", *targets]:
        kind = {"map": "reference", "mp-pool": "baseline"}.get(name, "parmap")
        result.targets[name] = {"kind": kind, "workers": 2, "batching": "single",
                                "batch_overhead": 0.0, "item_cap": None}  # fmt: skip
        for workload, param, cost, size in cells:
            for n in (10, 100):
                serial = n * cost
                seconds = serial if name == "map" else overhead[name] + serial / 1.8
                result.rows.append(Row(
                    name, kind, workload, param, f"{workload} {param:g}", n, n, False, size,
                    cost, serial, seconds, seconds, serial / seconds, 2, [seconds], [serial],
                ))  # fmt: skip
        if name != "map":
            result.cold.append(ColdStart(name, kind, 100, 0.5 + overhead[name] * 100, 1e-3))
    return result


def test_every_figure_of_the_sweep_report_opens(tmp_path):
    from parmap.bench._report import machine_info, write_outputs
    from parmap.bench._summary import summarize

    result = _sweep_result()
    written = write_outputs(result, summarize(result), tmp_path, machine_info(), "parmap bench")
    assert not result.failures, result.failures  # a figure that raised lands here
    images = sorted(p for p in written if p.suffix == ".png")
    assert {p.name for p in images} == {
        "speedup_vs_cost.png", "speedup_heatmap.png", "crossover_curves.png",
        "cold_start.png", "payload.png", "model_fit.png",
    }  # fmt: skip
    for path in images:
        assert_png_readable(path)
        assert f"![{path.stem}]({path.name})" in (tmp_path / "report.md").read_text()


def test_cold_run_reports_a_failing_function(tmp_path, census):
    from parmap.bench._coldrun import ColdRunRequest, run_cold

    script = tmp_path / "broken.py"
    script.write_text("def fitness(x):\n    raise ZeroDivisionError('boom')\n")
    items = tmp_path / "items.pkl"
    items.write_bytes(pickle.dumps(([1, 2], [None, None])))
    request = ColdRunRequest(f"{script}:fitness", "serial", 2, 1)
    run = run_cold(request, items, [str(tmp_path)], timeout=120)
    assert not run.ok
    assert "exited with status 1" in run.error and "ZeroDivisionError: boom" in run.error
