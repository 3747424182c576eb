"""wait()/as_completed() with failing futures follow PEP 3148: the futures hold the errors.
# real-scoop: skip - SCOOP 0.7 raises the first error out of wait() and as_completed() instead
"""

from scoop import futures


def fragile(x):
    if x % 4 == 3:
        raise ArithmeticError(f"unlucky {x}")
    return x


if __name__ == "__main__":
    fs = [futures.submit(fragile, i) for i in range(8)]
    failed = sorted(str(f.exception()) for f in futures.as_completed(fs) if f.exception())
    print("as_completed yields failed futures too", failed)
    done = futures.wait(fs, return_when=futures.FIRST_EXCEPTION).done
    print("FIRST_EXCEPTION returns a failed future", any(f.exception() for f in done))
    print("ALL_COMPLETED", len(futures.wait(fs).done))
    print("successes", [f.result() for f in fs if f.exception() is None])
