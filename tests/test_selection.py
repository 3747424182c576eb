"""Choosing the backend: argument > config() > $PARMAP_BACKEND > default; errors."""

from __future__ import annotations

import subprocess
import sys

import funcs
import pytest

import parmap
from parmap import _registry


def test_public_surface_is_pinned():
    assert parmap.__all__ == sorted(parmap.__all__)
    assert set(parmap.__all__) == {
        "Backend", "BackendChoice", "BackendNotInstalledError", "ItemTimeoutError", "ParmapError",
        "PerWorker", "SerializationError", "Shared", "TimeoutError", "UnknownBackendError",
        "WorkerCrashedError", "WorkerInitializationError", "__version__",
        "available_backends", "backend_names", "config", "explain", "get_backend", "imap", "parmap",
        "per_worker", "register_backend", "share", "shutdown", "starmap",
    }  # fmt: skip


def test_import_is_light():
    code = (
        "import sys, parmap; heavy = [m for m in ('ray', 'dask', 'distributed', 'loky', 'deap',"
        " 'tqdm', 'numpy') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_default_is_ray_when_installed_else_loky():
    expected = "ray" if _registry.is_installed("ray") else "loky"
    choice = parmap.get_backend()
    assert (choice.name, choice.source) == (expected, "default")


def test_precedence(monkeypatch):
    monkeypatch.setenv("PARMAP_BACKEND", "multiprocessing")
    assert parmap.get_backend().name == "multiprocessing"
    assert parmap.get_backend().source == "environment"
    with parmap.config(backend="loky", workers=3):
        assert parmap.get_backend().name == "loky"
        assert parmap.get_backend().workers == 3
        with parmap.config(backend="serial"):
            assert parmap.get_backend().name == "serial"
            assert parmap.get_backend().workers == 3
        assert parmap.get_backend("serial").source == "argument"
    assert parmap.get_backend().name == "multiprocessing"


def test_environment_is_read_at_call_time(monkeypatch):
    monkeypatch.setenv("PARMAP_BACKEND", "serial")
    assert parmap.parmap(funcs.pid, range(3)) == [__import__("os").getpid()] * 3


def test_unknown_backend_lists_names_and_origin(monkeypatch):
    with pytest.raises(ValueError, match=r"valid names are: .*loky.*serial"):
        parmap.parmap(funcs.square, [1], backend="nope")
    monkeypatch.setenv("PARMAP_BACKEND", "rayy")
    with pytest.raises(parmap.UnknownBackendError, match=r"\$PARMAP_BACKEND='rayy'"):
        parmap.parmap(funcs.square, [1])


def test_bad_workers_from_environment(monkeypatch):
    monkeypatch.setenv("PARMAP_WORKERS", "many")
    with pytest.raises(ValueError, match="PARMAP_WORKERS"):
        parmap.parmap(funcs.square, [1], backend="serial")


def test_missing_backend_names_the_extra():
    parmap.register_backend(
        "imaginary", "imaginary_engine.backend:Backend", requires=("imaginary_engine",),
        extra="imaginary",
    )  # fmt: skip
    try:
        with pytest.raises(parmap.BackendNotInstalledError, match=r"parmap-backends\[imaginary\]"):
            parmap.parmap(funcs.square, [1], backend="imaginary")
        with pytest.raises(ImportError):  # also an ImportError: no silent fallback
            parmap.parmap(funcs.square, [1], backend="imaginary")
    finally:
        _registry._specs.pop("imaginary")


def test_third_party_backend_registers():
    from parmap.backends._serial import SerialBackend

    class Echo(SerialBackend):
        name = "echo"

    parmap.register_backend("echo", Echo)
    try:
        assert parmap.parmap(funcs.square, range(4), backend="echo") == [0, 1, 4, 9]
        assert "echo" in parmap.backend_names()
        with pytest.raises(ValueError, match="exists"):
            parmap.register_backend("echo", Echo)
    finally:
        parmap.shutdown("echo")
        _registry._specs.pop("echo")


def test_config_rejects_unknown_options():
    with pytest.raises(TypeError, match="unknown option"), parmap.config(backnd="loky"):
        pass


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"workers": 0}, "workers"),
        ({"chunksize": -1}, "chunksize"),
        ({"timeout": 0}, "timeout"),
        ({"retries": -1}, "retries"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        parmap.parmap(funcs.square, [1], backend="serial", **kwargs)


def test_not_callable():
    with pytest.raises(TypeError, match="callable"):
        parmap.parmap(42, [1], backend="serial")
    with pytest.raises(TypeError, match="at least one iterable"):
        parmap.parmap(funcs.square, backend="serial")


def test_deap_style_registration(backend):
    pytest.importorskip("deap")
    from deap import base

    toolbox = base.Toolbox()
    with parmap.config(backend=backend):
        toolbox.register("map", parmap.parmap)
        assert list(toolbox.map(funcs.square, [1, 2, 3])) == [1, 4, 9]


def test_info_cli():
    out = subprocess.run(
        [sys.executable, "-m", "parmap._cli", "info"], capture_output=True, text=True, check=True
    ).stdout
    assert "serial" in out and "a call now would use" in out
