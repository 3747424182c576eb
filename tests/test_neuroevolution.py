"""examples/neuroevolution.py: the same run on serial and on a process backend, and
the numpy CartPole against gymnasium's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import parmap

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
sys.path.insert(0, EXAMPLES)

import neuroevolution  # noqa: E402

SMALL = ["--generations", "3", "--population", "16", "--truncation", "4", "--episodes", "1",
         "--table-size", "1024"]  # fmt: skip
SAME_ON_EVERY_BACKEND = ("best", "best_genome", "history", "evaluations", "table_bytes")


def run_example(*args: str) -> tuple[list[str], dict]:
    done = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "neuroevolution.py"), *SMALL, *args],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    generations = [line.rsplit(" ", 2)[0] for line in lines if line.startswith("gen ")]
    return generations, json.loads(lines[-1])


@pytest.mark.timeout(300)
def test_serial_and_loky_runs_are_identical(census, tmp_path):
    curve = tmp_path / "curve.png"
    serial_lines, serial = run_example("--backend", "serial", "--plot", str(curve))
    loky_lines, loky = run_example("--backend", "loky", "--workers", "2")
    assert len(serial_lines) == 3 and serial_lines == loky_lines
    assert {k: serial[k] for k in SAME_ON_EVERY_BACKEND} == {
        k: loky[k] for k in SAME_ON_EVERY_BACKEND
    }
    assert serial["evaluations"] == 48 and serial["best"] > 0
    assert curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # serial: everything in the caller, nothing pickled
    assert (serial["processes"], serial["rollout_workers_built"]) == (1, 1)
    assert (serial["table_copies_loaded"], serial["table_pickled_here"]) == (0, 0)
    # loky: one rollout worker and one table copy per worker process, the table pickled once
    assert loky["processes"] == loky["rollout_workers_built"] == loky["table_copies_loaded"]
    assert 1 <= loky["processes"] <= 2 and loky["table_pickled_here"] == 1
    sent = loky["bytes_per_evaluation"]
    assert sent["genome"] < 200 < sent["theta_if_sent"], sent


def test_a_genome_rebuilds_the_same_parameters_with_or_without_the_cache():
    table = neuroevolution.reference_table(0, 2_000, 64)

    class Handle:  # what a parmap.share() handle offers
        value = table

    cached = neuroevolution.RolloutWorker("numpy", (8, 8), 0.1, Handle())
    genome = (11, 22, 33, 44)
    for k in range(1, len(genome) + 1):
        cached.parameters(genome[:k])  # the ancestors, one seed at a time
    fresh = neuroevolution.RolloutWorker("numpy", (8, 8), 0.1, Handle())
    assert np.array_equal(cached.parameters(genome), fresh.parameters(genome))


def test_numpy_cartpole_matches_gymnasium_step_for_step():
    gymnasium = pytest.importorskip("gymnasium")
    rng = np.random.default_rng(5)
    for seed in range(20):
        ours, theirs = neuroevolution.CartPole(), gymnasium.make("CartPole-v1")
        expected, _ = theirs.reset(seed=seed)
        assert np.array_equal(ours.reset(seed), expected)
        done = False
        while not done:
            action = int(rng.integers(2)) if seed % 2 else int(expected[2] > 0)
            observation, reward, done = ours.step(action)
            expected, their_reward, terminated, truncated, _ = theirs.step(action)
            assert np.array_equal(observation, expected)
            assert (reward, done) == (their_reward, terminated or truncated)


def test_gymnasium_environment_gives_the_same_run():
    pytest.importorskip("gymnasium")
    settings = neuroevolution.Settings(
        population=8, generations=2, episodes=1, table_size=256, reference=2_000
    )
    with parmap.config(backend="serial"):
        numpy_run = neuroevolution.run(settings, verbose=False)
        settings.env = "gymnasium"
        gym_run = neuroevolution.run(settings, verbose=False)
    assert numpy_run["history"] == gym_run["history"]
