"""The verdict of ``parmap bench --fn``: which backend for this function, N items x K calls.

Pure functions on what :mod:`parmap.bench._userfn` measured::

    per target     warm: median pair speed-up at N items and its range (WarmCell)
                   cold: start-up = first call - warm call; the run's total of K calls
                   over the serial map calls timed beside them in the same process
    best           the smallest run ratio, start-up included, among serial map (1.0)
                   and the backends and peers (auto is judged apart: it picks one of
                   them); ratios within TIE of it, or whose 95% interval (from the
                   scatter of the runs' warm pairs) overlaps its, are named as tied
    on one scale   each run's calls times (the reference serial call / the mean serial
                   call beside that run): runs made minutes apart, under other load,
                   then compare; a scaled run's total over K reference calls is its ratio
    break-even     the number of calls from which a target's scaled total stays below
                   K reference calls: measured up to K, then extrapolated with its
                   median warm call
    crossover      from how many items per call the best parallel target beats serial
                   warm (interpolated between ladder counts, as the sweep does)
    auto           the pick parmap.explain reported before anything started, and how
                   auto's own measured run compares with the best
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from parmap.bench._coldrun import ColdRun
from parmap.bench._sweep import format_seconds
from parmap.bench._userfn import FnResult, WarmCell
from parmap.bench.analysis import Crossover, crossover

__all__ = ["TIE", "Figures", "Verdict", "breakeven_calls", "verdict"]

TIE = 0.10  # run ratios within 10% of the best one are named beside it
Z95 = 1.96  # ... and those whose 95% interval overlaps the best one's
SERIAL = ("map", "serial")  # run in the caller: "serial" in the verdict


@dataclass
class Figures:
    """Everything measured for one target, and what follows from it.

    ``map``'s figures are made of the serial calls timed beside every target's runs.
    """

    name: str
    ladder: list[WarmCell] = field(default_factory=list)
    runs: list[ColdRun] = field(default_factory=list)
    breakeven: int | None = None
    scale: float = 1.0

    @property
    def warm(self) -> WarmCell | None:
        """The warm cell at N items (the largest count)."""
        return max(self.ladder, key=lambda c: c.n_items, default=None)

    @property
    def ran(self) -> bool:
        """Whether at least one cold run measured something."""
        return bool(self.runs)

    @property
    def total(self) -> float:
        """Median total of the run of K calls, start-up included."""
        return statistics.median(r.total for r in self.runs)

    @property
    def total_range(self) -> tuple[float, float]:
        """Shortest and longest run."""
        return min(r.total for r in self.runs), max(r.total for r in self.runs)

    @property
    def ratio(self) -> float:
        """Median over the runs of the run's time / the serial map calls beside it."""
        return statistics.median(r.ratio for r in self.runs)

    @property
    def ratio_error(self) -> float | None:
        """The standard error of :attr:`ratio` (the runs' own, over the square root of
        their number); None when no run had warm calls to measure it."""
        errors = [e for e in (r.ratio_error for r in self.runs) if e is not None]
        if not errors:
            return None
        return statistics.median(errors) / math.sqrt(len(errors))

    @property
    def ratio_range(self) -> tuple[float, float]:
        """Lowest and highest run ratio."""
        return min(r.ratio for r in self.runs), max(r.ratio for r in self.runs)

    @property
    def startup(self) -> float:
        """Median start-up (first call minus a warm call)."""
        return statistics.median(r.startup for r in self.runs)

    @property
    def startup_range(self) -> tuple[float, float]:
        """Lowest and highest start-up measured."""
        return min(r.startup for r in self.runs), max(r.startup for r in self.runs)

    @property
    def first_call(self) -> float:
        """Median time to the first result."""
        return statistics.median(r.times[0] for r in self.runs)

    @property
    def warm_call(self) -> float:
        """Median warm call within the cold runs."""
        return statistics.median(r.warm_call for r in self.runs)

    @property
    def serial_call(self) -> float:
        """Median serial map call beside the runs."""
        return statistics.median(t for r in self.runs for t in r.serial_times)

    @property
    def per_call(self) -> list[float]:
        """Seconds of each of the K calls, the median over the runs."""
        return _columns([r.times for r in self.runs])

    @property
    def serial_per_call(self) -> list[float]:
        """Seconds of the serial map call beside each of the K calls, the median over the runs."""
        return _columns([r.serial_times for r in self.runs])

    @property
    def scaled_per_call(self) -> list[float]:
        """:attr:`per_call` on the common scale (see the module docstring)."""
        return [t * self.scale for t in self.per_call]

    @property
    def crossover(self) -> Crossover:
        """From how many items per call it beats serial map warm."""
        return crossover((c.n_items, c.speedup) for c in self.ladder)


def _columns(series: Sequence[Sequence[float]]) -> list[float]:
    return [statistics.median(column) for column in zip(*series, strict=True)]


@dataclass
class Verdict:
    """The decision, and the figures behind it.

    Attributes:
        n_items: items per call (N).
        calls: calls in the run (K).
        figures: target -> its figures (``map`` included).
        best: the target with the shortest run (``map`` when serial wins).
        tied: other targets within :data:`TIE` of the best.
        auto_pick: what auto chose for the first call (None when auto was not measured).
        reference_call: the mean serial map call beside all runs (the common scale).
        headline: the one-line verdict.
        lines: the lines printed under it.
    """

    n_items: int
    calls: int
    figures: dict[str, Figures]
    best: str
    tied: list[str]
    auto_pick: str | None
    reference_call: float = 0.0
    headline: str = ""
    lines: list[str] = field(default_factory=list)

    def ratio(self, name: str) -> float:
        """``name``'s run over the serial map calls beside it (below 1: faster)."""
        return self.figures[name].ratio

    def winners(self) -> list[str]:
        """The best and the ones tied with it, serial named once as "serial"."""
        return list(dict.fromkeys(_shown(n) for n in [self.best, *self.tied]))

    def text(self) -> str:
        """The verdict as printed."""
        return "\n".join([self.headline, *self.lines])


def breakeven_calls(
    calls: Sequence[float], reference: Sequence[float], rate: float, reference_rate: float
) -> int | None:
    """From how many calls a run's total stays below the reference's.

    Args:
        calls: seconds of each measured call of the run (start-up in the first).
        reference: the same for serial map (as many calls).
        rate: seconds of one more warm call of the run, beyond the measured ones.
        reference_rate: the same for serial map.

    Returns:
        The smallest K from which the run is shorter at every larger K, or None
        when it never is (its warm call is not faster than serial map's).
    """
    if rate >= reference_rate:
        return None
    gap, last_behind = 0.0, 0
    for k, (seconds, serial) in enumerate(zip(calls, reference, strict=True), 1):
        gap += seconds - serial
        if gap >= 0:
            last_behind = k
    if gap < 0:
        return last_behind + 1
    return len(calls) + math.floor(gap / (reference_rate - rate)) + 1


def verdict(result: FnResult) -> Verdict:
    """Decide from ``result`` (see the module docstring).

    Args:
        result: what ``parmap bench --fn`` measured.

    Returns:
        The :class:`Verdict`; its headline says so when too little was measured.
    """
    figures, reference = _figures(result)
    auto = result.auto.chosen if result.auto else None
    engines = [n for n, f in figures.items() if f.ran and n != "auto"]
    if engines == ["map"] or not figures["map"].ran:
        return Verdict(result.n_items, result.config.calls, figures, "map", [], auto, reference,
                       "no verdict: no cold run succeeded (see the failures)")  # fmt: skip
    best = min(engines, key=lambda n: figures[n].ratio)
    tied = [n for n in engines if n != best and _close(figures[n], figures[best])]
    found = Verdict(result.n_items, result.config.calls, figures, best, tied, auto, reference)
    found.headline = _headline(found)
    found.lines = _auto_lines(found, result) + _spread_lines(found, result)
    return found


def _close(f: Figures, best: Figures) -> bool:
    """Within TIE of the best, or within the noise: their 95% intervals overlap."""
    if f.ratio <= best.ratio * (1 + TIE):
        return True
    if f.ratio_error is None:
        return False
    return f.ratio - Z95 * f.ratio_error <= best.ratio + Z95 * (best.ratio_error or 0.0)


def _figures(result: FnResult) -> tuple[dict[str, Figures], float]:
    """Each target's figures, and the reference serial call they are scaled to."""
    figures = {name: Figures(name) for name in result.names}
    for cell in result.warm:
        figures[cell.target].ladder.append(cell)
    for run in result.cold:
        if run.ok:
            figures[run.target].runs.append(run)
            reference = ColdRun("map", run.calls, run.serial_times, run.serial_times)
            figures["map"].runs.append(reference)
    serial = [t for r in figures["map"].runs for t in r.times]
    if not serial:
        return figures, 0.0
    call = statistics.fmean(serial)
    for f in figures.values():
        if f.ran and f.name != "map":
            f.scale = call / statistics.fmean(t for r in f.runs for t in r.serial_times)
            if f.name not in SERIAL:
                f.breakeven = breakeven_calls(
                    f.scaled_per_call, [call] * len(f.per_call), f.warm_call * f.scale, call
                )
    return figures, call


def _shown(name: str) -> str:
    return "serial" if name in SERIAL else name


def _headline(v: Verdict) -> str:
    parts = [f"for {v.n_items:,} items x {v.calls} call{'s' if v.calls > 1 else ''}: "]
    winners = v.winners()
    if winners == ["serial"]:
        parts[0] += "serial (plain map): no backend pays off"
    else:
        names = " ≈ ".join(winners)
        parts[0] += f"{names}, {v.ratio(v.best):.2f}x serial"
        if v.tied:
            parts[0] += " (within the noise of each other)"
    parts += _but_parts(v)
    parts.append(_crossover_part(v))
    return "; ".join(p for p in parts if p)


def _parallel(v: Verdict) -> list[Figures]:
    return [f for f in v.figures.values() if f.name not in (*SERIAL, "auto") and f.warm]


def _but_parts(v: Verdict) -> list[str]:
    """Targets that beat serial warm but lose the run to their start-up."""
    winners = {v.best, *v.tied}
    losers = [f for f in _parallel(v) if f.name not in winners and f.ran and f.warm]
    losers = [f for f in losers if f.warm is not None and f.warm.speedup > 1 + TIE / 2]
    losers.sort(key=lambda f: -f.warm.speedup if f.warm else 0.0)
    parts = []
    for f in losers[:2]:
        assert f.warm is not None
        text = f"{f.name} {1 / f.warm.speedup:.2f}x warm but +{format_seconds(f.startup)} start-up"
        if f.breakeven is not None and f.breakeven > v.calls:
            text += f" (pays off from {f.breakeven:,} calls)"
        parts.append(text)
    if not parts and v.winners() == ["serial"]:
        fastest = max(_parallel(v), key=lambda f: f.warm.speedup if f.warm else 0.0, default=None)
        if fastest is not None and fastest.warm is not None:
            parts.append(f"no backend beats it even warm (the fastest, {fastest.name}, "
                         f"takes {1 / fastest.warm.speedup:.2f}x serial's time)")  # fmt: skip
    return parts


def _crossover_part(v: Verdict) -> str:
    """Where serial stops winning, for the best parallel target (warm)."""
    candidates = [f for f in _parallel(v) if f.warm is not None]
    if not candidates:
        return ""
    chosen = v.figures.get(v.best)
    if chosen is None or chosen not in candidates:
        chosen = max(candidates, key=lambda f: f.warm.speedup if f.warm else 0.0)
    c = chosen.crossover
    if c.kind == "between" and c.at is not None:
        return f"serial wins below ~{c.at:,.0f} items per call (warm, vs {chosen.name})"
    if c.kind == "below" and c.at is not None:
        return f"{chosen.name} wins warm from {c.at:,.0f} items per call (the fewest measured)"
    if c.kind == "never" and c.at is not None:
        return f"serial wins warm at every count measured, up to {c.at:,.0f} items"
    return ""


def _auto_lines(v: Verdict, result: FnResult) -> list[str]:
    if v.auto_pick is None:
        return []
    line = f"auto picks {v.auto_pick} for the first call (parmap.explain, nothing running)"
    auto = v.figures.get("auto")
    if auto is not None and auto.ran:
        ratio = auto.ratio / v.ratio(v.best)
        line += f"; its run measured {v.ratio('auto'):.2f}x serial, {ratio:.2f}x the best"
    lines = [line]
    if _shown(v.auto_pick) not in v.winners():
        best = _shown(v.best)
        advice = [] if best == "serial" else [f"pass backend='{best}'"]
        if result.auto is not None and not result.auto.calibrated:
            advice.append("run `parmap bench --calibrate` (auto used built-in defaults)")
        line = f"auto's pick is not the measured best ({best})"
        lines.append(line + (": " + " or ".join(advice) if advice else ""))
    return lines


def _spread_lines(v: Verdict, result: FnResult) -> list[str]:
    runs = sorted(len(f.runs) for f in v.figures.values() if f.ran and f.name != "map")
    pairs = sorted(len(c.times) for c in result.warm)
    if not runs:
        return []
    text = f"{_span(runs)} cold run(s) per target"
    if pairs:
        text += f", {_span(pairs)} warm pairs per item count"
    return [f"measured: {text}; ranges in the table"]


def _span(values: Sequence[int]) -> str:
    return str(values[0]) if values[0] == values[-1] else f"{values[0]}-{values[-1]}"
