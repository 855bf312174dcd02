"""The clock guard: no single message may move a venue's clock far.

Pure (no I/O, no clock reads): it reads the engine's venue clocks and keeps
what it holds, so it is rebuilt with the engine by replaying the raw log, and
offline, replayed and live runs decide alike: what is held is decided by the
venue's later messages, never by the end of a stream. ``streams.process.
Processor`` consults it before the core applies a message.

Only clock messages (passings and heartbeats: the GPS-timed decoders) are
held; every other kind (venue, race, start, photo, decision, record_ref)
applies at once. Race, photo and decision come from other systems and are
never judged by their ``t_us`` (a photo may arrive long after the race, a
race set-up days before it is run; the core has its own rules). A start is
refused (``stale_feed``) only when its gun is more than ``behind_us`` behind
the venue's clock: every read of that race would be refused as stale, so the
race could only be published with every team DNS (a replayed older feed).

Per venue, with ``clock`` its newest applied clock ``t_us`` (before the
first, the ``t_us`` of its ``venue`` message):

- **Stale**: a clock message more than ``behind_us`` (10 min) behind the
  clock is refused, ``stale_feed`` (an older feed replayed onto a live
  pipeline, a decoder stuck in the past). Within ``grace_us`` (60 s of the
  venue clock) after a confirmed leap, a clock message at the pre-leap clock
  is refused as ``clock_leap`` instead, saying it contradicts the leap.
- **Ahead**: a clock message of decoder S more than the core's reorder
  window (``CoreConfig.reorder_us``, 3 s) ahead of its reference is *held*
  (it would make the venue's other reads late). The reference is the newest
  applied heartbeat of the venue's other decoders, if one is within
  ``single_span_us`` of the venue clock; else the venue clock. A held
  message is applied, in arrival order, as soon as either
  - the clock catches up with it (a message applied at its ``t_us`` or
    beyond; the held one goes first): a backup decoder running seconds ahead
    is thus applied at the pace of the one behind it and drops none of its
    reads (the venue clock follows the second-highest decoder); or
  - its candidate time (held messages within ``ahead_us``, 30 s, of each
    other) is *confirmed*: held messages from at least 2 distinct sources
    spanning at least ``span_us`` (2 s) of their own ``t_us`` (those up to
    the second-highest source's time are applied, the rest wait to be caught
    up). One source confirms alone only if no other source has been heard
    since the hold began, with ``single_confirm`` (3) messages spanning
    ``single_span_us`` (10 s): a venue with one decoder, or whose backup
    died. Held messages of other candidates are then refused (``clock_leap``).
  A clock message at the reference time while leaps (more than ``ahead_us``
  ahead of the venue clock) are held says they were bad: they are refused
  (``clock_leap``); held messages less than ``ahead_us`` ahead stay held
  until caught up or confirmed. At most ``max_held`` (1,000) messages are
  held per venue: beyond, the oldest held is refused. At the end of a
  recorded feed (``drain``, offline only) leaps still held are refused and
  the messages less than ``ahead_us`` ahead are applied.

Not done: a confirmed leap is not undone (the engine's state cannot be
rolled back); a message at the old clock within ``grace_us`` after it is
refused as ``clock_leap`` saying so, so the alert names the leap.

The core's own rule (a leap beyond 10 min while a race runs is refused) still
applies to what the guard lets through.
"""
from __future__ import annotations

from schemas.decode import Rejected

from .clockguard_state import ClockConfig, _Hold, _Sources

__all__ = ["ClockConfig", "ClockGuard"]


class ClockGuard:
    """``offer(msg, engine, raw, tag)`` -> ``None``: apply ``msg`` now (the
    common case); or raises ``Rejected``; or a list of ``(item, rejection or
    None)`` to apply (``None``) or refuse, in order, where an item is
    ``(msg, raw, tag)`` (the caller's handle on a message); a list without
    ``msg``'s item means ``msg`` is held."""

    __slots__ = ("cfg", "held", "ahead", "behind", "origin", "leapt", "sources", "span", "reorder_us")

    def __init__(self, config: ClockConfig | None = None) -> None:
        self.cfg = config or ClockConfig()
        self.ahead = self.cfg.ahead_us
        self.behind = self.cfg.behind_us
        self.span = self.cfg.single_span_us
        self.reorder_us = self.cfg.reorder_us     # None: the engine's
        self.held: dict[str, _Hold] = {}
        self.origin: dict[str, int] = {}   # venue -> t_us of its set-up (the clock before the first)
        self.leapt: dict[str, tuple[int, int]] = {}   # venue -> (old clock, new time) of its last confirmed leap
        self.sources: dict[str, _Sources] = {}  # venue -> its sources' newest applied heartbeats

    def offer(self, msg: dict, engine, raw, tag):
        kind = msg["kind"]
        if kind == "heartbeat" or kind == "passing":
            # the common case, first: nothing held or leapt anywhere, a venue
            # with a clock, a message within the reorder window of its reference
            if not self.held and not self.leapt:
                venue = msg["venue"]
                v = engine.venues.get(venue)
                if v is not None:
                    clock = v.clock
                    t = msg["t_us"]
                    srcs = self.sources.get(venue)
                    if clock >= 0 and srcs is not None and t >= clock - self.behind:
                        ref = srcs.second if msg["source"] == srcs.top_src else srcs.top
                        if ref < clock - self.span:
                            ref = clock
                        r = self.reorder_us
                        if t <= ref + (engine.reorder_us if r is None else r):
                            if kind == "heartbeat":
                                srcs.applied(msg["source"], t)
                            return None
            return self._clock(msg, kind, engine, raw, tag)
        if kind == "venue":
            if msg["venue"] not in engine.venues:
                self.origin[msg["venue"]] = msg["t_us"]
            return None
        if kind == "start":
            # the gun: not held, and not refused for a late arrival; refused
            # only when the gun itself is so far behind the venue's clock that
            # every read of the race would be refused as stale (a replayed
            # feed): applied, it could only publish every team DNS
            v = engine.venues.get(msg["venue"])
            if v is not None and v.clock >= 0 and msg["t_us"] < v.clock - self.cfg.behind_us:
                raise Rejected("stale_feed",
                               f"start: the gun t_us {msg['t_us']} is {(v.clock - msg['t_us']) / 1e6:.0f} s "
                               f"behind venue {msg['venue']}'s clock (bound {self.cfg.behind_us / 1e6:.0f} s): "
                               f"every read of the race would be stale (an older feed replayed onto this "
                               f"pipeline?) refused")
        return None              # race, photo, decision, record_ref: never judged by their t_us

    def _clock(self, msg: dict, kind: str, engine, raw, tag):
        """A passing or heartbeat: the full rules."""
        venue = msg["venue"]
        v = engine.venues.get(venue)
        if v is None or (kind == "passing" and msg["loop"] not in v.loops):
            return None     # (what refers to nothing known the core refuses itself, saying what)
        cfg = self.cfg
        clock = v.clock
        at_origin = clock < 0   # no clock message applied yet: the set-up's t_us stands in
        if at_origin:
            clock = self.origin.get(venue, -1)
            if clock < 0:
                return None
        t = msg["t_us"]
        source = msg["source"]
        leap = self.leapt.get(venue) if self.leapt else None
        if leap is not None:
            old, new = leap
            if clock > new + cfg.grace_us:
                del self.leapt[venue]
            elif t <= old + cfg.ahead_us and t < new - cfg.ahead_us:
                raise Rejected("clock_leap",
                               f"{kind}: t_us {t} is at venue {venue}'s clock before its leap from {old} "
                               f"to {new} (confirmed {(clock - new) / 1e6:.0f} s ago): a message at the "
                               f"old clock within the grace period ({cfg.grace_us / 1e6:.0f} s) says the "
                               f"leap may have been bad; refused")
        if t < clock - cfg.behind_us and not at_origin:
            # (not against the set-up's t_us: it comes from another system, whose
            # clock may be hours off (local time); the decoders' clock is the one)
            raise Rejected("stale_feed",
                           f"{kind}: t_us {t} is {(clock - t) / 1e6:.0f} s behind venue {venue}'s clock "
                           f"(bound {cfg.behind_us / 1e6:.0f} s): an older feed replayed onto this "
                           f"pipeline? refused")
        reorder = engine.reorder_us if self.reorder_us is None else self.reorder_us
        srcs = self.sources.get(venue)
        if srcs is None:
            srcs = self.sources[venue] = _Sources()
        ref = self._ref(srcs, source, clock)
        hold = self.held.get(venue) if self.held else None
        item = (msg, raw, tag)
        if t <= ref + reorder:
            if hold is None:
                if kind == "heartbeat":
                    srcs.applied(source, t)
                return None
            # at the venue's own time: leaps held are refuted, caught-up messages applied first
            hold.seen.add(source)
            return self._release(venue, hold, srcs, clock, t, source, item, refute=True)
        if hold is None:
            hold = self.held[venue] = _Hold()
        hold.items.append((item, t, source))
        out = self._confirm(venue, hold, srcs, clock, t)
        if out is None and len(hold.items) > cfg.max_held:
            old_item, _, _ = hold.items.pop(0)
            out = [(old_item, self._leap(old_item[0], venue, clock,
                                         f"more than {cfg.max_held} messages held at this venue"))]
            if not hold.items:
                del self.held[venue]
        return out if out is not None else []

    def _ref(self, srcs: _Sources, source: str, clock: int) -> int:
        """The time a message of ``source`` is judged against: the newest
        applied heartbeat of the venue's other sources, if within
        ``single_span_us`` of its clock (so the venue clock follows the
        second-highest decoder clock; passings alone are too sporadic to
        state a decoder's clock); without one, the venue's clock."""
        ref = srcs.second if source == srcs.top_src else srcs.top   # the other sources' newest
        return ref if ref >= clock - self.span else clock

    def _release(self, venue: str, hold: _Hold, srcs: _Sources, clock: int, t: int, source: str,
                 item, refute: bool) -> list:
        """Held messages caught up with (at or below ``t``: the venue's clock
        after ``item``) applied in arrival order, leaps refuted; then ``item``."""
        out = []
        keep = []
        ahead = self.cfg.ahead_us
        upto = max(t, clock)
        for it, tt, s in hold.items:
            if tt <= upto:
                out.append((it, None))
                if it[0]["kind"] == "heartbeat":
                    srcs.applied(s, tt)
            elif refute and tt > clock + ahead:
                out.append((it, self._leap(it[0], venue, clock,
                                           "a message at the venue's own time came first")))
            else:
                keep.append((it, tt, s))
        if keep:
            hold.items = keep
        else:
            del self.held[venue]
        out.append((item, None))
        if item[0]["kind"] == "heartbeat":
            srcs.applied(source, t)
        return out

    def _confirm(self, venue: str, hold: _Hold, srcs: _Sources, clock: int, t: int):
        cfg = self.cfg
        near = [(tt, s) for _, tt, s in hold.items if abs(tt - t) <= cfg.ahead_us]
        top: dict[str, int] = {}
        for tt, s in near:
            if tt > top.get(s, -1):
                top[s] = tt
        lo = min(tt for tt, _ in near)
        hi = max(top.values())
        if len(top) >= 2:
            ok = hi - lo >= cfg.span_us
            cut = sorted(top.values())[-2]     # the second-highest source's time
        else:
            # one source: alone only if no other source has been heard since the hold began
            heard = hold.seen | {s for _, _, s in hold.items}
            ok = len(heard) <= 1 and len(near) >= cfg.single_confirm and hi - lo >= cfg.single_span_us
            cut = hi
        if not ok:
            return None
        # confirmed: this candidate's messages up to the second-highest
        # source's time (and those below it) applied in arrival order; its
        # messages beyond stay held until caught up; held messages of other
        # candidates refused
        if t > clock + cfg.ahead_us:
            self.leapt[venue] = (clock, lo)
        out = []
        keep = []
        for it, tt, s in hold.items:
            if abs(tt - t) <= cfg.ahead_us or tt <= clock + cfg.ahead_us:
                if tt <= cut:
                    out.append((it, None))
                    if it[0]["kind"] == "heartbeat":
                        srcs.applied(s, tt)
                else:
                    keep.append((it, tt, s))
            else:
                out.append((it, self._leap(it[0], venue, clock,
                                           f"the venue's clock moved to {lo} instead")))
        if keep:
            hold.items = keep
            hold.seen = set()
        else:
            del self.held[venue]
        return out

    def _leap(self, msg: dict, venue: str, clock: int, why: str) -> Rejected:
        t = msg["t_us"]
        return Rejected("clock_leap",
                        f"{msg['kind']}: t_us {t} is {(t - clock) / 1e6:.0f} s ahead of venue {venue}'s "
                        f"clock and was not confirmed by other sources ({why}; a decoder clock jump or "
                        f"a forged t_us?)")

    def drain(self, engine) -> list:
        """End of a recorded feed (offline only): leaps still held (more than
        ``ahead_us`` ahead of the venue's clock) are refused, the others
        applied, in arrival order."""
        out = []
        for venue in list(self.held):
            hold = self.held.pop(venue)
            v = engine.venues.get(venue)
            clock = v.clock if v is not None and v.clock >= 0 else self.origin.get(venue, -1)
            for it, tt, s in hold.items:
                if tt <= clock + self.cfg.ahead_us:
                    out.append((it, None))
                else:
                    out.append((it, Rejected(
                        "clock_leap", f"{it[0]['kind']}: t_us {tt} leaps ahead of venue {venue}'s "
                                      f"clock and the feed ended before it was confirmed")))
        return out
