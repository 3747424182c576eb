"""futures.wait with ALL_COMPLETED, FIRST_COMPLETED and a zero timeout."""

import time

from scoop import futures


def nap(x):
    time.sleep(0.05 * x)
    return x


if __name__ == "__main__":
    fs = [futures.submit(nap, i) for i in range(6)]
    first = futures.wait(fs, return_when=futures.FIRST_COMPLETED)
    print("first completed", len(first.done) >= 1, first.done | first.not_done == set(fs))
    peek = futures.wait(fs, timeout=0)
    print("timeout=0", peek.done | peek.not_done == set(fs), not (peek.done & peek.not_done))
    everything = futures.wait(fs, return_when=futures.ALL_COMPLETED)
    print("all completed", len(everything.done), len(everything.not_done))
    print("default is all completed", len(futures.wait(fs).done))
    ok = futures.wait(fs, return_when=futures.FIRST_EXCEPTION)
    print("first exception without errors waits for all", len(ok.done))
    print("results", [f.result() for f in fs])
