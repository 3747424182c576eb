"""What parmap uses of other libraries that they do not document, checked on the installed
versions (CI runs this file at both ends of the supported range: ``nox -s floors`` and the
newest versions in ``nox -s core-3.13``).

Each check names an entry of docs/compatibility.md ("Undocumented names"). parmap falls
back when a name is missing, so a failure here is not a broken parmap: it says that a
release of that library changed something parmap leans on, that the fallback is now what
users get, and that the entry (and maybe the code) needs a look.

Also: Python 3.14 removed pickling of itertools objects (gh-101588), and DEAP's
``tools.DeltaPenalty`` keeps ``itertools.repeat(delta)``; on 3.12 and 3.13 the removed
path still works but warns, which the test turns into an error.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextvars
import importlib
import inspect
import multiprocessing
import os
import re
import types
import warnings
from collections import deque
from pathlib import Path

import cloudpickle
import pytest

from parmap import _serialization

DOC = Path(__file__).resolve().parent.parent / "docs" / "compatibility.md"


def entry(name: str):
    """Mark a check with the docs/compatibility.md entry it stands for."""

    def mark(check):
        check.entry = name
        return check

    return mark


@entry("distributed.worker._worker_cvar")
def test_distributed_worker_cvar():
    worker = pytest.importorskip("distributed.worker")
    assert isinstance(getattr(worker, "_worker_cvar", None), contextvars.ContextVar)


@entry("BatchedSend.interval and recent_message_log")
def test_distributed_batched_send_attributes():
    batched = pytest.importorskip("distributed.batched")
    stream = batched.BatchedSend(interval="10ms")
    assert isinstance(stream.interval, float)
    assert isinstance(stream.recent_message_log, deque)


@entry("Nanny._on_worker_exit")
def test_distributed_nanny_on_worker_exit():
    distributed = pytest.importorskip("distributed")
    method = getattr(distributed.Nanny, "_on_worker_exit", None)
    assert method is not None and inspect.iscoroutinefunction(method)
    assert list(inspect.signature(method).parameters) == ["self", "exitcode"]


@entry("distributed.client.FutureCancelledError")
def test_distributed_future_cancelled_error():
    client = pytest.importorskip("distributed.client")
    error = client.FutureCancelledError(key="k", reason="r", msg="m")
    assert isinstance(error, cf.CancelledError)
    assert (error.reason, error.msg) == ("r", "m")


@entry("ray._private.ray_constants.ENABLE_RAY_CLUSTER")
def test_ray_enable_ray_cluster():
    pytest.importorskip("ray")
    constants = importlib.import_module("ray._private.ray_constants")
    assert isinstance(constants.ENABLE_RAY_CLUSTER, bool)
    assert constants.ENABLE_RAY_CLUSTERS_ENV_VAR == "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@entry("os.environ._data")
def test_os_environ_data():
    data = getattr(os.environ, "_data", None)
    assert type(data) is dict and all(type(k) is bytes for k in data)


@entry("loky's crash message")
def test_loky_crash_message_names_exit_codes():
    process_executor = importlib.import_module("loky.process_executor")
    assert "exit codes of the workers are" in inspect.getsource(process_executor)


@entry("ProcessPoolExecutor._processes and _executor_manager_thread")
def test_process_pool_private_attributes(census):
    context = multiprocessing.get_context("forkserver")  # parmap's default; fork warns on 3.12+
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        assert pool.submit(abs, -1).result(timeout=60) == 1
        assert isinstance(pool._processes, dict) and len(pool._processes) == 1
        assert pool._executor_manager_thread is not None


@entry("cloudpickle's dispatch table entry for code objects")
def test_cloudpickle_reduces_code_objects_through_its_dispatch_table():
    reduce = cloudpickle.Pickler.dispatch_table.get(types.CodeType)
    assert reduce is not None
    constructor, args = reduce(test_os_environ_data.__code__)
    assert callable(constructor) and isinstance(args, tuple)


@entry("tblib's copyreg reducers")
def test_tblib_reducers_name_their_module():
    support = pytest.importorskip("tblib.pickling_support")
    assert support.__name__ == "tblib.pickling_support"
    assert callable(getattr(support, "install", None))


@entry("deap.creator.meta_create and MetaCreator")
def test_deap_creator_reducer():
    creator = pytest.importorskip("deap.creator")
    assert callable(creator.meta_create) and isinstance(creator.MetaCreator, type)


def test_every_check_has_an_entry_in_the_docs():
    text = DOC.read_text(encoding="utf-8")
    checks = [
        f for name, f in globals().items() if name.startswith("test_") and hasattr(f, "entry")
    ]
    missing = [f.entry for f in checks if f"`{f.entry}`" not in text and f.entry not in text]
    assert not missing, f"docs/compatibility.md does not list: {missing}"


# -- Python 3.14: itertools objects no longer pickle ----------------------------------------


class Individual(list):
    fitness = types.SimpleNamespace(weights=(1.0,))


def feasible(individual):
    return individual[0] == 0


def evaluate(individual):
    return (float(sum(individual)),)


def test_delta_penalty_travels_without_itertools_pickling():
    tools = pytest.importorskip("deap.tools")
    decorated = tools.DeltaPenalty(feasible, -5.0)(evaluate)
    assert re.search(r"repeat\(", repr(decorated.__closure__[1].cell_contents.delta))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # 3.12, 3.13: 3.14's TypeError
        again = _serialization.loads(_serialization.dumps(decorated))
    assert again(Individual([0, 1, 1])) == (2.0,)
    assert again(Individual([1, 1, 1])) == (-5.0,)


@pytest.mark.parametrize("times", [None, 0, 1, 3])
def test_a_repeat_pickles_with_what_it_has_left_and_stays_unchanged(times):
    import itertools

    repeat = itertools.repeat([1, 2]) if times is None else itertools.repeat([1, 2], times)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # 3.12, 3.13: 3.14's TypeError
        again = _serialization.loads(_serialization.dumps(repeat))
    if times is None:
        assert [next(again) for _ in range(5)] == [[1, 2]] * 5
        assert next(repeat) == [1, 2]
    else:
        assert list(again) == [[1, 2]] * times
        assert list(repeat) == [[1, 2]] * times, "pickling advanced the original"
