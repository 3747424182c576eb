"""Fault injection on every backend: no hangs, no orphans, nothing lost.

Each test has a hard deadline (pytest-timeout) and the ``census`` fixture: after
``parmap.shutdown()`` no process this test started may be alive. Side effects
(an item ran) are counted through files, so "the remaining work was cancelled"
is checked by behaviour, not by timing.
"""

from __future__ import annotations

import concurrent.futures as cf
import faulthandler
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import funcs
import psutil
import pytest
from conftest import BACKENDS, children, in_process

import parmap
from parmap import _registry
from parmap.backends._threads import ThreadsBackend

pytestmark = pytest.mark.timeout(180)

START_METHODS = ("fork", "forkserver", "spawn") if "multiprocessing" in BACKENDS else ()
VARIANTS = [
    *(b for b in BACKENDS if b != "multiprocessing"),
    *(f"multiprocessing-{method}" for method in START_METHODS),
]
REMOTE = [v for v in VARIANTS if not in_process(v)]  # fn in worker processes


@contextmanager
def using(variant):
    name, _, method = variant.partition("-")
    with parmap.config(backend=name, start_method=method or None, workers=2):
        yield


@pytest.fixture(params=VARIANTS)
def variant(request):
    return request.param


@pytest.fixture(params=REMOTE)
def remote(request):
    return request.param


def env_for(variant):
    name, _, method = variant.partition("-")
    env = {**os.environ, "PARMAP_BACKEND": name, "PARMAP_WORKERS": "2"}
    if method:
        env["PARMAP_START_METHOD"] = method
    return env


def marking(directory: Path, seconds: float = 0.0):
    """A function that records each item it ran as a file, then sleeps."""

    def mark(x):
        (directory / f"{x}.ran").touch()
        time.sleep(seconds)
        return x

    return mark


def ran(directory: Path) -> int:
    return len(list(directory.glob("*.ran")))


def settled(directory: Path, wait: float = 1.5) -> int:
    """The count of items that ran, once no more are being started."""
    count = ran(directory)
    while True:
        time.sleep(wait)
        again = ran(directory)
        if again == count:
            return count
        count = again


def assert_next_call_works():
    assert parmap.parmap(abs, range(-5, 5)) == [abs(i) for i in range(-5, 5)]


# 1. fn raises at item i -------------------------------------------------------


def test_user_error_keeps_type_and_cancels_the_rest(variant, tmp_path, census):
    mark = marking(tmp_path, 0.05)

    def fn(x):
        if x == 3:
            raise LookupError("item three is bad")
        return mark(x)

    with using(variant):
        with pytest.raises(LookupError, match="item three") as info:
            parmap.parmap(fn, range(200), chunksize=1)
        assert any("item 3" in note for note in info.value.__notes__)
        if not in_process(variant):
            assert "item three is bad" in str(info.value.__cause__)
        assert settled(tmp_path) < 100, "the remaining work was not cancelled"
        assert_next_call_works()


# 2-4. a worker dies -------------------------------------------------------------


def die(how):
    def fn(x):
        if x == 13:
            if how == "exit":
                os._exit(3)
            if how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            if how == "segfault":
                faulthandler.disable()  # no crash dump on the test's stderr
                faulthandler._sigsegv()
        time.sleep(0.01)
        return x

    return fn


@pytest.mark.parametrize(
    "how, expected",
    [("exit", "code 3"), ("sigkill", "SIGKILL"), ("segfault", "SIGSEGV")],
)
def test_worker_death_raises_worker_crashed(remote, how, expected, census):
    with using(remote):
        with pytest.raises(parmap.WorkerCrashedError) as info:
            parmap.parmap(die(how), range(40), chunksize=4)
        error = info.value
        if remote == "ray":  # Ray reports no exit code or signal: the causes are named instead
            assert "no exit code" in str(error)
            assert all(c in str(error) for c in ("os._exit", "segmentation fault", "OOM"))
        else:
            assert expected in str(error), str(error)
        assert 13 in error.items and "items in flight" in str(error)
        if how == "sigkill":
            assert "memory" in str(error)
        assert_next_call_works()


# 8. Ctrl-C in the caller ----------------------------------------------------------

CTRL_C_SCRIPT = """
import os, sys, time
from pathlib import Path
import parmap

out = Path(sys.argv[1])

def slow(x):
    (out / f"{x}.ran").touch()
    time.sleep(0.2)
    return x

if __name__ == "__main__":
    parmap.parmap(abs, range(4))        # warm: workers up
    print("ready", flush=True)
    try:
        parmap.parmap(slow, range(400), chunksize=1)
    except KeyboardInterrupt:
        print("interrupted", time.monotonic(), flush=True)
    time.sleep(1.0)
    print("ran", len(list(out.glob("*.ran"))), flush=True)
    assert parmap.parmap(abs, [-1, -2]) == [1, 2]
    print("next call ok", flush=True)
"""


def test_ctrl_c_interrupts_quickly_and_stops_workers(variant, tmp_path, census):
    script = tmp_path / "ctrl_c.py"
    script.write_text(textwrap.dedent(CTRL_C_SCRIPT))
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(marks)],
        env=env_for(variant), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.5)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    lines = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert "interrupted" in lines, f"no KeyboardInterrupt:\n{out}\n{err[-2000:]}"
    assert float(lines["interrupted"]) - sent < 5.0
    assert int(lines["ran"]) == ran(marks), "work kept running after Ctrl-C"
    assert ran(marks) < 100
    assert "next call ok" in out, err[-2000:]
    assert proc.returncode == 0, err[-2000:]


# 9. an abandoned imap ---------------------------------------------------------------


def test_abandoned_imap_cancels_pending_work(variant, tmp_path, census):
    with using(variant):
        stream = parmap.imap(marking(tmp_path, 0.05), range(1_000), chunksize=2)
        for i, _ in enumerate(stream):
            if i == 5:
                break
        stream.close()
        assert settled(tmp_path) < 100
        assert_next_call_works()


# 10. the caller is SIGKILLed ----------------------------------------------------------

KILLED_CALLER_SCRIPT = """
import time
import parmap

def slow(x):
    time.sleep(60)
    return x

if __name__ == "__main__":
    parmap.parmap(abs, range(4))
    print("ready", flush=True)
    parmap.parmap(slow, range(10), chunksize=1)
"""


def test_workers_exit_when_the_caller_is_killed(variant, tmp_path):
    if in_process(variant):
        pytest.skip(f"{variant} starts no worker process")
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(KILLED_CALLER_SCRIPT))
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=env_for(variant), stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        family = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        assert family, "the caller started no worker process"
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        alive = family
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = {p for p in alive if psutil.pid_exists(p) and not _zombie(p)}
        assert not alive, f"orphans left: {[_cmdline(p) for p in alive]}"
    finally:
        proc.kill()


def _zombie(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _cmdline(pid):
    try:
        return " ".join(psutil.Process(pid).cmdline())[:200]
    except psutil.NoSuchProcess:
        return "(gone)"


# 12. timeout --------------------------------------------------------------------------


def test_timeout_raises_and_stops_running_work(variant, tmp_path, census):
    with using(variant):
        with pytest.raises(parmap.TimeoutError) as info:
            parmap.parmap(marking(tmp_path, 0.3), range(100), chunksize=1, timeout=1.0)
        assert isinstance(info.value, TimeoutError)
        after = ran(tmp_path)
        assert settled(tmp_path) == after, "work kept running after the timeout"
        assert after < 100
        assert_next_call_works()


# 13. retries ----------------------------------------------------------------------------


def test_retries_recover_from_a_crash(remote, tmp_path, census):
    with using(remote):
        fn = funcs.crash_once(tmp_path / "crashed")
        got = parmap.parmap(fn, range(30), chunksize=3, retries=2)
        assert got == [x * 10 for x in range(30)]
        assert (tmp_path / "crashed").exists()


def test_no_retries_fails_fast(remote, tmp_path, census):
    with using(remote):
        with pytest.raises(parmap.WorkerCrashedError):
            parmap.parmap(funcs.crash_once(tmp_path / "crashed"), range(30), chunksize=3, retries=0)
        assert_next_call_works()


# 15. a 10-million-item generator -----------------------------------------------------------


def test_imap_over_a_huge_generator_runs_in_bounded_memory(variant, census):
    # CI keeps the slower backends to 2M items; PARMAP_TEST_HUGE=10000000 runs all at 10M
    n = int(os.environ.get("PARMAP_TEST_HUGE", 0)) or (
        10_000_000 if variant in ("serial", "loky") else 2_000_000
    )
    me = psutil.Process()
    with using(variant):
        assert_next_call_works()
        before = me.memory_info().rss
        peak = before
        total = 0
        for i, value in enumerate(parmap.imap(abs, (-x for x in range(n)))):
            total += value
            if i % 200_000 == 0:
                peak = max(peak, me.memory_info().rss)
        assert total == n * (n - 1) // 2
        growth = (peak - before) / 2**20
        print(f"{variant}: {n:,} items, RSS growth {growth:.1f} MiB")
        assert growth < 200


# 5, 6, 7, 11, 14 on every start method (the contract suite runs the default one) ----------

START_VARIANTS = [v for v in VARIANTS if v.startswith("multiprocessing-")]


def _leave(x):
    if x == 5:
        raise SystemExit(4)
    return x


def _source():
    yield from range(5)
    raise OSError("disk gone")


def _make_lock(x):
    return threading.Lock() if x == 6 else x


CASES = {
    "5-unpicklable-fn": (parmap.SerializationError, "could not be pickled", None),
    "6-unpicklable-item": (parmap.SerializationError, "item 2", None),
    "6-unpicklable-result": (parmap.SerializationError, "item 6", None),
    "7-sys-exit": (SystemExit, None, None),
    "11-input-raises": (OSError, "disk gone", "item 5"),
    "14-initializer-raises": (parmap.WorkerInitializationError, "initializer refuses", None),
}


def _run_case(case):
    lock = threading.Lock()
    if case == "5-unpicklable-fn":
        return parmap.parmap(lambda x: (lock, x)[1], range(10))
    if case == "6-unpicklable-item":
        return parmap.parmap(funcs.square, [1, 2, threading.Lock(), 4], chunksize=10)
    if case == "6-unpicklable-result":
        return parmap.parmap(_make_lock, range(10), chunksize=10)
    if case == "7-sys-exit":
        return parmap.parmap(_leave, range(10))
    if case == "11-input-raises":
        return parmap.parmap(funcs.square, _source())
    return parmap.parmap(funcs.square, range(10), initializer=funcs.init_fails)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("start_variant", START_VARIANTS)
def test_errors_before_and_around_the_work_on_every_start_method(start_variant, case, census):
    kind, message, note = CASES[case]
    with using(start_variant):
        with pytest.raises(kind, match=message) as info:
            _run_case(case)
        if note is not None:
            assert note in "\n".join(info.value.__notes__)
        if kind is SystemExit:
            assert info.value.code == 4
        assert_next_call_works()  # case 16


# 17. a long DEAP run: many small calls ------------------------------------------------------


def test_many_small_calls_do_not_leak(variant, census):
    me = psutil.Process()

    def family():
        return len(children())

    with using(variant):
        for _ in range(50):  # warm up pools, caches, allocator
            parmap.parmap(abs, range(300))
        procs, fds, rss = family(), me.num_fds(), me.memory_info().rss
        for _ in range(500):
            assert parmap.parmap(abs, range(300))[-1] == 299
        growth = (me.memory_info().rss - rss) / 2**20
        print(f"{variant}: 500 calls: processes {procs}->{family()}, fds {fds}->{me.num_fds()}, "
              f"RSS +{growth:.1f} MiB")  # fmt: skip
        assert family() <= procs
        assert me.num_fds() <= fds + 4
        assert growth < 50


class _LosesData(ThreadsBackend):
    """The threads backend, but the first batch holding item 3 comes back lost the way
    a Dask batch does whose share() value died with other workers (its own worker
    lives): as collateral, or (``own``) as an ordinary crash."""

    name = "loses-data"
    own = False

    def __init__(self, workers=None, **options):
        super().__init__(workers, **options)
        self.lost = 0

    def submit(self, prepared, items):
        if 3 in items and self.lost < 2:
            self.lost += 1
            future = cf.Future()
            future.set_exception(LookupError("a value this batch needed was lost"))
            return future
        return super().submit(prepared, items)

    def translate(self, exc, future):
        if isinstance(exc, LookupError):
            return parmap.WorkerCrashedError(str(exc), collateral=not self.own)
        return super().translate(exc, future)


class _LosesItsOwn(_LosesData):
    name = "loses-its-own"
    own = True


@pytest.mark.parametrize("lossy", [_LosesData, _LosesItsOwn])
def test_a_batch_lost_as_collateral_is_sent_again_for_free(lossy):
    """A collateral loss does not count against retries=; a batch's own crash does."""
    parmap.register_backend(lossy.name, lossy)
    try:
        options = {"backend": lossy.name, "workers": 2, "chunksize": 2}
        if lossy.own:
            with pytest.raises(parmap.WorkerCrashedError, match="was lost"):
                parmap.parmap(funcs.square, range(10), **options)
            parmap.shutdown(lossy.name)
            got = parmap.parmap(funcs.square, range(10), return_exceptions=True, **options)
            assert [type(g) for g in got[2:4]] == [parmap.WorkerCrashedError] * 2
            assert got[:2] + got[4:] == [0, 1, 16, 25, 36, 49, 64, 81]
        else:
            assert parmap.parmap(funcs.square, range(10), **options) == [x * x for x in range(10)]
    finally:
        parmap.shutdown(lossy.name)
        _registry._specs.pop(lossy.name)
