"""The Dask backend against serial and against ``client.map``, one run, warm cluster.

Targets (Dask issue), on parmap's embedded LocalCluster (one process per CPU):

- trivial fn, 100,000 items: >= 1,000x faster than ``client.gather(client.map(...))``
  on the same cluster (client.map is timed on a subset and scaled: it costs
  seconds per thousand items);
- ~10 ms x 200 items: <= 0.55 x serial;  ~100 µs x 5,000 items: <= 0.65 x serial;
- per-call overhead, 300 trivial items, median of 30 calls: <= 20 ms
  (client.map's figure for the same 300 items beside it).

Beside each CPU-bound ratio the script prints the machine's own ceiling, timed
in the same turns: the same items in equal shares on plain processes, one per
CPU. On a shared VM that ceiling is well above 0.5, and no backend can beat it.

    python benchmarks/bench_dask.py [--map-items 10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _common  # noqa: E402
import cloudpickle  # noqa: E402
from _common import (  # noqa: E402
    Ceiling,
    Checks,
    fmt_seconds,
    header,
    interleaved,
    median,
    median_time,
    paired_ratio,
    spin_loops,
    spinning,
    time_call,
    timings,
)

import parmap  # noqa: E402

cloudpickle.register_pickle_by_value(_common)  # spin() travels to the workers by value


def trivial(x: int) -> int:
    return x + 1


def dask_map(client, fn, items) -> float:
    return time_call(lambda: client.gather(client.map(fn, items, pure=False)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map-items", type=int, default=10_000, help="client.map subset size")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    header("parmap dask backend vs serial and client.map (embedded LocalCluster, warm)")
    checks = Checks()
    ceiling = Ceiling()  # forked before the cluster starts

    startup = time_call(lambda: parmap.parmap(trivial, range(10), backend="dask"))
    backend = parmap._registry.live_backends()[-1]
    client = backend.client
    print(f"  cluster: {backend.describe()}, start-up {startup:.2f} s")

    items = list(range(100_000))
    ours = median_time(lambda: parmap.parmap(trivial, items, backend="dask"), args.repeats)
    subset = items[: args.map_items]
    dask_map(client, trivial, subset[:100])  # warm
    mapped = dask_map(client, trivial, subset) * len(items) / len(subset)
    print(f"  100,000 trivial items: parmap {fmt_seconds(ours)}, client.map {fmt_seconds(mapped)}"
          f" (scaled from {len(subset):,} items)")  # fmt: skip
    checks.at_least("client.map / parmap, 100,000 trivial items", mapped / ours, 1000)

    for cost, count, target in ((10e-3, 200, 0.55), (100e-6, 5_000, 0.65)):
        fn = spinning(spin_loops(cost))
        work = list(range(count))
        times = interleaved(  # in turns, so that a change of load hits all alike
            {
                "serial": lambda fn=fn, work=work: list(map(fn, work)),
                "dask": lambda fn=fn, work=work: parmap.parmap(fn, work, backend="dask"),
                "plain": ceiling.split(fn, work),
            },
            repeats=args.repeats,
            warmup=2,  # the cluster, and the per-item cost the batching policy learns
        )
        serial, parallel = median(times["serial"]), median(times["dask"])
        label = f"{fmt_seconds(cost)} x {count:,}"
        best = paired_ratio(times["plain"], times["serial"])
        print(f"  {label}: serial {fmt_seconds(serial)}, dask {fmt_seconds(parallel)} (medians); "
              f"equal shares on plain processes (the ceiling now): {best:.3f}")  # fmt: skip
        ratio = paired_ratio(times["dask"], times["serial"])
        checks.at_most(f"dask / serial, {label}", ratio, target)

    small = list(range(300))
    per_call = median(timings(lambda: parmap.parmap(trivial, small, backend="dask"), 30, 5))
    map_call = median([dask_map(client, trivial, small) for _ in range(3)])
    print(f"  300 trivial items per call: parmap {fmt_seconds(per_call)} (median of 30), "
          f"client.map {fmt_seconds(map_call)} (median of 3)")  # fmt: skip
    checks.at_most("dask per-call overhead, 300 trivial items (ms)", per_call * 1e3, 20)
    parmap.shutdown("dask")
    ceiling.close()
    return checks.summary()


if __name__ == "__main__":
    sys.exit(main())
