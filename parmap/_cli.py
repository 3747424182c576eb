"""The ``parmap`` command: ``parmap info`` and ``parmap bench``."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import platform
import sys
from collections.abc import Sequence

from parmap import _calibration, _config, _registry
from parmap._errors import ParmapError
from parmap.backends._base import default_workers

__all__ = ["main"]


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _state(name: str) -> str:
    """Whether backend ``name`` is installed, with its packages' versions, or how to install it."""
    entry = _registry.spec(name)
    if not _registry.is_installed(name):
        return f"not installed: pip install 'parmap-backends[{entry.extra or name}]'"
    try:
        why = _registry.unusable_reason(name)
    except Exception as exc:
        return f"installed, but it cannot be loaded: {exc}"
    if why is not None:
        return f"installed, not usable here: {why}"
    packages = (entry.provider,) if entry.provider else entry.requires
    versions = ", ".join(f"{p} {_version(p) or '?'}" for p in packages)
    return f"installed ({versions or 'standard library'})"


def info(out: object = None) -> str:
    """Describe the installed backends and the choice a call would make now.

    Returns:
        The text printed by ``parmap info``.
    """
    lines = [
        f"parmap {_version('parmap-backends') or 'unknown'} on Python "
        f"{platform.python_version()} ({platform.system()}, {default_workers()} CPUs usable)",
        "",
        "backends:",
    ]
    for name in _registry.backend_names():
        if name == _registry.AUTO:
            continue
        lines.append(f"  {name:<16} {_state(name)}")
    lines.append("")
    try:
        lines.append("a call now would use " + str(_config.get_backend()))
    except ParmapError as exc:
        lines.append(f"a call now would fail: {exc}")
    calibration = _calibration.load(default_workers(), calibrate=False)
    lines.append(f"backend='auto' calibration: {calibration.describe()}")
    for backend in _registry.live_backends():
        lines.append(f"live: {backend.name} {backend.describe()}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``parmap`` console script."""
    parser = argparse.ArgumentParser(prog="parmap", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="installed backends and the one a call would pick now")
    commands.add_parser("bench", help="benchmark the backends (see: parmap bench --help)",
                        add_help=False)  # fmt: skip
    args, rest = parser.parse_known_args(argv)
    if args.command == "info":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        print(info())
        return 0
    if importlib.util.find_spec("parmap.bench") is None:  # pragma: no cover
        print("parmap bench is not available in this version", file=sys.stderr)
        return 2
    from parmap.bench import main as bench_main

    return bench_main(rest)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
