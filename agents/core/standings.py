"""Standings and classifications: a group's races ranked together, kept up to
date one race at a time (``GroupState``), and the places an event's finals
award. Called by ``results`` after every change of a race's result.
"""
from __future__ import annotations

import sys
from bisect import bisect_left, insort
from typing import TYPE_CHECKING, Any

from . import results
from .model_kept import GroupState
from .timefmt import event_id, fmt_time

if TYPE_CHECKING:   # pragma: no cover
    from .engine import Engine
    from .model import Race


def emit_group(eng: Engine, race: Race, t: int, out: list) -> None:
    """The group's standings after a change of ``race``: its entries replace
    the race's previous ones in the group's sorted ranking (O(group) work:
    the other races are not ranked again, nothing is sorted from scratch),
    published as the next revision only if the standings changed."""
    d = race.d
    group = d.group
    gs = _group_state(eng, group, d.format == "mass_start")
    rid = d.id
    if rid in gs.pos and eng.races.get(rid) is race:
        _set_member(gs, rid, *_contribution(eng, race))
    rows = gs.rows
    entries: list[dict[str, Any]] = []
    best = _time_ms(rows[0][1]) if rows else 0
    prev_key = None
    rank = 0
    for i, (_, e) in enumerate(rows):
        k = (e.get("points"), e["time_ms"]) if type(e) is dict else (_points(e), e[1])
        if k != prev_key:
            rank = i + 1
            prev_key = k
        entries.append({**_entry(e), "rank": rank, "behind_ms": k[1] - best})
    complete = True
    status = gs.status
    for m in gs.order:
        if status.get(m) not in ("official", "unofficial"):
            complete = False
        entries.extend(_entry(e) for e in gs.irms[m])
    now = (complete, entries)
    if gs.last != now:   # standings are published when they change, not at every result
        gs.last = now
        rev = eng.group_rev.get(group, -1) + 1
        eng.group_rev[group] = rev
        out.append({"kind": "standings", "v": 1, "event_id": event_id("standings", group, rev),
                    "t_us": t, "group": group, "ranking": entries, "complete": complete,
                    "revision": rev})
    if d.places:
        emit_classification(eng, d.event, t, out)


# -- a group whose races are all released keeps its entries compact ---------
# (competitor_id, time_ms, irm, records, name, nation, race_id[, points]):
# rank, time and behind_ms follow from them (retention.py).

def compact_group(gs: GroupState) -> None:
    """Every race of the group is released: its entries as tuples."""
    new = {}
    for m in gs.order:
        gs.ranked[m] = c = [_compact(e) for e in gs.ranked[m]]
        new.update(zip(gs.keys[m], c))
        gs.irms[m] = [_compact(e) for e in gs.irms[m]]
    gs.rows = [(k, new[k]) for k, _ in gs.rows]
    gs.last = None   # the next emission (a race joining later) is a change


def _compact(e: Any) -> tuple:
    if type(e) is not dict:
        return e
    c = (sys.intern(e["competitor_id"]), e["time_ms"], e["irm"], tuple(e["records"]),
         sys.intern(e["name"]), sys.intern(e["nation"]), e["race_id"])
    return c + (e["points"],) if "points" in e else c


def _entry(e: Any) -> dict[str, Any]:
    """An entry as published (a copy)."""
    if type(e) is dict:
        return dict(e)
    ms = e[1]
    d = {"rank": None, "competitor_id": e[0], "time_ms": ms, "time": None if ms is None else fmt_time(ms),
         "behind_ms": None, "irm": e[2], "records": list(e[3]), "name": e[4], "nation": e[5]}
    if len(e) > 7:
        d["points"] = e[7]
    d["race_id"] = e[6]
    return d


def _time_ms(e: Any) -> int:
    return e["time_ms"] if type(e) is dict else e[1]


def _points(e: tuple) -> int | None:
    return e[7] if len(e) > 7 else None


def _contribution(eng: Engine, race: Race | None) -> tuple[str | None, list[dict], list[dict]]:
    """A race's part of its group's standings: (status, ranked entries, IRM entries)."""
    if race is None:
        return None, [], []
    ranked: list[dict] = []
    irms: list[dict] = []
    rid = race.d.id
    for e in results.ranking(eng, race):
        e["race_id"] = rid
        (ranked if e["irm"] is None else irms).append(e)
    return race.status, ranked, irms


def _sort_key(mass: bool, e: dict, pos: int, i: int) -> tuple:
    # ties keep the order of the races' set-up, then each race's ranking order
    if type(e) is not dict:
        e = _entry(e)
    if mass:
        return (-e["points"], e["time_ms"], pos, i)
    return (e["time_ms"], pos, i)


def _set_member(gs: GroupState, rid: str, status: str | None, ranked: list[Any], irms: list[Any]) -> None:
    rows = gs.rows
    for k in gs.keys.get(rid, ()):
        del rows[bisect_left(rows, (k,))]   # keys are unique: (k,) sorts just before (k, entry)
    pos = gs.pos[rid]
    keys = []
    for i, e in enumerate(ranked):
        k = _sort_key(gs.mass, e, pos, i)
        insort(rows, (k, e))
        keys.append(k)
    gs.keys[rid] = keys
    gs.ranked[rid] = ranked
    gs.irms[rid] = irms
    gs.status[rid] = status


def _group_state(eng: Engine, group: str, mass: bool) -> GroupState:
    """The group's state, its members brought up to date (``Engine.groups``):
    a race set up later joins at the end; anything else (a race moved to
    another group by a new start list) rebuilds it."""
    members = eng.groups.get(group, [])
    gs = eng.kept.gstate.get(group)
    if gs is None:
        gs = eng.kept.gstate[group] = GroupState([], {}, 0, mass, {}, {}, {}, {}, [], None)
    order = gs.order
    if order == members and gs.mass == mass:
        return gs
    n = len(order)
    if gs.mass == mass and members[:n] == order:
        for rid in members[n:]:
            gs.pos[rid] = gs.n
            gs.n += 1
            _set_member(gs, rid, *_contribution(eng, eng.races.get(rid)))
    else:
        now = set(members)
        old = {m: (gs.status[m], gs.ranked[m], gs.irms[m]) for m in order if m in now}
        gs.mass = mass
        gs.pos = {}
        gs.n = 0
        gs.status, gs.ranked, gs.irms, gs.keys, gs.rows = {}, {}, {}, {}, []
        for rid in members:
            gs.pos[rid] = gs.n
            gs.n += 1
            kept = old.get(rid)
            _set_member(gs, rid, *(kept if kept is not None else _contribution(eng, eng.races.get(rid))))
    gs.order = list(members)
    return gs


def emit_classification(eng: Engine, event: str, t: int, out: list) -> None:
    rows = []
    complete = True
    places_seen: list[int] = []
    kept = eng.kept.cls_kept
    parts = []
    for rid in eng.events[event]:
        kp = kept.get(rid)
        if kp is not None:   # a released race: its places, status and ranking as they were
            parts.append(kp + (rid,))
            continue
        r = eng.races.get(rid)
        part = None if r is None else [(e["rank"], e["irm"], e["competitor_id"]) for e in results.ranking(eng, r)]
        parts.append((eng.race_defs[rid].places, None if r is None else r.status, part, rid))
    parts.sort(key=lambda p: min(p[0] or [0]))
    for places, status, part, rid in parts:
        places = places or []
        places_seen.extend(places)
        if status != "official":
            complete = False
        if part is None:
            continue
        # places in ranking order: tied competitors share a place; a DNF or DQ
        # takes the places left after the ranked ones, in the ranking's order
        # (DNS and WDR never skated the final: no place, and no place taken)
        left = sum(1 for rank, _, _ in part if rank is not None)
        for rank, irm, cid in part:
            if rank is not None:
                k = rank - 1
            elif irm in ("DNF", "DQ"):
                k = left
                left += 1
            else:
                k = None
            rows.append({"place": places[k] if k is not None and k < len(places) else None,
                         "competitor_id": cid, "race_id": rid})
    if sorted(places_seen) != list(range(1, len(places_seen) + 1)):
        complete = False
    rows.sort(key=lambda row: (row["place"] is None, row["place"] or 0))
    now = (complete, rows)
    if eng.kept.cls_last.get(event) == now:   # published when it changes
        return
    eng.kept.cls_last[event] = now
    rev = eng.event_rev.get(event, -1) + 1
    eng.event_rev[event] = rev
    out.append({"kind": "classification", "v": 1,
                "event_id": event_id("classification", event, rev), "t_us": t,
                "event": event, "ranking": rows, "complete": complete, "revision": rev})
