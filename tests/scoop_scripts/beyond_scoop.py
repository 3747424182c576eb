"""What SCOOP 0.7 cannot do and parmap can: an endless input to map, closures.
# real-scoop: skip - SCOOP's map submits all of its input first (an endless generator never
# returns) and SCOOP pickles functions by reference (a closure fails with AttributeError)
"""

import itertools

from scoop import futures


def square(x):
    return x * x


def make_adder(n):
    def add(x):
        return x + n

    return add


if __name__ == "__main__":
    for value in futures.map(square, itertools.count()):
        if value > 500:
            print("first square above 500", value)
            break
    print("first ten", list(itertools.islice(futures.map(square, itertools.count(1)), 10)))
    print("closure", list(futures.map(make_adder(7), range(5))))
    print("closure submitted", futures.submit(make_adder(-1), 10).result())
