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

The encoder and decoder are in ``snapshot_encode`` and ``snapshot_decode``,
what both use (names, slots, ``SnapshotError``) in ``snapshot_common``.

Pure: no I/O, no clock.
"""
from __future__ import annotations

import hashlib
import zlib
from typing import Any

import orjson

from .snapshot_common import ALLOWED_PREFIXES, SnapshotError, _NoGC
from .snapshot_decode import decode
from .snapshot_encode import encode

__all__ = ["ALLOWED_PREFIXES", "FORMAT", "MAGIC", "SnapshotError", "decode", "encode", "fingerprint",
           "header_of", "pack", "unpack"]

FORMAT = 1
MAGIC = b"LSNAP"


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
