"""The module-level flags SCOOP programs test, and the script's own identity."""

import sys

import scoop
from scoop import futures, shared


def on_worker(_):
    return isinstance(scoop.IS_ORIGIN, bool) and isinstance(scoop.worker, bytes)


if __name__ == "__main__":
    if not scoop.IS_RUNNING:
        sys.exit("run me with python -m scoop")
    print("IS_RUNNING", scoop.IS_RUNNING, "IS_ORIGIN", scoop.IS_ORIGIN)
    print("SIZE is a positive int", isinstance(scoop.SIZE, int) and scoop.SIZE >= 1)
    print("worker name is bytes", isinstance(scoop.worker, bytes))
    print("submodules", scoop.futures is futures, scoop.shared is shared)
    print("flags on workers", all(futures.map(on_worker, range(4))))
    print("__name__", __name__, "argv[0]", sys.argv[0].rsplit("/", 1)[-1])
