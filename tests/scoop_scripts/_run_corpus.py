"""Test helper, not a corpus script: run several corpus scripts in one launcher process.

    python -m parmap.scoop --backend ray _run_corpus.py map_basic.py argv_exit.py::3::x ...

Each script runs exactly as the launcher runs it (``_launcher.run_script``), so a
backend that is slow to start (Ray, Dask) starts once for the whole corpus.
Prints ``### <script>`` before and ``### <script> exit <code>`` after each one.
"""

import sys

from parmap.scoop import _launcher, _runtime

if __name__ == "__main__":
    for spec in sys.argv[1:]:
        name, *args = spec.split("::")
        print(f"### {name}", flush=True)
        try:
            code = _launcher.run_script(name, args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        sys.stdout.flush()
        sys.stderr.flush()
        print(f"### {name} exit {code}", flush=True)
        _runtime._constants.clear()  # each script is a new program: its own constants
