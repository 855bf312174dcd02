"""Records on ``timing.records.ref``: the key of a record's identity, and what
lapstream publishes there of the records it sets (a ``record_ref`` in force
under a key of its own, or a tombstone when it takes one back) and reads back.

Pure: strings and dicts in, strings and dicts out.
"""
from __future__ import annotations


def record_key(rec: str, fmt: str, gender: str, distance: int, scope: str | None) -> str:
    """The identity of a record (the key on ``timing.records.ref``)."""
    return f"{rec}|{fmt}|{gender}|{distance}|{'' if scope is None else scope}"


def record_ref_of(ev: dict) -> dict | None:
    """What a record event tells the other venues, as a v1 ``record_ref`` (with
    ``origin``, ``race_id``, ``event_id`` and ``withdrawn: false`` added): a
    final broken record is a new reference. None for anything else: see
    ``own_ref_update`` for what a withdrawn one becomes (a tombstone)."""
    if (ev["kind"] != "record" or ev.get("final") is False or ev["equalled"]
            or ev.get("withdrawn")):
        return None   # a provisional record is not a reference for anyone yet
    return {"kind": "record_ref", "v": 1, "t_us": ev["t_us"], "record": ev["record"],
            "format": ev["format"], "gender": ev["gender"], "distance_m": ev["distance_m"],
            "scope": ev["scope"], "time": ev["time"], "holder": ev["holder"], "set_on": ev["set_on"],
            "venue": ev["venue"], "origin": "lapstream", "race_id": ev["race_id"],
            "withdrawn": False, "event_id": ev["event_id"]}


def own_ref_update(ev: dict) -> tuple[str, dict | None] | None:
    """What ``timing.records.ref`` gets for a record event, as (key, value):
    a final broken record is a ``record_ref`` in force under its own key; a
    final record that no longer stands there (withdrawn: a DQ, VOID, restart,
    photo; or equalled after a revision, which a broken one may become) is a
    tombstone (value None) under that key, so that a consumer of the
    compacted topic sees the key deleted, never a withdrawn record as a
    ``record_ref``. None when the topic gets nothing (provisional, or an
    equalled record at its first revision: it never was a reference)."""
    if ev["kind"] != "record" or ev.get("final") is False:
        return None
    if ev.get("withdrawn") or (ev["equalled"] and ev.get("revision", 0) > 0):
        return encode_own_key(ev["record"], ev["format"], ev["gender"], ev["distance_m"], ev["scope"],
                              ev["race_id"], ev["holder"]), None
    if ev["equalled"]:
        return None
    ref = record_ref_of(ev)
    assert ref is not None
    return own_record_key(ref), ref


# -- the key of a reference lapstream publishes ------------------------------------
#
# Seven fields joined by "|": record, format, gender, distance, scope, race_id,
# holder. In a field "\" is written "\\" and "|" is written "\|"; None (a WR's
# scope) is the empty field and the empty string is "\e". A key with no "\",
# no "|" in a field and no empty string reads as it did before these escapes
# (the former key of the same claim: a tombstone deletes it too).

def _esc(s: str | None) -> str:
    if s is None:
        return ""
    if s == "":
        return "\\e"
    if "\\" in s or "|" in s:
        return s.replace("\\", "\\\\").replace("|", "\\|")
    return s


def _unesc(f: str) -> str | None:
    """A field of a key; raises ValueError on an escape that is not one."""
    if f == "":
        return None
    if f == "\\e":
        return ""
    if "\\" not in f:
        return f
    out = []
    i = 0
    while i < len(f):
        c = f[i]
        if c == "\\":
            d = f[i + 1:i + 2]
            if d not in ("\\", "|"):
                raise ValueError(f"bad escape in {f!r}")
            out.append(d)
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def encode_own_key(rec: str, fmt: str, gender: str, distance: int, scope: str | None,
                   race_id: str | None, holder: str) -> str:
    """Key of a reference lapstream publishes: one per record identity, race
    and holder, so that compaction keeps the federation's reference (another
    key) and the latest word on each record set here; a tombstone under it
    takes that record back. Unambiguous: ``parse_own_record_key`` reads it back."""
    return "|".join((_esc(rec), _esc(fmt), _esc(gender), str(distance), _esc(scope), _esc(race_id), _esc(holder)))


def own_record_key(ref: dict) -> str:
    """The key of a lapstream ``record_ref`` (``encode_own_key``)."""
    return encode_own_key(ref["record"], ref["format"], ref["gender"], ref["distance_m"], ref["scope"],
                          ref.get("race_id"), ref["holder"])


def parse_own_record_key(key: str) -> tuple[tuple, str | None, str] | None:
    """(identity, race_id, holder) of a key ``encode_own_key`` wrote, or None if
    ``key`` is not one (exactly: the key it reads back to is ``key`` itself)."""
    fields = []
    start = i = 0
    n = len(key)
    while i < n:
        c = key[i]
        if c == "\\":
            i += 2
            continue
        if c == "|":
            fields.append(key[start:i])
            start = i + 1
        i += 1
    fields.append(key[start:])
    if len(fields) != 7:
        return None
    try:
        rec, fmt, gender, dist, scope, race_id, holder = (_unesc(f) for f in fields)
        distance = int(fields[3])
    except ValueError:
        return None
    if rec is None or fmt is None or gender is None or holder is None or dist is None:
        return None
    if encode_own_key(rec, fmt, gender, distance, scope, race_id, holder) != key:
        return None   # not as this code writes it (e.g. "05" for 5, " 5", "1_000")
    return (rec, fmt, gender, distance, scope), race_id, holder
