"""A submitted or mapped function's exception comes back with its own type."""

from scoop import futures


class InsufficientFunds(Exception):
    pass


def withdraw(amount):
    if amount > 100:
        raise InsufficientFunds(f"cannot withdraw {amount}")
    return 100 - amount


def inverse(x):
    return 1 / x


if __name__ == "__main__":
    ok, bad = futures.submit(withdraw, 30), futures.submit(withdraw, 500)
    print("ok", ok.result())
    try:
        bad.result()
    except InsufficientFunds as exc:
        print("result() raised", type(exc).__name__, exc, isinstance(exc, InsufficientFunds))
    error = bad.exception()
    print("exception()", type(error).__name__, error)
    try:
        print(list(futures.map(inverse, [4, 2, 1, 0, 5])))
    except ZeroDivisionError as exc:
        print("map raised", type(exc).__name__)
    try:
        futures.submit(int, "not a number").result()
    except ValueError as exc:
        print("builtin raised", type(exc).__name__)
    print("still works", list(futures.map(inverse, [4, 2])))
