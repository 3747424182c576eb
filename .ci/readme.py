"""Run the README's set-up commands verbatim, as a new user would.

The commands are read from README.md at run time, never copied: they are the lines of the
first ```bash block under the heading that starts with "## Set-up", minus comments and
blank lines. So an edit to the README changes what CI runs.

Each command runs with bash, from the repository root, with no standard input, in a
fresh virtual environment (made with ``python -m venv`` by the interpreter running this
script, then activated: its ``bin`` first on PATH, VIRTUAL_ENV set) and a fresh HOME,
XDG_CACHE_HOME and XDG_CONFIG_HOME, without any PARMAP_* variable. pip's cache stays
where the caller's is (PIP_CACHE_DIR), outside the fresh HOME: downloads are shared,
state is not.

    python .ci/readme.py                     every command, in a new venv and HOME
    python .ci/readme.py --print             print the commands, run nothing
    python .ci/readme.py --count             print how many commands there are
    python .ci/readme.py --venv V --home H --only 2
                                             command 2 only, in venv V and HOME H (each
                                             made if missing), so CI times them apart
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Set-up"


def setup_commands(readme: Path = ROOT / "README.md") -> list[str]:
    """The README's set-up commands, in order.

    Args:
        readme: the Markdown file to read.

    Returns:
        The non-comment, non-blank lines of the first ```bash block after the
        first heading that starts with "## Set-up".

    Raises:
        SystemExit: if the heading or the block is missing, or the block is empty.
    """
    text = readme.read_text(encoding="utf-8")
    headings = [m for m in re.finditer(r"^## .*$", text, re.M) if m.group().startswith(HEADING)]
    start = headings[0].end() if headings else None
    if start is None:
        raise SystemExit(f"{readme}: no heading starting with {HEADING!r}")
    block = re.search(r"^```bash\n(.*?)^```", text[start:], re.M | re.S)
    if block is None:
        raise SystemExit(f"{readme}: no ```bash block under {HEADING!r}")
    commands = [
        line.strip()
        for line in block.group(1).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not commands:
        raise SystemExit(f"{readme}: the ```bash block under {HEADING!r} has no command")
    return commands


def user_environment(venv: Path, home: Path) -> dict[str, str]:
    """The environment of a new user in an activated venv: fresh HOME, no PARMAP_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARMAP_")}
    pip_cache = os.environ.get("PIP_CACHE_DIR") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pip"
    )
    for name in ("PYTHONHOME", "PYTHONPATH", "CONDA_PREFIX"):
        env.pop(name, None)
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_CONFIG_HOME=str(home / ".config"),
        PIP_CACHE_DIR=pip_cache,
        VIRTUAL_ENV=str(venv),
        PATH=os.pathsep.join([str(venv / "bin"), os.environ.get("PATH", "")]),
    )
    return env


def run(command: str, venv: Path, home: Path) -> int:
    """Run one command as the README shows it; print its wall time; return its exit code."""
    print(f"$ {command}", flush=True)
    started = time.monotonic()
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=ROOT,
        env=user_environment(venv, home),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    took = time.monotonic() - started
    print(f"-- exit code {done.returncode} after {took:.0f} s: {command}", flush=True)
    return done.returncode


def prepare(venv: Path | None, home: Path | None) -> tuple[Path, Path, list[Path]]:
    """The venv and HOME to use, each made if missing; also the ones to delete at the end."""
    made = []
    if home is None:
        home = Path(tempfile.mkdtemp(prefix="parmap-readme-home-"))
        made.append(home)
    home.mkdir(parents=True, exist_ok=True)
    if venv is None:
        venv = Path(tempfile.mkdtemp(prefix="parmap-readme-venv-"))
        made.append(venv)
    if not (venv / "bin" / "python").exists():
        print(f"-- a fresh venv: {sys.executable} -m venv {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    return venv, home, made


def main(argv: list[str] | None = None) -> int:
    """Run the README's set-up commands; return the first non-zero exit code, else 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="print the commands only")
    parser.add_argument("--count", action="store_true", help="print how many there are")
    parser.add_argument("--only", type=int, help="run only command N (from 1)")
    parser.add_argument("--venv", type=Path, help="the venv to use (made if missing)")
    parser.add_argument("--home", type=Path, help="the HOME to use (made if missing)")
    args = parser.parse_args(argv)
    commands = setup_commands()
    if args.print or args.count:
        print(len(commands) if args.count else "\n".join(commands))
        return 0
    if args.only is not None and not 1 <= args.only <= len(commands):
        parser.error(f"--only must be between 1 and {len(commands)}")
    chosen = commands if args.only is None else [commands[args.only - 1]]
    venv, home, made = prepare(args.venv, args.home)
    try:
        codes = [run(command, venv.resolve(), home.resolve()) for command in chosen]
    finally:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
    return next((code for code in codes if code), 0)


if __name__ == "__main__":
    sys.exit(main())
