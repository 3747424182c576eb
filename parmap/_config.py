"""Which backend a call uses, and with which settings.

Each setting is taken from the first place that has it::

    parmap(..., backend="loky")          explicit argument
    with parmap.config(backend="loky"):  innermost config() context (contextvars: per thread/task)
    PARMAP_BACKEND=loky                  environment, read at call time
    default                              the first installed of _registry.DEFAULTS
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from parmap import _registry

__all__ = ["BackendChoice", "config", "current_options", "get_backend", "getenv", "resolve"]

CONFIG_KEYS = frozenset(
    {"backend", "workers", "chunksize", "retries", "timeout", "progress", "address",
     "start_method", "item_timeout", "return_exceptions"}
)  # fmt: skip
ENV_VARS = {
    "backend": "PARMAP_BACKEND",
    "workers": "PARMAP_WORKERS",
    "start_method": "PARMAP_START_METHOD",
    "item_timeout": "PARMAP_ITEM_TIMEOUT",
    "return_exceptions": "PARMAP_RETURN_EXCEPTIONS",
}
_context: ContextVar[Mapping[str, Any]] = ContextVar("parmap_config", default=MappingProxyType({}))


@contextmanager
def config(**options: Any) -> Iterator[None]:
    """Set defaults for the parmap calls made inside the ``with`` block.

    Contexts nest (inner values win) and are per thread and per asyncio task.
    An explicit argument to :func:`parmap.parmap` still wins over them.

    Args:
        **options: any of ``backend``, ``workers``, ``chunksize``, ``retries``,
            ``timeout``, ``progress``, ``address``, ``start_method``,
            ``item_timeout``, ``return_exceptions``.

    Raises:
        TypeError: for an option parmap does not know.
    """
    unknown = set(options) - CONFIG_KEYS
    if unknown:
        raise TypeError(
            f"parmap.config() got unknown option(s) {sorted(unknown)}; "
            f"valid options are {sorted(CONFIG_KEYS)}"
        )
    if options.get("backend") is not None:
        _registry.check_name(options["backend"], source="config")
    merged = {**_context.get(), **{k: v for k, v in options.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def current_options() -> Mapping[str, Any]:
    """The options set by the enclosing ``config()`` contexts."""
    return _context.get()


def resolve(key: str, explicit: Any = None) -> tuple[Any, str]:
    """Return ``(value, source)`` for one setting, following the precedence above."""
    if explicit is not None:
        return explicit, "argument"
    context = _context.get()
    if context.get(key) is not None:
        return context[key], "config"
    env = ENV_VARS.get(key)
    raw = getenv(env).strip() if env else ""
    if raw:
        parse = _PARSERS.get(key)
        return (parse(raw) if parse else raw), "environment"
    return None, "default"


# The bytes-keyed dict behind os.environ on POSIX (CPython keeps it in step with
# every change made through os.environ). os.environ.get of an unset variable
# raises and catches a KeyError inside: 1.1 us here, against 0.3 us for a set
# one, and a call with backend="auto" reads three unset variables.
_ENVIRON_DATA = getattr(os.environ, "_data", None) if os.name == "posix" else None


def getenv(name: str) -> str:
    """``os.environ.get(name, "")``, without the cost of an exception when unset."""
    if type(_ENVIRON_DATA) is dict:
        raw = _ENVIRON_DATA.get(name.encode())
        return "" if raw is None else os.fsdecode(raw)
    return os.environ.get(name, "")


def _parse_workers(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(
            f"$PARMAP_WORKERS={raw!r} is not a whole number; set it to a positive integer"
        ) from None
    if value < 1:
        raise ValueError(f"$PARMAP_WORKERS={raw!r} must be at least 1")
    return value


def _parse_seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"$PARMAP_ITEM_TIMEOUT={raw!r} must be a positive number of seconds")
    return value


def _parse_flag(raw: str) -> bool:
    flag = raw.strip().lower()
    if flag in ("1", "true", "yes", "on"):
        return True
    if flag in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"$PARMAP_RETURN_EXCEPTIONS={raw!r}: use 1 or 0 (true/false, yes/no)")


_PARSERS = {
    "workers": _parse_workers,
    "item_timeout": _parse_seconds,
    "return_exceptions": _parse_flag,
}


@dataclass(frozen=True)
class BackendChoice:
    """The backend a call would use, and why.

    Attributes:
        name: the backend's registered name.
        source: ``"argument"``, ``"config"``, ``"environment"``, ``"default"``
            or ``"nested"`` (a call made on a worker runs there, serially).
        workers: the requested worker count, or None for the backend's default.
        workers_source: where ``workers`` came from (as ``source``).
    """

    name: str
    source: str
    workers: int | None
    workers_source: str = "default"

    @property
    def reason(self) -> str:
        """One sentence for humans (built on demand: calls are cheaper without it)."""
        if self.source == "nested":
            reason = f"backend {self.name!r}: a nested call on a worker runs in place"
        elif self.source == "default":
            why = _registry.default_reason(self.name)
            reason = f"backend {self.name!r}: the default, because {why}"
        else:
            reason = f"backend {self.name!r}: chosen by {_where(self.source, 'backend')}"
        if self.workers is not None:
            reason += f"; {self.workers} workers (from {_where(self.workers_source, 'workers')})"
        return reason

    def __str__(self) -> str:
        return self.reason


def _where(source: str, key: str) -> str:
    if source == "argument":
        return f"the {key}= argument"
    if source == "config":
        return "an enclosing parmap.config() block"
    return f"${ENV_VARS[key]}"


def get_backend(backend: Any = None, workers: int | None = None) -> BackendChoice:
    """Tell which backend a call with these arguments would use, and why.

    Args:
        backend: the ``backend=`` argument the call would pass, if any (a name,
            or a ``concurrent.futures.Executor``).
        workers: the ``workers=`` argument the call would pass, if any.

    Returns:
        A :class:`BackendChoice`; ``str()`` of it says why.

    Raises:
        UnknownBackendError: the chosen name is not a known backend.
    """
    name, source = resolve("backend", backend)
    count, count_source = resolve("workers", workers)
    # a name as is; an executor: the name it runs under
    name = _registry.default_backend() if name is None else _registry.name_of(name, source=source)
    key = (name, source, count, count_source)
    choice = _choices.get(key)
    if choice is None:  # making a frozen dataclass costs more than the rest of this function
        if len(_choices) >= 256:
            _choices.clear()
        choice = _choices[key] = BackendChoice(name, source, count, count_source)
    return choice


_choices: dict[tuple[str, str, int | None, str], BackendChoice] = {}
