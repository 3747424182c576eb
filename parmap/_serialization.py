"""How functions, items and results cross process boundaries.

Everything goes through cloudpickle, so lambdas, closures, locally defined and
decorated functions (``functools.wraps``, DEAP's ``tools.DeltaPenalty``) work on
every backend, including workers that were not forked from the caller.

Runtime-made classes travel by value. cloudpickle ships classes it cannot find
by name (DEAP's ``addEphemeralConstant`` classes) with a tracker id that maps
them back to the original on return. Classes it *can* find by name in the caller
but which a fresh worker lacks (DEAP's ``creator.create`` classes) fall through
to their metaclass's copyreg reducer, ``deap.creator.meta_create`` in DEAP >= 1.4.
Left alone, that reducer builds a new class on every unpickle and rebinds
``deap.creator.<Name>``, so an individual coming back from a worker would replace
the caller's ``creator.Individual`` with a look-alike. :func:`loads` intercepts
it and reuses an equivalent class that already exists: class identity holds in
the caller, and each worker builds each class once.

Code on a worker may also read such a class as a module attribute before any
instance has arrived (``tools.initRepeat(creator.Individual, ...)`` inside the
mapped function). So :func:`dumps_function` ships every ``creator`` class of
the caller ahead of the function, and :func:`loads_function` installs them
first. Classes are only found in modules the caller already imported: parmap
never imports DEAP itself.
"""

from __future__ import annotations

import copyreg
import gc
import hashlib
import io
import itertools
import operator
import pickle
import sys
import types
from collections import ChainMap
from collections.abc import Callable
from typing import Any

import cloudpickle

__all__ = ["digest", "dumps", "dumps_function", "loads", "loads_function"]

PROTOCOL = 5


def dumps(obj: Any) -> bytes:
    """Serialize ``obj`` with cloudpickle (protocol 5)."""
    with io.BytesIO() as file:
        _Pickler(file, protocol=PROTOCOL).dump(obj)
        return file.getvalue()


def pickled_size(obj: Any) -> int:
    """The size of ``obj`` as :func:`dumps` writes it, without copying the large buffers
    that protocol 5 can keep out of band (a numpy array's data: counted, not written);
    0 if it cannot be pickled (the call itself will say why)."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        with io.BytesIO() as file:
            _Pickler(file, protocol=PROTOCOL, buffer_callback=buffers.append).dump(obj)
            return file.tell() + sum(memoryview(b).nbytes for b in buffers)
    except Exception:
        return 0


def _code_reduce(code: types.CodeType) -> Any:
    """cloudpickle's reduction of a code object, with the code's own file name.

    cloudpickle 3.1.3 writes ``<dynamic-code>`` instead (a payload that does not
    depend on where the function was defined); a traceback from a worker then
    no longer names the file of a function shipped by value, such as one defined
    in the caller's script.
    """
    constructor, args = _CLOUDPICKLE_CODE_REDUCE(code)
    kept = tuple(
        code.co_filename if type(arg) is str and arg == _DYNAMIC_FILENAME else arg for arg in args
    )  # (type first: comparing co_code's bytes to a str would warn under python -b)
    return constructor, kept


_CLOUDPICKLE_CODE_REDUCE = cloudpickle.Pickler.dispatch_table.get(types.CodeType)
_DYNAMIC_FILENAME = "<dynamic-code>"


def _repeat_reduce(repeat: itertools.repeat[Any]) -> Any:
    """An ``itertools.repeat`` rebuilt with its element and the repeats it has left.

    gh-101588: Python 3.14 no longer pickles itertools objects (3.12 and 3.13 warn),
    and DEAP's ``tools.DeltaPenalty(feasible, delta)`` keeps ``repeat(delta)`` in the
    closure of every evaluation it decorates. The element is read without advancing
    the repeat: an endless one gives the same element to ``next()`` forever, and a
    finite one is the only object it refers to besides its type.
    """
    left = operator.length_hint(repeat, -1)
    if left < 0:  # endless: next() leaves it as it was
        return itertools.repeat, (next(repeat),)
    held = [obj for obj in gc.get_referents(repeat) if obj is not type(repeat)]
    if len(held) != 1:  # another implementation: let pickle say what it can do
        return repeat.__reduce_ex__(PROTOCOL)
    return itertools.repeat, (held[0], left)


_OWN_REDUCERS: dict[type, Callable[[Any], Any]] = {itertools.repeat: _repeat_reduce}
if _CLOUDPICKLE_CODE_REDUCE:
    _OWN_REDUCERS[types.CodeType] = _code_reduce


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, with exceptions pickled by their own ``__reduce__``, code objects
    keeping their file name (see :func:`_code_reduce`) and ``itertools.repeat`` pickled
    on every Python (see :func:`_repeat_reduce`).

    python-tblib#87: the copyreg reducers that tblib installs for every exception
    class (``distributed`` does so on import, so on every Dask worker) drop the
    attributes set by a builtin ``__init__``, such as ``SystemExit.code``.
    """

    dispatch_table = ChainMap(_OWN_REDUCERS, cloudpickle.Pickler.dispatch_table)

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, BaseException) and _tblib_reduces(type(obj)):
            return obj.__reduce_ex__(PROTOCOL)
        return super().reducer_override(obj)


def _tblib_reduces(cls: type) -> bool:
    reducer = copyreg.dispatch_table.get(cls)
    return getattr(reducer, "__module__", None) == "tblib.pickling_support"


def digest(blob: bytes) -> str:
    """A short content hash used as a cache key across calls and processes."""
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def dumps_function(fn: Any) -> bytes:
    """Serialize a function together with the runtime-made classes it may need."""
    return dumps((runtime_classes(), fn))


def loads_function(blob: bytes) -> Any:
    """Install the runtime-made classes shipped by :func:`dumps_function`; return the function."""
    _classes, fn = loads(blob)
    return fn


def runtime_classes() -> list[type]:
    """Classes made at run time that a fresh worker would lack (DEAP's ``creator`` classes)."""
    creator = sys.modules.get("deap.creator")
    meta = getattr(creator, "MetaCreator", None)
    if meta is None:
        return []
    return [value for value in vars(creator).values() if isinstance(value, meta)]


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        hook = _CONSTRUCTOR_HOOKS.get((module, name))
        if hook is not None:
            return hook
        return super().find_class(module, name)


def loads(blob: bytes) -> Any:
    """Deserialize what :func:`dumps` produced, reusing runtime-made classes."""
    return _Unpickler(io.BytesIO(blob)).load()


def _deap_meta_create(name: str, base: type, dct: dict[str, Any]) -> type:
    creator = sys.modules["deap.creator"]
    existing = getattr(creator, name, None)
    if existing is not None and getattr(existing, "reduce_args", None) == (name, base, dct):
        return existing
    return creator.meta_create(name, base, dct)


def _lazy(module: str, fn: Callable[..., type]) -> Callable[..., type]:
    def hook(*args: Any) -> type:
        __import__(module)
        return fn(*args)

    return hook


_CONSTRUCTOR_HOOKS: dict[tuple[str, str], Callable[..., Any]] = {
    ("deap.creator", "meta_create"): _lazy("deap.creator", _deap_meta_create),
}
