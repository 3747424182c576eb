"""The user's path, without the test configuration's presets.

Every other test runs with the presets of conftest.py: the calibration set to
built-in defaults (``PARMAP_CALIBRATION=defaults``), ``PARMAP_*`` variables
cleared, the test functions shipped by value, ``parmap.shutdown()`` after each
test. A preset hides a path: here each one is taken away. These tests run
scripts in fresh interpreters with a fresh ``HOME`` (so no calibration file, no
cache) and no ``PARMAP_*`` variable, as a new user's first run would:

- the first ``backend="auto"`` call calibrates once (in a child process), says
  so on stderr, and returns the right results; the second reads the file;
- first calls racing, in two processes sharing a HOME and in two threads of
  one process: one calibrates, the others run on the built-in defaults; both
  right; the file whole;
- Ctrl-C during that calibration: KeyboardInterrupt at once, no file, no
  temporary file, no process left;
- no backend named at all; ``parmap info`` on a fresh machine;
- a fitness function in the user's own module next to the script (not shipped
  by value), on every process backend;
- a script that never calls ``parmap.shutdown()`` exits, leaving no process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from conftest import BACKENDS

pytestmark = pytest.mark.timeout(600)

# Variables a new user does not have: parmap's own, and those the test machinery sets.
NOT_A_USERS = ("PARMAP_", "RAY_", "DASK_", "PYTEST_")


@pytest.fixture
def home(tmp_path) -> Path:
    """A fresh HOME, as on a new machine."""
    path = tmp_path / "home"
    path.mkdir()
    return path


def user_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(NOT_A_USERS)}
    env.pop("XDG_CACHE_HOME", None)
    return {**env, "HOME": str(home), **extra}


def calibration_file(home: Path) -> Path:
    return home / ".cache" / "parmap" / "calibration.json"


def write_script(directory: Path, code: str, name: str = "script.py") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(code))
    return path


def run(script: Path, home: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script)], cwd=script.parent, env=user_env(home, **env),
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def leftovers(home: Path) -> list[str]:
    """Temporary calibration files left in the cache folder."""
    folder = calibration_file(home).parent
    return sorted(p.name for p in folder.glob("*.tmp")) if folder.exists() else []


FIRST_AUTO_CALL = """
    import time
    import parmap

    if __name__ == "__main__":
        started = time.monotonic()
        squares = parmap.parmap(lambda x: x * x, range(20_000), backend="auto")
        assert squares == [x * x for x in range(20_000)], "wrong results"
        print(f"seconds {time.monotonic() - started:.1f}")
"""


def test_the_first_auto_call_calibrates_once_and_the_second_reads_it(home, tmp_path):
    script = write_script(tmp_path, FIRST_AUTO_CALL)
    first = run(script, home)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "calibrating backend='auto' for this machine" in first.stderr
    document = json.loads(calibration_file(home).read_text())
    assert document["models"] and document["startup"]
    print("first auto call, calibration included:", first.stdout.strip())
    second = run(script, home)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "calibrating" not in second.stderr, "the second call calibrated again"
    assert leftovers(home) == []


def test_racing_first_calls_in_two_processes(home, tmp_path):
    script = write_script(tmp_path, FIRST_AUTO_CALL)
    env = user_env(home)
    racers = [
        subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [racer.communicate(timeout=400) for racer in racers]
    for racer, (_, err) in zip(racers, outputs, strict=True):
        assert racer.returncode == 0, err[-3000:]
    calibrated = sum("calibrating backend='auto'" in err for _, err in outputs)
    assert calibrated == 1, "exactly one process measures the machine"
    json.loads(calibration_file(home).read_text())  # whole
    assert leftovers(home) == []


def test_racing_first_calls_in_two_threads(home, tmp_path):
    script = write_script(
        tmp_path,
        """
        import threading
        import parmap

        def work(out, k):
            out[k] = parmap.parmap(lambda x: x + k, range(5_000), backend="auto")

        if __name__ == "__main__":
            out = {}
            threads = [threading.Thread(target=work, args=(out, k)) for k in (1, 2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert out[1] == [x + 1 for x in range(5_000)]
            assert out[2] == [x + 2 for x in range(5_000)]
            print("both right")
        """,
    )
    done = run(script, home)
    assert done.returncode == 0 and "both right" in done.stdout, done.stderr[-3000:]
    assert done.stderr.count("calibrating backend='auto'") == 1
    json.loads(calibration_file(home).read_text())


def test_ctrl_c_during_the_first_calibration(home, tmp_path):
    script = write_script(tmp_path, FIRST_AUTO_CALL)
    proc = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, env=user_env(home),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    family: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not family:
            time.sleep(0.5)
            family = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        assert family, "no calibration process started"
        time.sleep(2.0)  # in the middle of measuring
        family |= {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        answered = time.monotonic() - sent
    finally:
        proc.kill()
    assert "KeyboardInterrupt" in err, err[-3000:]
    assert answered < 10, f"Ctrl-C took {answered:.1f} s"
    assert not calibration_file(home).exists(), "an interrupted calibration left a file"
    assert leftovers(home) == []
    deadline = time.monotonic() + 30
    alive = family
    while alive and time.monotonic() < deadline:
        time.sleep(0.5)
        alive = {p for p in alive if psutil.pid_exists(p) and _running(p)}
    assert not alive, f"processes left: {[_cmdline(p) for p in alive]}"


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())[:200]
    except psutil.NoSuchProcess:
        return "(gone)"


def test_no_backend_named_at_all(home, tmp_path):
    script = write_script(
        tmp_path,
        """
        import parmap

        def fitness(x):
            return sum(i * i for i in range(x))

        if __name__ == "__main__":
            print(parmap.get_backend())
            assert parmap.parmap(fitness, range(300)) == [fitness(x) for x in range(300)]
            print("ok")
        """,
    )
    done = run(script, home)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
    assert "the default" in done.stdout


def test_parmap_info_on_a_fresh_machine(home):
    info = subprocess.run(
        [sys.executable, "-m", "parmap._cli", "info"], env=user_env(home),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert info.returncode == 0, info.stderr[-3000:]
    assert "does not exist yet" in info.stdout
    assert "the first backend='auto' call measures this machine" in info.stdout
    assert not calibration_file(home).exists(), "parmap info must not calibrate"


PROCESS_BACKENDS = [b for b in BACKENDS if b not in ("serial",)]


@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_a_function_from_the_users_own_module(backend, home, tmp_path):
    """The fitness lives in a module beside the script, imported by name, not shipped by
    value (the suite ships its own functions by value): workers must find it."""
    write_script(tmp_path, "def fitness(x):\n    return 3 * x\n", "my_fitness.py")
    script = write_script(
        tmp_path,
        f"""
        import parmap
        from my_fitness import fitness

        if __name__ == "__main__":
            got = parmap.parmap(fitness, range(100), backend={backend!r}, workers=2)
            assert got == [3 * x for x in range(100)]
            print("ok")
        """,
    )
    done = run(script, home, PARMAP_CALIBRATION="defaults")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_a_script_that_never_shuts_down_exits_cleanly(backend, home, tmp_path):
    script = write_script(
        tmp_path,
        f"""
        import os
        import parmap

        if __name__ == "__main__":
            parmap.parmap(abs, range(-50, 50), backend={backend!r}, workers=2)
            print(os.getpid())
        """,
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, env=user_env(home),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        _, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    deadline = time.monotonic() + 30
    left = _session(proc.pid)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _session(proc.pid)
    assert not left, f"left running after exit: {[_cmdline(p) for p in left]}"


def _session(sid: int) -> set[int]:
    """Live processes of the script's session (its workers, engines, helpers)."""
    found = set()
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getsid(process.pid) == sid and process.status() != psutil.STATUS_ZOMBIE:
                found.add(process.pid)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return found


def test_a_script_without_the_main_guard_is_told_so(home, tmp_path):
    """multiprocessing's workers import the main script again as they start (forkserver,
    spawn): a script that calls parmap when imported gets an error that says so."""
    script = write_script(
        tmp_path,
        """
        import parmap

        def fitness(x):
            return x * x

        print(parmap.parmap(fitness, range(100), backend="multiprocessing", workers=2)[:3])
        """,
    )
    done = run(script, home, timeout=120, PARMAP_CALIBRATION="defaults")
    assert done.returncode != 0
    assert 'if __name__ == "__main__":' in done.stderr.splitlines()[-1] or any(
        "WorkerCrashedError" in line and "__main__" in line for line in done.stderr.splitlines()
    ), done.stderr[-3000:]
    assert "os._exit()" not in done.stderr and "retries=N" not in done.stderr
