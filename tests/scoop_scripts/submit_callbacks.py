"""submit(fn, *args, **kwargs) and its futures: result, done, running, cancel, callbacks."""

import threading

from scoop import futures

seen = []
lock = threading.Lock()


def affine(x, scale=1, offset=0):
    return x * scale + offset


def record(future):
    with lock:
        seen.append(future.result())


if __name__ == "__main__":
    fs = [futures.submit(affine, i, scale=3, offset=1) for i in range(12)]
    for f in fs:
        f.add_done_callback(record)
    futures.wait(fs)
    print("callbacks ran before wait returned", sorted(seen))
    print("results", [f.result() for f in fs])
    print("done", all(f.done() for f in fs), "running", any(f.running() for f in fs))
    print("cancel after done", [f.cancel() for f in fs[:3]], "cancelled", fs[0].cancelled())
    print("exception of a success", fs[0].exception())
    late = []
    fs[1].add_done_callback(lambda f: late.append(f.result()))
    print("callback on a done future runs at once", late)
    one = futures.submit(pow, 2, 10)
    print("builtin", one.result(timeout=60))
    many = [futures.submit(affine, i) for i in range(40)]
    attempts = [f.cancel() for f in many]
    agree = all(a == f.cancelled() for a, f in zip(attempts, many, strict=True))
    print("cancel() agrees with cancelled()", agree)
    finished = all(f.result() == i for i, f in enumerate(many) if not f.cancelled())
    print("the others finish", finished)
