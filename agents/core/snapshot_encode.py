"""A snapshot's encoder: an object graph of the core as a JSON-able tree
(``snapshot.encode``; the node list below). Pure: no I/O, no clock."""
from __future__ import annotations

import base64
import collections
import enum
import math
import types

from .snapshot_common import (_I64, SnapshotError, _all_scalar, _allowed_module, _NoGC, _own_reduce,
                              _qualname, _slots)

# -- the nodes -------------------------------------------------------------------
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



def encode(obj) -> dict:
    """``obj`` as a JSON-able tree (see the node list above)."""
    e = _Encoder()
    with _NoGC():
        root = e.enc(obj)
    return {"classes": e.classes, "root": root}
