"""An uncaught exception: its traceback on stderr and exit code 1, as with python script.py.
# real-scoop: skip - SCOOP 0.7 prints the traceback to stdout and exits 0
"""

from scoop import futures


def check(x):
    if x == 7:
        raise LookupError(f"item {x} is missing")
    return x


if __name__ == "__main__":
    print("before", list(futures.map(check, range(5))))
    print("after", list(futures.map(check, range(10))))
