"""The reordering window: reads in, crossings closed in event-time order.

Each venue has a clock, the newest ``t_us`` of its passings and heartbeats.
Reads may arrive out of order by up to ``reorder_us``; a crossing (the reads
of one skater at one loop within ``group_us``) is *open* while the clock is
within ``reorder_us`` of its earliest read, then closed. Closed crossings and
fall deadlines are processed on one timeline in event-time order
(``timeline``), so a feed gives the same events whatever the arrival order
within the window. Resends (same source and seq) are dropped.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from schemas.decode import Rejected

from . import falls, results, tracking
from .config import INF, RECENT_RACE_US, US_PER_S
from .model import Outcome, Pending, SkaterRun, Venue

if TYPE_CHECKING:   # pragma: no cover
    from .engine import Engine

# outcomes as module constants, plain strings (an Enum member lookup costs ~0.2 us
# on every read, and a member hashes slowly as a stats key: see engine.APPLIED)
DUPLICATE = Outcome.DUPLICATE.value
IGNORED_AFTER_FINISH = Outcome.IGNORED_AFTER_FINISH.value
IGNORED_BEFORE_START = Outcome.IGNORED_BEFORE_START.value
IGNORED_LATE = Outcome.IGNORED_LATE.value
IGNORED_UNKNOWN_TRANSPONDER = Outcome.IGNORED_UNKNOWN_TRANSPONDER.value
ENDED = ("official", "void")   # Race.ended, inlined (a property call costs on every read)
OUTAGE_GAP_US = falls.OUTAGE_GAP_US
UNPLACED = tracking.UNPLACED


def heartbeat(eng: Engine, msg: dict, out: list) -> None:
    v = eng.venues.get(msg["venue"])
    if v is None:
        raise Rejected("unknown_reference", f"heartbeat: venue {msg['venue']!r} was never set up")
    t = msg["t_us"]
    clock = v.clock
    if t > clock + eng.max_jump_us and clock >= 0:
        check_jump(eng, v, t, "heartbeat")
    hb = v.hb
    src = msg["source"]
    if t > hb.get(src, -1):
        hb[src] = t
    if t > clock:
        advance(eng, v, clock, t, out)


def passing(eng: Engine, msg: dict, out: list) -> None:
    v = eng.venues.get(msg["venue"])
    if v is None:
        raise Rejected("unknown_reference", f"passing: venue {msg['venue']!r} was never set up")
    loop = msg["loop"]
    at_m = v.loops.get(loop)
    if at_m is None:
        raise Rejected("unknown_reference", f"passing: venue {v.id} has no loop {loop!r}")
    t = msg["t_us"]
    clock = v.clock
    if t > clock + eng.max_jump_us and clock >= 0:
        check_jump(eng, v, t, "passing")
    src = msg["source"]
    seqs = v.seqs.get(src)
    if seqs is None:
        seqs = v.seqs[src] = {}
    seq = msg["seq"]
    if seq in seqs:
        eng.outcome = DUPLICATE
        return
    seqs[seq] = t
    if t > v.seq_pruned + eng.cfg.seq_keep_us:
        v.seq_pruned = t
        for sq in v.seqs.values():
            prune_seqs(eng, v, sq)
    if t > clock:
        # close what this read proves final first: a read at t can only
        # belong to a crossing later than t - reorder_us
        advance(eng, v, clock, t, out)
    # the read itself (inline: every passing)
    run = v.transponders.get(msg["transponder"])
    if run is None:
        eng.outcome = IGNORED_UNKNOWN_TRANSPONDER
        return
    race = run.race
    if t < race.gun:
        eng.outcome = IGNORED_BEFORE_START
        return
    if run.finished or run.lost or run.comp.irm is not None or race.status in ENDED:
        fin = run.finish_t
        if fin is not None and abs(t - fin) <= eng.cfg.group_us and loop == tracking.finish_loop(run, v):
            eng.outcome = DUPLICATE   # another read of the finish crossing
        else:
            eng.outcome = IGNORED_AFTER_FINISH
        return
    last = run.last_cross.get(loop)
    if last is not None and abs(t - last) <= eng.cfg.group_us:
        eng.outcome = DUPLICATE       # another read of a crossing already closed
        return
    if t < v.clock - eng.reorder_us:
        eng.outcome = IGNORED_LATE
        return
    key = (run, loop)        # (the run itself: hashed by identity, and kept by a snapshot)
    p = v.pending.get(key)
    if p is None:
        v.pending[key] = Pending(t, run, loop, at_m)
        if t < v.next_due:
            v.next_due = t
        eng._touch(race, run)
    elif t < p.t:
        # an earlier read of an open crossing: its provisional values change
        # unless it is earlier by less than the thousandth the time shows
        # (the other decoder's read of the same transponder, ~0.3 ms apart)
        gun = race.gun
        if (t - gun) // 1000 != (p.t - gun) // 1000:
            eng._touch(race, run)
        p.t = t
        if t < v.next_due:
            v.next_due = t


def advance(eng: Engine, v: Venue, clock: int, t: int, out: list) -> None:
    """The venue's clock moves from ``clock`` to ``t`` (later): after a long
    silence the venue was dark, and what the new horizon closes is processed."""
    if t - clock > OUTAGE_GAP_US and clock >= 0:
        falls.venue_dark(v, clock, t, eng.cfg.reorder_us)
    v.clock = t
    horizon = t - eng.cfg.reorder_us
    if horizon > v.next_due:
        timeline(eng, v, horizon, out)


def check_jump(eng: Engine, v: Venue, t: int, kind: str) -> None:
    """A decoder clock leaping far ahead during a race would close every open
    crossing and suspect every skater: that message is out of contract."""
    if v.clock < 0 or t <= v.clock + eng.cfg.max_jump_us:
        return
    recent = v.clock - RECENT_RACE_US   # a race started in the last half hour and still running
    ref = max([v.clock] + [r.gun for r in v.races if r.status == "live" and r.gun >= recent])
    if ref > v.clock or any(r.status == "live" and r.gun >= recent for r in v.races):
        if t <= ref + eng.cfg.max_jump_us:
            return
        raise Rejected("bad_value", f"{kind}: t_us {t} is {(t - v.clock) / US_PER_S:.0f} s ahead of venue "
                                    f"{v.id}'s clock during a race (a decoder clock jump?)")


def prune_seqs(eng: Engine, v: Venue, seqs: dict[int, int]) -> None:
    horizon = v.clock - eng.cfg.seq_keep_us
    for k in [k for k, tt in seqs.items() if tt < horizon]:
        del seqs[k]


def timeline(eng: Engine, v: Venue, horizon: float, out: list) -> None:
    """Process closed crossings and fall deadlines before ``horizon`` in time order."""
    pending = v.pending
    races = v.races
    crossing = tracking.crossing
    while True:
        best: Pending | None = None
        best_t: float = INF
        for p in pending.values():
            pt = p.t
            if pt < best_t or (pt == best_t and best is not None and order(p.run) < order(best.run)):
                best_t = pt
                best = p
        dl_t: float = INF
        dl_run: SkaterRun | None = None
        for race in races:
            for c in race.comps:
                for s in c.skaters:
                    if s.deadline < dl_t:
                        dl_t = s.deadline
                        dl_run = s
        ph_t: float = INF
        if v.photo_due:   # (rare) a photo waiting for the reads of its finish
            ph = min(v.photo_due, key=_due)
            ph_t = ph[0]
            if ph_t < best_t and ph_t < dl_t and ph_t < horizon:
                v.photo_due.remove(ph)
                results.photo_due(eng, ph[1], ph[2], out)
                continue
        if best is not None and best_t <= dl_t and best_t < horizon:
            run = best.run
            del pending[(run, best.loop)]
            # placed at its first read, for this time and the skater's same last crossing: known
            crossing(eng, run, best.loop, best.at_m, best_t, out,
                     best.d if best.sig == (best_t, run.last_t) else UNPLACED)
            if _provisional_left(run):
                eng._touch(run.race, run)
        elif dl_run is not None and dl_t < best_t and dl_t < horizon:
            falls.overdue(eng, dl_run, int(dl_t), out)
        else:
            v.next_due = min(best_t, dl_t, ph_t)
            return


def _due(item: tuple) -> int:
    return item[0]


def flush_photos(eng: Engine, v: Venue, out: list) -> None:
    """End of a recorded feed: the photos still waiting take effect."""
    while v.photo_due:
        ph = min(v.photo_due, key=_due)
        v.photo_due.remove(ph)
        results.photo_due(eng, ph[1], ph[2], out)


def _provisional_left(run: SkaterRun) -> bool:
    """After a crossing closed: is a provisional value of this skater (team,
    race) left to revise or withdraw? Usually not: the final version took the
    provisional one's key with the same time, so nothing else moves."""
    race = run.race
    if run.prov_sus is not None or race.prov_result is not None:
        return True
    for c in race.comps:
        if c.prov_finish is not None:
            return True   # its provisional result is to be published again after this one's

    sid = run.id
    for k in race.open:   # its own key left open: the crossing closed elsewhere or not at all
        if k[1] == sid:   # (a team's open split only moves with its skaters' open crossings)
            return True
    return False


def order(run: SkaterRun) -> tuple[int, str]:
    """Tie-break of simultaneous crossings: start-list order, then skater id."""
    return (run.comp.order, run.id)
