"""The benchmark harness: ``parmap bench`` or ``python -m parmap.bench``.

It answers, for this machine: from what per-item cost and what number of items
does each backend beat plain serial ``map``, and by how much? A leaf package:
nothing in parmap's core imports it. It needs the ``bench`` extra
(``pip install 'parmap-backends[bench]'``: matplotlib, numpy, joblib, psutil).

With ``--fn module:function``, it answers the user's own question instead:
which backend for *this* function at *this* population size, over a run of K
calls, start-up included (``_loader``, ``_userfn``, ``_coldrun``, ``_verdict``,
``_fnreport``).

Modules:
    workloads   the fitness functions mapped (OneMax, calibrated CPU, symbolic
                regression, large payloads)
    analysis    crossover points and the overhead-model fit (pure functions); the
                model itself lives in parmap._model (backend="auto" uses it)
    _style      one colour and line style per backend and peer, for every figure
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``parmap bench`` with ``argv`` (see ``parmap bench --help``); return the exit status."""
    from parmap.bench._cli import main as run

    return run(argv)
