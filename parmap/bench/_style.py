"""How each target looks in every plot: one table, so loky is the same green everywhere.

parmap's backends each have a colour and are drawn solid with filled markers.
Peers (what users write without parmap: ``mp-pool``, ``joblib-loky``,
``ray-tasks``...) are grey, dashed, with hollow markers of their own shape, and
their legend label says "peer". Serial ``map``, the reference, is black. A
backend not in the table (registered by a third party) gets a colour from the
spare ones, the same for the same name in every figure.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

__all__ = ["BACKEND_COLORS", "MODEL_STYLE", "PEERS", "Style", "is_peer", "label", "style"]

BACKEND_COLORS = {
    "serial": "#8c564b",  # brown
    "auto": "#9467bd",  # purple
    "multiprocessing": "#1f77b4",  # blue
    "loky": "#2ca02c",  # green
    "ray": "#ff7f0e",  # orange
    "dask": "#e377c2",  # pink
    "threads": "#bcbd22",  # olive
    "mpi": "#17becf",  # cyan
}
REFERENCE_COLOR = "#000000"
PEER_COLOR = "#7f7f7f"
SPARE_COLORS = ("#d62728", "#393b79", "#8c6d31", "#843c39", "#637939", "#7b4173")

PEERS = {  # peer -> (the engine it uses, its marker)
    "mp-pool": ("multiprocessing", "s"),
    "joblib-loky": ("loky", "D"),
    "ray-tasks": ("ray", "^"),
    "dask-map": ("dask", "v"),
}

MODEL_STYLE = {"ls": ":", "lw": 1.3, "alpha": 0.8}  # a fitted model's line: dotted


@dataclass(frozen=True)
class Style:
    """Keyword arguments for matplotlib's ``plot``, and the legend label."""

    color: str
    ls: str
    marker: str
    filled: bool
    label: str

    def line(self) -> dict[str, Any]:
        """``ax.plot`` keywords: colour, line style, marker (hollow for peers)."""
        face = self.color if self.filled else "white"
        return {
            "color": self.color,
            "ls": self.ls,
            "marker": self.marker,
            "markerfacecolor": face,
            "label": self.label,
        }


def style(name: str) -> Style:
    """The look of target ``name`` (a backend, a peer or ``map``)."""
    if name == "map":
        return Style(REFERENCE_COLOR, "-", "", True, "serial map (reference)")
    if name in PEERS:
        return Style(PEER_COLOR, "--", PEERS[name][1], False, label(name))
    color = BACKEND_COLORS.get(name)
    if color is None:
        color = SPARE_COLORS[zlib.crc32(name.encode()) % len(SPARE_COLORS)]
    return Style(color, "-", "o", True, name)


def label(name: str) -> str:
    """The legend label: the name, with "(peer)" for a peer."""
    return f"{name} (peer)" if name in PEERS else name


def is_peer(name: str) -> bool:
    """Whether ``name`` is a peer (not a parmap backend)."""
    return name in PEERS
