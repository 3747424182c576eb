"""What each function costs per item, learned on the workers and kept across calls.

The batching policy (``parmap._batching``) sizes batches from it and
``backend="auto"`` (``parmap._auto``) predicts with it, so the second DEAP
generation starts where the first left off. A function is known by its cost
name (:func:`cost_name`): its qualified name, plus the identity of a callable
object (two instances of one class may cost very differently); a call's
batches also learn under the content digest of the pickled function.

What was learned about a callable object is forgotten when it dies (a later
object may get its id); modules that keep their own tables per cost name
subscribe with :func:`on_forget`.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from types import BuiltinFunctionType, FunctionType
from typing import Any

__all__ = ["CostMemory", "cost_name", "costs", "on_forget", "qualname"]

_SMOOTHING = 0.3


@dataclass(slots=True)
class _Estimate:
    seconds_per_item: float
    samples: int


class CostMemory:
    """Per-item costs learned on workers, kept across calls (LRU, thread-safe)."""

    def __init__(self, capacity: int = 512) -> None:
        self._capacity = capacity
        self._by_key: OrderedDict[str, _Estimate] = OrderedDict()
        self._lock = threading.Lock()
        self._sampled = 0
        self.version = 0  # changes with every update: answers derived from costs stay valid

    def get(self, *keys: str | None) -> float | None:
        """The remembered cost for the first of ``keys`` that is known."""
        with self._lock:
            for key in keys:
                if key is not None and key in self._by_key:
                    self._by_key.move_to_end(key)
                    return self._by_key[key].seconds_per_item
        return None

    def peek(self, key: str) -> float | None:
        """The remembered cost for ``key``, read without the lock or an LRU refresh
        (auto's in-place path reads it on every call, a fraction of a microsecond)."""
        estimate = self._by_key.get(key)
        return None if estimate is None else estimate.seconds_per_item

    def sample(self, key: str, items: int, seconds: float) -> None:
        """Fold in an in-place call's timing when the function got more than twice as
        costly (``auto`` may then go parallel), and on every 8th call otherwise: a
        locked update costs more than the rest of a small call's overhead, and a
        function that got cheaper stays serial anyway."""
        self._sampled += 1
        known = self._by_key.get(key)
        if known is None or self._sampled % 8 == 0 or seconds > 2 * known.seconds_per_item * items:
            self.observe((key,), items, seconds)

    def observe(self, keys: tuple[str | None, ...], items: int, seconds: float) -> float:
        """Fold one batch's timing into every key; return the updated estimate."""
        sample = max(seconds, 1e-9) / max(items, 1)
        estimate = sample
        with self._lock:
            self.version += 1
            by_key = self._by_key
            for key in keys:
                if key is None:
                    continue
                old = by_key.get(key)
                if old is None:
                    by_key[key] = _Estimate(sample, 1)
                    if len(by_key) > self._capacity:
                        by_key.popitem(last=False)
                    estimate = sample
                    continue
                weight = max(_SMOOTHING, 1.0 / (old.samples + 1))
                old.seconds_per_item += weight * (sample - old.seconds_per_item)
                old.samples += 1
                by_key.move_to_end(key)
                estimate = old.seconds_per_item
        return estimate

    def forget(self, key: str) -> None:
        with self._lock:
            self.version += 1
            self._by_key.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self.version += 1
            self._by_key.clear()


costs = CostMemory()


def qualname(fn: Any) -> str:
    """``module.qualname`` of a function, a partial's function, a method or a callable object."""
    if type(fn) is FunctionType:  # the usual case, without getattr's caught AttributeError
        return f"{fn.__module__ or 'builtins'}.{fn.__qualname__}"
    while isinstance(fn, partial):
        fn = fn.func
    fn = getattr(fn, "__func__", fn)
    module = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}"


def cost_name(fn: Any) -> str:
    """What the cost memory knows ``fn`` by, cheap enough for every call: its name.

    A callable object's identity is added: two instances of one class (say, one
    fitness per problem size) may cost very differently. What was learned about
    an object is forgotten when it dies, since a later object may get its id.
    """
    if type(fn) is FunctionType:
        return qualname(fn)
    known = _live_objects.get(id(fn))  # a callable object seen before (and alive: same id)
    if known is not None:
        return known
    base = fn
    while isinstance(base, partial):
        base = base.func
    base = getattr(base, "__func__", base)
    if isinstance(base, (FunctionType, BuiltinFunctionType, type)):
        return qualname(base)
    key = id(base)
    name = _live_objects.get(key)
    if name is None:
        name = f"{qualname(base)}@{key:x}"
        try:
            weakref.finalize(base, _forget, key, name).atexit = False
        except TypeError:  # no weak references to it: its id may name a later object too
            return name
        _live_objects[key] = name
    return name


_live_objects: dict[int, str] = {}  # id -> cost name of the callable objects seen alive
_forget_hooks: list[Callable[[str], None]] = []


def on_forget(hook: Callable[[str], None]) -> None:
    """Call ``hook(cost_name)`` when a callable object dies (see :func:`cost_name`)."""
    _forget_hooks.append(hook)


def _forget(key: int, name: str) -> None:
    _live_objects.pop(key, None)
    costs.forget("name:" + name)
    for hook in _forget_hooks:
        hook(name)
