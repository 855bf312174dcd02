"""The commonest message in one step: a heartbeat that closes nothing.

Two thirds of a feed are heartbeats, and nearly all of them only move a
venue's clock (and the reference clock of their decoder). ``beat`` does for
such a heartbeat exactly what ``ClockGuard.offer`` then ``Engine.apply`` do
(``streams.process.Processor.handle`` calls them in that order), without
their general dispatch; for anything else (a venue unknown or without a
clock, something held or a leap remembered by the guard, a beat outside the
reorder window of its reference, a beat that would close a crossing, leave
the venue dark or jump) it returns ``None`` and changes nothing: the caller
takes the general path. tests/test_core_fastpaths.py checks it against them.

Pure: no I/O, no clock reads.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .falls import OUTAGE_GAP_US
from .retention import sweep

if TYPE_CHECKING:   # pragma: no cover
    from .clockguard import ClockGuard
    from .engine import Engine


def beat(guard: ClockGuard, eng: Engine, msg: dict) -> list[dict] | None:
    """A decoded heartbeat applied (the derived events: none), or ``None``
    (not applied: take the general path)."""
    if guard.held or guard.leapt or eng.dirty or eng.rejudge_due:
        return None
    venue = msg["venue"]
    v = eng.venues.get(venue)
    if v is None:
        return None
    clock = v.clock
    t = msg["t_us"]
    srcs = guard.sources.get(venue)
    if clock < 0 or srcs is None or t < clock - guard.behind:
        return None
    # the clock guard: within the reorder window of the source's reference
    source = msg["source"]
    ref = srcs.second if source == srcs.top_src else srcs.top
    if ref < clock - guard.span:
        ref = clock
    reorder = eng.reorder_us
    r = guard.reorder_us
    if t > ref + (reorder if r is None else r):
        return None
    # the engine: a beat that closes nothing (window.heartbeat, when nothing is due)
    if t > clock and (t - clock > OUTAGE_GAP_US or t - reorder > v.next_due
                      or t > clock + eng.max_jump_us):
        return None
    srcs.applied(source, t)
    hb = v.hb
    if t > hb.get(source, -1):
        hb[source] = t
    if t > clock:
        v.clock = t
    eng.outcome = "applied"
    eng.beats["applied"] += 1
    if t >= eng.kept.release_at:   # a finished race's grace is over (retention.py; emits nothing)
        sweep(eng)
    return []
