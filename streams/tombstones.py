"""Tombstones on ``timing.records.ref``: a record lapstream set, taken back.

A record lapstream published there (a ``record_ref`` under its own key,
``agents.core.record_keys.own_record_key``) is withdrawn by a tombstone (a null
value) under that key: a consumer of the compacted topic sees the key
deleted, and compaction removes it. The ``record`` event with
``"withdrawn": true`` on ``timing.records`` is the fact for subscribers.

* ``withdrawal_of_tombstone(key)``: what the adapter gives the core for a
  tombstone (the core is pure and reads messages, not Kafka records): a
  ``record_ref`` of origin lapstream with ``"withdrawn": true`` built from
  the key alone (identity, race, holder; a tombstone has no time nor event
  time: ``t_us`` is -1, before every event, so it releases no race). A key
  that is not one lapstream writes is ``Rejected`` (dead-lettered).
* ``tombstone_line`` / ``tombstone_of_line``: the JSON line ``lapstream
  record`` writes for a tombstone on that topic, which ``lapstream replay``
  produces again as a tombstone under the same key (a round trip keeps it).
"""
from __future__ import annotations

import base64
import binascii

import orjson

from agents.core.record_keys import parse_own_record_key
from schemas.decode import Rejected, record_identity_problem
from streams.topics import RECORDS_REF

TOMBSTONE_KIND = "tombstone"   # a recorded line, not a v1 message


def withdrawal_of_tombstone(key: bytes | None) -> dict:
    """The core's message for a tombstone under ``key`` on ``timing.records.ref``."""
    if key is None:
        raise Rejected("bad_value", "a tombstone without a key on timing.records.ref")
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("bad_value", "a tombstone on timing.records.ref whose key is not UTF-8") from None
    parsed = parse_own_record_key(text)
    if parsed is None:
        raise Rejected("bad_value", "a tombstone on timing.records.ref whose key is not a record lapstream "
                                    "set (record|format|gender|distance|scope|race_id|holder): ignored")
    (rec, fmt, gender, dist, scope), race_id, holder = parsed
    why = record_identity_problem(rec, fmt, gender, dist, scope)   # (what decode checks of a record_ref)
    if why is not None:
        raise Rejected("bad_value", f"a tombstone on timing.records.ref for no record identity ({why}): ignored")
    return {"kind": "record_ref", "v": 1, "t_us": -1, "record": rec, "format": fmt, "gender": gender,
            "distance_m": dist, "scope": scope, "holder": holder, "origin": "lapstream",
            "race_id": race_id, "withdrawn": True, "tombstone": True}


def tombstone_line(topic: str, key: bytes | None) -> bytes:
    """The recorded line of a tombstone: its topic and key (as text to read, and
    exactly, base64)."""
    return orjson.dumps({
        "kind": TOMBSTONE_KIND, "v": 1, "topic": topic,
        "key": key.decode("utf-8", "backslashreplace") if key is not None else None,
        "key_b64": base64.b64encode(key).decode("ascii") if key is not None else None})


def tombstone_of_bytes(line: bytes) -> tuple[str, bytes] | None:
    """``tombstone_of_line`` of a line's bytes (None if not JSON)."""
    try:
        return tombstone_of_line(orjson.loads(line))
    except orjson.JSONDecodeError:
        return None


def tombstone_of_line(msg: object) -> tuple[str, bytes] | None:
    """(topic, key) of a recorded tombstone line of ``timing.records.ref`` (the
    only topic whose tombstones are recorded), None for any other line."""
    if type(msg) is not dict or msg.get("kind") != TOMBSTONE_KIND or msg.get("topic") != RECORDS_REF.name:
        return None
    b64 = msg.get("key_b64")
    if isinstance(b64, str):
        try:
            return RECORDS_REF.name, base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            return None
    key = msg.get("key")
    return (RECORDS_REF.name, key.encode()) if isinstance(key, str) else None
