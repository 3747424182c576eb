"""Helpers the DEAP examples share: a calibrated busy loop, JSON output, --compare."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import parmap


def loops_per_ms() -> int:
    """How many iterations of :func:`burn` take one millisecond here (measured once)."""
    n = 200_000
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        burn(n)
        best = min(best, time.perf_counter() - start)
    return max(1, round(n / (best * 1e3)))


def burn(loops: int) -> int:
    """Deterministic pure-Python work that holds the GIL: makes a fitness 'heavier'."""
    total = 0
    for i in range(loops):
        total += i & 7
    return total


def arguments(description: str, **defaults: Any) -> argparse.Namespace:
    """The command line every example takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seed", type=int, default=defaults.get("seed", 64))
    parser.add_argument("--pop", type=int, default=defaults["pop"], help="population size")
    parser.add_argument("--ngen", type=int, default=defaults["ngen"], help="generations")
    parser.add_argument(
        "--cost-ms", type=float, default=defaults["cost_ms"], help="extra ms per evaluation"
    )
    parser.add_argument("--json", help="write the logbook and hall of fame to this file")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="run on every installed backend and print wall times vs serial",
    )
    parser.add_argument("--quiet", action="store_true", help="do not print the logbook")
    if "faults" in defaults:
        parser.add_argument(
            "--faults", action="store_true", help="some evaluations hang or raise (a penalty)"
        )
    return parser.parse_args()


def write_json(path: str | None, result: dict[str, Any]) -> None:
    if path:
        with open(path, "w") as file:
            json.dump(result, file, indent=1, sort_keys=True)


def compare(run: Callable[[], dict[str, Any]], warm_up: Callable[[], Any]) -> None:
    """Run the GA on serial and on every installed parallel backend; print a table.

    Start-up (pools, Ray, Dask) is paid by ``warm_up`` and reported separately.
    Each backend must reproduce the first one's logbook and hall of fame exactly
    (serial's, unless ``warm_up`` asks for what serial cannot do: such a backend
    is left out, with the reason).
    """
    rows = []
    reference = None
    for name in ["serial", *[b for b in parmap.available_backends() if b != "serial"]]:
        with parmap.config(backend=name):
            start = time.perf_counter()
            try:
                warm_up()
            except (ValueError, RuntimeError) as refused:  # item_timeout where an item
                print(f"{name}: left out: {refused}")  # cannot be stopped; mpi outside its job
                continue
            startup = time.perf_counter() - start
            start = time.perf_counter()
            result = run()
            seconds = time.perf_counter() - start
        parmap.shutdown(name)
        identical = reference is None or (
            result["logbook"] == reference["logbook"] and result["hof"] == reference["hof"]
        )
        reference = reference or result
        rows.append((name, startup, seconds, identical))
    first = rows[0][2]
    print(f"\n{'backend':<16}{'start-up s':>11}{'GA wall s':>11}{'x ' + rows[0][0]:>10}  "
          f"same as {rows[0][0]}")  # fmt: skip
    for name, startup, seconds, identical in rows:
        print(
            f"{name:<16}{startup:>11.2f}{seconds:>11.2f}{seconds / first:>10.2f}  "
            f"{'yes' if identical else 'NO'}"
        )
    if not all(row[3] for row in rows):
        raise SystemExit(f"a backend did not reproduce the {rows[0][0]} run")
