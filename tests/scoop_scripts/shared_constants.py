"""shared.setConst / getConst: defined once in the program, read on the workers."""

from scoop import futures, shared


def lookup(i):
    return shared.getConst("table")[i] * shared.getConst("factor")


def apply_shared_function(x):
    return shared.getConst("transform")(x)


def late_reader(x):
    return shared.getConst("late") + x


if __name__ == "__main__":
    shared.setConst(table={i: i + 100 for i in range(10)}, factor=3)
    print("map reads constants", list(futures.map(lookup, range(10))))
    print("submit reads constants", futures.submit(lookup, 4).result())
    shared.setConst(transform=lambda x: -x)
    print("shared function", list(futures.map(apply_shared_function, range(5))))
    try:
        shared.setConst(factor=4)
    except TypeError as exc:
        print("redefinition", type(exc).__name__, exc)
    print("unknown name", shared.getConst("no_such_constant", timeout=0.01))
    print("in the program", shared.getConst("factor"))
    shared.setConst(late=1000)
    print("defined later, read later", list(futures.map(late_reader, range(3))))
