"""futures.mapReduce and futures.mapScan, with SCOOP's reduction tree."""

import operator

from scoop import futures


def identity(x):
    return x


def square(x):
    return x * x


def show(a, b):
    return f"({a}+{b})"


def dot_term(x, y):
    return x * y


if __name__ == "__main__":
    print("sum of squares", futures.mapReduce(square, operator.add, range(100)))
    print("tree shape", futures.mapReduce(identity, show, "abcdefg"))
    print("two items", futures.mapReduce(identity, show, "ab"))
    print("dot product", futures.mapReduce(dot_term, operator.add, range(10), range(10, 30)))
    print("scan add", futures.mapScan(identity, operator.add, [1, 2, 3, 4, 5, 6, 7, 8]))
    print("scan shape", futures.mapScan(identity, show, "abcde"))
    print("max", futures.mapReduce(square, max, [3, -9, 4, 1]))
