"""The benchmark's arithmetic: speed-ups, crossover points and the overhead-model fit.

Pure functions on plain numbers, unit-tested on synthetic timings with known
answers (``tests/test_bench.py``).

Crossover: along one axis (item count at a fixed per-item cost, or per-item
cost at a fixed item count), the point from which a backend beats serial
``map`` (speed-up > 1) at every larger measured value. Between the last losing
and the first winning grid point it is interpolated on log-log axes::

    speed-up (log)
      │                 ●  ●
    1 ┼ ─ ─ ─ ─ ─ ─ ─ +─ ─ ─ ─   + = crossover (interpolated)
      │     ●   ●
      └───────────────────────  item count or per-item cost (log)

Model fit: the constants of :class:`parmap._model.OverheadModel` by
non-negative least squares on relative errors (every point counts the same,
from microseconds to seconds), solved exactly for these five unknowns by
trying each subset of them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from parmap._model import OverheadModel

__all__ = [
    "Crossover",
    "Observation",
    "Residual",
    "crossover",
    "fit_model",
    "residuals",
    "short_number",
    "speedup",
]


def speedup(serial_seconds: float, seconds: float) -> float:
    """How many times faster than serial (``serial / seconds``; inf for a zero time)."""
    if seconds <= 0:
        return math.inf
    return serial_seconds / seconds


@dataclass(frozen=True)
class Crossover:
    """Where a backend starts beating serial along one axis.

    Attributes:
        kind: ``"between"`` (interpolated between two grid points), ``"below"``
            (it already wins at the smallest measured value), ``"never"`` (it
            does not win at the largest) or ``"none"`` (no data).
        at: the interpolated crossover (``"between"``), the smallest measured
            value (``"below"``), the largest (``"never"``), or None.
        low: the last grid value where it lost (``"between"`` only).
        high: the first grid value from which it wins (``"between"`` only).
    """

    kind: str
    at: float | None = None
    low: float | None = None
    high: float | None = None

    def label(self, fmt: Callable[[float], str] | None = None) -> str:
        """A short text for tables, e.g. ``≈340``, ``≤10``, ``>10,000``, ``—``.

        Args:
            fmt: formats the value (default: 3 significant digits, thousands separated).
        """
        if self.kind == "none" or self.at is None:
            return "—"
        prefix = {"between": "≈", "below": "≤", "never": ">"}[self.kind]
        return prefix + (fmt or short_number)(self.at)


def short_number(value: float) -> str:
    """``value`` with 3 significant digits, or as a whole number with separators from 100."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def crossover(points: Iterable[tuple[float, float]]) -> Crossover:
    """The smallest value from which ``speedup > 1`` holds at every larger value.

    Args:
        points: ``(x, speedup)`` pairs with ``x > 0`` (an item count or a
            per-item cost); their order does not matter.

    Returns:
        A :class:`Crossover`.
    """
    pts = sorted((x, s) for x, s in points if x > 0 and s > 0 and not math.isnan(s))
    if not pts:
        return Crossover("none")
    first_win = len(pts)
    while first_win > 0 and pts[first_win - 1][1] > 1.0:
        first_win -= 1
    if first_win == len(pts):
        return Crossover("never", pts[-1][0])
    if first_win == 0:
        return Crossover("below", pts[0][0])
    (x0, s0), (x1, s1) = pts[first_win - 1], pts[first_win]
    return Crossover("between", _log_interpolate(x0, s0, x1, s1), x0, x1)


def _log_interpolate(x0: float, s0: float, x1: float, s1: float) -> float:
    """Where the line through (log x, log s) crosses log s = 0."""
    l0, l1 = math.log(s0), math.log(s1)
    if l1 == l0:
        return x1
    t = min(1.0, max(0.0, -l0 / (l1 - l0)))
    return math.exp(math.log(x0) + t * (math.log(x1) - math.log(x0)))


@dataclass(frozen=True)
class Observation:
    """One measured point: a warm call's median time.

    Attributes:
        n_items: items in the call.
        per_item_cost: serial seconds per item of the workload.
        item_bytes: pickled size of one item.
        seconds: the measured median seconds of the call.
        label: what was measured, for reports.
    """

    n_items: int
    per_item_cost: float
    item_bytes: float
    seconds: float
    label: str = ""


@dataclass(frozen=True)
class Residual:
    """A model's prediction next to a measured point."""

    observation: Observation
    predicted: float

    @property
    def error(self) -> float:
        """predicted - measured, in seconds."""
        return self.predicted - self.observation.seconds

    @property
    def relative(self) -> float:
        """(predicted - measured) / measured."""
        return self.error / self.observation.seconds


def fit_model(observations: Sequence[Observation], template: OverheadModel) -> OverheadModel:
    """Fit the constants of ``template`` (backend, workers, batching) to measured points.

    Minimises the sum of squared relative errors with every constant >= 0.
    The per-byte term is fitted only when item sizes vary (by 10x or more);
    otherwise it is confounded with the per-item term and left at 0.

    Args:
        observations: measured warm calls (at least one, with positive times).
        template: a model with the backend's name, workers and batching policy;
            its constants are ignored.

    Returns:
        The fitted model, with ``quality`` = points, rms_rel, max_rel.

    Raises:
        ValueError: no usable observation.
    """
    import numpy as np

    usable = [o for o in observations if o.seconds > 0 and o.n_items > 0]
    if not usable:
        raise ValueError(f"no measured point to fit a model for {template.backend}")
    x = np.array([template.features(o.n_items, o.per_item_cost, o.item_bytes) for o in usable])
    t = np.array([o.seconds for o in usable])
    sizes = [o.item_bytes for o in usable]
    columns = [0, 1, 3, 4]
    if min(sizes) > 0 and max(sizes) >= 10 * min(sizes):
        columns.insert(2, 2)
    beta = _nonnegative_lstsq(x[:, columns] / t[:, None], np.ones(len(t)))
    constants = [0.0] * 5
    for column, value in zip(columns, beta, strict=True):
        constants[column] = float(value)
    fixed, per_item, per_byte, per_batch, work_factor = constants
    model = replace(
        template,
        fixed=fixed,
        per_item=per_item,
        per_byte=per_byte,
        per_batch=per_batch,
        work_factor=work_factor,
    )
    relative = [r.relative for r in residuals(model, usable)]
    quality = {
        "points": float(len(usable)),
        "rms_rel": math.sqrt(sum(r * r for r in relative) / len(relative)),
        "max_rel": max(abs(r) for r in relative),
    }
    return replace(model, quality=quality)


def _nonnegative_lstsq(a: object, b: object) -> list[float]:
    """argmin ||a·x - b|| subject to x >= 0, by trying every subset of columns.

    Exact for the handful of columns used here (at most 2^5 solves).
    """
    import numpy as np

    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    n = a.shape[1]
    best, best_cost = np.zeros(n), float(b @ b)
    for k in range(1, n + 1):
        for subset in itertools.combinations(range(n), k):
            solution, *_ = np.linalg.lstsq(a[:, subset], b, rcond=None)
            if (solution < 0).any():
                continue
            full = np.zeros(n)
            full[list(subset)] = solution
            cost = float(np.sum((a @ full - b) ** 2))
            if cost < best_cost - 1e-15:
                best, best_cost = full, cost
    return [float(v) for v in best]


def residuals(model: OverheadModel, observations: Iterable[Observation]) -> list[Residual]:
    """The model's prediction for each observation.

    Args:
        model: a fitted model.
        observations: measured points.

    Returns:
        One :class:`Residual` per observation, in order.
    """
    return [
        Residual(o, model.predict(o.n_items, o.per_item_cost, o.item_bytes)) for o in observations
    ]
