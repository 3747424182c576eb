"""A run long enough to be interrupted: prints 'started' once work runs on the workers."""

import time

from scoop import futures


def slow(item):
    time.sleep(0.5)
    return item


if __name__ == "__main__":
    results = futures.map(slow, range(10_000))
    print("started", next(results), flush=True)
    print(sum(results))
