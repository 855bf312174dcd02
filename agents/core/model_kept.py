"""The bounded part of the core's state (``retention``, ``standings``):
what is kept of released races, the release queue, and the groups'
standings and the classifications kept up to date one race at a time."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import INF


@dataclass(slots=True, eq=False)
class RaceSummary:
    """A released race: what later messages about it and later ids need. Its
    ranking lives on in its group's standings (``GroupState``) and, if it
    awards places, in ``Engine.cls_kept``."""

    status: str
    attempt: int
    result_rev: int
    group: str
    irms: dict[str, str]          # competitor -> IRM in force (a repeated IRM decision is a duplicate)
    released_t: int               # the venue's clock when it was released


@dataclass(slots=True, eq=False)
class GroupState:
    """A group's standings, kept up to date one race at a time (standings.py):
    each member's entries, and every ranked entry sorted with its key
    (time, or points then time; then set-up order of its race, then its
    place in the race's ranking)."""

    order: list[str]                          # the members as last seen (Engine.groups)
    pos: dict[str, int]                       # member -> set-up order number
    n: int                                    # next set-up order number
    mass: bool                                # ranked by points first
    status: dict[str, str | None]             # member -> its status (None: not started)
    ranked: dict[str, list[Any]]              # member -> its ranked entries (race_id added; compact: tuples)
    irms: dict[str, list[Any]]                # member -> its entries with an IRM
    keys: dict[str, list[tuple]]              # member -> the sort keys of its ranked entries
    rows: list[tuple]                         # (key, entry) of every ranked entry, sorted
    last: tuple | None                        # (complete, ranking) last emitted


@dataclass(slots=True, eq=False)
class Kept:
    """The engine's retention state (``Engine.kept``): released races, the
    release queue, standings and classification state."""

    released: dict[str, RaceSummary] = field(default_factory=dict)   # race id -> what is kept of it
    releases: dict[str, list[tuple]] = field(default_factory=dict)   # venue -> heap of (due, race id, attempt)
    release_at: float = INF                                           # the earliest due of all (INF: none)
    gstate: dict[str, GroupState] = field(default_factory=dict)       # group -> its standings state
    cls_kept: dict[str, tuple] = field(default_factory=dict)          # released race with places -> (places, status, ranking)
    cls_last: dict[str, tuple] = field(default_factory=dict)          # event -> (complete, ranking) last emitted
