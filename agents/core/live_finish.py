"""Provisional finishes: what an open finish crossing decides, at its first read.

When a competitor's finish crossing is open (``provisional.refresh`` placed it
at the race distance; a team's on its third skater), its finish is published
with ``"final": false``, with the rank it gives, the records it would set
(judged as the final step will judge it: against the references in force at
its time, and the earlier provisional finishes of the race), and the race's
``live`` result including it. Changes are published as the next revisions;
the final step (``results.settle_finish``, ``records.judge``) continues the
same revision counters.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import events, mass_start, records, results
from .model import CompRun, Race
from .model_records import RecordState, RecordStatus, Ref
from .timefmt import elapsed_ms, event_id, fmt_hundredths

if TYPE_CHECKING:   # pragma: no cover
    from .engine import Engine
    from .provisional_splits import Want


def refresh(eng: Engine, race: Race, want: Want, still_open: set[str], out: list[dict]) -> None:
    """Publish the provisional finishes ``want`` implies (``still_open``: competitors
    with an open crossing: a finish withdrawn now may still come back)."""
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
            # final unless an open crossing may still bring it back (none can
            # once the competitor has an IRM: its crossings are ignored)
            final = comp.irm is not None or comp.id not in still_open
            _withdraw_finish(race, comp, final, out)
            _withdraw_records(race, comp, final, out)
    if not fin:
        if race.prov_result is not None:   # a provisional ranking is out (or a final one owed)
            race.prov_result = None
            results.after_change(eng, race, race.venue.clock, out)   # (standings only if changed)
        return
    order = sorted(fin, key=lambda c: (fin[c][0], c.order))
    points: dict[CompRun, int] = {}
    if d_race.final is not None:   # mass start: their final points in the effective finishing order
        points = mass_start.provisional_points(race, {c: _crossing_us(race, c, fin[c][0]) for c in order})
    codes: dict[CompRun, list[str]] = {}
    judge = d_race.format != "mass_start" and race.status != "void"
    claims: dict[tuple, Ref] = {}   # records the earlier provisional finishes would set
    for comp in order:
        codes[comp] = _records(eng, race, comp, fin[comp][0], fin[comp][1], claims, out) if judge else []
    prov = {c: (fin[c][1], points.get(c, c.points), codes[c]) for c in order}
    ranking = results.ranking(eng, race, prov)
    rank_of = {e["competitor_id"]: e["rank"] for e in ranking}
    for comp in order:
        t, ms, source = fin[comp]
        val = (ms, rank_of.get(comp.id), points.get(comp), source)
        if comp.prov_finish is not None and comp.prov_finish[0] == val:
            continue
        comp.finish_rev += 1
        ev = events.finish_event(race, comp, t, ms, val[1], source, points.get(comp), False)
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


def _crossing_us(race: Race, comp: CompRun, t: int) -> int:
    ph = race.photos.get(comp.skaters[0].id)
    return t if ph is None else ph


def withdraw_attempt(race: Race, out: list[dict]) -> None:
    for comp in race.comps:
        if comp.prov_finish is not None:
            _withdraw_finish(race, comp, True, out)


def _withdraw_finish(race: Race, comp: CompRun, final: bool, out: list[dict]) -> None:
    assert comp.prov_finish is not None
    comp.finish_rev += 1
    eid = event_id("finish", race.d.id, race.attempt, comp.id, comp.finish_rev)
    out.append(events.withdrawn(comp.prov_finish[1], eid, comp.finish_rev, final))
    comp.prov_finish = None


def _records(eng: Engine, race: Race, comp: CompRun, t: int, ms: int, claims: dict[tuple, Ref],
             out: list[dict]) -> list[str]:
    """Judge a provisional finish against the references in force at ``t``
    (with what the earlier provisional finishes of the race would set);
    publish what changed; return the record codes for its ranking entry."""
    me = (race.d.id, comp.id)
    th = ms // 10
    codes = []
    for key in records.book_keys(race, comp):
        prev = records.reference(eng, key, exclude=me, before=t)
        mine = claims.get(key)
        if mine is not None and (prev is None or mine.time_h < prev.time_h):
            prev = mine
        prev_h = prev.time_h if prev is not None else None
        status = records.status_of(th, prev_h)
        if status is not RecordStatus.NONE:
            codes.append(records.code(key[0], status))
            if status is RecordStatus.BROKEN:
                claims[key] = Ref(th, fmt_hundredths(th), comp.id, None, race.d.venue, race.d.id, t)
        pr = comp.prov_rec.get(key)
        if pr is None and status is RecordStatus.NONE:
            continue
        if pr is not None and pr.status is status and pr.th == th and _same(pr.prev, prev):
            continue
        rev = comp.rec_base.get(key, 0) if pr is None else pr.rev + 1
        if status is RecordStatus.NONE:   # (pr is not None): a claim taken back
            if not pr.holds:
                continue   # taken back already: nothing new to say
            st = comp.prov_rec[key] = pr.taken_back(rev)
        else:
            st = comp.prov_rec[key] = RecordState(prev, prev_h, status, th, rev)
        ev = records.record_event(race, comp, key, st, t, final=False)
        ev["time_ms"] = ms
        out.append(ev)
    return codes


def _same(a: Ref | None, b: Ref | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.time_h == b.time_h and a.holder == b.holder


def _withdraw_records(race: Race, comp: CompRun, final: bool, out: list[dict]) -> None:
    for key, pr in comp.prov_rec.items():
        if not pr.holds:
            continue
        st = comp.prov_rec[key] = pr.taken_back(pr.rev + 1)
        ev = records.record_event(race, comp, key, st, race.venue.clock, final=final)
        ev["time_ms"] = st.th * 10
        out.append(ev)
