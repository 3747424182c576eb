"""``backend="mpi"`` where there is no pool of ranks to use: prints ``refused: <error>``."""

from __future__ import annotations

import parmap

if __name__ == "__main__":
    try:
        parmap.parmap(abs, range(4), backend="mpi")
    except RuntimeError as exc:
        print(f"refused: {exc}", flush=True)
    else:
        print("ran", flush=True)
