"""The overhead model of one backend: how long a warm ``parmap`` call takes.

For ``n`` items that cost ``c`` seconds each when run serially, sent as
``bytes`` bytes each, in ``B(n, c)`` batches over ``W`` workers::

    time(n, c) ≈ fixed                      once per call (set-up, first round trip)
               + per_item  · n              dispatch and (de)serialization per item
               + per_byte  · n · bytes      copying the items' payload
               + per_batch · B(n, c)        one round trip per batch
               + work_factor · c · ⌈n / W⌉  the work itself, spread over the workers

``B`` follows the backend's batching policy (``batching``): parmap's own
(:class:`parmap._batching.Batcher`, simulated), ``multiprocessing.Pool.map``'s
default chunks, joblib's auto batching (approximated), one task per item, or
a single batch. The constants are fitted by ``parmap.bench.analysis.fit_model``.

This module depends on the standard library and parmap's batching policy only
(no numpy), so a model read back with :meth:`OverheadModel.from_dict` can be
evaluated anywhere, e.g. to choose a backend per call::

    models = load_models(path)["models"]
    name, seconds = choose(models, n_items=300, per_item_cost=2e-6)  # -> ("serial", ...)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BATCHING_POLICIES",
    "SCHEMA_VERSION",
    "OverheadModel",
    "batch_count",
    "choose",
    "load_models",
    "save_models",
]

SCHEMA_VERSION = 1
BATCHING_POLICIES = ("parmap", "pool", "joblib", "per-item", "single")


@dataclass(frozen=True)
class OverheadModel:
    """Fitted constants of one backend (seconds), and how it batches.

    Attributes:
        backend: the backend's (or baseline's) name.
        workers: the workers it ran with.
        batching: one of :data:`BATCHING_POLICIES`.
        batch_overhead: the backend's declared round-trip time, an input of
            parmap's batching policy (``Backend.batch_overhead``).
        fixed: seconds per call.
        per_item: seconds per item.
        per_byte: seconds per byte of an item's pickle.
        per_batch: seconds per batch.
        work_factor: multiplies the ideal parallel compute time (1.0 = perfect).
        quality: how well the fit matched, e.g. ``points``, ``rms_rel``, ``max_rel``.
    """

    backend: str
    workers: int
    batching: str = "parmap"
    batch_overhead: float = 0.0
    fixed: float = 0.0
    per_item: float = 0.0
    per_byte: float = 0.0
    per_batch: float = 0.0
    work_factor: float = 1.0
    quality: dict[str, float] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.batching not in BATCHING_POLICIES:
            raise ValueError(_unknown_policy(self.batching))
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")

    def batches(self, n_items: int, per_item_cost: float) -> int:
        """How many batches a call over ``n_items`` items of this cost is split into."""
        return batch_count(self.batching, n_items, per_item_cost, self.workers, self.batch_overhead)

    def features(
        self, n_items: int, per_item_cost: float, item_bytes: float = 0.0
    ) -> tuple[float, float, float, float, float]:
        """The model's regressors: ``(1, n, n·bytes, batches, c·⌈n/W⌉)``."""
        if n_items <= 0:
            return (0.0, 0.0, 0.0, 0.0, 0.0)
        rounds = math.ceil(n_items / self.workers)
        return (
            1.0,
            float(n_items),
            float(n_items) * item_bytes,
            float(self.batches(n_items, per_item_cost)),
            per_item_cost * rounds,
        )

    def predict(self, n_items: int, per_item_cost: float, item_bytes: float = 0.0) -> float:
        """Predicted seconds of a warm call.

        Args:
            n_items: the number of items.
            per_item_cost: seconds one item takes when run serially.
            item_bytes: the pickled size of one item (0 when unknown or small).

        Returns:
            Seconds (0.0 for no items).
        """
        x = self.features(n_items, per_item_cost, item_bytes)
        coefficients = self.coefficients()
        return sum(a * b for a, b in zip(x, coefficients, strict=True))

    def coefficients(self) -> tuple[float, float, float, float, float]:
        """The constants in the order of :meth:`features`."""
        return (self.fixed, self.per_item, self.per_byte, self.per_batch, self.work_factor)

    def breakeven_items(
        self, per_item_cost: float, item_bytes: float = 0.0, limit: int = 10**7
    ) -> int | None:
        """The smallest item count at which this backend is predicted to beat serial ``map``.

        Args:
            per_item_cost: seconds per item, serially.
            item_bytes: the pickled size of one item.
            limit: the largest count considered.

        Returns:
            The count, or None when it does not beat serial up to ``limit`` items.
        """
        n = 1
        while n <= limit:  # coarse doubling, then bisect the last step
            if self.predict(n, per_item_cost, item_bytes) < n * per_item_cost:
                low = n // 2
                while n - low > 1:
                    mid = (low + n) // 2
                    if self.predict(mid, per_item_cost, item_bytes) < mid * per_item_cost:
                        n = mid
                    else:
                        low = mid
                return n
            n *= 2
        return None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OverheadModel:
        """Rebuild a model from :meth:`to_dict`'s output (unknown keys are ignored)."""
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["quality"] = dict(values.get("quality") or {})
        return cls(**values)


def batch_count(
    batching: str, n_items: int, per_item_cost: float, workers: int, batch_overhead: float = 0.0
) -> int:
    """How many batches ``n_items`` items become under a batching policy.

    Args:
        batching: one of :data:`BATCHING_POLICIES`.
        n_items: the number of items.
        per_item_cost: seconds per item (parmap and joblib size batches from it).
        workers: the number of workers.
        batch_overhead: the backend's round-trip time (parmap's policy uses it).

    Returns:
        The number of batches.

    Raises:
        ValueError: for an unknown policy.
    """
    if n_items <= 0:
        return 0
    if batching == "parmap":
        return _parmap_batches(n_items, per_item_cost, workers, batch_overhead)
    if batching == "pool":  # multiprocessing.Pool.map's default chunksize
        chunksize, extra = divmod(n_items, workers * 4)
        return math.ceil(n_items / (chunksize + (1 if extra else 0)))
    if batching == "joblib":
        return _joblib_batches(n_items, per_item_cost, workers)
    if batching == "per-item":
        return n_items
    if batching == "single":
        return 1
    raise ValueError(_unknown_policy(batching))


def _unknown_policy(name: str) -> str:
    return f"unknown batching policy {name!r}; use one of {', '.join(BATCHING_POLICIES)}"


def _parmap_batches(n_items: int, cost: float, workers: int, overhead: float) -> int:
    """Simulate parmap's Batcher on a warm call (the per-item cost already known)."""
    from parmap._batching import Batcher

    batcher = Batcher(workers, overhead, n_items, (None,))
    batcher.cost = max(cost, 1e-9)
    count = 0
    while batcher.dispatched < n_items:
        batcher.took(min(batcher.next_size(), n_items - batcher.dispatched))
        count += 1
    return count


def _joblib_batches(n_items: int, cost: float, workers: int, dispatch: float = 1e-4) -> int:
    """Approximate joblib's auto batching (``joblib.parallel``, ``AutoBatchingMixin``).

    The batch size starts at 1 and at most doubles until a batch lasts 0.2 s;
    items are taken ``size * workers`` at a time and the last slice is split
    ten times finer. ``dispatch`` stands in for the round trip joblib times.
    """
    size, count, done = 1, 0, 0
    while done < n_items:
        group = min(size * workers, n_items - done)
        last = group < size * workers
        piece = max(1, group // (10 * workers)) if last else max(1, group // workers)
        count += math.ceil(group / piece)
        done += group
        duration = size * cost + dispatch
        if duration < 0.2:
            size = max(1, min(2 * size, 2 * int(size * 0.2 / duration)))
        elif duration > 2.0 and size >= 2:
            size = max(1, 2 * int(size * 0.2 / duration))
    return count


def choose(
    models: Mapping[str, OverheadModel],
    n_items: int,
    per_item_cost: float,
    item_bytes: float = 0.0,
) -> tuple[str, float]:
    """The fastest way to run a call by these models, or ``"serial"`` for plain ``map``.

    Args:
        models: backend name -> model.
        n_items: the number of items.
        per_item_cost: seconds per item, serially.
        item_bytes: the pickled size of one item.

    Returns:
        ``(name, predicted seconds)``; ``"serial"`` when no model beats ``n·c``.
    """
    best = ("serial", n_items * per_item_cost)
    for name, model in models.items():
        seconds = model.predict(n_items, per_item_cost, item_bytes)
        if seconds < best[1]:
            best = (name, seconds)
    return best


def save_models(
    path: str | Path, models: Mapping[str, OverheadModel], machine: Mapping[str, Any]
) -> None:
    """Write models (and the machine they were measured on) as JSON.

    Args:
        path: the file to write.
        models: backend name -> model.
        machine: facts about the machine (CPU count, versions, time).
    """
    document = {
        "schema": SCHEMA_VERSION,
        "machine": dict(machine),
        "models": {name: model.to_dict() for name, model in models.items()},
    }
    Path(path).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def load_models(path: str | Path) -> dict[str, Any]:
    """Read what :func:`save_models` wrote.

    Returns:
        ``{"schema": int, "machine": dict, "models": {name: OverheadModel}}``.

    Raises:
        ValueError: the file has another schema version.
    """
    document = json.loads(Path(path).read_text())
    if document.get("schema") != SCHEMA_VERSION:
        raise ValueError(
            f"{path} has model schema {document.get('schema')!r}, this parmap reads "
            f"{SCHEMA_VERSION}; re-run `parmap bench` to measure again"
        )
    models = {k: OverheadModel.from_dict(v) for k, v in document["models"].items()}
    return {**document, "models": models}
