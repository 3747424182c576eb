"""The batching policy on known numbers."""

from __future__ import annotations

import math

from parmap._batching import PROBE_SIZE, Batcher
from parmap._costs import CostMemory, costs


def plan(total, cost, workers=2, overhead=2e-4):
    costs.clear()
    batcher = Batcher(workers, overhead, total, ("k",))
    batcher.observe(10, 10 * cost)
    sizes = []
    while batcher.dispatched < total:
        size = min(batcher.next_size(), total - batcher.dispatched)
        sizes.append(size)
        batcher.took(size)
    return sizes


def test_probe_while_cost_unknown():
    costs.clear()
    batcher = Batcher(2, 1e-3, 1000, ("unknown-fn",))
    assert batcher.probing and batcher.next_size() == PROBE_SIZE


def test_cheap_items_use_every_worker_and_few_batches():
    sizes = plan(300, 1e-6)
    assert sizes == [150, 150]


def test_batches_hide_the_overhead():
    sizes = plan(100_000, 1e-6, overhead=2e-4)  # tail floor: 8 x 200 us / 1 us = 1600 items
    assert min(sizes) >= 1600
    assert len(sizes) * 2e-4 <= 0.05 * 100_000 * 1e-6  # round trips: <= 5% of the work


def test_guided_tail_gets_finer_in_rounds_of_equal_batches():
    sizes = plan(200, 10e-3)  # 10 ms items, 2 workers
    assert sizes[0] == 50 and sizes[-1] <= 2
    assert sizes == sorted(sizes, reverse=True)
    rounds = [sizes[i : i + 2] for i in range(0, len(sizes), 2)]
    assert all(a == b for a, b in rounds)  # however batches are placed, each round balances


def test_a_small_call_on_a_slow_backend_is_split_evenly():
    # A DEAP generation: ~180 items of ~1.4 ms on a backend with a 12 ms round trip
    # (the tail floor is 69 items): two equal batches, not 69, 69, 43.
    assert plan(181, 1.4e-3, overhead=12e-3) == [91, 90]
    assert plan(300, 1.4e-3, overhead=12e-3) == [75, 75, 75, 75]
    assert plan(5000, 1e-4, overhead=12e-3) == [1250] * 4


def test_the_tail_stops_where_a_batch_lasts_eight_round_trips():
    # The same generation on a 1.5 ms round trip: rounds halve down to ~12 ms batches.
    sizes = plan(181, 1.3e-3, overhead=1.5e-3)
    assert sizes == [46, 46, 23, 23, 11, 11, 11, 10]
    assert min(sizes) * 1.3e-3 >= 8 * 1.5e-3 * 0.8


def test_batches_never_exceed_a_second():
    sizes = plan(10_000, 0.01)
    assert max(sizes) * 0.01 <= 1.0


def test_costs_are_remembered_across_calls():
    costs.clear()
    first = Batcher(2, 1e-3, 100, ("digest-a", "name:f"))
    first.observe(4, 4e-3)
    second = Batcher(2, 1e-3, 100, ("digest-b", "name:f"))
    assert not second.probing and math.isclose(second.cost, 1e-3)


def test_cost_memory_smooths_and_forgets():
    memory = CostMemory(capacity=2)
    memory.observe(("a",), 10, 1.0)
    memory.observe(("a",), 10, 2.0)
    assert 0.1 < memory.get("a") < 0.2
    memory.observe(("b",), 1, 1.0)
    memory.observe(("c",), 1, 1.0)
    assert memory.get("a") is None
