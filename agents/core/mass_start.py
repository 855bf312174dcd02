"""Mass start: sprint points and the final sprint's points."""
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


def reaward_final(race: Race) -> None:
    """Mass start: a photo revision can change who crossed the line first;
    the final points follow the effective finishing order."""
    done = sorted((c for c in race.comps if c.finish_ms is not None and c.irm is None),
                  key=lambda c: (c.finish_ms, c.order))
    pts = race.d.final
    if pts is None:
        return
    for i, c in enumerate(done):
        new = pts[i] if i < len(pts) else 0
        c.points += new - c.final_points
        c.final_points = new
