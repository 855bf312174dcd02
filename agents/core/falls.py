"""Falls found from the timing: a deadline passed, or time lost on a segment.

Two rules, both on event time:

- **Overdue** (``Engine._set_deadline`` / ``_overdue``): a skater not seen at
  its next *two* loops within ``fall_factor`` x its recent pace (+ slack) is
  suspected (one missed read never raises it). A skater down for longer than
  about two loop intervals is caught this way before it turns up.
- **Dark venue** (``venue_dark``): when no message at all (reads or
  heartbeats) comes from a venue for ``OUTAGE_GAP_US``, its decoders were
  down; open deadlines move on by the dark time, so an outage while the
  skaters keep skating raises nothing.
- **Lost time** (``lost_time``): a skater who falls and gets up within about
  two loop intervals turns up late at the next loop it is read at. A loop's
  identity fixes where on the lap a crossing is, so the segment's distance is
  known even across missed reads or a decoder outage (a missed read makes the
  segment longer in metres, not slower); only its *duration* can reveal a
  fall. Physics of the rule: loop intervals are 3-10 s; a fall costs 2-15 s;
  a skater's pace from one segment to the next varies by a few per cent
  (corners against straights, a team pursuit's change of leader, the fade):
  under 1 s on a 10 s segment. So a segment is suspect when it took at least
  ``LOST_MIN_US`` (1.8 s) longer than the skater's own recent pace allows and
  at least ``LOST_RATIO`` (x1.2) that expected time. ``at_m`` is the last
  loop passed before the time was lost.

A suspicion stays open until the referee's ``FALL`` (``confirmed``) or
``OFFICIAL`` (``cleared``, "not confirmed by the referee"); a restart that
discards the attempt clears it ("attempt discarded by a restart").
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from schemas.decode import Rejected

from . import events
from .config import INF
from .model import CompRun, ProvSuspicion, Race, SkaterRun, Venue
from .timefmt import event_id

if TYPE_CHECKING:   # pragma: no cover
    from .engine import Engine

OUTAGE_GAP_US = 2_500_000  # a venue silent this long (decoders beat every second) is dark, not quiet
LOST_MIN_US = 1_800_000   # a fall costs at least ~2 s; pace noise on one segment stays under 1 s
LOST_RATIO = 1.2          # and the segment took at least this share more than its expected time


def venue_dark(venue: Venue, since: int, until: int, reorder_us: int) -> None:
    """No message at all from the venue between ``since`` and ``until``: its
    decoders were down, so a skater not seen in that time proves nothing. The
    deadlines still open are pushed back by the time the venue was dark."""
    gap = until - since
    venue.dark = (since, until)   # (a crossing still open then closes later: tracking.set_deadline)
    for race in venue.races:
        for comp in race.comps:
            for run in comp.skaters:
                if run.deadline != INF and run.deadline > since - reorder_us:
                    run.deadline += gap


def lost_time(dt_us: int, metres: int, pace_m_per_us: float) -> bool:
    """Did a segment of ``metres`` taking ``dt_us`` lose time against the pace?"""
    if pace_m_per_us <= 0 or metres <= 0:
        return False
    expected = metres / pace_m_per_us
    return dt_us - expected >= LOST_MIN_US and dt_us >= LOST_RATIO * expected


def explained(run: SkaterRun) -> bool:
    """No new suspicion: one is open, or the referee confirmed the fall of this gap."""
    return run.suspected or (run.confirmed_t is not None and run.confirmed_t >= run.last_t)


def provisional_suspicion(run: SkaterRun, d: int, t: int, pace: float) -> tuple[int, int] | None:
    """What the final step will say when the skater's first open crossing (at
    race distance ``d``, time ``t``) closes: (at_m, t_us) of a suspicion, or None."""
    if explained(run) or not run.hist:
        return None
    if run.deadline < t:
        return (run.last_d, int(run.deadline))   # the deadline passes first
    if lost_time(t - run.last_t, d - run.last_d, pace):
        return (run.last_d, t)
    return None


def publish_provisional(race: Race, run: SkaterRun, want: tuple[int, int] | None, out: list[dict]) -> None:
    """Publish, revise or withdraw a skater's provisional suspicion."""
    prov = run.prov_sus
    if want is None:
        if prov is None:
            return
        run.prov_sus = None
        rev = prov.rev + 1
        race.inc_rev[(run.comp.id, run.id, "fall", prov.n)] = rev   # a later suspicion of it goes on
        out.append(events.withdrawn(prov.ev, _id(race, run, prov.n, rev), rev, True))
        return
    n = run.incident_n + 1
    if prov is not None and prov.n == n and prov.at == want:
        return
    rev = race.inc_rev.get((run.comp.id, run.id, "fall", n), -1) + 1 if prov is None else prov.rev + 1
    at_m, t = want
    ev: dict[str, Any] = {"kind": "incident", "v": 1, "event_id": _id(race, run, n, rev),
          "race_id": race.d.id, "t_us": t, "attempt": race.attempt, "competitor_id": run.comp.id,
          "skater_id": run.id, "type": "fall", "status": "suspected", "at_m": at_m,
          "revision": rev, "final": False}
    run.prov_sus = ProvSuspicion(n, rev, ev, want)
    out.append(ev)


def final_revision(race: Race, run: SkaterRun | None, n: int) -> int:
    """The revision of a final suspicion: after the provisional one it confirms
    (or after a provisional one of the same incident, withdrawn since)."""
    if run is None:
        return 0   # (a suspicion is always a skater's)
    if run.prov_sus is None or run.prov_sus.n != n:
        return race.inc_rev.get((run.comp.id, run.id, "fall", n), -1) + 1
    rev = run.prov_sus.rev + 1
    run.prov_sus = None
    return rev


def supersede_provisional(race: Race, run: SkaterRun) -> None:
    """The referee's FALL or a final word on the skater's incident while its
    provisional suspicion is open: the next event of that incident is its next
    revision, and the provisional suspicion is never withdrawn after it."""
    prov = run.prov_sus
    if prov is not None and prov.n == run.incident_n:
        race.inc_rev[(run.comp.id, run.id, "fall", prov.n)] = prov.rev
        run.prov_sus = None


def _id(race: Race, run: SkaterRun, n: int, rev: int) -> str:
    return event_id("incident", race.d.id, race.attempt, run.comp.id, run.id, "fall", n, "suspected", rev)


def overdue(eng: Engine, run: SkaterRun, t: float, out: list) -> None:
    """The skater's deadline passed on the timeline: not seen at its next two loops."""
    run.deadline = INF
    run.overdue = True
    if explained(run):
        return   # a suspicion is open, or the referee confirmed the fall of this gap
    run.suspected = True
    run.incident_n += 1
    out.append(events.incident(run.race, run.comp, run, "fall", "suspected", run.last_d, t))


def confirm(race: Race, comp: CompRun | None, sid: str | None, msg: dict, out: list) -> None:
    """The referee's FALL: confirms the open suspicion (or a fall not suspected)."""
    run = None
    if sid is not None:
        run = race.by_skater.get(sid)
        if run is None or (comp is not None and run.comp is not comp):
            raise Rejected("unknown_reference", f"decision: skater {sid!r} is not in race {race.d.id}"
                           + (f" for {comp.id!r}" if comp is not None else ""))
        comp = run.comp
    elif comp is not None and len(comp.skaters) == 1:
        run = comp.skaters[0]
    if comp is None:
        raise Rejected("unknown_reference", f"decision: FALL in race {race.d.id} names no competitor or skater")
    t = msg["t_us"]
    at = None
    if run is not None:
        if not run.suspected:
            run.incident_n += 1
            supersede_provisional(race, run)   # (a provisional suspicion of this fall: confirmed)
        run.suspected = False
        run.overdue = False
        run.deadline = INF
        run.confirmed_t = t   # no suspicion for the gap this fall explains
        at = run.last_d
    else:
        comp.team_incidents += 1
    out.append(events.incident(race, comp, run, "fall", "confirmed", at, t, note=msg.get("note")))


def clear_all(race: Race, t: int, note: str, out: list) -> None:
    """Close every open suspicion of the race (OFFICIAL, a restart); no more deadlines."""
    for c in race.comps:
        for s in c.skaters:
            s.deadline = INF
            if s.suspected:
                s.suspected = False
                out.append(events.incident(race, c, s, "fall", "cleared", s.last_d, t, note=note))
