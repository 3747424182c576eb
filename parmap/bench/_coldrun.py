"""A cold run of ``parmap bench --fn``: one target, K calls, in a fresh process.

    parent                                   python -m parmap.bench._coldrun REQUEST
    ------                                   -------------------------------------
    write request.json, items.pkl       ->   import the user's function (its spec)
    start the child (own session,            read the items; no backend is running
      $PYTHONPATH += the user's folders)     K times: time a call of the target (the
    wait (deadline), read response.json <-     first starts its pool or cluster), then
                                               a serial map call on the same items
                                             stop the backend; write response.json

The parent's warm pools do not count: the child starts everything it uses. The
serial map call after each call of the target is the run's own reference:
timed in the same minutes, it is slowed by the same bursts of other load, so
the run's ratio holds on a busy machine where two runs minutes apart would not.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ColdRun", "ColdRunRequest", "run_cold"]


@dataclass
class ColdRunRequest:
    """What a cold run measures."""

    fn_spec: str
    target: str
    calls: int
    workers: int
    ray_cap: int = 500


@dataclass
class ColdRun:
    """A cold run's measured calls (all K of them).

    Attributes:
        target: what ran (a backend or a peer).
        calls: the calls of the run (K).
        times: seconds of each call.
        serial_times: seconds of the serial map call right after each call.
        results_match: whether the first call returned serial map's results.
        error: why the run failed ('' when it did not).
    """

    target: str
    calls: int
    times: list[float] = field(default_factory=list)
    serial_times: list[float] = field(default_factory=list)
    results_match: bool = True
    error: str = ""

    @property
    def ok(self) -> bool:
        """Whether the run measured at least its first call."""
        return not self.error and bool(self.times)

    @property
    def warm_call(self) -> float:
        """The median of the calls after the first (the first call when there is no other)."""
        return statistics.median(self.times[1:]) if len(self.times) > 1 else self.times[0]

    @property
    def startup(self) -> float:
        """First call minus a warm call: what starting the workers cost."""
        return max(0.0, self.times[0] - self.warm_call)

    @property
    def total(self) -> float:
        """Seconds of the whole run of K calls, start-up included."""
        return sum(self.times)

    @property
    def ratio(self) -> float:
        """The run's time over the serial map calls timed beside it (below 1: faster)."""
        return self.total / max(sum(self.serial_times), 1e-12)

    @property
    def ratio_error(self) -> float | None:
        """The standard error of :attr:`ratio` from the scatter of the warm pairs.

        The ratio estimator's: the warm calls' residuals ``t - r·s`` around the
        pairs' ratio ``r``, summed, over the run's serial time. The first call
        (start-up) is one sample with no scatter to measure. None under 3 calls.
        """
        pairs = list(zip(self.times[1:], self.serial_times[1:], strict=True))
        if len(pairs) < 2:
            return None
        r = sum(t for t, _ in pairs) / max(sum(s for _, s in pairs), 1e-12)
        squares = sum((t - r * s) ** 2 for t, s in pairs)
        return math.sqrt(squares * len(pairs) / (len(pairs) - 1)) / max(
            sum(self.serial_times), 1e-12
        )


def run_cold(
    request: ColdRunRequest, items_file: Path, paths: list[str], timeout: float
) -> ColdRun:
    """Run one cold run in a fresh process and return what it measured.

    Args:
        request: what to run.
        items_file: the pickled ``(items, expected results)``.
        paths: folders the user's modules need (prepended to ``$PYTHONPATH``).
        timeout: seconds before the child and everything it started are killed.

    Returns:
        The run (with ``error`` set if the child failed or timed out).
    """
    from parmap.bench._loader import worker_path

    with tempfile.TemporaryDirectory(prefix="parmap-cold-") as folder:
        request_file, response_file = Path(folder, "request.json"), Path(folder, "response.json")
        request_file.write_text(
            json.dumps({**asdict(request), "items": str(items_file), "out": str(response_file)})
        )
        env = {**os.environ, "PYTHONPATH": worker_path(paths), "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "parmap.bench._coldrun", str(request_file)]
        with open(Path(folder, "stderr.txt"), "w+") as stderr:
            error = _wait(command, env, stderr, timeout)
            stderr.seek(0)
            tail = stderr.read()[-2000:]
        if not error and response_file.exists():
            return ColdRun(**json.loads(response_file.read_text()))
        why = error or "the child wrote no result"
        last = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
        message = f"{why}: {last.strip()}\nits stderr ends with:\n{tail}"
        return ColdRun(request.target, request.calls, error=message)


def _wait(command: list[str], env: dict[str, str], stderr: Any, timeout: float) -> str:
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
    )
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        return f"the cold run did not finish within {timeout:.0f} s and was stopped"
    finally:  # also on Ctrl-C: the child is in its own session and did not get it
        if process.poll() is None:
            _stop_group(process)
    return (
        "" if process.returncode == 0 else f"the cold run exited with status {process.returncode}"
    )


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop the child and what it started (its own session), gently first."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _child(request_file: str) -> int:
    """The child's side: measure the run described in ``request_file``."""
    import cloudpickle

    from parmap.bench._loader import load_function
    from parmap.bench._targets import MapTarget, Target, make_target

    spec = json.loads(Path(request_file).read_text())
    fn = load_function(spec["fn_spec"]).obj
    with open(spec["items"], "rb") as file:
        items, expected = cloudpickle.load(file)
    target: Target = make_target(spec["target"], spec["workers"], spec["ray_cap"])
    reference = MapTarget()
    run = ColdRun(spec["target"], spec["calls"])
    try:
        for call in range(run.calls):
            for runner, times in ((target, run.times), (reference, run.serial_times)):
                start = time.perf_counter()
                results = runner.run(fn, items)
                times.append(time.perf_counter() - start)
                if call == 0 and runner is target:
                    run.results_match = results == expected
    finally:
        target.stop()
    Path(spec["out"]).write_text(json.dumps(asdict(run)))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
