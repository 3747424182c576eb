"""Keyword arguments after the iterables reach the mapped function, as the call reads.
# real-scoop: skip - SCOOP 0.7.2's map, map_as_completed, mapReduce and mapScan accept
# keyword arguments and drop them (their functions run with their defaults)
"""

import operator
from itertools import cycle

from scoop import futures


def scaled(x, factor=1, offset=0):
    return x * factor + offset


def depth(value, level=0, limit=2):
    """SCOOP's tree_traversal.py shape: a keyword on the top call, positional below."""
    if level >= limit:
        return [value]
    children = futures.map(depth, [2 * value, 2 * value + 1], cycle([level + 1]), limit=limit)
    return [value, *(leaf for branch in children for leaf in branch)]


if __name__ == "__main__":
    print("map", list(futures.map(scaled, range(5), factor=10, offset=1)))
    print("map, timeout apart", list(futures.map(scaled, range(3), timeout=60, factor=2)))
    print("as completed", sorted(futures.map_as_completed(scaled, range(4), offset=100)))
    print("mapReduce", futures.mapReduce(scaled, operator.add, range(6), factor=3))
    print("mapScan", futures.mapScan(scaled, operator.add, range(4), offset=1))
    print("nested", list(futures.map(depth, [1], limit=3)))
    print("submit", futures.submit(scaled, 4, factor=5, offset=2).result())
