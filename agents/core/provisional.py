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
from typing import TYPE_CHECKING, Any

from .timefmt import elapsed_ms, event_id, fmt_hundredths

if TYPE_CHECKING:   # pragma: no cover
    from .engine import CompRun, Engine, Race, Ref, SkaterRun

# one open crossing placed on the race distance: (t_us, run, distance, loop)
Placed = tuple[int, "SkaterRun", int, str]


def refresh(eng: Engine, race: Race, out: list[dict]) -> None:
    """Publish what changed in the race's provisional events since last time."""
    live = not race.ended and eng.races.get(race.d.id) is race
    placed = _place_open(eng, race) if live else []
    want = _wanted_splits(race, placed)
    _publish_splits(race, want, out)
    _withdraw_splits(race, want, live, out)
    _finishes(eng, race, want, live, out)


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


def _place_open(eng: Engine, race: Race) -> list[Placed]:
    """The race distance of every open crossing of the race, in time order (a
    skater with two open crossings: the second placed after the first)."""
    v = race.venue
    distance = race.d.distance
    pend = [p for p in v.pending.values() if p.run.race is race]
    if not pend:
        return []
    pend.sort(key=lambda p: (p.t, p.run.comp.order, p.run.id))
    chain: dict[int, tuple[int, int, bool, float]] = {}
    placed: list[Placed] = []
    for p in pend:
        run = p.run
        if run.finished or run.lost or run.comp.irm is not None:
            continue
        st = chain.get(id(run))
        if st is None:
            st = (run.last_d, run.last_t, bool(run.hist), eng._pace(run))
        elif st[0] >= distance:
            continue   # provisionally finished already
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


def _wanted_splits(race: Race, placed: list[Placed]) -> Want:
    team = race.d.format == "team_pursuit"
    level = "skater" if team else "comp"
    want: Want = {}
    for t, run, d, loop in placed:
        want[(run.comp.id, run.id, d)] = (t, run.comp, run, d, loop, level)
    if team:
        # a team's split is its third skater's: closed crossings and open ones
        at: dict[tuple[str, int], list[tuple[int, str]]] = {}
        comps = {}
        for t, run, d, loop in placed:
            at.setdefault((run.comp.id, d), []).append((t, loop))
            comps[run.comp.id] = run.comp
        for (cid, d), lst in at.items():
            comp = comps[cid]
            closed = [s.split_t[d] for s in comp.skaters if d in s.split_t]
            if len(closed) >= 3:
                continue
            times = sorted(closed + [x[0] for x in lst])
            if len(times) >= 3:
                want[(cid, None, d)] = (times[2], comp, None, d, lst[0][1], "comp")
    return want


def _publish_splits(race: Race, want: Want, out: list[dict]) -> None:
    from .engine import Pub, split_event

    if not want:
        return
    gun = race.gun
    lap = race.venue.lap_m
    ms_at: dict[tuple[str, int], list[int]] = {}
    own: dict[tuple[str, str | None, int], int] = {}
    for (cid, sid, d), (t, _c, _r, _d, _lp, level) in want.items():
        ms_at.setdefault((level, d), []).append(elapsed_ms(t, gun))
        own[(cid, sid, d)] = t
    for key, (t, comp, run, d, loop, level) in sorted(
            want.items(), key=lambda kv: (kv[1][0], kv[1][1].order, kv[0][1] or "")):
        pub = race.pub.get(key)
        if pub is not None and pub.final and pub.val is not None:
            continue   # decided: only the final step revises it
        ms = elapsed_ms(t, gun)
        idx = race.split_idx.get((level, d), [])
        others = ms_at[(level, d)]
        rank = bisect_left(idx, ms) + sum(1 for x in others if x < ms) + 1
        best = min(others)
        if idx and idx[0] < best:
            best = idx[0]
        sid = run.id if run is not None else None
        prev = run.split_t.get(d - lap) if run is not None else comp.team_split.get(d - lap)
        if prev is None:
            prev = own.get((comp.id, sid, d - lap))
        lap_ms = ms - elapsed_ms(prev, gun) if prev is not None else None
        val = (t, ms, lap_ms, rank, ms - best)
        if pub is not None and pub.val == val:
            continue
        rev = 0 if pub is None else pub.rev + 1
        ev = split_event(race, comp.id, sid, d, t, ms, lap_ms, rank, ms - best, loop, rev, False)
        if pub is None:
            race.pub[key] = Pub(rev, val, False, ev)
        else:
            pub.rev, pub.val, pub.final, pub.ev = rev, val, False, ev
        race.open[key] = None
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


def _withdraw_splits(race: Race, want: Want, live: bool, out: list[dict]) -> None:
    """Open keys no crossing supports any more: withdrawn, finally once no
    crossing of that skater (team) is open."""
    if not race.open:
        return
    for key in list(race.open):
        if key in want:
            continue
        pub = race.pub[key]
        still = live and _has_open(race, key[0], key[1])
        if pub.val is None and still:
            continue
        rev = pub.rev + 1
        ev = _withdrawn_split(race, key, pub.ev, rev, not still)
        pub.rev, pub.val, pub.final, pub.ev = rev, None, not still, ev
        if not still:
            del race.open[key]
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
    from .timefmt import fmt_time

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
