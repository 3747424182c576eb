"""``python -m parmap.scoop._remote -m MODULE ARGS...``: run MODULE, ending with its SSH session.

Dask's SSH deployment starts each host's processes through an SSH session,
with the session's channel as their standard input. This wrapper, placed in
front of the module as the hosts' "Python" (``remote_python``), ties the
process's life to that session: when the connection closes for any reason
(the cluster stopping, the launcher killed, the network gone), standard input
ends, and the process gets SIGTERM, which Dask's ``dask_spec`` answers by
closing its workers; if it has not exited after ``GRACE`` seconds, it exits.

Without it, a process whose session closed runs on until Dask notices the
scheduler is gone, and OpenSSH does not deliver the cluster's kill signal to
every session (not to a root login's, for one).
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time

GRACE = 10.0  # seconds for a graceful close after SIGTERM


def _watch_stdin() -> None:
    """Wait for the end of standard input, then stop this process."""
    try:
        while os.read(0, 65536):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE)
    os._exit(1)


def main(argv: list[str]) -> None:
    """Run ``-m MODULE ARGS...`` as ``python -m`` would, watching standard input.

    Args:
        argv: ``["-m", module, *args]``.
    """
    if len(argv) < 2 or argv[0] != "-m":
        sys.exit("usage: python -m parmap.scoop._remote -m MODULE [ARGS...]")
    sys.argv = [argv[1], *argv[2:]]
    threading.Thread(target=_watch_stdin, name="parmap-session-watch", daemon=True).start()
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
