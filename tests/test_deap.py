"""DEAP on every backend: the examples reproduce serial exactly; runtime classes reach workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BACKENDS

import parmap

pytest.importorskip("deap")
from deap import base, creator, tools

ROOT = Path(__file__).resolve().parent.parent
PARALLEL = [b for b in BACKENDS if b != "serial"]
SMALL = {
    "onemax.py": ["--pop", "60", "--ngen", "3", "--cost-ms", "0"],
    "symbreg.py": ["--pop", "60", "--ngen", "3"],
    "islands.py": ["--pop", "48", "--ngen", "3", "--cost-ms", "0"],
}
pytestmark = pytest.mark.timeout(240)


def run_script(path: Path, backend: str, args: list[str], out: Path) -> dict:
    env = {**os.environ, "PARMAP_BACKEND": backend, "PARMAP_WORKERS": "2"}
    proc = subprocess.run(
        [sys.executable, str(path), *args],
        env=env, capture_output=True, text=True, timeout=200, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, f"{path.name} on {backend} failed:\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def serial_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    results = {}
    for name, args in SMALL.items():
        path = out / name
        cli = [*args, "--quiet", "--json", str(path)]
        results[name] = run_script(ROOT / "examples" / name, "serial", cli, path)
    return results


@pytest.mark.parametrize("example", sorted(SMALL))
@pytest.mark.parametrize("backend", PARALLEL)
def test_example_reproduces_serial_exactly(backend, example, serial_results, tmp_path, census):
    if backend == "threads" and example == "islands.py":
        pytest.skip("each island seeds and draws the global random module: threads share it")
    out = tmp_path / "result.json"
    got = run_script(
        ROOT / "examples" / example, backend, [*SMALL[example], "--quiet", "--json", str(out)], out
    )
    expected = serial_results[example]
    assert got["logbook"] == expected["logbook"]
    assert got["hof"] == expected["hof"]


@pytest.mark.parametrize(
    "backend", [b for b in ("loky", "ray", "multiprocessing") if b in BACKENDS]
)
def test_classes_created_inside_main(backend, tmp_path, census):
    script = ROOT / "tests" / "deap_scripts" / "classes_in_main.py"
    expected = run_script(script, "serial", ["7", str(tmp_path / "s.json")], tmp_path / "s.json")
    got = run_script(script, backend, ["7", str(tmp_path / "p.json")], tmp_path / "p.json")
    assert got == expected


creator.create("FitnessT", base.Fitness, weights=(1.0,))
creator.create("IndividualT", list, fitness=creator.FitnessT)


def test_in_process_toolbox_map_keeps_creator_identity(backend):
    cls = creator.IndividualT
    toolbox = base.Toolbox()
    toolbox.register("evaluate", lambda ind: (float(sum(ind)),))
    toolbox.decorate("evaluate", tools.DeltaPenalty(lambda ind: ind[0] == 0, -5.0))
    toolbox.register("map", parmap.parmap, backend=backend)
    population = [cls([i % 2, 1, 1]) for i in range(20)]
    fitnesses = list(toolbox.map(toolbox.evaluate, population))
    assert fitnesses == [(2.0,) if i % 2 == 0 else (-5.0,) for i in range(20)]
    back = toolbox.map(toolbox.clone, population)
    assert all(type(ind) is cls for ind in back) and creator.IndividualT is cls


GUARDED = ["--pop", "60", "--ngen", "3", "--quiet", "--faults"]
STOPPING = [b for b in ("loky", "multiprocessing", "dask", "ray") if b in BACKENDS]


@pytest.fixture(scope="module")
def guarded_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("guarded") / "loky.json"
    path = ROOT / "examples" / "symbreg.py"
    return run_script(path, STOPPING[0], [*GUARDED, "--json", str(out)], out)


@pytest.mark.parametrize("backend", STOPPING[1:])
def test_hanging_and_raising_evaluations_get_the_same_hall_of_fame(
    backend, guarded_reference, tmp_path, census
):
    out = tmp_path / "result.json"
    path = ROOT / "examples" / "symbreg.py"
    got = run_script(path, backend, [*GUARDED, "--json", str(out)], out)
    assert got["hof"] == guarded_reference["hof"]
    assert got["logbook"] == guarded_reference["logbook"]
    assert guarded_reference["logbook"][0]["min"] < 1e9  # not every tree failed


def test_the_faults_example_says_why_serial_cannot_run_it(tmp_path):
    env = {**os.environ, "PARMAP_BACKEND": "serial"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "symbreg.py"), *GUARDED],
        env=env, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode != 0 and "cannot be enforced on the 'serial' backend" in proc.stderr
