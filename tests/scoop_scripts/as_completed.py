"""futures.as_completed yields each future once, as it completes."""

import time

from scoop import futures


def delayed(x):
    time.sleep(0.02 * (5 - x % 5))
    return x * 10


if __name__ == "__main__":
    fs = [futures.submit(delayed, i) for i in range(10)]
    done = list(futures.as_completed(fs))
    print("each future once", len(done) == len(fs) and set(done) == set(fs))
    print("results", sorted(f.result() for f in done))
    print("with timeout", sorted(f.result() for f in futures.as_completed(fs, timeout=60)))
