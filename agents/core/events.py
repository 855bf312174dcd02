"""Builders of derived events (splits, incidents)."""
from __future__ import annotations

from bisect import bisect_left, insort
from typing import Any

from . import falls
from .model import CompRun, Pub, Race, SkaterRun
from .timefmt import event_id, fmt_time, split_id


def lap_ms(ms: int, prev: int | None, gun: int) -> int | None:
    """A split's lap time: its time ``ms`` less the time of the crossing one
    lap before (``prev``, t_us; None: no lap before, no lap time)."""
    return ms - (prev - gun) // 1000 if prev is not None else None


def split_event(race: Race, cid: str, sid: str | None, d: int, t: int, ms: int, lap_ms: int | None,
                rank: int, behind: int, loop: str, rev: int, final: bool) -> dict:
    return {"kind": "split", "v": 1,
            "event_id": split_id(race.split_h, cid, sid, d, rev),
            "race_id": race.d.id, "t_us": t, "attempt": race.attempt,
            "competitor_id": cid, "skater_id": sid, "distance_m": d, "time_ms": ms,
            "time": fmt_time(ms), "lap_ms": lap_ms, "rank": rank, "behind_ms": behind,
            "loop": loop, "revision": rev, "final": final}


def withdrawn(ev: dict, event_id_: str, rev: int, final: bool) -> dict:
    """The next version of a provisional event that no longer holds."""
    out = dict(ev)
    out["event_id"] = event_id_
    out["revision"] = rev
    out["withdrawn"] = True
    out["final"] = final
    return out


def finish_event(race: Race, comp: CompRun, t: int, ms: int, rank: int | None, source: str,
                 points: int | None, final: bool) -> dict:
    ev: dict[str, Any] = {
        "kind": "finish", "v": 1,
        "event_id": event_id("finish", race.d.id, race.attempt, comp.id, comp.finish_rev),
        "race_id": race.d.id, "t_us": t, "attempt": race.attempt, "competitor_id": comp.id,
        "time_ms": ms, "time": fmt_time(ms), "rank": rank, "source": source,
        "revision": comp.finish_rev, "final": final}
    if points is not None:
        ev["points"] = points
    return ev


def split(race: Race, comp: CompRun, run: SkaterRun | None, d: int, t: int,
          loop: str, level: str) -> dict:
    """The final split of a closed crossing (the next revision of its key)."""
    gun = race.gun
    ms = (t - gun) // 1000   # elapsed_ms, inlined
    lap = race.venue.lap_m
    if run is not None:
        sid = run.id
        prev = run.split_t.get(d - lap)
    else:
        sid = None
        prev = comp.team_split.get(d - lap)
    lap_time = lap_ms(ms, prev, gun)
    split_idx = race.split_idx
    idx = split_idx.get((level, d))
    if idx is None:
        idx = split_idx[(level, d)] = []
    insort(idx, ms)
    rank = bisect_left(idx, ms) + 1
    key = (comp.id, sid, d)
    pubs = race.pub
    pub = pubs.get(key)
    behind = ms - idx[0]
    val = (ms, lap_time, rank, behind)
    if pub is None:
        ev = split_event(race, comp.id, sid, d, t, ms, lap_time, rank, behind, loop, 0, True)
        pubs[key] = Pub(0, val, True, ev)
        return ev
    rev = pub.rev + 1
    last = pub.ev
    if pub.val == val and last["t_us"] == t and last["loop"] == loop:
        # the provisional version said the same: only its id, revision and finality change
        ev = last.copy()
        ev["event_id"] = split_id(race.split_h, comp.id, sid, d, rev)
        ev["revision"] = rev
        ev["final"] = True
    else:
        ev = split_event(race, comp.id, sid, d, t, ms, lap_time, rank, behind, loop, rev, True)
    pub.rev, pub.val, pub.final, pub.ev = rev, val, True, ev
    race.open.pop(key, None)
    return ev


def incident(race: Race, comp: CompRun, run: SkaterRun | None, typ: str, status: str,
             at_m: int | None, t: float, note: str | None = None) -> dict:
    sid = run.id if run is not None else None
    n = run.incident_n if run is not None else (comp.team_incidents if typ == "fall" else 1)
    key = (comp.id, sid, typ, n)
    if status == "suspected" and typ == "fall":
        rev = falls.final_revision(race, run, n)
    else:   # a resolution (confirmed, cleared) supersedes what was published of that incident
        last = race.inc_rev.get(key)
        rev = 0 if last is None else last + 1
    race.inc_rev[key] = rev
    ev: dict[str, Any] = {
        "kind": "incident", "v": 1,
        "event_id": event_id("incident", race.d.id, race.attempt, comp.id, sid, typ, n, status, rev),
        "race_id": race.d.id, "t_us": int(t), "attempt": race.attempt,
        "competitor_id": comp.id, "skater_id": sid, "type": typ, "status": status,
        "at_m": at_m, "revision": rev, "final": True}
    if note:
        ev["note"] = note
    return ev
