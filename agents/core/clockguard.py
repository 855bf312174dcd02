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
  every later message of that venue, until the venue's next clock message
  decides. If ``confirm`` (3) consecutive clock messages agree on the new
  time (each within ``ahead_us`` of the newest held one), the leap is real
  (a new session after a night, a day, a long break): everything held is
  applied, in arrival order, and nothing is lost. If a clock message at the
  old time comes first, the leap was one bad message (or a few): the
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
    __slots__ = ("t", "n", "items")

    def __init__(self, t: int, item) -> None:
        self.t = t                 # newest leaping t_us held
        self.n = 1                 # consecutive leaping clock messages that agree
        self.items = [(item, True)]   # (item, is a leaping clock message), arrival order


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
            if clock < 0 or not (kind == "passing" or kind == "heartbeat"):
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
            hold.items.append((item, False))
            if len(hold.items) > cfg.max_held:
                return self._refuse(venue, clock, None)
            return []
        if t > clock + cfg.ahead_us:
            if abs(t - hold.t) <= cfg.ahead_us:
                hold.items.append((item, True))
                hold.n += 1
                if t > hold.t:
                    hold.t = t
                if hold.n >= cfg.confirm:
                    del self.held[venue]
                    return [(it, None) for it, _ in hold.items]
                if len(hold.items) > cfg.max_held:
                    return self._refuse(venue, clock, None)
                return []
            # a leap to yet another time: the first one is not confirmed
            out = self._refuse(venue, clock, None)
            self.held[venue] = _Hold(t, item)
            return out
        # a clock message at the venue's own time: the leap was a bad message
        return self._refuse(venue, clock, item)

    def _refuse(self, venue: str, clock: int, then) -> list:
        hold = self.held.pop(venue)
        out = []
        for it, leaping in hold.items:
            if leaping:
                t = it[0]["t_us"]
                out.append((it, Rejected(
                    "clock_leap",
                    f"{it[0]['kind']}: t_us {t} is {(t - clock) / 1e6:.0f} s ahead of venue {venue}'s "
                    f"clock (bound {self.cfg.ahead_us / 1e6:.0f} s) and the venue's next messages did "
                    f"not confirm it (a decoder clock jump?)")))
            else:
                out.append((it, None))
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
                if leaping else (it, None) for it, leaping in hold.items]
