"""Snapshots of the core's state as data (JSON), never as code.

A rebuild that re-reads a whole season is slow (1.7 M raw records: 37 s
before a worker is ready), so the live worker saves each partition's state
now and then (``agents.live``) and a new owner loads it and replays only the
records after it. This module is the pure part: an object graph of the core
(the ``Engine``, the ``ClockGuard``, and whatever they hold) to bytes and
back.

Generic on purpose: it walks any object of a class defined in the core's
modules (``agents.core.*``) by its attributes (``__slots__`` along the MRO,
and ``__dict__``), so a dataclass added or changed in the core is saved
without an edit here. What it knows:

- ``None``, booleans, strings, integers (of any size), floats (``inf`` and
  ``nan`` too), bytes;
- lists, dicts (any hashable keys: tuples, objects, enums...), sets,
  frozensets, tuples, deques;
- members of the core's enums (by name);
- instances of the core's classes (created without calling ``__init__``, the
  attributes set as saved), or, for a class that defines ``__reduce__``
  (``timefmt.IdPrefix``: a hash object), rebuilt by calling the class with the
  arguments it gives;
- the core's functions (the engine's handler table), by qualified name, and
  methods bound to a saved object.

Shared objects stay shared and cycles are kept (a skater's run points to its
race which lists its competitors which list the run): every mutable object
(list, dict, set, deque, instance) is written once with a number and later
occurrences refer to it.

Not code: a class or function is looked up by name among modules already
imported whose name starts with ``agents.core.``; nothing is imported and
nothing else can be named. A snapshot that names anything else, or is
truncated, corrupt (a checksum over the body), of another format version or
another fingerprint (the core's configuration and code: see ``pack``) raises
``SnapshotError``: the caller ignores it and rebuilds from the log.

Pure: no I/O, no clock.
"""
from __future__ import annotations

import base64
import collections
import enum
import gc
import hashlib
import math
import sys
import types
import zlib
from typing import Any

import orjson

FORMAT = 1
MAGIC = b"LSNAP"
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


class _Unset:
    pass


# -- encoding ------------------------------------------------------------------
#
# Scalars are themselves (str, int within 64 bits, finite float, bool, None);
# every JSON array is a tagged node:
#   ["r", n]                  the object numbered n (written before)
#   ["l", n, [items]]         list          ["s", n, [items]]   set
#   ["L", n, [scalars]]       list of scalars only (kept as they are)
#   ["d", n, {k: v}]          dict with str keys
#   ["S", n, {k: scalar}]     dict with str keys and scalar values only
#   ["D", n, [k, v, k, v]]    dict with other keys
#   ["q", n, maxlen, [items]] deque
#   ["t", [items]]            tuple         ["F", [items]]      frozenset
#   ["o", n, c, [values], {extra}]  instance of class table entry c: values of
#                             its slots (["u"]: unset), extra: its __dict__
#   ["x", n, "mod:Qual", [args]]    instance rebuilt as Qual(*args) (__reduce__)
#   ["e", "mod:Qual", name]   enum member
#   ["g", "mod:qualname"]     function      ["m", obj, name]    bound method
#   ["b", base64]             bytes         ["i", "digits"]     int beyond 64 bits
#   ["f", "inf"|"-inf"|"nan"] float         ["u"]               unset slot


def _all_scalar(vals) -> bool:
    """Values JSON keeps as they are: str, bool, None, 64-bit int."""
    for v in vals:
        t = type(v)
        if t is str or t is bool or v is None or (t is int and -_I64 <= v < _I64):
            continue
        return False
    return True


class _Encoder:
    __slots__ = ("memo", "classes", "class_ix", "keep")

    def __init__(self) -> None:
        self.memo: dict[int, int] = {}
        self.classes: list[list] = []       # [name, [slot names], has __dict__]
        self.class_ix: dict[type, int] = {}
        self.keep: list = []                # objects numbered (their ids stay valid)

    def _number(self, obj) -> int:
        n = len(self.memo)
        self.memo[id(obj)] = n
        self.keep.append(obj)
        return n

    def enc(self, x):
        t = type(x)
        if t is str or t is bool or x is None:
            return x
        if t is int:
            return x if -_I64 <= x < _I64 else ["i", str(x)]
        if t is float:
            return x if math.isfinite(x) else ["f", repr(x)]
        enc = self.enc
        if t is tuple:   # (not numbered: immutable)
            return ["t", [v if type(v) is str else enc(v) for v in x]]
        n = self.memo.get(id(x))
        if n is not None:
            return ["r", n]
        if t is list:
            n = self._number(x)
            if _all_scalar(x):
                return ["L", n, x]
            return ["l", n, [enc(v) for v in x]]
        if t is dict:
            n = self._number(x)
            if all(type(k) is str for k in x):
                if _all_scalar(x.values()):
                    return ["S", n, x]       # (an event's fields: most of the state)
                return ["d", n, {k: enc(v) for k, v in x.items()}]
            flat: list = []
            for k, v in x.items():
                flat.append(enc(k))
                flat.append(enc(v))
            return ["D", n, flat]
        if t is set:
            n = self._number(x)
            return ["s", n, [enc(v) for v in x]]
        if t is frozenset:
            return ["F", [enc(v) for v in x]]
        if t is bytes:
            return ["b", base64.b64encode(x).decode("ascii")]
        if t is collections.deque:
            n = self._number(x)
            return ["q", n, x.maxlen, [enc(v) for v in x]]
        if isinstance(x, enum.Enum):
            return ["e", _qualname(t), x.name]
        if t is types.FunctionType:
            return ["g", _qualname(x)]
        if t is types.MethodType:
            return ["m", enc(x.__self__), x.__func__.__name__]
        if isinstance(x, type) or not _allowed_module(getattr(t, "__module__", "") or ""):
            raise SnapshotError(f"cannot save a {t.__module__}.{t.__qualname__}: not the core's")
        if _own_reduce(t):
            rv = x.__reduce__()
            if (not isinstance(rv, tuple) or len(rv) != 2 or rv[0] is not t
                    or not isinstance(rv[1], tuple)):
                raise SnapshotError(f"{t.__qualname__}.__reduce__ gives more than (class, args)")
            n = self._number(x)
            return ["x", n, _qualname(t), [enc(a) for a in rv[1]]]
        return self._instance(x, t)

    def _instance(self, x, t: type):
        ci = self.class_ix.get(t)
        if ci is None:
            ci = self.class_ix[t] = len(self.classes)
            self.classes.append([_qualname(t), list(_slots(t)), hasattr(x, "__dict__")])
        n = self._number(x)
        enc = self.enc
        vals = []
        for name in self.classes[ci][1]:
            try:
                v = getattr(x, name)
            except AttributeError:
                vals.append(["u"])
                continue
            tv = type(v)
            vals.append(v if tv is str or tv is bool or v is None or
                        (tv is int and -_I64 <= v < _I64) else enc(v))
        d = getattr(x, "__dict__", None)
        extra = {k: enc(v) for k, v in d.items()} if d else {}
        return ["o", n, ci, vals, extra]


class _NoGC:
    """The cyclic collector paused while a big tree is built (it would run
    over the whole heap again and again as the containers are allocated)."""

    def __enter__(self):
        self.was = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc):
        if self.was:
            gc.enable()


def encode(obj) -> dict:
    """``obj`` as a JSON-able tree (see the node list above)."""
    e = _Encoder()
    with _NoGC():
        root = e.enc(obj)
    return {"classes": e.classes, "root": root}


# -- decoding ------------------------------------------------------------------


class _Decoder:
    __slots__ = ("memo", "classes")

    def __init__(self, classes) -> None:
        self.memo: dict[int, Any] = {}
        if type(classes) is not list:
            raise SnapshotError("bad class table")
        self.classes = []
        for entry in classes:
            if type(entry) is not list or len(entry) != 3 or type(entry[1]) is not list:
                raise SnapshotError("bad class table entry")
            cls = _resolve(entry[0])
            if not isinstance(cls, type) or issubclass(cls, (enum.Enum, BaseException)):
                raise SnapshotError(f"{entry[0]} is not a plain class")
            have = set(_slots(cls))
            for name in entry[1]:
                if name not in have:
                    raise SnapshotError(f"{entry[0]} has no slot {name!r} (another version?)")
            self.classes.append((cls, entry[1], bool(entry[2])))

    def _set(self, n, obj):
        if type(n) is not int or n in self.memo:
            raise SnapshotError(f"bad object number {n!r}")
        self.memo[n] = obj
        return obj

    def dec(self, x):
        t = type(x)
        if t is str or t is int or t is float or t is bool or x is None:
            return x
        if t is not list or not x:
            raise SnapshotError(f"bad node {type(x).__name__}")
        tag = x[0]
        dec = self.dec
        try:
            if tag == "r":
                return self.memo[x[1]]
            if tag == "t":
                return tuple([dec(v) for v in x[1]])
            if tag == "l":
                out: Any = self._set(x[1], [])
                out.extend([dec(v) for v in x[2]])
                return out
            if tag == "L":
                out = self._set(x[1], x[2])
                if type(out) is not list or not _all_scalar(out):
                    raise SnapshotError("bad scalar list")
                return out
            if tag == "S":
                out = self._set(x[1], x[2])
                if type(out) is not dict or not _all_scalar(out.values()):
                    raise SnapshotError("bad scalar dict")
                return out
            if tag == "d":
                out = self._set(x[1], {})
                for k, v in x[2].items():
                    out[k] = dec(v)
                return out
            if tag == "D":
                out = self._set(x[1], {})
                flat = x[2]
                if len(flat) % 2:
                    raise SnapshotError("odd dict")
                for i in range(0, len(flat), 2):
                    k = dec(flat[i])
                    out[k] = dec(flat[i + 1])
                return out
            if tag == "s":
                out = self._set(x[1], set())
                for v in x[2]:
                    out.add(dec(v))
                return out
            if tag == "F":
                return frozenset([dec(v) for v in x[1]])
            if tag == "q":
                maxlen = x[2]
                if maxlen is not None and type(maxlen) is not int:
                    raise SnapshotError("bad deque")
                out = self._set(x[1], collections.deque(maxlen=maxlen))
                out.extend([dec(v) for v in x[3]])
                return out
            if tag == "b":
                return base64.b64decode(x[1].encode("ascii"), validate=True)
            if tag == "i":
                if type(x[1]) is not str or len(x[1]) > 400:
                    raise SnapshotError("bad int")
                return int(x[1])
            if tag == "f":
                if x[1] not in ("inf", "-inf", "nan"):
                    raise SnapshotError("bad float")
                return float(x[1])
            if tag == "e":
                cls = _resolve(x[1])
                if not isinstance(cls, type) or not issubclass(cls, enum.Enum):
                    raise SnapshotError(f"{x[1]} is not an enum")
                return cls[x[2]]
            if tag == "g":
                fn = _resolve(x[1])
                if type(fn) is not types.FunctionType:
                    raise SnapshotError(f"{x[1]} is not a function")
                return fn
            if tag == "m":
                obj = dec(x[1])
                name = x[2]
                if type(name) is not str or name.startswith("__"):
                    raise SnapshotError("bad method name")
                fn = getattr(type(obj), name, None)
                if type(fn) is not types.FunctionType:
                    raise SnapshotError(f"{name} is not a method")
                return types.MethodType(fn, obj)
            if tag == "x":
                cls = _resolve(x[2])
                if not isinstance(cls, type) or not _own_reduce(cls):
                    raise SnapshotError(f"{x[2]} is not rebuilt from arguments")
                args = [dec(a) for a in x[3]]
                return self._set(x[1], cls(*args))
            if tag == "o":
                cls, names, has_dict = self.classes[x[2]]
                obj = self._set(x[1], object.__new__(cls))
                vals = x[3]
                if len(vals) != len(names):
                    raise SnapshotError(f"{cls.__qualname__}: {len(vals)} values for {len(names)} slots")
                setattr_ = object.__setattr__
                for name, v in zip(names, vals):
                    if type(v) is list and len(v) == 1 and v[0] == "u":
                        continue
                    setattr_(obj, name, dec(v))
                extra = x[4]
                if extra:
                    if not has_dict or type(extra) is not dict:
                        raise SnapshotError(f"{cls.__qualname__}: attributes without a __dict__")
                    for name, v in extra.items():
                        if name.startswith("__"):
                            raise SnapshotError("bad attribute name")
                        setattr_(obj, name, dec(v))
                return obj
        except SnapshotError:
            raise
        except (IndexError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SnapshotError(f"bad {tag!r} node: {type(exc).__name__}: {exc}") from None
        raise SnapshotError(f"unknown node {tag!r}")


def decode(tree) -> Any:
    if type(tree) is not dict:
        raise SnapshotError("not a snapshot tree")
    d = _Decoder(tree.get("classes"))
    try:
        with _NoGC():
            return d.dec(tree.get("root"))
    except RecursionError:
        raise SnapshotError("nested too deeply") from None


# -- the bytes -------------------------------------------------------------------
#
# b"LSNAP" + b"\n" + header JSON + b"\n" + zlib(body JSON). The header: format
# version, fingerprint, the caller's metadata, the body's length and a blake2b
# of fingerprint, metadata and body.


def fingerprint(*parts) -> str:
    """A short digest of what a snapshot is only valid for: the core's
    configuration (its dataclasses' repr) and, from the caller, the code."""
    text = "\x1f".join(repr(p) for p in parts)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _sum(fp, meta, body: bytes) -> str:
    """The checksum: of the fingerprint and metadata too (a flipped offset is damage)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(orjson.dumps([fp, meta]))
    h.update(b"\n")
    h.update(body)
    return h.hexdigest()


def pack(obj, fp: str, meta: dict | None = None, level: int = 1) -> bytes:
    """``obj`` as snapshot bytes, valid only where ``fingerprint`` is the same."""
    tree = encode(obj)
    with _NoGC():
        body = zlib.compress(orjson.dumps(tree), level)
    del tree
    meta = meta or {}
    header = {"format": FORMAT, "fp": fp, "meta": meta, "size": len(body), "sum": _sum(fp, meta, body)}
    return MAGIC + b"\n" + orjson.dumps(header) + b"\n" + body


def header_of(data: bytes) -> dict:
    """The header of snapshot bytes (checks magic, format, shape; not the body)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SnapshotError("not bytes")
    data = bytes(data[:65536]) if len(data) > 65536 else bytes(data)
    parts = data.split(b"\n", 2)
    if len(parts) < 3 or parts[0] != MAGIC:
        raise SnapshotError("not a lapstream snapshot")
    try:
        header = orjson.loads(parts[1])
    except orjson.JSONDecodeError:
        raise SnapshotError("corrupt header") from None
    if type(header) is not dict or header.get("format") != FORMAT:
        raise SnapshotError(f"snapshot format {header.get('format') if type(header) is dict else '?'}, "
                            f"this code reads {FORMAT}")
    if type(header.get("meta")) is not dict or type(header.get("size")) is not int:
        raise SnapshotError("corrupt header")
    return header


def unpack(data: bytes, fp: str) -> tuple[dict, Any]:
    """(metadata, object) of snapshot bytes made with the same fingerprint;
    raises ``SnapshotError`` for anything else."""
    header = header_of(data)
    if header.get("fp") != fp:
        raise SnapshotError(f"fingerprint {header.get('fp')!r} is not this core's {fp!r} "
                            f"(another version or configuration)")
    data = bytes(data)
    start = data.index(b"\n", len(MAGIC) + 1) + 1
    body = data[start:]
    if len(body) != header["size"]:
        raise SnapshotError(f"truncated: {len(body)} of {header['size']} bytes")
    if _sum(header.get("fp"), header["meta"], body) != header.get("sum"):
        raise SnapshotError("checksum mismatch (corrupt)")
    try:
        with _NoGC():
            tree = orjson.loads(zlib.decompress(body))
    except (zlib.error, orjson.JSONDecodeError) as exc:
        raise SnapshotError(f"corrupt body: {exc}") from None
    return header["meta"], decode(tree)
