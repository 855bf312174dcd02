"""Builders of derived events (splits, incidents)."""
from __future__ import annotations

from bisect import bisect_left, insort
from typing import Any

from . import falls
from .model import CompRun, Pub, Race, SkaterRun
from .timefmt import elapsed_ms, event_id, fmt_time, split_id



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
    ms = elapsed_ms(t, race.gun)
    lap = race.venue.lap_m
    if run is not None:
        prev = run.split_t.get(d - lap)
    else:
        prev = comp.team_split.get(d - lap)
    lap_ms = ms - elapsed_ms(prev, race.gun) if prev is not None else None
    idx = race.split_idx.get((level, d))
    if idx is None:
        idx = race.split_idx[(level, d)] = []
    insort(idx, ms)
    rank = bisect_left(idx, ms) + 1
    sid = run.id if run is not None else None
    key = (comp.id, sid, d)
    pub = race.pub.get(key)
    rev = 0 if pub is None else pub.rev + 1
    behind = ms - idx[0]
    ev = split_event(race, comp.id, sid, d, t, ms, lap_ms, rank, behind, loop, rev, True)
    race.pub[key] = Pub(rev, (ms, lap_ms, rank, behind), True, ev)
    if pub is not None:
        race.open.pop(key, None)
    return ev


def incident(race: Race, comp: CompRun, run: SkaterRun | None, typ: str, status: str,
             at_m: int | None, t: float, note: str | None = None) -> dict:
    sid = run.id if run is not None else None
    n = run.incident_n if run is not None else (comp.team_incidents if typ == "fall" else 1)
    rev = falls.final_revision(run, n) if status == "suspected" and typ == "fall" else 0
    ev: dict[str, Any] = {
        "kind": "incident", "v": 1,
        "event_id": event_id("incident", race.d.id, race.attempt, comp.id, sid, typ, n, status, rev),
        "race_id": race.d.id, "t_us": int(t), "attempt": race.attempt,
        "competitor_id": comp.id, "skater_id": sid, "type": typ, "status": status,
        "at_m": at_m, "revision": rev, "final": True}
    if note:
        ev["note"] = note
    return ev
