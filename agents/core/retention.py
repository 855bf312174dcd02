"""Bounded state: a finished race's state is released.

The rule (``CoreConfig``, venue time: the venue's clock, fed by its
passings and heartbeats):

- a race that is ``official`` or ``void`` is released ``release_us`` (1 h)
  after the last of those decisions (the venue's clock then);
- a started race that is never made official nor void is released
  ``abandon_us`` (24 h) after its gun, as it stands.

Until then a photo or a decision (a DQ after a protest, a VOID, a restart)
still changes it, as the contract allows. A race is released right after
the message that takes its venue's clock to that time, so offline, replayed
and live runs release at the same message and publish the same events.

Released: the attempt (its competitors, skaters, crossings, published split
versions, incidents, provisional state), its start list and the venue's map
of its transponders (a later read of one is a transponder on no active start
list). Kept, compact (``RaceSummary``): status, attempt, result revision,
group, IRMs. Kept elsewhere: the records it set (``Engine.claims``, the
records book), its entries in its group's standings (``GroupState``) and, if
it awards places, its ranking for the classification (``Engine.cls_kept``).

A later message about a released race gets a defined outcome, never a crash:
a repeated ``start`` (same attempt), ``OFFICIAL``, ``VOID`` or IRM is a
duplicate (an ``OFFICIAL`` after a ``VOID`` is ignored as late, as before);
anything that would change it (a photo, another decision, a restart, a new
start list) is a dead letter, reason ``race_released``. A record taken back
later passes only to finishes of races not yet released.
"""
from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from schemas.decode import IRM_CODES, Rejected

from .config import INF, US_PER_S
from .model import Outcome, Race
from .model_kept import RaceSummary
from .results import ranking
from .standings import compact_group

if TYPE_CHECKING:   # pragma: no cover
    from .engine import Engine

# the kinds that name a race (``race_id``); a record_ref's race_id is another matter
RACE_KINDS = frozenset(("race", "start", "photo", "decision"))
REASON = "race_released"


def started(eng: Engine, race: Race) -> None:
    """A race started (or restarted): released ``abandon_us`` after its gun unless it ends first."""
    _schedule(eng, race, race.gun + eng.cfg.abandon_us)


def ended(eng: Engine, race: Race) -> None:
    """A race became official or void (or an attempt was recalled): released
    ``release_us`` after the venue's clock now."""
    v = race.venue
    _schedule(eng, race, (v.clock if v.clock >= 0 else race.gun) + eng.cfg.release_us)


def _schedule(eng: Engine, race: Race, due: int) -> None:
    race.release_due = due
    k = eng.kept
    heapq.heappush(k.releases.setdefault(race.venue.id, []), (due, race.d.id, race.attempt))
    if due < k.release_at:
        k.release_at = due


def sweep(eng: Engine) -> None:
    """Release every race whose venue's clock has reached its due time."""
    nxt = INF
    for vid, heap in eng.kept.releases.items():
        clock = eng.venues[vid].clock
        while heap and heap[0][0] <= clock:
            due, rid, attempt = heapq.heappop(heap)
            race = eng.races.get(rid)
            # an entry superseded by a later due (a VOID after OFFICIAL, the end
            # of a race after its start) or by a restart is skipped
            if race is not None and race.attempt == attempt and race.release_due == due:
                release(eng, race, clock)
        if heap and heap[0][0] < nxt:
            nxt = heap[0][0]
    eng.kept.release_at = nxt


def release(eng: Engine, race: Race, clock: int) -> None:
    d = race.d
    rid = d.id
    eng.kept.released[rid] = RaceSummary(race.status, race.attempt, race.result_rev, d.group,
                                    {c.id: c.irm for c in race.comps if c.irm is not None}, clock)
    if d.places:
        eng.kept.cls_kept[rid] = (d.places, race.status, _cls_ranking(eng, race))
    del eng.races[rid]
    eng.race_defs.pop(rid, None)
    eng.pre_irm.pop(rid, None)
    eng.result_revs.pop(rid, None)
    eng.dirty.pop(race, None)
    v = race.venue
    if race in v.races:
        v.races.remove(race)
    for key in [k for k, p in v.pending.items() if p.run.race is race]:
        del v.pending[key]
    tps = v.transponders
    for run in race.by_skater.values():
        for tp in run.transponders:
            if tps.get(tp) is run:
                del tps[tp]
    # first finishes of this race and of attempts no longer current leave the
    # records' judging order (``records.rejudge`` skips the latter already)
    races = eng.races
    eng.finish_log = [e for e in eng.finish_log if races.get(e[1].d.id) is e[1]]
    # a group (an event) whose races are all released: its standings state compact
    released = eng.kept.released
    gs = eng.kept.gstate.get(d.group)
    if gs is not None and all(m in released for m in gs.order) and gs.order == eng.groups.get(d.group):
        compact_group(gs)
    if d.places and all(m in released for m in eng.events.get(d.event, ())):
        eng.kept.cls_last.pop(d.event, None)


def _cls_ranking(eng: Engine, race: Race) -> list[tuple]:
    return [(e["rank"], e["irm"], e["competitor_id"]) for e in ranking(eng, race)]


def late(eng: Engine, msg: dict) -> None:
    """A race, start, photo or decision for a released race: a duplicate (the
    engine's outcome is set) or a dead letter (``Rejected``)."""
    kind = msg["kind"]
    rid = msg["race_id"]
    s = eng.kept.released[rid]
    dup = Outcome.DUPLICATE.value
    if kind == "start":
        if msg.get("attempt", 1) <= s.attempt:
            eng.outcome = dup
            return
        what = f"a restart (attempt {msg.get('attempt', 1)})"
    elif kind == "decision":
        code = msg["code"]
        if code == "OFFICIAL" and s.status in ("official", "void"):
            eng.outcome = dup if s.status == "official" else Outcome.IGNORED_LATE.value
            return
        if code == "VOID" and s.status == "void":
            eng.outcome = dup
            return
        if code in IRM_CODES and s.irms.get(msg.get("competitor_id")) == code:
            eng.outcome = dup
            return
        what = f"decision {code}"
    elif kind == "photo":
        what = f"a photo of {msg['skater_id']!r}"
    else:
        what = "a new start list"
    raise Rejected(REASON, f"{kind}: {what} for race {rid!r}, which was released ({s.status}, "
                           f"attempt {s.attempt}; its state is let go {eng.cfg.release_us // US_PER_S} s "
                           "after OFFICIAL or VOID): its results stand as published")
