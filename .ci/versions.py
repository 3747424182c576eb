"""Print the interpreter and the versions of the engines a test run uses (one line)."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

NAMES = ["ray", "dask", "distributed", "loky", "cloudpickle", "deap", "numpy", "tqdm", "scoop"]
NAMES += ["psutil", "matplotlib", "joblib", "pytest", "pytest-timeout"]


def installed(name: str) -> str:
    """The installed version of a distribution, or "-"."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


if __name__ == "__main__":
    found = ", ".join(f"{name} {installed(name)}" for name in NAMES)
    print(f"tested with: python {platform.python_version()}, {found}")
