"""futures.map_as_completed yields every result once, in any order."""

import time

from scoop import futures


def slow_cube(x):
    time.sleep(0.01 * (x % 3))
    return x**3


if __name__ == "__main__":
    results = list(futures.map_as_completed(slow_cube, range(30)))
    print("count", len(results))
    print("same values as map", sorted(results) == list(futures.map(slow_cube, range(30))))
    print("sum", sum(futures.map_as_completed(slow_cube, range(10), **{})))
