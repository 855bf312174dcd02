"""Provisional events: a crossing published at its first read.

The reordering window keeps a crossing open for ``reorder_us`` after its
first read, in case an earlier read of it is still on its way (the backup
decoder, the other ankle). The final facts are decided when it closes
(``Engine._timeline``). Meanwhile this module publishes what the open
crossings say *now*: each one's split (and team split), a finish, the rank
it gives, a record it would set, and the race's ``live`` result, all with
``"final": false``. Each later change (an earlier read, a crossing closing
before it, a crossing placed elsewhere) is published as the next revision of
the same natural key; the final version, ``"final": true``, follows when the
window closes (``Engine._split`` / ``_settle_finish`` / ``_judge`` continue
the same revision counters). A provisional value that no longer holds is
withdrawn (``"withdrawn": true``).

Pure and deterministic: the output depends only on the engine's state, so
offline, replayed and live runs publish the same provisional events.
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import falls
from .timefmt import elapsed_ms, event_id, fmt_hundredths, fmt_time

if TYPE_CHECKING:   # pragma: no cover
    from .engine import CompRun, Engine, Race, Ref, SkaterRun

@dataclass(slots=True)
class Pub:
    """What was last published under one split's natural key: its revision,
    its value (None: withdrawn), whether that was final, and the event."""

    rev: int
    val: tuple | None
    final: bool
    ev: dict = field(default_factory=dict)


def split_event(race: Race, cid: str, sid: str | None, d: int, t: int, ms: int, lap_ms: int | None,
                rank: int, behind: int, loop: str, rev: int, final: bool) -> dict:
    return {"kind": "split", "v": 1,
            "event_id": event_id("split", race.d.id, race.attempt, cid, sid, d, rev),
            "race_id": race.d.id, "t_us": t, "attempt": race.attempt,
            "competitor_id": cid, "skater_id": sid, "distance_m": d, "time_ms": ms,
            "time": fmt_time(ms), "lap_ms": lap_ms, "rank": rank, "behind_ms": behind,
            "loop": loop, "revision": rev, "final": final}


# one open crossing placed on the race distance: (t_us, run, distance, loop)
Placed = tuple[int, "SkaterRun", int, str]


def refresh(eng: Engine, race: Race, touched: set[SkaterRun] | None, out: list[dict]) -> None:
    """Publish what changed in the race's provisional events since last time.

    ``touched``: the skaters whose open crossings changed (None: all of them)."""
    live = not race.ended and eng.races.get(race.d.id) is race
    if touched is None or not live:
        touched = set(race.by_skater.values())
    team = race.d.format == "team_pursuit"
    opened = race.open
    want: Want = {}
    old = []   # what the touched skaters (teams) published and still hold open
    if opened:
        sids = {run.id for run in touched}
        cids = {run.comp.id for run in touched}
        for k, w in opened.items():
            if k[1] in sids or (k[1] is None and k[0] in cids):
                old.append(k)
            elif w is not None:
                want[k] = w
    sus: dict[SkaterRun, tuple[int, int] | None] = {}
    if live:
        level = "skater" if team else "comp"
        for t, run, d, loop in _place_open(eng, race, touched):
            want[(run.comp.id, run.id, d)] = (t, run.comp, run, d, loop, level)
            if run not in sus:   # its first open crossing: does it reveal a fall?
                sus[run] = falls.provisional_suspicion(run, d, t, eng._pace(run))
    for run in touched:
        if run.prov_sus is not None or sus.get(run) is not None:
            falls.publish_provisional(race, run, sus.get(run), out)
        if team:
            _team_splits(race, {run.comp.id for run in touched}, want)
    changed = [k for k, w in want.items() if opened.get(k) != w]
    gone = [k for k in old if k not in want]
    if changed or gone:
        _publish_splits(race, want, changed, gone, out)
        if gone:
            _withdraw_splits(race, gone, live, out)
    distance = race.d.distance
    if (race.prov_result is not None or any(k[2] == distance for k in changed)
            or any(k[2] == distance for k in gone)
            or any(c.prov_finish is not None for c in race.comps)):
        _finishes(eng, race, want, live, out)


def _level(race: Race, key: tuple) -> str:
    return "skater" if race.d.format == "team_pursuit" and key[1] is not None else "comp"


def withdraw_attempt(race: Race, out: list[dict]) -> None:
    """A restart discarded this attempt: every split it published is withdrawn."""
    for key, pub in race.pub.items():
        if pub.val is None and pub.final:
            continue
        rev = pub.rev + 1
        ev = _withdrawn_split(race, key, pub.ev, rev, True)
        pub.rev, pub.val, pub.final, pub.ev = rev, None, True, ev
        out.append(ev)
    race.open.clear()
    for comp in race.comps:
        if comp.prov_finish is not None:
            _withdraw_finish(race, comp, True, out)


# -- placing the open crossings -----------------------------------------------


def _place_open(eng: Engine, race: Race, touched: set[SkaterRun]) -> list[Placed]:
    """The race distance of every open crossing of the touched skaters, in time
    order (a skater with two open crossings: the second placed after the first)."""
    distance = race.d.distance
    pend = [p for p in race.venue.pending.values() if p.run in touched]
    if not pend:
        return []
    if len(pend) > 1:
        pend.sort(key=lambda p: (p.t, p.run.comp.order, p.run.id))
    chain: dict[int, tuple[int, int, bool, float]] = {}
    placed: list[Placed] = []
    for p in pend:
        run = p.run
        if run.finished or run.lost or run.comp.irm is not None:
            continue
        st = chain.get(id(run))
        if st is None:
            sig = (p.t, run.last_t)
            if p.sig == sig:
                d = p.d
            else:
                d = eng._place(run, p.at_m, p.t, run.last_d, run.last_t, bool(run.hist), eng._pace(run))
                p.sig = sig
                p.d = d
            st = (run.last_d, run.last_t, bool(run.hist), eng._pace(run))
        elif st[0] >= distance:
            continue   # provisionally finished already
        else:
            d = eng._place(run, p.at_m, p.t, st[0], st[1], st[2], st[3])
        if d is None or d > distance:
            continue   # no split: a misread, or the final step will call it an anomaly
        pace = st[3] if st[2] else d / max(1, p.t - race.gun)
        chain[id(run)] = (d, p.t, True, pace)
        placed.append((p.t, run, d, p.loop))
    return placed


# -- splits ---------------------------------------------------------------------

# natural key -> (t_us, competitor, skater run or None for a team, distance, loop, level)
Want = dict[tuple, tuple[int, "CompRun", "SkaterRun | None", int, str, str]]


def _team_splits(race: Race, cids: set[str], want: Want) -> None:
    """A team's split is its third skater's: from closed crossings and open ones."""
    for cid in cids:
        comp = race.by_comp[cid]
        at: dict[int, list[tuple[int, str]]] = {}
        for k, w in want.items():
            if k[0] == cid and k[1] is not None:
                at.setdefault(w[3], []).append((w[0], w[4]))
        for d, lst in at.items():
            closed = [s.split_t[d] for s in comp.skaters if d in s.split_t]
            if len(closed) >= 3:
                continue
            times = sorted(closed + [x[0] for x in lst])
            if len(times) >= 3:
                want[(cid, None, d)] = (times[2], comp, None, d, lst[0][1], "comp")


def _publish_splits(race: Race, want: Want, changed: list[tuple], gone: list[tuple],
                    out: list[dict]) -> None:
    """(Re)compute the open splits that ``changed`` and ``gone`` can affect: the
    changed ones, and the others at the same distance whose rank or behind may
    move (a changed split ahead of them, or one gone)."""
    gun = race.gun
    lap = race.venue.lap_m
    full = {(_level(race, k), k[2]) for k in gone}
    first: dict[tuple[str, int], int] = {}   # per group: the earliest changed time
    for k in changed:
        w = want[k]
        g = (w[5], w[3])
        if g not in first or w[0] < first[g]:
            first[g] = w[0]
    ms_at: dict[tuple[str, int], list[int]] = {}
    todo = []
    ch = set(changed)
    for key, w in want.items():
        g = (w[5], w[3])
        if g in full or g in first:
            ms_at.setdefault(g, []).append(elapsed_ms(w[0], gun))
            # an unchanged split earlier than every change at its distance keeps its values
            if key in ch or g in full or w[0] > first[g]:
                todo.append((w[0], w[1].order, key[1] or "", key, w))
    if len(todo) > 1:
        todo.sort(key=lambda x: x[:3])
    for _t, _o, _s, key, (t, comp, run, d, loop, level) in todo:
        pub = race.pub.get(key)
        if pub is not None and pub.final and pub.val is not None:
            continue   # decided: only the final step revises it
        ms = elapsed_ms(t, gun)
        idx = race.split_idx.get((level, d), [])
        others = ms_at[(level, d)]
        rank = bisect_left(idx, ms) + 1
        best = ms
        for x in others:
            if x < ms:
                rank += 1
                best = x if x < best else best
        if idx and idx[0] < best:
            best = idx[0]
        sid = run.id if run is not None else None
        prev = run.split_t.get(d - lap) if run is not None else comp.team_split.get(d - lap)
        if prev is None:
            w_prev = want.get((comp.id, sid, d - lap))
            prev = w_prev[0] if w_prev is not None else None
        lap_ms = ms - elapsed_ms(prev, gun) if prev is not None else None
        val = (t, ms, lap_ms, rank, ms - best)
        race.open[key] = (t, comp, run, d, loop, level)
        if pub is not None and pub.val == val:
            continue
        rev = 0 if pub is None else pub.rev + 1
        ev = split_event(race, comp.id, sid, d, t, ms, lap_ms, rank, ms - best, loop, rev, False)
        if pub is None:
            race.pub[key] = Pub(rev, val, False, ev)
        else:
            pub.rev, pub.val, pub.final, pub.ev = rev, val, False, ev
        out.append(ev)


def _withdrawn_split(race: Race, key: tuple, last: dict, rev: int, final: bool) -> dict:
    cid, sid, d = key
    ev = dict(last)
    ev["event_id"] = event_id("split", race.d.id, race.attempt, cid, sid, d, rev)
    ev["revision"] = rev
    ev["withdrawn"] = True
    ev["final"] = final
    return ev


def _has_open(race: Race, cid: str, sid: str | None) -> bool:
    for p in race.venue.pending.values():
        run = p.run
        if run.race is race and run.comp.id == cid and (sid is None or run.id == sid):
            return True
    return False


def _withdraw_splits(race: Race, keys: list[tuple], live: bool, out: list[dict]) -> None:
    """Open keys no crossing supports any more: withdrawn, finally once no
    crossing of that skater (team) is open."""
    for key in keys:
        pub = race.pub[key]
        if pub.final:
            race.open.pop(key, None)
            continue
        still = live and _has_open(race, key[0], key[1])
        if pub.val is None and still:
            continue
        rev = pub.rev + 1
        ev = _withdrawn_split(race, key, pub.ev, rev, not still)
        pub.rev, pub.val, pub.final, pub.ev = rev, None, not still, ev
        if still:
            race.open[key] = None
        else:
            race.open.pop(key, None)
        out.append(ev)


# -- finishes, records, the live result -------------------------------------------


def _finishes(eng: Engine, race: Race, want: Want, live: bool, out: list[dict]) -> None:
    d_race = race.d
    distance = d_race.distance
    gun = race.gun
    fin: dict[CompRun, tuple[int, int, str]] = {}
    for (_cid, _sid, d), (t, comp, run, _d, _lp, level) in want.items():
        if d != distance or level != "comp" or comp.finish_tr is not None or comp.irm is not None:
            continue
        ph = race.photos.get(run.id) if run is not None else None
        if ph is not None:
            fin[comp] = (t, elapsed_ms(ph, gun), "photo")
        else:
            fin[comp] = (t, elapsed_ms(t, gun), "transponder")
    for comp in race.comps:
        if comp.prov_finish is not None and comp not in fin and comp.finish_ms is None:
            _withdraw_finish(race, comp, not (live and _has_open(race, comp.id, None)), out)
            _withdraw_records(eng, race, comp, out)
    if not fin:
        if race.prov_result is not None:
            race.prov_result = None
            eng._emit_result(race, race.venue.clock, out)
        return
    order = sorted(fin, key=lambda c: (fin[c][0], c.order))
    points: dict[CompRun, int] = {}
    if d_race.final is not None:
        n0 = race.sprint_awards.get(distance, 0)
        for i, comp in enumerate(order):
            n = n0 + i
            points[comp] = comp.points + (d_race.final[n] if n < len(d_race.final) else 0)
    codes: dict[CompRun, list[str]] = {}
    judge = d_race.format != "mass_start" and race.status != "void"
    claims: dict[tuple, Ref] = {}   # records the earlier provisional finishes would set
    for comp in order:
        codes[comp] = _records(eng, race, comp, fin[comp][0], fin[comp][1], claims, out) if judge else []
    prov = {c: (fin[c][1], points.get(c, c.points), codes[c]) for c in order}
    ranking = eng._ranking(race, prov)
    rank_of = {e["competitor_id"]: e["rank"] for e in ranking}
    for comp in order:
        t, ms, source = fin[comp]
        val = (ms, rank_of.get(comp.id), points.get(comp), source)
        if comp.prov_finish is not None and comp.prov_finish[0] == val:
            continue
        comp.finish_rev += 1
        ev = _finish_event(race, comp, t, ms, val[1], source, points.get(comp))
        comp.prov_finish = (val, ev)
        out.append(ev)
    rkey = tuple((e["competitor_id"], e["rank"], e["time_ms"], e.get("points"), tuple(e["records"]))
                 for e in ranking)
    if rkey != race.prov_result:
        race.result_rev += 1
        eng.result_revs[d_race.id] = race.result_rev
        t_last = max(fin[c][0] for c in order)
        out.append({"kind": "result", "v": 1,
                    "event_id": event_id("result", d_race.id, race.result_rev),
                    "race_id": d_race.id, "t_us": t_last, "attempt": race.attempt,
                    "status": race.status, "revision": race.result_rev, "ranking": ranking,
                    "group": d_race.group, "format": d_race.format, "final": False})
        race.prov_result = rkey


def _finish_event(race: Race, comp: CompRun, t: int, ms: int, rank: int | None, source: str,
                  points: int | None) -> dict:
    ev: dict[str, Any] = {
        "kind": "finish", "v": 1,
        "event_id": event_id("finish", race.d.id, race.attempt, comp.id, comp.finish_rev),
        "race_id": race.d.id, "t_us": t, "attempt": race.attempt, "competitor_id": comp.id,
        "time_ms": ms, "time": fmt_time(ms), "rank": rank, "source": source,
        "revision": comp.finish_rev, "final": False}
    if points is not None:
        ev["points"] = points
    return ev


def _withdraw_finish(race: Race, comp: CompRun, final: bool, out: list[dict]) -> None:
    assert comp.prov_finish is not None
    _val, last = comp.prov_finish
    comp.finish_rev += 1
    ev = dict(last)
    ev["event_id"] = event_id("finish", race.d.id, race.attempt, comp.id, comp.finish_rev)
    ev["revision"] = comp.finish_rev
    ev["withdrawn"] = True
    ev["final"] = final
    comp.prov_finish = None
    out.append(ev)


def _records(eng: Engine, race: Race, comp: CompRun, t: int, ms: int, claims: dict[tuple, Ref],
             out: list[dict]) -> list[str]:
    """Judge a provisional finish against the references in force at ``t``
    (with what the earlier provisional finishes of the race would set);
    publish what changed; return the record codes for its ranking entry."""
    from .engine import Ref

    me = (race.d.id, comp.id)
    th = ms // 10
    codes = []
    for key in eng._book_keys(race, comp):
        prev = eng._reference(key, exclude=me, before=t)
        mine = claims.get(key)
        if mine is not None and (prev is None or mine.time_h < prev.time_h):
            prev = mine
        eq: bool | None = None
        if prev is not None:
            eq = False if th < prev.time_h else True if th == prev.time_h else None
        if eq is not None:
            codes.append(("=" if eq else "") + key[0])
            if eq is False:
                claims[key] = Ref(th, fmt_hundredths(th), comp.id, None, race.d.venue, race.d.id, t)
        pr = comp.prov_rec.get(key)
        if pr is None and eq is None:
            continue
        if pr is not None and pr["equalled"] == eq and pr["th"] == th and _same(pr["prev"], prev):
            continue
        rev = comp.rec_base.get(key, 0) if pr is None else pr["rev"] + 1
        st = {"prev": prev, "prev_h": prev.time_h if prev is not None else None, "equalled": eq,
              "th": th, "rev": rev}
        comp.prov_rec[key] = st
        ev = eng._record_event(race, comp, key, st, t, final=False)
        ev["time_ms"] = ms
        out.append(ev)
    return codes


def _same(a: Ref | None, b: Ref | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.time_h == b.time_h and a.holder == b.holder


def _withdraw_records(eng: Engine, race: Race, comp: CompRun, out: list[dict]) -> None:
    for key, pr in comp.prov_rec.items():
        if pr["equalled"] is None:
            continue
        st = dict(pr, equalled=None, rev=pr["rev"] + 1)
        comp.prov_rec[key] = st
        ev = eng._record_event(race, comp, key, st, race.venue.clock, final=False)
        ev["time_ms"] = st["th"] * 10
        out.append(ev)
