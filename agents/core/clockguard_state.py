"""The clock guard's configuration (``ClockConfig``) and what it keeps per
venue: the messages held (``_Hold``) and the sources' newest heartbeats
(``_Sources``, read by ``fastpath`` too). See ``clockguard``."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClockConfig:
    ahead_us: int = 30_000_000        # held messages within this of each other form one candidate time
    behind_us: int = 600_000_000      # a clock message further behind than this is refused (stale)
    span_us: int = 2_000_000          # confirmation by >= 2 sources: their t_us span at least this
    single_confirm: int = 3           # single-source venue: this many messages ...
    single_span_us: int = 10_000_000  # ... spanning at least this
    grace_us: int = 60_000_000        # after a confirmed leap: an old-clock message is refused as clock_leap
    max_held: int = 1000              # per venue
    reorder_us: int | None = None     # None: the engine's CoreConfig.reorder_us


class _Hold:
    __slots__ = ("items", "seen")

    def __init__(self) -> None:
        self.items: list = []          # (item, t_us, source), arrival order
        self.seen: set = set()         # sources of the clock messages applied since the hold began


MAX_SOURCES = 64                       # per venue: sources tracked for the reference clock


class _Sources:
    """A venue's sources: the newest applied heartbeat ``t_us`` of each
    (``by``), and the two highest kept up to date (``top`` of ``top_src``;
    ``second``: the highest of the others), so that the reference of a source
    (the highest of the *other* sources) is read, not searched for."""

    __slots__ = ("by", "top_src", "top", "second")

    def __init__(self) -> None:
        self.by: dict[str, int] = {}
        self.top_src: str | None = None
        self.top = -1
        self.second = -1

    def applied(self, source: str, t: int) -> None:
        """A heartbeat of ``source`` at ``t`` was applied (times only grow)."""
        by = self.by
        c = by.get(source)
        if c is None:
            if len(by) >= MAX_SOURCES:
                return
        elif t <= c:
            return
        by[source] = t
        if source == self.top_src:
            self.top = t
        elif t > self.top:
            self.second = self.top
            self.top_src = source
            self.top = t
        elif t > self.second:
            self.second = t
