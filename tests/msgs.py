"""Tiny factories of raw v1 messages for hand-written core tests."""
from __future__ import annotations

import orjson

T0 = 1_700_000_000_000_000  # an arbitrary event-time origin (us)
S = 1_000_000


def venue(vid="OVL", loops=(0, 100, 200, 300), lap=400, t=T0):
    return {"kind": "venue", "v": 1, "t_us": t, "venue": vid, "name": vid, "lap_m": lap,
            "loops": [{"loop": f"L{a:03d}", "at_m": a} for a in loops]}


def skater(sid, nation="NED", n=2):
    return {"skater_id": sid, "name": sid.title(), "nation": nation,
            "transponders": [f"{sid}-T{i}" for i in range(1, n + 1)]}


def comp(cid, start_m, skaters=None, nation=None):
    nation = nation or cid[:3]
    skaters = skaters or [skater(cid, nation)]
    return {"competitor_id": cid, "name": cid, "nation": nation, "start_m": start_m, "skaters": skaters}


def race(rid, competitors, fmt="individual", distance=500, venue_id="OVL", level="WC", gender="M",
         t=T0 + S, **extra):
    m = {"kind": "race", "v": 1, "t_us": t, "race_id": rid, "venue": venue_id, "competition": "TEST",
         "level": level, "format": fmt, "gender": gender, "distance_m": distance,
         "competitors": competitors}
    m.update(extra)
    return m


def start(rid, t, attempt=1, venue_id="OVL"):
    return {"kind": "start", "v": 1, "t_us": t, "venue": venue_id, "race_id": rid, "attempt": attempt}


_seq = {"A": 0, "B": 0}


def read(tp, loop_at, t, source="A", seq=None, venue_id="OVL"):
    if seq is None:
        _seq[source] = _seq.get(source, 0) + 1
        seq = _seq[source]
    return {"kind": "passing", "v": 1, "t_us": t, "venue": venue_id, "source": source, "seq": seq,
            "loop": f"L{loop_at:03d}", "transponder": tp}


def hb(t, source="A", venue_id="OVL"):
    return {"kind": "heartbeat", "v": 1, "t_us": t, "venue": venue_id, "source": source}


def decision(rid, code, t, competitor_id=None, skater_id=None, note=None):
    m = {"kind": "decision", "v": 1, "t_us": t, "race_id": rid, "code": code}
    if competitor_id:
        m["competitor_id"] = competitor_id
    if skater_id:
        m["skater_id"] = skater_id
    if note:
        m["note"] = note
    return m


def photo(rid, sid, finish_us, t):
    return {"kind": "photo", "v": 1, "t_us": t, "race_id": rid, "skater_id": sid, "finish_us": finish_us}


def record_ref(record, time, holder, fmt="individual", gender="M", distance=500, scope=None, t=T0):
    return {"kind": "record_ref", "v": 1, "t_us": t, "record": record, "format": fmt, "gender": gender,
            "distance_m": distance, "scope": scope, "time": time, "holder": holder,
            "set_on": "2020-01-01", "venue": "ELSEWHERE"}


def crossings(sid, start_m, gun, split_times_s, loops=(0, 100, 200, 300), lap=400, distance=None):
    """Reads (transponder 1, source A) for a skater given cumulative times per 100 m."""
    out = []
    d = 0
    for i, secs in enumerate(split_times_s, 1):
        d = i * 100
        at = (start_m + d) % lap
        if at in loops:
            out.append(read(f"{sid}-T1", at, gun + int(secs * S)))
    return out


def lines(msgs):
    return [orjson.dumps(m) for m in msgs]


def run(msgs, flush=True):
    """All derived events of a list of raw messages (through decode + core)."""
    from streams.process import process_lines
    return list(process_lines(lines(msgs), flush=flush))


def heartbeats(t_from, t_to, step=S, source="A"):
    return [hb(t, source) for t in range(t_from, t_to + 1, step)]


def by_time(msgs):
    """Stable-sort messages by t_us (arrival = event time)."""
    return sorted(msgs, key=lambda m: m["t_us"])


def skate(sid, start_m, gun, distance, first_s=9.5, per100_s=7.0, loops=(0, 100, 200, 300), lap=400,
          miss=(), stop_at=None, lose=None, both=True):
    """Reads of one skater at constant pace after a standing-start first 100 m.

    ``miss``: race distances whose crossing is not read at all. ``lose``:
    (after_distance, seconds) lost (a fall) after that distance. ``stop_at``: no
    crossings beyond this distance. Returns (reads, {distance: crossing t_us}).
    """
    out, truth = [], {}
    t = 0.0
    d = 0
    for d in range(100, distance + 1, 100):
        t += first_s if d == 100 else per100_s
        if lose and d - 100 == lose[0]:
            t += lose[1]
        if stop_at is not None and d > stop_at:
            break
        at = (start_m + d) % lap
        if at not in loops:
            continue
        tc = gun + int(round(t * S))
        truth[d] = tc
        if d in miss:
            continue
        out.append(read(f"{sid}-T1", at, tc, "A"))
        if both:
            out.append(read(f"{sid}-T2", at, tc + 21_000, "A"))
            out.append(read(f"{sid}-T1", at, tc + 150, "B"))
    return out, truth


# -- comparing derived events ----------------------------------------------------

def canon(events) -> list[bytes]:
    """Events as canonical bytes (sorted keys), in order."""
    return [orjson.dumps(e, option=orjson.OPT_SORT_KEYS) for e in events]


def by_id(events) -> dict[str, bytes]:
    """event_id -> canonical bytes; asserts that a repeated event (at-least-once)
    carries the same id only with the same content."""
    seen: dict[str, bytes] = {}
    for e, b in zip(events, canon(events)):
        assert seen.setdefault(e["event_id"], b) == b, e
    return seen


def first_of_each(events) -> list[dict]:
    """The events with repeats (same event_id) dropped, first seen kept."""
    ids: set = set()
    out = []
    for e in events:
        if e["event_id"] not in ids:
            ids.add(e["event_id"])
            out.append(e)
    return out
