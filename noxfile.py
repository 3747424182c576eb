"""Sessions a contributor runs by name, and what CI (``.ci/run``) runs.

    nox -l                       list the sessions
    nox -s tests-3.12            the whole suite on Python 3.12 (tests-3.10 ... tests-3.13)
    nox -s core-3.13             the contract, DEAP, SCOOP and compatibility suites on Python
                                 3.13, with the newest engine versions an install picks (not the
                                 tests marked slow; the fault suite runs in floors and tests-3.X)
    nox -s contract-3.12         the contract and compatibility suites alone
    nox -s floors                the oldest versions pyproject.toml allows, on the oldest Python
                                 that has wheels for all of them: contract, fault and
                                 compatibility suites
    nox -s lint                  ruff, ruff format --check, mypy (and lint-imports if configured)
    nox -s readme                the README's two set-up commands, verbatim, in a fresh venv
                                 and a fresh HOME (.ci/readme.py)
    nox -s tests-3.12 -- -k dask -x      arguments after -- go to pytest

Interpreters: nox looks for ``python3.X`` on PATH; interpreters that pyenv installed but did
not put on PATH (a CI machine of this project's kind) are found under ``$(pyenv root)``.
Each session installs into its own fresh environment with uv when it is installed (much
faster than pip for Ray's large wheels), else with virtualenv and pip; every session prints
the versions it tested.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import nox
from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - nox itself running on 3.10
    import tomli as tomllib

ROOT = Path(__file__).parent
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
FLOOR_PYTHON = "3.10"  # the oldest Python with wheels for every floor (ray 2.9: 3.8-3.11)
# On the Pythons besides CI's full run (3.11): what depends on the interpreter's version
# (pickling functions and DEAP's run-time classes, the SCOOP launcher's tracebacks and exit
# codes, engine wheels built for it). The fault suite (signals, killed engines) runs at the
# floors on 3.10 and in the full suite on 3.11; CI's budget keeps it to those two.
CORE_SUITES = [
    "tests/test_contract.py",
    "tests/test_deap.py",
    "tests/test_scoop.py",
    "tests/test_compat.py",
    "tests/test_custom_backend.py",
]
CONTRACT_SUITES = ["tests/test_contract.py", "tests/test_compat.py"]
FLOOR_SUITES = ["tests/test_contract.py", "tests/test_faults.py", "tests/test_compat.py"]
LINTED = ["parmap", "tests", "examples", "benchmarks", "noxfile.py", ".ci"]
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.download_python = "never"  # interpreters come from this machine, never a download
nox.options.sessions = ["lint", "tests-3.11"]


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split("."))


def _find_pyenv_pythons() -> None:
    """Put pyenv's interpreters for PYTHONS at the front of PATH where PATH lacks them.

    pyenv's shims only run the versions selected with ``pyenv global``/``local``, so a
    shim on PATH does not count as finding the interpreter.
    """
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    found = []
    for wanted in PYTHONS:
        on_path = shutil.which(f"python{wanted}")
        if on_path and "shims" not in Path(on_path).parts:
            continue
        candidates = [
            path
            for path in (root / "versions").glob(f"{wanted}.*")
            if re.fullmatch(r"\d+\.\d+\.\d+", path.name) and (path / "bin" / "python").exists()
        ]
        if candidates:
            newest = max(candidates, key=lambda path: _version_key(path.name))
            found.append(str(newest / "bin"))
    if found:
        os.environ["PATH"] = os.pathsep.join([*found, os.environ.get("PATH", "")])


_find_pyenv_pythons()


def _report_versions(session: nox.Session) -> None:
    """Print the interpreter and the engine versions this session tests."""
    session.run("python", str(ROOT / ".ci" / "versions.py"))


def _install(session: nox.Session, *args: str) -> None:
    session.install("-e", ".[all]", *args)
    _report_versions(session)


def _pytest(session: nox.Session, *default: str) -> None:
    # A fresh parmap state per session: no PARMAP_* setting leaks in from the caller.
    env: dict[str, str | None] = {n: None for n in os.environ if n.startswith("PARMAP_")}
    session.run("python", "-m", "pytest", *(session.posargs or default), env=env)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole suite (the README's test command) on one Python."""
    _install(session)
    _pytest(session)


@nox.session(python=PYTHONS)
def core(session: nox.Session) -> None:
    """The contract, DEAP, SCOOP and compatibility suites on one Python, newest engine
    versions, with the example external backend installed (the contract suite runs on it)."""
    _install(session, "-e", "examples/custom_backend")
    _pytest(session, "-m", "not slow", *CORE_SUITES)


@nox.session(python=PYTHONS)
def contract(session: nox.Session) -> None:
    """The contract and compatibility suites on one Python, newest engine versions."""
    _install(session)
    _pytest(session, *CONTRACT_SUITES)


def floor_constraints() -> list[str]:
    """``name==X`` for every ``name>=X`` in pyproject.toml's dependencies and extras.

    Returns:
        The constraint lines, sorted: the oldest version of each requirement that
        pyproject.toml allows (extras are dropped: a constraint names a distribution).
    """
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [*project.get("dependencies", [])]
    for extra in project.get("optional-dependencies", {}).values():
        lines += extra
    floors: dict[str, Version] = {}
    for line in lines:
        requirement = Requirement(line)
        if requirement.name == project["name"]:
            continue  # the self-reference of the "all" extra
        for spec in requirement.specifier:
            if spec.operator == ">=":  # two extras may name one package: the higher floor wins
                floors[requirement.name] = max(
                    Version(spec.version), floors.get(requirement.name, Version("0"))
                )
    return sorted(f"{name}=={version}" for name, version in floors.items())


@nox.session(python=FLOOR_PYTHON)
def floors(session: nox.Session) -> None:
    """The oldest versions pyproject.toml allows: contract and fault suites."""
    constraints = Path(session.create_tmp()) / "floors.txt"
    constraints.write_text("\n".join(floor_constraints()) + "\n")
    session.log("floors: " + ", ".join(floor_constraints()))
    _install(session, "-c", str(constraints))
    _pytest(session, *FLOOR_SUITES)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff, ruff format --check and mypy; lint-imports when pyproject.toml configures it."""
    checks_imports = "[tool.importlinter]" in (ROOT / "pyproject.toml").read_text()
    session.install("-e", ".[all]", *(["import-linter"] if checks_imports else []))
    session.run("ruff", "check", *LINTED)
    session.run("ruff", "format", "--check", *LINTED)
    session.run("mypy")
    if checks_imports:
        session.run("lint-imports")


@nox.session(venv_backend="none")
def readme(session: nox.Session) -> None:
    """The README's two set-up commands, verbatim, in a fresh venv and a fresh HOME."""
    session.run("python", str(ROOT / ".ci" / "readme.py"), *session.posargs)
