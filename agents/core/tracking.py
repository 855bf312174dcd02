"""Placing a closed crossing on the race distance, and what it decides.

A loop's identity fixes where on the lap a crossing is; the skater's recent
pace says which lap (``place``). A crossing then gives a split (a team's is
its third skater's), sprint points, a finish, a fall cleared or suspected,
a team caught, or an anomaly (seen beyond the finish without a finish).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import events, falls, mass_start, results
from .config import INF, LOOPS_AHEAD, STANDING_START_US, TEAM_SIZE, US_PER_S
from .model import CompRun, Race, SkaterRun, Venue

if TYPE_CHECKING:   # pragma: no cover
    from .engine import Engine

_ENDED = ("official", "void")   # Race.ended, inlined (a property call costs)


UNPLACED = object()   # ``crossing`` without a placement already known

# Placing a crossing after a long gap without a read (a venue outage): the
# distance covered is estimated from the skater's pace, and a loop's position
# repeats every lap, so an error of half a lap places it a lap off. A skater's
# pace over the next minutes is within PACE_DOUBT once it has skated a lap;
# before, the start's pace says little of its cruise (PACE_DOUBT_EARLY).
PACE_DOUBT = 0.06
PACE_DOUBT_EARLY = 0.5


def crossing(eng: Engine, run: SkaterRun, loop: str, at_m: int, t: int, out: list,
             d_known: object = UNPLACED) -> None:
    """A closed crossing. ``d_known``: its placement when already computed (the
    provisional one, for the same ``t`` and the skater's same last crossing)."""
    race = run.race
    if run.finished or run.lost or race.status in _ENDED or run.comp.irm is not None:
        return
    d_race = race.d
    comp = run.comp
    last_d = run.last_d
    dt = t - run.last_t
    v = pace(eng, run)
    if d_known is UNPLACED:
        d = place(eng, run, at_m, t, last_d, run.last_t, bool(run.hist), v)
    else:
        d = d_known   # type: ignore[assignment]
    if d is None:
        if lap_in_doubt(eng, run, at_m, t, last_d, run.last_t, bool(run.hist), v):
            # too long without a read to count its laps: rather no split than one
            # a lap off (a wrong finish, a wrong DNF); the referee decides
            run.lost = True
            run.deadline = INF
            run.incident_n += 1
            out.append(events.incident(race, comp, run, "anomaly", "suspected", last_d, t,
                                       note=f"lap count lost: not read for {dt // US_PER_S} s "
                                            f"(a venue outage?)"))
        return
    run.last_cross[loop] = t
    if d > d_race.distance:
        # seen beyond the finish without a finish crossing: the finish read was missed
        run.lost = True
        run.deadline = INF
        run.incident_n += 1
        out.append(events.incident(race, comp, run, "anomaly", "suspected", last_d, t,
                                   note="finish crossing not read"))
        return
    prev_v = v
    moving = bool(run.hist)
    run.hist.append((d, t))
    run.pace = None
    run.last_d = d
    run.last_t = t
    run.split_t[d] = t
    if run.overdue:
        run.overdue = False
        if (d - last_d) / dt >= eng.cfg.clear_ratio * prev_v:
            # it was only missed reads: the skater turned up at its pace
            run.suspected = False
            out.append(events.incident(race, comp, run, "fall", "cleared", d, t))
        # else it turned up late: the suspicion stays open until the referee decides
    elif moving and not falls.explained(run) and falls.lost_time(dt, d - last_d, prev_v):
        # back at its pace, but this segment lost the time a fall costs
        run.suspected = True
        run.incident_n += 1
        out.append(events.incident(race, comp, run, "fall", "suspected", last_d, t))
    team = d_race.format == "team_pursuit"
    out.append(events.split(race, comp, run, d, t, loop, "skater" if team else "comp"))
    if team:
        n = 0
        for s in comp.skaters:
            if d in s.split_t:
                n += 1
        if n == TEAM_SIZE:
            comp.team_split[d] = t
            out.append(events.split(race, comp, None, d, t, loop, "comp"))
            check_caught(eng, race, comp, d, t, out)
    elif d in d_race.sprint_at:
        if mass_start.award(race, comp, d, d_race.sprint_at[d]):
            results.emit_result(eng, race, t, out)
    elif d_race.final is not None and d == d_race.distance:
        before = comp.points
        mass_start.award(race, comp, d, d_race.final)
        comp.final_points = comp.points - before
    if d == d_race.distance:
        run.finished = True
        run.finish_t = t
        run.deadline = INF
        if team:
            if sum(1 for s in comp.skaters if s.finished) == TEAM_SIZE:
                comp.finish_tr = t
                results.settle_finish(eng, race, comp, t, out)
        else:
            comp.finish_tr = t
            results.settle_finish(eng, race, comp, t, out)
    else:
        set_deadline(eng, run)


def place(eng: Engine, run: SkaterRun, at_m: int, t: int, last_d: int, last_t: int, moving: bool,
          v: float) -> int | None:
    """The race distance of a crossing of the loop at ``at_m`` at ``t`` by a
    skater last placed at ``last_d`` at ``last_t``; None if impossible."""
    dt = t - last_t
    if dt <= 0:
        return None
    lap = run.race.venue.lap_m
    offset = (at_m - run.comp.start_m) % lap
    if moving:
        d_est = last_d + dt * v
    else:   # no crossing yet: a standing start (~2 s lost), then cruising
        d_est = max(0.0, dt - STANDING_START_US) * eng.cfg.v_cruise_mps / US_PER_S
    if (d_est - last_d) * (PACE_DOUBT if last_d >= lap else PACE_DOUBT_EARLY) > lap / 2:
        return None  # a lap off or not: cannot tell (``lap_in_doubt``)
    c_min = offset if offset > last_d else offset + ((last_d - offset) // lap + 1) * lap
    j = round((d_est - c_min) / lap)
    d = c_min + (j if j > 0 else 0) * lap
    if (d - last_d) * US_PER_S / dt > eng.cfg.v_max_mps:
        return None  # e.g. a read on the start line just after the gun
    return d


def lap_in_doubt(eng: Engine, run: SkaterRun, at_m: int, t: int, last_d: int, last_t: int, moving: bool,
                 v: float) -> bool:
    """Is the crossing unplaced because its lap cannot be told (``place``)?"""
    dt = t - last_t
    if dt <= 0:
        return False
    lap = run.race.venue.lap_m
    if moving:
        covered = dt * v
    else:
        covered = max(0.0, dt - STANDING_START_US) * eng.cfg.v_cruise_mps / US_PER_S
    return covered * (PACE_DOUBT if last_d >= lap else PACE_DOUBT_EARLY) > lap / 2


def pace(eng: Engine, run: SkaterRun) -> float:
    """Recent pace in metres per microsecond (over up to the last lap)."""
    v = run.pace
    if v is not None:
        return v
    hist = run.hist
    if not hist:
        v = eng.cfg.v_start_mps / US_PER_S
    else:
        last_d, last_t = hist[-1]
        ref_d, ref_t = 0, run.race.gun
        lap = run.race.venue.lap_m
        for i in range(len(hist) - 2, -1, -1):
            d, tt = hist[i]
            if last_d - d > lap:
                break
            ref_d, ref_t = d, tt
        if last_t <= ref_t:
            v = eng.cfg.v_start_mps / US_PER_S
        else:
            v = (last_d - ref_d) / (last_t - ref_t)
    run.pace = v
    return v


def set_deadline(eng: Engine, run: SkaterRun) -> None:
    """When a skater not seen at its next two loops is overdue."""
    offs = run.comp.offsets
    lap = run.race.venue.lap_m
    d = run.last_d
    nxt: list[int] = []
    base = (d // lap) * lap
    while len(nxt) < LOOPS_AHEAD:
        for o in offs:
            x = base + o
            if x > d and (not nxt or x > nxt[-1]):
                nxt.append(x)
                if len(nxt) == LOOPS_AHEAD:
                    break
        base += lap
    v = pace(eng, run)
    if not run.hist:
        run.deadline = INF   # not moving yet: nothing to be overdue against
        return
    dl = run.last_t + (nxt[-1] - d) / v * eng.cfg.fall_factor + eng.cfg.fall_slack_us
    venue = run.race.venue
    since, until = venue.dark
    if dl > since - eng.cfg.reorder_us and run.last_t < until:
        # the venue went dark after this crossing (it closed only after the
        # outage): the dark time proves nothing, as for the deadlines then open
        dl += until - since
    run.deadline = dl
    if dl < venue.next_due:
        venue.next_due = dl


def check_caught(eng: Engine, race: Race, comp: CompRun, d: int, t: int, out: list) -> None:
    lap = race.venue.lap_m
    for other in race.comps:
        if other is comp or other.caught or other.finish_tr is not None or other.irm:
            continue
        gap = (other.start_m - comp.start_m) % lap
        if gap == 0:
            continue
        # the other team's trailing skater, estimated at time t
        trailing: float = INF
        moving = [s for s in other.skaters if s.hist and not s.finished]
        if len(moving) < TEAM_SIZE:
            continue   # not three skaters on the track (a reserve never skates)
        for s in moving:
            trailing = min(trailing, s.last_d + (t - s.last_t) * pace(eng, s))
        if d - gap >= trailing:
            other.caught = True
            out.append(events.incident(race, other, None, "caught", "confirmed", int(trailing), t,
                                       note=f"caught by {comp.id}"))


def finish_loop(run: SkaterRun, v: Venue) -> str | None:
    at = (run.comp.start_m + run.race.d.distance) % v.lap_m
    for name, pos in v.loops.items():
        if pos == at:
            return name
    return None
