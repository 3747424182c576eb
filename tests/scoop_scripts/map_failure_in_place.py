"""futures.map yields every result before a failed item, then raises there, as SCOOP does
(each item is a future of its own); an exception object returned, not raised, is a result."""

import time

from scoop import futures


def fails_fast_at_five(x):
    if x == 5:
        raise ValueError("five")
    time.sleep(0.05 if x < 5 else 0.0)  # the items before it are the slow ones
    return x


if __name__ == "__main__":
    got = []
    try:
        for value in futures.map(fails_fast_at_five, range(10)):
            got.append(value)
    except ValueError as exc:
        print("map raised", exc, "after", got)
    returned = list(futures.map(ValueError, ["made, not raised"]))
    print("a returned exception is a result:", type(returned[0]).__name__, returned[0])
