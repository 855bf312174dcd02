"""Fast decoder of raw v1 messages: bytes in, a validated dict out, or a
one-line reason why not (``Rejected``).

The hot path uses orjson and hand-written type checks (no jsonschema); the
JSON Schema files in ``schemas/json`` say the same thing for humans and
tests. Unknown extra fields are kept and ignored, as the contract says.
"""
from __future__ import annotations

import re

import orjson

MAX_MESSAGE_BYTES = 256 * 1024

RAW_KINDS = frozenset(("venue", "race", "start", "passing", "heartbeat", "photo", "decision", "record_ref"))
FORMATS = frozenset(("individual", "team_pursuit", "mass_start"))
LEVELS = frozenset(("OWG", "WCH", "WC", "CC", "NAT", "OTHER"))
DECISION_CODES = frozenset(("DQ", "DNF", "DNS", "WDR", "FALL", "OFFICIAL", "VOID"))
RECORD_TYPES = frozenset(("WR", "OR", "TR", "NR", "PB", "SB"))
IRM_CODES = frozenset(("DQ", "DNF", "DNS", "WDR"))
# the contract's hundredths (schemas/json: $defs/time), ASCII digits only and
# no trailing newline (``\d`` and ``$`` would accept "\u0663\u0664.00" and "34.32\n")
_TIME_RE = re.compile(r"(?:([1-9][0-9]*):([0-5][0-9])|([1-5]?[0-9]))\.([0-9]{2})\Z", re.ASCII)


class Rejected(Exception):
    """A message that does not follow the contract. ``reason`` is a class
    (for metrics), ``str(self)`` a one-line human reason."""

    __slots__ = ("reason",)

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message.replace("\n", " ").replace("\r", " "))
        self.reason = reason


def parse_record_time(text: str) -> int:
    """'2:53.89' -> 17389 (hundredths); '34.41' -> 3441."""
    m = _TIME_RE.match(text) if type(text) is str else None
    if m is None:
        raise ValueError(f"not a record time: {text!r}")
    mins, secs, secs_only, hund = m.groups()
    if mins is not None:
        return (int(mins) * 60 + int(secs)) * 100 + int(hund)
    return int(secs_only) * 100 + int(hund)


INT = "integer"
STR = "string"
LIST = "array"
OBJ = "object"
STR_OR_NULL = "string or null"


def _check(msg: dict, kind: str, name: str, want: str, required: bool = True):
    if name not in msg:
        if required:
            raise Rejected("missing_field", f"{kind}: missing required field {name!r}")
        return None
    val = msg[name]
    t = type(val)
    if want is INT:
        ok = t is int
    elif want is STR:
        ok = t is str
    elif want is LIST:
        ok = t is list
    elif want is OBJ:
        ok = t is dict
    else:  # STR_OR_NULL
        ok = t is str or val is None
    if not ok:
        got = type(val).__name__
        if want is INT and t is float:   # (orjson reads an integer beyond 64 bits as a float)
            got = "a number with a fraction or an exponent, or an integer beyond 64 bits"
        raise Rejected("wrong_type", f"{kind}: field {name!r} must be {want}, got {got}")
    return val


# Flat required fields per kind (deep structure checked below).
_REQUIRED = {
    "venue": (("t_us", INT), ("venue", STR), ("name", STR), ("lap_m", INT), ("loops", LIST)),
    "race": (("t_us", INT), ("race_id", STR), ("venue", STR), ("competition", STR), ("level", STR),
             ("format", STR), ("gender", STR), ("distance_m", INT), ("competitors", LIST)),
    "start": (("t_us", INT), ("venue", STR), ("race_id", STR), ("attempt", INT)),
    "passing": (("t_us", INT), ("venue", STR), ("source", STR), ("seq", INT), ("loop", STR),
                ("transponder", STR)),
    "heartbeat": (("t_us", INT), ("venue", STR), ("source", STR)),
    "photo": (("t_us", INT), ("race_id", STR), ("skater_id", STR), ("finish_us", INT)),
    "decision": (("t_us", INT), ("race_id", STR), ("code", STR)),
    "record_ref": (("t_us", INT), ("record", STR), ("format", STR), ("gender", STR),
                   ("distance_m", INT), ("time", STR), ("holder", STR)),
}


_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


def decode(raw: bytes | str) -> dict:
    """Decode and validate one raw message. Raises ``Rejected`` (and nothing
    else, whatever the input: tests/test_poison.py)."""
    if raw is None:
        raise Rejected("not_json", "a record without a value (null)")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise Rejected("oversized", f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        msg = _loads(raw)
    except _JSONDecodeError as exc:
        raise Rejected("not_json", _not_json(raw, exc)) from None
    # fast paths for the two kinds that are 99% of a feed; anything odd falls
    # through to the full check, which says what is wrong
    if type(msg) is dict:
        kind = msg.get("kind")
        try:
            if kind == "heartbeat":
                v = msg["v"]
                t = msg["t_us"]
                if (type(v) is int and v == 1 and type(t) is int and t >= 0
                        and type(msg["venue"]) is str and type(msg["source"]) is str):
                    return msg
            elif kind == "passing":
                v = msg["v"]
                t = msg["t_us"]
                if (type(v) is int and v == 1 and type(t) is int and t >= 0
                        and type(msg["venue"]) is str and type(msg["source"]) is str
                        and type(msg["seq"]) is int and type(msg["loop"]) is str
                        and type(msg["transponder"]) is str
                        and type(msg.get("strength", 0)) is int and type(msg.get("hits", 0)) is int):
                    return msg
        except KeyError:
            pass   # the full check below names the missing field
    return _decode_slow(msg)


def _not_json(raw: bytes | str, exc: Exception) -> str:
    """Why a message is not JSON, in words a producer can act on (orjson says
    "surrogates not allowed" for any invalid UTF-8)."""
    if not isinstance(raw, str):
        data = bytes(raw)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as bad:
            return f"not valid JSON: not UTF-8 (byte {bad.start}: {data[bad.start:bad.start + 1]!r})"
    return f"not valid JSON: {exc}"


def _decode_slow(msg) -> dict:
    if type(msg) is not dict:
        raise Rejected("not_object", f"a message must be a JSON object, got {type(msg).__name__}")
    kind = msg.get("kind")
    req = _REQUIRED.get(kind) if type(kind) is str else None
    if req is None:
        raise Rejected("unknown_kind", f"unknown kind {kind!r}" if "kind" in msg else "missing required field 'kind'")
    kind = str(kind)   # (it is one: only a string kind has required fields)
    v = msg.get("v")
    if type(v) is not int or v != 1:
        raise Rejected("bad_version", f"{kind}: unsupported version v={v!r} (this pipeline reads v1)")
    for name, want in req:
        val = msg.get(name)
        if type(val) is not (int if want is INT else str if want is STR else list):
            _check(msg, kind, name, want)
    if msg["t_us"] < 0:
        raise Rejected("bad_value", f"{kind}: t_us must be >= 0")
    extra = _DEEP.get(kind)
    if extra is not None:
        extra(msg)
    return msg


def _venue(msg: dict) -> None:
    lap = msg["lap_m"]
    if lap <= 0:
        raise Rejected("bad_value", "venue: lap_m must be > 0")
    loops = msg["loops"]
    if not loops:
        raise Rejected("bad_value", "venue: loops must not be empty")
    seen = set()
    for i, lp in enumerate(loops):
        if type(lp) is not dict:
            raise Rejected("wrong_type", f"venue: loops[{i}] must be an object")
        name = _check(lp, "venue", "loop", STR)
        at = _check(lp, "venue", "at_m", INT)
        if not 0 <= at < lap:
            raise Rejected("bad_value", f"venue: loop {name!r} at_m {at} outside 0..{lap - 1}")
        if name in seen:
            raise Rejected("bad_value", f"venue: loop {name!r} listed twice")
        seen.add(name)


def _race(msg: dict) -> None:
    if msg["format"] not in FORMATS:
        raise Rejected("bad_value", f"race: unknown format {msg['format']!r}")
    if msg["level"] not in LEVELS:
        raise Rejected("bad_value", f"race: unknown level {msg['level']!r}")
    if msg["distance_m"] <= 0:
        raise Rejected("bad_value", "race: distance_m must be > 0")
    _check(msg, "race", "group", STR, required=False)
    places = _check(msg, "race", "places", LIST, required=False)
    if places is not None and (not places or any(type(p) is not int or p < 1 for p in places)
                               or len(set(places)) != len(places)):
        raise Rejected("bad_value", "race: places must be distinct positive integers")
    laps = _check(msg, "race", "laps", INT, required=False)
    if laps is not None and laps <= 0:
        raise Rejected("bad_value", "race: laps must be > 0")
    sprints = _check(msg, "race", "sprints", OBJ, required=False)
    if sprints is not None:
        for k, pts in sprints.items():
            if not (k.isascii() and k.isdigit()) or type(pts) is not list or any(type(p) is not int or p < 0 for p in pts):
                raise Rejected("bad_value", "race: sprints must map lap numbers to lists of points")
    final = _check(msg, "race", "final", LIST, required=False)
    if final is not None and any(type(p) is not int or p < 0 for p in final):
        raise Rejected("bad_value", "race: final must be a list of points")
    comps = msg["competitors"]
    if not comps:
        raise Rejected("bad_value", "race: competitors must not be empty")
    cids = set()
    sids = set()
    tps = set()
    for i, c in enumerate(comps):
        if type(c) is not dict:
            raise Rejected("wrong_type", f"race: competitors[{i}] must be an object")
        cid = _check(c, "race", "competitor_id", STR)
        _check(c, "race", "name", STR)
        _check(c, "race", "nation", STR)
        sm = _check(c, "race", "start_m", INT)
        if sm < 0:
            raise Rejected("bad_value", f"race: competitor {cid!r} start_m must be >= 0")
        if cid in cids:
            raise Rejected("bad_value", f"race: competitor {cid!r} listed twice")
        cids.add(cid)
        skaters = _check(c, "race", "skaters", LIST)
        if not skaters:
            raise Rejected("bad_value", f"race: competitor {cid!r} has no skaters")
        if msg["format"] == "team_pursuit":
            if len(skaters) < 3:
                raise Rejected("bad_value", f"race: team {cid!r} needs at least 3 skaters")
        elif len(skaters) != 1:
            raise Rejected("bad_value", f"race: a {msg['format']} competitor ({cid!r}) is one skater")
        for j, s in enumerate(skaters):
            if type(s) is not dict:
                raise Rejected("wrong_type", f"race: competitor {cid!r} skaters[{j}] must be an object")
            sid = _check(s, "race", "skater_id", STR)
            _check(s, "race", "name", STR)
            _check(s, "race", "nation", STR)
            trs = _check(s, "race", "transponders", LIST)
            if not 1 <= len(trs) <= 2 or any(type(t) is not str for t in trs):
                raise Rejected("bad_value", f"race: skater {sid!r} needs one or two transponder strings")
            if sid in sids:
                raise Rejected("bad_value", f"race: skater {sid!r} listed twice")
            sids.add(sid)
            for t in trs:
                if t in tps:
                    raise Rejected("bad_value", f"race: transponder {t!r} listed twice")
                tps.add(t)


def _start(msg: dict) -> None:
    if msg["attempt"] < 1:
        raise Rejected("bad_value", "start: attempt must be >= 1")


def _passing(msg: dict) -> None:
    _check(msg, "passing", "strength", INT, required=False)
    _check(msg, "passing", "hits", INT, required=False)


def _decision(msg: dict) -> None:
    code = msg["code"]
    if code not in DECISION_CODES:
        raise Rejected("bad_value", f"decision: unknown code {code!r}")
    cid = _check(msg, "decision", "competitor_id", STR_OR_NULL, required=False)
    _check(msg, "decision", "skater_id", STR_OR_NULL, required=False)
    _check(msg, "decision", "note", STR_OR_NULL, required=False)
    if cid is None and code in IRM_CODES:
        raise Rejected("missing_field", f"decision: {code} needs a competitor_id")
    if cid is None and code == "FALL" and msg.get("skater_id") is None:
        raise Rejected("missing_field", "decision: FALL needs a competitor_id or skater_id")


def _record_ref(msg: dict) -> None:
    if "scope" not in msg:
        raise Rejected("missing_field", "record_ref: missing required field 'scope'")
    _check(msg, "record_ref", "scope", STR_OR_NULL)
    _check(msg, "record_ref", "set_on", STR)
    _check(msg, "record_ref", "venue", STR)
    why = record_identity_problem(msg["record"], msg["format"], msg["gender"], msg["distance_m"], msg["scope"])
    if why is not None:
        raise Rejected("bad_value", f"record_ref: {why}")
    try:
        hund = parse_record_time(msg["time"])
    except ValueError:
        raise Rejected("bad_value", f"record_ref: time {msg['time']!r} is not S.hh or M:SS.hh") from None
    if hund <= 0:
        raise Rejected("bad_value", f"record_ref: time {msg['time']!r} must be > 0")


def record_identity_problem(rec: str, fmt: str, gender: str, distance: int, scope: str | None) -> str | None:
    """What makes (record, format, gender, distance, scope) no record identity,
    or None (a ``record_ref``'s, and a tombstone key's on timing.records.ref)."""
    if rec not in RECORD_TYPES:
        return f"unknown record {rec!r}"
    if fmt not in FORMATS:
        return f"unknown format {fmt!r}"
    if not gender:
        return "gender must not be empty"
    if distance <= 0:
        return "distance_m must be > 0"
    if scope == "":
        return "scope must not be empty"
    if (rec == "WR") != (scope is None):
        return f"a {rec} has {'no' if rec == 'WR' else 'a'} scope"
    if rec == "OR" and scope != "OWG":
        return "an OR has scope 'OWG'"
    if rec in ("PB", "SB") and fmt != "individual":
        return f"{rec} applies to individual distances only"
    return None


_DEEP = {
    "venue": _venue,
    "race": _race,
    "start": _start,
    "passing": _passing,
    "decision": _decision,
    "record_ref": _record_ref,
}
