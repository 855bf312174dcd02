"""Finishes, rankings and results.

A finish is the transponder crossing or the photo-finish time (the photo
wins); results go ``live`` -> ``unofficial`` -> ``official`` (or ``void``),
each change a new revision, and each change updates the standings and
classifications (``standings``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from schemas.decode import Rejected

from . import events, mass_start, records, standings
from .config import INF, TEAM_SIZE
from .model import CompRun, Race, SkaterRun
from .timefmt import elapsed_ms, event_id, fmt_time

if TYPE_CHECKING:   # pragma: no cover
    from .engine import Engine


def photo(eng: Engine, msg: dict, out: list) -> None:
    race = eng._race_of(msg, "photo")
    sid = msg["skater_id"]
    run = race.by_skater.get(sid)
    if run is None:
        raise Rejected("unknown_reference", f"photo: skater {sid!r} is not in race {race.d.id}")
    fin = msg["finish_us"]
    if fin <= race.gun:
        raise Rejected("bad_value", f"photo: finish_us of {sid!r} is not after the gun of {race.d.id}")
    race.photos[sid] = fin
    eng._touch(race)
    comp = run.comp
    if not run.finished and (run.hist or run.lost) and comp.irm is None and not race.ended:
        v = race.venue
        due = fin + eng.cfg.group_us
        if due >= v.clock - eng.cfg.reorder_us:
            # reads of that finish may still arrive (the reordering window): the
            # loops would finish the skater (at the photo's time). The photo
            # waits on the timeline until they cannot (``photo_due``), so the
            # order of the photo and the reads changes nothing.
            v.photo_due.append((due, msg["t_us"], run))
            if due < v.next_due:
                v.next_due = due
            return
        photo_missed(eng, run, fin, msg["t_us"], out)
        return
    if comp.finish_tr is not None:
        settle_finish(eng, race, comp, msg["t_us"], out)


def photo_due(eng: Engine, t: int, run: SkaterRun, out: list) -> None:
    """A photo's finish time is behind the reordering window now: if no
    crossing finished the skater, the camera saw a finish the loops missed."""
    race = run.race
    fin = race.photos.get(run.id)
    if (fin is None or run.finished or not (run.hist or run.lost) or run.comp.irm is not None
            or race.ended or eng.races.get(race.d.id) is not race):
        return
    photo_missed(eng, run, fin, t, out)


def photo_missed(eng: Engine, run: SkaterRun, fin: int, t: int, out: list) -> None:
    """The camera saw a finish the loops missed."""
    race = run.race
    comp = run.comp
    run.finished = True
    run.lost = False
    run.finish_t = fin
    run.deadline = INF
    need = TEAM_SIZE if race.d.format == "team_pursuit" else 1
    if comp.finish_tr is None and sum(1 for x in comp.skaters if x.finished) >= need:
        comp.finish_tr = fin
    if comp.finish_tr is not None:
        # a first finish is judged (records, their order) at its time, as the
        # loops would have judged it, not at the photo's arrival
        settle_finish(eng, race, comp, comp.finish_tr if comp.finish_ms is None else t, out)


def effective_finish(eng: Engine, race: Race, comp: CompRun) -> tuple[int, str]:
    """Finish time in ms (photo over transponder) and its source."""
    if race.d.format == "team_pursuit":
        times: list[tuple[int, bool]] = []
        used_photo = False
        for s in comp.skaters:
            if not s.finished:
                continue
            ph = race.photos.get(s.id)
            if ph is not None:
                times.append((ph, True))
            else:
                assert s.finish_t is not None
                times.append((s.finish_t, False))
        times.sort()
        t_abs, used_photo = times[TEAM_SIZE - 1]   # the third skater
        return elapsed_ms(t_abs, race.gun), "photo" if used_photo else "transponder"
    run = comp.skaters[0]
    ph = race.photos.get(run.id)
    if ph is not None:
        return elapsed_ms(ph, race.gun), "photo"
    assert run.finish_t is not None
    return elapsed_ms(run.finish_t, race.gun), "transponder"


def settle_finish(eng: Engine, race: Race, comp: CompRun, t: int, out: list) -> None:
    ms, source = effective_finish(eng, race, comp)
    if comp.finish_ms == ms and comp.source == source:
        return
    first = comp.finish_ms is None
    comp.finish_ms = ms
    comp.source = source
    comp.finish_rev += 1
    if first:
        comp.finish_t_us = t
        comp.prov_finish = None
        eng.finish_log.append((t, race, comp))
    if race.d.final is not None:   # mass start: the final points in the effective finishing order
        mass_start.reaward_final(race)
    rank = rank_in_race(eng, race, comp)
    points = comp.points if race.d.format == "mass_start" else None
    comp.finish_pub = (rank, points)
    out.append(events.finish_event(race, comp, t, ms, rank, source, points, True))
    if comp.irm is None and race.status != "void":
        records.evaluate_records(eng, race, comp, t, out)
    mark_complete(race)
    after_change(eng, race, t, out)


def mark_complete(race: Race) -> None:
    """A live race where every competitor has a finish or an IRM is ``unofficial``."""
    if race.status == "live" and all(c.finish_ms is not None or c.irm is not None for c in race.comps):
        race.status = "unofficial"
        if race in race.venue.races:   # nobody left on the track: out of the timeline
            race.venue.races.remove(race)


# ``Race.prov_result`` when the final result is owed to a provisional one
# (``settle_finish``); any other value is the provisional ranking published
RESULT_OWED: tuple = ()


def rank_in_race(eng: Engine, race: Race, comp: CompRun) -> int | None:
    for e in ranking(eng, race):
        if e["competitor_id"] == comp.id:
            return e["rank"]
    return None


def ranking(eng: Engine, race: Race, prov: dict | None = None) -> list[dict]:
    """The race's ranking; ``prov`` adds provisional finishes: comp -> (ms, points, records)."""
    if race.status == "void":
        return []
    mass = race.d.format == "mass_start"
    done = []
    for c in race.comps:
        if c.irm is not None:
            continue
        if c.finish_ms is not None:
            done.append((c, c.finish_ms, c.points, c.records))
        elif prov is not None and c in prov:
            ms, pts, recs = prov[c]
            done.append((c, ms, pts, recs))
    if mass:
        done.sort(key=lambda x: (-x[2], x[1], x[0].order))
    else:
        done.sort(key=lambda x: (x[1], x[0].order))
    out = []
    best = done[0][1] if done else 0
    prev_key = None
    rank = 0
    for i, (c, ms, pts, recs) in enumerate(done):
        k = (pts, ms) if mass else ms
        if k != prev_key:
            rank = i + 1
            prev_key = k
        e = {"rank": rank, "competitor_id": c.id, "time_ms": ms,
             "time": fmt_time(ms), "behind_ms": ms - best,
             "irm": None, "records": list(recs), "name": c.name, "nation": c.nation}
        if mass:
            e["points"] = pts
        out.append(e)
    for c in race.comps:
        if c.irm is not None:
            e = {"rank": None, "competitor_id": c.id, "time_ms": None, "time": None,
                 "behind_ms": None, "irm": c.irm, "records": [], "name": c.name,
                 "nation": c.nation}
            if mass:
                e["points"] = c.points
            out.append(e)
    return out


def after_change(eng: Engine, race: Race, t: int, out: list) -> None:
    """The race's result (and its group's standings) after a change; while a
    live race has a provisional finish, the provisional result does it."""
    if race.d.final is not None:   # mass start: an IRM (a DQ) gives up its final points
        mass_start.reaward_final(race)
    if race.status == "live" and any(c.prov_finish is not None for c in race.comps):
        # a finish is still provisional: a final result now would rank the final
        # finishes alone and drop that competitor for an instant (the provisional
        # result that follows in this message adds it back: a flicker). The
        # provisional result (the race is refreshed in this message) ranks them
        # all; the final one, and the standings, are owed until every finish in
        # it is final (``settle_finish``) or that one is withdrawn
        # (``live_finish.refresh``).
        if race.prov_result is None:
            race.prov_result = RESULT_OWED
        eng._touch(race)
        return
    ranked = ranking(eng, race)   # (once: the finishes and the result read the same)
    finish_ranks(eng, race, t, out, ranked)
    emit_result(eng, race, t, out, ranked)
    standings.emit_group(eng, race, t, out)


def finish_ranks(eng: Engine, race: Race, t: int, out: list, ranked: list[dict]) -> None:
    """A final finish says its competitor's rank in the race (and points):
    when a change moved it (a photo put another ahead or behind, a DQ, sprint
    points re-awarded, a VOID: no rank), it is published again as its next
    revision, so the latest finish of every competitor agrees with the result."""
    mass = race.d.format == "mass_start"
    now = {e["competitor_id"]: (e["rank"], e.get("points")) for e in ranked}
    for c in race.comps:
        if c.finish_ms is None or c.prov_finish is not None:
            continue
        pub = now.get(c.id, (None, c.points if mass else None))
        if pub == c.finish_pub:
            continue
        c.finish_pub = pub
        c.finish_rev += 1
        out.append(events.finish_event(race, c, t, c.finish_ms, pub[0], c.source, pub[1], True))


def emit_result(eng: Engine, race: Race, t: int, out: list, ranked: list[dict] | None = None) -> None:
    race.result_rev += 1
    eng.result_revs[race.d.id] = race.result_rev
    out.append({"kind": "result", "v": 1,
                "event_id": event_id("result", race.d.id, race.result_rev),
                "race_id": race.d.id, "t_us": t, "attempt": race.attempt,
                "status": race.status, "revision": race.result_rev,
                "ranking": ranking(eng, race) if ranked is None else ranked, "group": race.d.group,
                "format": race.d.format, "final": True})
    race.prov_result = None
