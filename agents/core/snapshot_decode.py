"""A snapshot's decoder: the tree of ``snapshot_encode`` back to objects
(``snapshot.decode``), checking every node. Pure: no I/O, no clock."""
from __future__ import annotations

import base64
import collections
import enum
import types
from typing import Any

from .snapshot_common import SnapshotError, _all_scalar, _NoGC, _own_reduce, _resolve, _slots


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
