"""Mass start: sprint points and the final sprint's points.

The intermediate sprints (laps 4, 8, 12) are awarded as the skaters cross
(``award``). The final sprint's points are a function of the race's state,
recomputed from scratch whenever a finish or an IRM changes
(``reaward_final``): they go to the competitors without an IRM, in the
effective finishing order (the photo-finish time, else the transponder
crossing, to the microsecond: two skaters in the same thousandth are still
one before the other; an exact tie in microseconds goes by the start list).
A competitor with an IRM (a DQ, or a DNF given after the line) has no
finishing place, so no final points: the points go to the next across the
line. So the final points never depend on the order in which photos and
decisions arrive, and equal those of a race whose corrections were known
when the skaters crossed.
"""
from __future__ import annotations

from .model import CompRun, Race


def award(race: Race, comp: CompRun, d: int, pts: list[int]) -> bool:
    """Mass start: points to the first across the line at a sprint or the finish."""
    n = race.sprint_awards.get(d, 0)
    race.sprint_awards[d] = n + 1
    if n < len(pts) and pts[n]:
        comp.points += pts[n]
        return True
    return False


def finish_us(race: Race, comp: CompRun) -> int | None:
    """The competitor's effective finish crossing (absolute us): the photo
    over the transponder; None before its finish is settled."""
    if comp.finish_ms is None:
        return None
    run = comp.skaters[0]
    ph = race.photos.get(run.id)
    if ph is not None:
        return ph
    return run.finish_t


def finishing_order(race: Race) -> list[CompRun]:
    """The competitors without an IRM whose finish is settled, in effective finishing order."""
    done = []
    for c in race.comps:
        if c.irm is not None:
            continue
        t = finish_us(race, c)
        if t is not None:
            done.append((t, c.order, c))
    done.sort(key=lambda x: (x[0], x[1]))
    return [c for _, _, c in done]


def reaward_final(race: Race) -> None:
    """The final sprint's points in the effective finishing order (every
    competitor's ``final_points`` set again; ``points`` follows)."""
    pts = race.d.final
    if pts is None:
        return
    new: dict[CompRun, int] = {}
    for i, c in enumerate(finishing_order(race)):
        new[c] = pts[i] if i < len(pts) else 0
    for c in race.comps:
        p = new.get(c, 0)
        if p != c.final_points:
            c.points += p - c.final_points
            c.final_points = p


def provisional_points(race: Race, prov: dict[CompRun, int]) -> dict[CompRun, int]:
    """The points the competitors of ``prov`` (competitor -> its provisional
    finish crossing, absolute us) would hold once their finishes are final:
    the final sprint re-awarded with them among the settled finishers."""
    pts = race.d.final
    if pts is None:
        return {}
    done = [(t, c.order, c) for c, t in prov.items() if c.irm is None]
    for c in finishing_order(race):
        if c not in prov:
            t = finish_us(race, c)
            assert t is not None
            done.append((t, c.order, c))
    done.sort(key=lambda x: (x[0], x[1]))
    out = {}
    for i, (_, _, c) in enumerate(done):
        if c in prov:
            out[c] = c.points - c.final_points + (pts[i] if i < len(pts) else 0)
    return out
