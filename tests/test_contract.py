"""The contract every backend honours, with serial as the oracle."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import itertools
import pickle
import threading

import funcs
import pytest
from conftest import in_process

import parmap

pytestmark = pytest.mark.timeout(120)


def oracle(fn, *iterables):
    return parmap.parmap(fn, *iterables, backend="serial")


def test_results_in_input_order(backend):
    items = list(range(2_000))
    assert parmap.parmap(funcs.square, items, backend=backend) == oracle(funcs.square, items)


def test_multiple_iterables_zip_like_map_shortest_wins(backend):
    got = parmap.parmap(funcs.add, range(10), range(100, 105), backend=backend)
    assert (
        got
        == list(map(funcs.add, range(10), range(100, 105)))
        == oracle(funcs.add, range(10), range(100, 105))
    )


def test_generators_and_unsized_iterables(backend):
    got = parmap.parmap(funcs.square, (i for i in range(500)), backend=backend)
    assert got == [i * i for i in range(500)]


def test_empty_input_returns_empty_list(backend):
    assert parmap.parmap(funcs.square, [], backend=backend) == []
    assert list(parmap.imap(funcs.square, iter([]), backend=backend)) == []


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: x + 1,
        functools.partial(funcs.add, 10),
        funcs.Offset(5).add,
        funcs.decorated_square,
        funcs.fail_at(-1),  # a closure
    ],
    ids=["lambda", "partial", "bound-method", "decorated", "closure"],
)
def test_any_callable_travels(backend, fn):
    assert parmap.parmap(fn, range(50), backend=backend) == oracle(fn, range(50))


def test_local_function_with_closure_state(backend):
    table = {i: str(i) * 2 for i in range(20)}

    def lookup(i):
        return table[i]

    assert parmap.parmap(lookup, range(20), backend=backend) == oracle(lookup, range(20))


def test_starmap(backend):
    pairs = [(i, i * 2) for i in range(100)]
    assert parmap.starmap(funcs.add, pairs, backend=backend) == [3 * i for i in range(100)]


def test_imap_streams_lazily_and_in_order(backend):
    consumed = []

    def source():
        for i in itertools.count():
            consumed.append(i)
            yield i

    stream = parmap.imap(funcs.square, source(), backend=backend, chunksize=10)
    first = list(itertools.islice(stream, 25))
    stream.close()
    assert first == [i * i for i in range(25)]
    assert len(consumed) < 10_000, "imap read far ahead of what was consumed"


def test_unordered_returns_every_result(backend):
    got = parmap.parmap(funcs.square, range(300), backend=backend, ordered=False)
    assert sorted(got) == [i * i for i in range(300)]


def test_explicit_chunksize(backend):
    assert parmap.parmap(funcs.square, range(103), backend=backend, chunksize=7) == [
        i * i for i in range(103)
    ]


def test_user_exception_keeps_type_and_names_the_item(backend):
    with pytest.raises(KeyError) as info:
        parmap.parmap(funcs.fail_at(37, KeyError), range(100), backend=backend)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "item 37" in notes and "37" in notes
    if not in_process(backend):
        assert isinstance(info.value.__cause__, parmap._errors.RemoteTraceback)
        assert "bad item 37" in str(info.value.__cause__)
        assert 'funcs.py", line' in str(info.value.__cause__)  # the worker's frame, by file


def test_next_call_works_after_a_user_error(backend):
    with pytest.raises(ValueError):
        parmap.parmap(funcs.fail_at(3), range(10), backend=backend)
    assert parmap.parmap(funcs.square, range(10), backend=backend) == [i * i for i in range(10)]


def test_sys_exit_in_fn_is_reported_not_fatal(backend):
    def leave(x):
        if x == 5:
            raise SystemExit(4)
        return x

    with pytest.raises(SystemExit) as info:
        parmap.parmap(leave, range(10), backend=backend)
    assert info.value.code == 4
    assert parmap.parmap(funcs.square, range(5), backend=backend) == [0, 1, 4, 9, 16]


def test_workers_persist_across_calls(backend):
    if backend == "auto":
        pytest.skip("auto may pick another backend (or serial) for the second call")
    first = set(parmap.parmap(funcs.pid, range(200), backend=backend, chunksize=1))
    second = set(parmap.parmap(funcs.pid, range(200), backend=backend, chunksize=1))
    assert first & second, "no worker process was reused between calls"


def test_share_reaches_workers(backend):
    table = parmap.share(list(range(10_000)))
    got = parmap.parmap(lambda i: table.value[i] * 2, [0, 9_999, 5], backend=backend)
    assert got == [0, 19_998, 10]


def test_initializer_runs_once_per_worker_before_items(backend):
    got = parmap.parmap(
        funcs.init_count,
        range(50),
        backend=backend,
        chunksize=1,
        initializer=funcs.record_init,
        initargs=("hello",),
    )
    # Each worker's counter is the same for all its items (the initializer ran before the
    # first one, and not again); a process reused from other tests may count other setups.
    per_worker = {}
    for worker, count in got:
        per_worker.setdefault(worker, set()).add(count)
    assert all(len(counts) == 1 and min(counts) >= 1 for counts in per_worker.values())
    again = parmap.parmap(
        funcs.init_count,
        range(10),
        backend=backend,
        initializer=funcs.record_init,
        initargs=("hello",),
    )
    for worker, count in again:
        if worker in per_worker:
            assert {count} == per_worker[worker], "initializer ran again for the same setup"


def test_initializer_error_is_clear(backend):
    with pytest.raises(parmap.WorkerInitializationError, match="initializer refuses"):
        parmap.parmap(funcs.square, range(10), backend=backend, initializer=funcs.init_fails)
    assert parmap.parmap(funcs.square, range(3), backend=backend) == [0, 1, 4]


def test_unpicklable_function_fails_before_any_work(backend):
    if in_process(backend):
        pytest.skip("fn runs in place and is never pickled")
    lock = threading.Lock()
    calls = []

    def uses_lock(x):
        calls.append(x)
        with lock:
            return x

    with pytest.raises(parmap.SerializationError, match="could not be pickled"):
        parmap.parmap(uses_lock, range(10), backend=backend)
    assert isinstance(parmap.SerializationError("x"), pickle.PicklingError)


def test_unpicklable_item_is_named(backend):
    if in_process(backend):
        pytest.skip("items are never pickled in place")
    items = [1, 2, threading.Lock(), 4]
    with pytest.raises(parmap.SerializationError, match="item 2"):
        parmap.parmap(funcs.square, items, backend=backend, chunksize=10)


def test_unpicklable_result_is_named(backend):
    if in_process(backend):
        pytest.skip("results are never pickled in place")

    def make(x):
        return threading.Lock() if x == 6 else x

    with pytest.raises(parmap.SerializationError, match="item 6"):
        parmap.parmap(make, range(10), backend=backend, chunksize=10)


def test_worker_crash_raises_not_hangs(backend):
    if in_process(backend):
        pytest.skip("no worker to crash: it would be the test process")
    with pytest.raises(parmap.WorkerCrashedError) as info:
        parmap.parmap(funcs.exit_at(7), range(20), backend=backend, chunksize=5)
    assert 7 in info.value.items
    if isinstance(backend, cf.Executor):  # the user's executor is broken for good: say so
        with pytest.raises(parmap.WorkerCrashedError, match="pass a new one"):
            parmap.parmap(funcs.square, range(10), backend=backend)
        return
    assert parmap.parmap(funcs.square, range(10), backend=backend) == [i * i for i in range(10)]


def test_timeout_stops_the_call(backend):
    with pytest.raises(parmap.TimeoutError) as info:
        parmap.parmap(funcs.sleep_then(0.5), range(20), backend=backend, timeout=0.6, chunksize=1)
    assert isinstance(info.value, TimeoutError)
    assert parmap.parmap(funcs.square, range(4), backend=backend) == [0, 1, 4, 9]


def test_progress_bar(backend, capsys):
    assert parmap.parmap(funcs.square, range(100), backend=backend, progress=True) == [
        i * i for i in range(100)
    ]
    assert "100/100" in capsys.readouterr().err


def test_progress_bar_from_config(backend, capsys):
    with parmap.config(progress=True):
        assert parmap.parmap(funcs.square, list(range(100)), backend=backend)[-1] == 99 * 99
    assert "100/100" in capsys.readouterr().err


def test_input_iterator_error_propagates_with_index(backend):
    def source():
        yield from range(5)
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone") as info:
        parmap.parmap(funcs.square, source(), backend=backend)
    assert "item 5" in "\n".join(info.value.__notes__)


def test_nested_call_on_a_worker_runs_in_place(backend):
    def outer(x):
        return sum(parmap.parmap(funcs.square, range(x)))

    with parmap.config(backend=backend):
        assert parmap.parmap(outer, range(6), backend=backend) == oracle(outer, range(6))
