"""The clock guard: no single message may move a venue's clock far.

Pure (no I/O, no clock reads): it reads the engine's venue clocks and keeps
what it holds, so it is rebuilt with the engine by replaying the raw log, and
offline, replayed and live runs decide alike. ``streams.process.Processor``
consults it before the core applies a message.

Two rules, per venue, once the venue has a clock (its newest passing or
heartbeat ``t_us``; before the first, the ``t_us`` of its ``venue`` message
stands in for leaps):

- **Stale** (a replay of an older feed onto a live pipeline, a decoder stuck
  in the past): a message of the venue (any kind naming the venue, or a
  photo or decision of one of its races) more than ``behind_us`` (10 min)
  behind the venue's clock is refused, reason class ``stale_feed``. The core
  would otherwise re-run old races at a venue that has moved on (a replayed
  feed made races ``official`` with every team DNS).
- **Leap** (a decoder clock jump, a forged ``t_us``): a passing or heartbeat
  more than ``ahead_us`` (30 s) ahead of the venue's clock is *held*, with
  every later message of that venue, until the venue's next clock messages
  decide. Held leaps are grouped by the time they agree on (within
  ``ahead_us`` of each other; at most 8 such candidates). Once ``confirm``
  (3) clock messages agree on one, with no clock message at the old time in
  between, the leap is real (a new session after a night, a day, a long
  break): its messages and the other held ones are applied, in arrival
  order, and nothing is lost; leaps to other times are refused. If a clock
  message at the old time comes first, the leaps were bad messages: the
  leaping messages are refused (``clock_leap``) and the others applied in
  arrival order. So a heartbeat three days ahead, or at int64 max, between
  races never moves the clock and never makes later reads late. At most
  ``max_held`` (1,000) messages are held per venue; beyond that the leap
  counts as refused. At the end of a recorded feed (``drain``) a leap never
  confirmed is refused.

The core's own rule (a leap beyond 60 s while a race runs is refused) still
applies to what the guard lets through.
"""
from __future__ import annotations

from dataclasses import dataclass

from schemas.decode import Rejected


@dataclass(frozen=True)
class ClockConfig:
    ahead_us: int = 30_000_000        # a clock message further ahead than this is held
    behind_us: int = 600_000_000      # a message further behind than this is refused (stale)
    confirm: int = 3                  # consecutive clock messages that confirm a leap
    max_held: int = 1000              # per venue


class _Hold:
    __slots__ = ("cands", "items")

    def __init__(self, t: int, item) -> None:
        self.cands = [[t, 1]]          # candidate new times: [newest t_us, messages agreeing]
        self.items = [(item, 0)]       # (item, candidate index, or None for a non-clock message)


MAX_CANDIDATES = 8


class ClockGuard:
    """``offer(msg, engine, item)`` -> ``None``: apply ``msg`` now (the common
    case); or raises ``Rejected`` (stale); or a list of ``(item, rejection or
    None)`` to apply (``None``) or refuse, in order; ``[]`` means held.
    ``item`` is the caller's handle on the message: ``(msg, raw, tag)``."""

    __slots__ = ("cfg", "held", "ahead", "behind", "origin")

    def __init__(self, config: ClockConfig | None = None) -> None:
        self.cfg = config or ClockConfig()
        self.ahead = self.cfg.ahead_us     # (for the caller's inline fast path)
        self.behind = self.cfg.behind_us
        self.held: dict[str, _Hold] = {}
        self.origin: dict[str, int] = {}   # venue -> t_us of its set-up (the clock before the first)

    def offer(self, msg: dict, engine, item):
        kind = msg["kind"]
        clockmsg = kind == "passing" or kind == "heartbeat"
        if clockmsg or kind == "venue" or kind == "race" or kind == "start":
            venue = msg["venue"]
        elif kind == "photo" or kind == "decision":
            d = engine.race_defs.get(msg["race_id"])
            if d is None:
                return None          # the core refuses an unknown race itself
            venue = d.venue
        else:
            return None              # record_ref: not tied to a venue's clock
        v = engine.venues.get(venue)
        if v is None:
            if kind == "venue":
                # until the venue's first clock message, leaps are judged from its set-up
                self.origin[venue] = msg["t_us"]
            return None
        if (kind == "passing" and msg["loop"] not in v.loops) or (
                kind == "start" and msg["race_id"] not in engine.race_defs):
            return None     # (what refers to nothing known the core refuses itself, saying what)
        clock = v.clock
        t = msg["t_us"]
        cfg = self.cfg
        if clock < 0:
            clock = self.origin.get(venue, -1)
            if clock < 0:
                return None
        elif t < clock - cfg.behind_us:
            raise Rejected("stale_feed",
                           f"{kind}: t_us {t} is {(clock - t) / 1e6:.0f} s behind venue {venue}'s clock "
                           f"(bound {cfg.behind_us / 1e6:.0f} s): an older feed replayed onto this "
                           f"pipeline? refused")
        hold = self.held.get(venue) if self.held else None
        if hold is None:
            if not clockmsg or t <= clock + cfg.ahead_us:
                return None
            self.held[venue] = _Hold(t, item)
            return []
        if not clockmsg:
            hold.items.append((item, None))
            if len(hold.items) > cfg.max_held:
                return self._refuse(venue, clock, None)
            return []
        if t <= clock + cfg.ahead_us:
            # a clock message at the venue's own time: the leaps were bad messages
            return self._refuse(venue, clock, item)
        for i, cand in enumerate(hold.cands):
            if abs(t - cand[0]) <= cfg.ahead_us:
                break
        else:
            if len(hold.cands) >= MAX_CANDIDATES:
                raise self._leap(item[0], venue, clock)
            i = len(hold.cands)
            hold.cands.append([t, 0])
            cand = hold.cands[i]
        hold.items.append((item, i))
        cand[1] += 1
        if t > cand[0]:
            cand[0] = t
        if cand[1] >= cfg.confirm:
            # confirmed: this candidate's messages and the others held are
            # applied in arrival order; other candidates' leaps are refused
            del self.held[venue]
            return [(it, None if c is None or c == i else self._leap(it[0], venue, clock))
                    for it, c in hold.items]
        if len(hold.items) > cfg.max_held:
            return self._refuse(venue, clock, None)
        return []

    def _leap(self, msg: dict, venue: str, clock: int) -> Rejected:
        t = msg["t_us"]
        return Rejected("clock_leap",
                        f"{msg['kind']}: t_us {t} is {(t - clock) / 1e6:.0f} s ahead of venue {venue}'s "
                        f"clock (bound {self.cfg.ahead_us / 1e6:.0f} s) and the venue's next messages did "
                        f"not confirm it (a decoder clock jump?)")

    def _refuse(self, venue: str, clock: int, then) -> list:
        hold = self.held.pop(venue)
        out = [(it, None if c is None else self._leap(it[0], venue, clock)) for it, c in hold.items]
        if then is not None:
            out.append((then, None))
        return out

    def drain(self) -> list:
        """End of a recorded feed: every leap still held is refused (never
        confirmed), the other held messages are applied."""
        out = []
        for venue in list(self.held):
            out.extend(self._refuse_at_end(venue))
        return out

    def _refuse_at_end(self, venue: str) -> list:
        hold = self.held.pop(venue)
        return [(it, Rejected("clock_leap",
                              f"{it[0]['kind']}: t_us {it[0]['t_us']} leaps ahead of venue {venue}'s "
                              f"clock and the feed ended before it was confirmed"))
                if c is not None else (it, None) for it, c in hold.items]
