"""What a snapshot may name and how it walks an object (``snapshot``):
the core's classes and functions by ``module:qualname`` (looked up among the
modules already imported, never imported), their slots, the scalars JSON
keeps as they are, and the collector paused while a big tree is built.

Pure: no I/O, no clock.
"""
from __future__ import annotations

import gc
import sys
from typing import Any

ALLOWED_PREFIXES = ("agents.core.",)
_I64 = 1 << 63


class SnapshotError(Exception):
    """The bytes are not a snapshot this code can load (the reason says why)."""


def _allowed_module(name: str) -> bool:
    return any(name.startswith(p) for p in ALLOWED_PREFIXES)


def _qualname(obj) -> str:
    mod = getattr(obj, "__module__", None) or ""
    if not _allowed_module(mod):
        raise SnapshotError(f"{obj!r} is not the core's ({mod or 'no module'}): cannot be saved")
    return f"{mod}:{obj.__qualname__}"


def _resolve(name: str):
    """A class or function of the core by ``module:qualname`` (already imported)."""
    if type(name) is not str or ":" not in name:
        raise SnapshotError(f"bad name {name!r}")
    mod_name, qual = name.split(":", 1)
    if not _allowed_module(mod_name):
        raise SnapshotError(f"{name}: not a module of the core")
    mod = sys.modules.get(mod_name)
    if mod is None:
        raise SnapshotError(f"{name}: module not loaded")
    obj: Any = mod
    for part in qual.split("."):
        if part.startswith("__") or part == "<locals>":
            raise SnapshotError(f"{name}: not a plain name")
        obj = getattr(obj, part, None)
        if obj is None:
            raise SnapshotError(f"{name}: not found")
    if getattr(obj, "__module__", None) != mod_name:
        raise SnapshotError(f"{name}: defined elsewhere")
    return obj


_SLOTS_CACHE: dict[type, tuple[str, ...]] = {}


def _slots(cls: type) -> tuple[str, ...]:
    """The slot attribute names of ``cls`` (along its MRO, mangled as stored)."""
    got = _SLOTS_CACHE.get(cls)
    if got is not None:
        return got
    names: list[str] = []
    for c in reversed(cls.__mro__):
        s = c.__dict__.get("__slots__", ())
        if isinstance(s, str):
            s = (s,)
        for n in s:
            if n in ("__dict__", "__weakref__"):
                continue
            if n.startswith("__") and not n.endswith("__"):
                n = f"_{c.__name__.lstrip('_')}{n}"
            if n not in names:
                names.append(n)
    got = _SLOTS_CACHE[cls] = tuple(names)
    return got


def _own_reduce(cls: type) -> bool:
    for c in cls.__mro__:
        if c is object:
            return False
        if "__reduce__" in c.__dict__ or "__reduce_ex__" in c.__dict__:
            return True
    return False


def _all_scalar(vals) -> bool:
    """Values JSON keeps as they are: str, bool, None, 64-bit int."""
    for v in vals:
        t = type(v)
        if t is str or t is bool or v is None or (t is int and -_I64 <= v < _I64):
            continue
        return False
    return True


class _NoGC:
    """The cyclic collector paused while a big tree is built (it would run
    over the whole heap again and again as the containers are allocated)."""

    def __enter__(self):
        self.was = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc):
        if self.was:
            gc.enable()
