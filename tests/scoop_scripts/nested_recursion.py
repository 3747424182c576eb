"""Futures inside futures: SCOOP's recursive Fibonacci, nested map and mapReduce."""

import operator

from scoop import futures


def fib(n):
    if n < 2:
        return n
    left = futures.submit(fib, n - 1)
    right = futures.submit(fib, n - 2)
    return left.result() + right.result()


def row_sum(n):
    return sum(futures.map(abs, range(-n, n)))


def subtree(depth):
    if depth == 0:
        return 1
    return 1 + futures.mapReduce(subtree, operator.add, [depth - 1] * 2)


if __name__ == "__main__":
    print("fib", [futures.submit(fib, n).result() for n in range(12)])
    print("nested map", list(futures.map(row_sum, range(8))))
    print("nested mapReduce", futures.submit(subtree, 5).result())
