"""The state of the timing core: venues, race definitions, attempts, runs.

Record judgements are in ``model_records``, the bounded (retention) state in
``model_kept``; both are re-exported here."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from schemas.decode import Rejected

from .config import DEFAULT_FINAL, DEFAULT_SPRINTS, INF
from .model_kept import GroupState, Kept, RaceSummary
from .model_records import RecordState, RecordStatus, Ref
from .timefmt import IdPrefix, id_prefix

__all__ = ["CompRun", "GroupState", "Kept", "Outcome", "Pending", "ProvSuspicion", "Pub", "Race", "RaceDef",
           "RaceSummary", "RecordState", "RecordStatus", "Ref", "SkaterRun", "Venue"]


class Outcome(StrEnum):
    """What became of a raw message (a metric label: the values never change)."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    IGNORED_LATE = "ignored_late"
    IGNORED_UNKNOWN_TRANSPONDER = "ignored_unknown_transponder"
    IGNORED_BEFORE_START = "ignored_before_start"
    IGNORED_AFTER_FINISH = "ignored_after_finish"

    # hashed as its string (Enum hashes the name), so a label looked up as a
    # plain string finds it: ("passing", "applied") in Engine.stats
    __hash__ = str.__hash__


@dataclass(slots=True, eq=False)
class Pending:
    """A crossing still inside the reordering window: its earliest read so far,
    and its provisional placement (``d`` for ``sig`` = (t, skater's last_t))."""

    t: int
    run: SkaterRun
    loop: str
    at_m: int
    sig: tuple[int, int] | None = None
    d: int | None = None


@dataclass(slots=True, eq=False)
class Pub:
    """What was last published under one split's natural key: its revision,
    its value (None: withdrawn), whether that was final, and the event."""

    rev: int
    val: tuple | None
    final: bool
    ev: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class ProvSuspicion:
    """A suspicion published at a crossing's first read: the incident number
    the final step will give it, its revision, the event, and (at_m, t_us)."""

    n: int
    rev: int
    ev: dict[str, Any]
    at: tuple[int, int]


@dataclass(slots=True, eq=False, init=False)
class Venue:
    id: str
    name: str
    lap_m: int
    loops: dict[str, int]
    clock: int
    hb: dict[str, int]
    seqs: dict[str, dict[int, int]]
    transponders: dict[str, SkaterRun]
    pending: dict[tuple[SkaterRun, str], Pending]   # (the SkaterRun, loop) -> the open crossing
    races: list[Race]                          # started races (current attempts) on the timeline
    next_due: float
    seq_pruned: int
    photo_due: list[tuple[int, int, SkaterRun]]   # (due t_us, photo's t_us, run): results.photo
    dark: tuple[int, int]                      # (since, until): its last outage (falls.venue_dark)

    def __init__(self, msg: dict) -> None:
        self.id = msg["venue"]
        self.clock = -1
        self.hb = {}
        self.seqs = {}
        self.transponders = {}
        self.pending = {}
        self.races = []
        self.next_due = INF
        self.seq_pruned = -1
        self.photo_due = []
        self.dark = (-1, -1)
        self.configure(msg)

    def configure(self, msg: dict) -> None:
        self.name = msg["name"]
        self.lap_m = msg["lap_m"]
        self.loops = {lp["loop"]: lp["at_m"] for lp in msg["loops"]}


@dataclass(slots=True, eq=False, init=False)
class RaceDef:
    id: str
    venue: str
    competition: str
    level: str
    format: str
    gender: str
    distance: int
    group: str
    places: list[int] | None
    laps: int | None
    sprint_at: dict[int, list[int]]   # mass start: race distance of a sprint -> its points
    final: list[int] | None           # mass start: points of the final sprint
    competitors: list[dict]
    event: str
    msg: dict

    def __init__(self, msg: dict, venue: Venue) -> None:
        self.msg = msg
        self.id = msg["race_id"]
        self.venue = venue.id
        self.competition = msg["competition"]
        self.level = msg["level"]
        self.format = msg["format"]
        self.gender = msg["gender"]
        self.distance = msg["distance_m"]
        self.group = msg.get("group") or self.id
        self.places = msg.get("places")
        self.event = f"{self.competition}-{self.format}-{self.gender}-{self.distance}"
        lap = venue.lap_m
        for c in msg["competitors"]:
            finish_at = (c["start_m"] + self.distance) % lap
            if c["start_m"] >= lap:
                raise Rejected("bad_value", f"race {self.id}: start_m {c['start_m']} of "
                                            f"{c['competitor_id']!r} is not on a {lap} m lap")
            if finish_at not in venue.loops.values():
                raise Rejected("unknown_reference",
                               f"race {self.id}: venue {venue.id} has no loop at {finish_at} m, "
                               f"the finish of {c['competitor_id']!r}")
        self.competitors = msg["competitors"]
        self.sprint_at = {}
        self.final = None
        self.laps = None
        if self.format == "mass_start":
            laps = self.laps = msg.get("laps") or max(1, self.distance // lap)
            given = msg.get("sprints")
            sprints = {int(k): v for k, v in given.items()} if given else DEFAULT_SPRINTS
            for k, pts in sprints.items():
                if 0 < k < laps:
                    self.sprint_at[self.distance - (laps - k) * lap] = list(pts)
            self.final = list(msg.get("final") or DEFAULT_FINAL)


@dataclass(slots=True, eq=False, init=False)
class SkaterRun:
    id: str
    name: str
    transponders: list[str]
    comp: CompRun
    race: Race
    last_d: int
    last_t: int
    hist: list[tuple[int, int]]      # closed crossings (distance, t_us)
    split_t: dict[int, int]          # distance -> crossing t_us
    finished: bool
    finish_t: int | None
    last_cross: dict[str, int]       # loop -> t_us of the last closed crossing
    deadline: float                  # overdue after this event time (INF: none)
    incident_n: int
    suspected: bool                  # an open suspected fall (until cleared or confirmed)
    overdue: bool                    # not seen since its fall deadline passed
    lost: bool                       # seen beyond its finish without a finish crossing
    confirmed_t: int | None          # when the referee last confirmed a fall
    pace: float | None               # cached recent pace, m/us (None: to compute)
    prov_sus: ProvSuspicion | None   # the provisional suspicion published, if any

    def __init__(self, s: dict, comp: CompRun, race: Race) -> None:
        self.id = s["skater_id"]
        self.name = s["name"]
        self.transponders = s["transponders"]
        self.comp = comp
        self.race = race
        self.last_d = 0
        self.last_t = race.gun
        self.hist = []
        self.split_t = {}
        self.finished = False
        self.finish_t = None
        self.last_cross = {}
        self.deadline = INF
        self.incident_n = 0
        self.suspected = False
        self.overdue = False
        self.lost = False
        self.confirmed_t = None
        self.pace = None
        self.prov_sus = None


@dataclass(slots=True, eq=False, init=False)
class CompRun:
    id: str
    name: str
    nation: str
    start_m: int
    order: int
    offsets: list[int]               # loop positions relative to its start, on the lap
    skaters: list[SkaterRun]
    irm: str | None
    finish_tr: int | None            # transponder finish crossing (t_us)
    finish_ms: int | None            # effective finish time (photo or transponder)
    source: str | None
    finish_rev: int
    finish_t_us: int | None
    finish_pub: tuple | None         # (rank, points) its last final finish said
    points: int
    records: list[str]
    record_evals: dict[tuple, RecordState]   # book key -> judgement of the final finish
    team_split: dict[int, int]       # team distance -> t_us (third skater)
    caught: bool
    team_incidents: int
    final_points: int
    prov_finish: tuple | None        # last provisional finish published: (value, event)
    prov_rec: dict[tuple, RecordState]   # book key -> provisional judgement
    rec_base: dict[tuple, int]       # book key -> first revision a final judgement takes

    def __init__(self, c: dict, race: Race, lap: int, loop_positions: Any, order: int) -> None:
        self.id = c["competitor_id"]
        self.name = c["name"]
        self.nation = c["nation"]
        self.start_m = c["start_m"]
        self.order = order
        self.offsets = sorted({(a - self.start_m) % lap for a in loop_positions})
        self.skaters = [SkaterRun(s, self, race) for s in c["skaters"]]
        self.irm = None
        self.finish_tr = None
        self.finish_ms = None
        self.source = None
        self.finish_rev = -1
        self.finish_t_us = None
        self.finish_pub = None
        self.points = 0
        self.records = []
        self.record_evals = {}
        self.team_split = {}
        self.caught = False
        self.team_incidents = 0
        self.final_points = 0
        self.prov_finish = None
        self.prov_rec = {}
        self.rec_base = {}


@dataclass(slots=True, eq=False, init=False)
class Race:
    """One attempt of a race."""

    d: RaceDef
    attempt: int
    gun: int
    venue: Venue
    status: str
    result_rev: int
    comps: list[CompRun]
    by_comp: dict[str, CompRun]
    by_skater: dict[str, SkaterRun]
    split_idx: dict[tuple[str, int], list[int]]   # (level, distance) -> sorted split times
    photos: dict[str, int]
    sprint_awards: dict[int, int]
    falls_confirmed: set[tuple]
    inc_rev: dict[tuple, int]        # (competitor, skater, type, n) -> last revision of that incident
    pub: dict[tuple, Pub]            # (competitor, skater, distance) -> last split published
    open: dict[tuple, tuple | None]  # keys of ``pub`` not final -> what supports them (None: withdrawn)
    prov_result: tuple | None        # the provisional ranking last published
    split_h: IdPrefix                # id_prefix("split", race id, attempt): its split ids' hash so far
    release_due: float               # venue time after which its state is released (retention.py)

    def __init__(self, d: RaceDef, attempt: int, gun: int, venue: Venue, result_rev: int) -> None:
        self.d = d
        self.attempt = attempt
        self.gun = gun
        self.venue = venue
        self.status = "live"
        self.result_rev = result_rev
        positions = venue.loops.values()
        self.comps = [CompRun(c, self, venue.lap_m, positions, i) for i, c in enumerate(d.competitors)]
        self.by_comp = {c.id: c for c in self.comps}
        self.by_skater = {s.id: s for c in self.comps for s in c.skaters}
        self.split_idx = {}
        self.photos = {}
        self.sprint_awards = {}
        self.falls_confirmed = set()
        self.inc_rev = {}
        self.pub = {}
        self.open = {}
        self.prov_result = None
        self.split_h = id_prefix("split", d.id, attempt)
        self.release_due = INF

    @property
    def ended(self) -> bool:
        return self.status in ("official", "void")

    def continue_revisions(self, old: Race) -> None:
        """A restart: a fact's key (a split per race, competitor, skater and
        distance; a finish per race and competitor; a record per race,
        competitor and record) does not name the attempt, so its revisions go
        on from where the recalled attempt left them, and a subscriber keeping
        the highest revision per key keeps this attempt's values, not the
        recalled attempt's withdrawals. Incidents go on being numbered."""
        self.inc_rev = dict(old.inc_rev)
        pub = self.pub
        for key, p in old.pub.items():   # (all withdrawn by now: provisional.withdraw_attempt)
            pub[key] = Pub(p.rev, None, True, p.ev)
        for c in self.comps:
            o = old.by_comp.get(c.id)
            if o is None:
                continue
            c.finish_rev = o.finish_rev
            c.team_incidents = o.team_incidents
            base = dict(o.rec_base)
            for states in (o.record_evals, o.prov_rec):
                for key, st in states.items():
                    if st.rev + 1 > base.get(key, 0):
                        base[key] = st.rev + 1
            c.rec_base = base
            for s in c.skaters:
                os_ = old.by_skater.get(s.id)
                if os_ is not None:
                    s.incident_n = os_.incident_n
