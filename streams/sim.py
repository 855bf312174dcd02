"""Feed simulator: recorded timing feeds in the v1 wire contract, with their truth.

A library (no I/O except ``SimFeed.write``), deterministic: every random choice
comes from ``random.Random`` instances seeded from ``seed`` and stable names
(``random.Random("<seed>/<race_id>/<purpose>")``), so the same inputs always
give the same lines, and one race's noise does not depend on the races before
it (a race simulated alone or inside a tournament skates the same crossings
and gets the same reads; only ``seq`` numbers and heartbeats differ).

Public API
----------
Inputs (frozen dataclasses):

- ``VenueSpec(venue_id, name, lap_m=400, loops=(("L000",0),...), t_us=None)``
- ``RecordRef(record, format, gender, distance_m, scope, time, holder, set_on,
  venue, t_us=None)`` -- a ``record_ref`` emitted right after the venue.
- ``SkaterSpec(skater_id, name, nation, transponders, crossings_us=None,
  finish_us=None, dns=False)``
- ``CompetitorSpec(competitor_id, name, nation, skaters, start_m=None,
  target_us=None, pacing=None, falls=(), dns=False)``
- ``RaceSpec(race_id, competition, level, format, gender, distance_m, gun_us,
  competitors, group=None, places=None, laps=None, sprints=None, final=None,
  photos=(), decisions=(), official=None, restart=None, missed=(),
  drop_exact=(), setup_lead_us=60 s)``
- ``Fall(skater_id, at_m, lost_us, gets_up=True)``, ``Decision(code,
  after_us=None, competitor_id=None, skater_id=None, note=None)``,
  ``Photo(skater_id, delta_us=0, elapsed_us=None, delay_us=None)``,
  ``Restart(recall_after_us, new_gun_after_us)``, ``Pacing(opener_us, fade,
  noise, line_gap_us, lead_m)``.
- ``SimOptions`` -- noise knobs (sources, delays, missed-read and resend
  rates, warm-up transponders, cool-down, heartbeats...). ``SimOptions()`` is
  clean (no missed reads, no resends, no warm-up, no cool-down);
  ``SimOptions.realistic()`` is the level used for the shipped feeds (1.5 %
  missed single reads, 0.4 % resends, one warm-up transponder per race,
  cool-down). Random thinning never removes the last read of a crossing nor
  (``protect_finish_exact``) the read that IS a finish crossing's time; whole
  crossings go missing only where ``RaceSpec.missed`` says so.

``simulate(venue, races, records=(), seed=0, options=SimOptions()) -> SimFeed``
with ``.lines`` (compact JSON strings in ARRIVAL order), ``.truth``
(``SimTruth``), ``.write(path)`` (UTF-8 JSON Lines), ``.data()`` (those
bytes) and ``.messages()`` (parsed). ``format_time(elapsed_us)`` prints an
elapsed time the way the contract does (hundredths, truncated);
``individual(...)`` builds a one-skater competitor.

Timeline of a feed: the venue message (2 minutes before the first set-up),
the record references (same t_us), then per race the ``race`` set-up
(``setup_lead_us``, 60 s, before the gun), ``start`` attempt 1 at the gun
(attempt 2 at ``gun + Restart.new_gun_after_us``; attempt-1 reads stop at
the recall), the reads, photos (20-60 s after the finish), decisions
(``Decision.after_us`` after the race's last finish, may be negative) and
OFFICIAL 30-90 s after the last finish (after any photo or decision).

How a race is skated
--------------------
- Crossings happen at every race distance ``d`` (0 < d <= distance_m) where
  ``(start_m + d) mod lap_m`` is a loop; the start line itself (d = 0) is
  never read. Default ``start_m``: individual ``(-distance_m) mod lap_m``;
  team pursuit 0 and lap_m/2 for the first and second competitor; mass start 0.
- Target: ``CompetitorSpec.target_us`` is the elapsed finish time (crossing
  minus gun) of an individual skater, or of a team pursuit team = its THIRD
  skater to finish. The finish crossing is exactly ``gun + target``. Pacing:
  a slow standing-start first segment (team pursuit 9-10 s per 100 m, else
  about the mean 100 m time + 2.4-2.9 s), then near-even pace with small
  per-segment noise and a slight fade. Team pursuit: the team skates in a
  line (a "front" curve plus per-position gaps of 0.08-0.25 s, the leader
  dropping to the back every ``lead_m``), the first two finishers 0.05-0.6 s
  ahead of the third; ``SkaterSpec.finish_us`` pins a skater's own finish.
- Explicit crossings: ``SkaterSpec.crossings_us`` maps race distance ->
  elapsed us. Sparse is fine: crossings between given points are linearly
  interpolated in distance (from (0, 0)); the skater stops at the largest
  given distance. Used as given (falls that get up add nothing on top).
- ``Fall(skater, at_m, lost_us, gets_up)``: crossings after ``at_m`` are
  ``lost_us`` later than on the unfallen path (the target is the ACTUAL
  finish, fall included), or absent when the skater does not get up.
- DNS (competitor or skater): no reads at all.

Reads and arrival
-----------------
Per crossing, per transponder, per source one read. One transponder is read
at offset 0 (by one source exactly at the crossing time, the other source up
to 0.3 ms later); the other transponder 5-40 ms later (sources within
+-0.3 ms). The crossing time is the earliest read and stays exact. ``seq``
increases per source in read-time order over the whole feed (missed reads
take no number; a resend repeats the line, same source and seq, up to 1 s
later). The first source's lines arrive 0-50 ms after their ``t_us``, the
others 0-``max_delay_us`` (<= 3 s) later. Heartbeats (every whole second,
per source) run from 30 s before a race's set-up to 10 s after its last
line; idle gaps under ``heartbeat_bridge_us`` (20 min) keep them running,
longer ones (another day) pause them. Heartbeats and non-read messages arrive
at their ``t_us``. Lines are sorted by arrival (stable), so ``t_us`` is not
monotonic in the file, but never more than the largest delay below the
newest ``t_us`` before it.

Truth
-----
``SimTruth.races[race_id]`` -> ``RaceTruth`` (guns, set-up, last finish,
the photo and decision messages, competitors) -> ``CompetitorTruth`` (finish elapsed time:
team = third skater) -> ``SkaterTruth``: per race distance the loop, the
physical crossing time, the crossing as read (EARLIEST EMITTED read, after
thinning), the set of entirely missed crossings, the finish, the cool-down
and aborted-attempt crossings (physical times).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import orjson

from schemas.decode import DECISION_CODES, FORMATS   # the contract's values, defined once

__all__ = [
    "VenueSpec", "RecordRef", "SkaterSpec", "CompetitorSpec", "RaceSpec", "Fall", "Decision",
    "Photo", "Restart", "Pacing", "SimOptions", "SimFeed", "SimTruth", "RaceTruth",
    "CompetitorTruth", "SkaterTruth", "simulate", "format_time", "individual", "S",
]

S = 1_000_000  # one second in microseconds
MAX_ARRIVAL_LAG_US = 3 * S  # the contract's "a few seconds"; never exceeded

DEFAULT_LOOPS = (("L000", 0), ("L100", 100), ("L200", 200), ("L300", 300))


# ---------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VenueSpec:
    venue_id: str
    name: str
    lap_m: int = 400
    loops: tuple[tuple[str, int], ...] = DEFAULT_LOOPS
    t_us: int | None = None  # default: 2 minutes before the first race's set-up

    def loop_at(self, pos_m: int) -> str | None:
        for loop, at in self.loops:
            if at == pos_m:
                return loop
        return None


@dataclass(frozen=True)
class RecordRef:
    record: str
    format: str
    gender: str
    distance_m: int
    scope: str | None
    time: str
    holder: str
    set_on: str
    venue: str
    t_us: int | None = None  # default: the venue message's t_us

    def message(self, t_us: int) -> dict:
        return {"kind": "record_ref", "v": 1, "t_us": self.t_us if self.t_us is not None else t_us,
                "record": self.record, "format": self.format, "gender": self.gender,
                "distance_m": self.distance_m, "scope": self.scope, "time": self.time,
                "holder": self.holder, "set_on": self.set_on, "venue": self.venue}


@dataclass(frozen=True)
class SkaterSpec:
    skater_id: str
    name: str
    nation: str
    transponders: tuple[str, ...]
    crossings_us: Mapping[int, int] | None = None  # race distance -> elapsed us (explicit path)
    finish_us: int | None = None  # this skater's actual elapsed finish (team pursuit override)
    dns: bool = False


@dataclass(frozen=True)
class Fall:
    skater_id: str
    at_m: int  # race distance of the fall
    lost_us: int  # time lost (when getting up)
    gets_up: bool = True


@dataclass(frozen=True)
class Pacing:
    opener_us: int | None = None  # time of the first 100 m from the gun
    fade: float | None = None  # relative slow-down from first to last segment (0.04 = 4 %)
    noise: float | None = None  # per-segment relative noise (standard deviation)
    line_gap_us: tuple[int, int] | None = None  # team pursuit: gap range between skaters in line
    lead_m: int | None = None  # team pursuit: the leader drops back every lead_m metres


@dataclass(frozen=True)
class CompetitorSpec:
    competitor_id: str
    name: str
    nation: str
    skaters: tuple[SkaterSpec, ...]
    start_m: int | None = None
    target_us: int | None = None  # elapsed finish (team pursuit: the third skater's)
    pacing: Pacing | None = None
    falls: tuple[Fall, ...] = ()
    dns: bool = False


def individual(skater_id: str, name: str, nation: str, transponders: Sequence[str], *,
               target_us: int | None = None, crossings_us: Mapping[int, int] | None = None,
               start_m: int | None = None, pacing: Pacing | None = None,
               falls: Sequence[Fall] = (), dns: bool = False) -> CompetitorSpec:
    """A one-skater competitor (individual distances, mass start): competitor_id = skater_id."""
    sk = SkaterSpec(skater_id, name, nation, tuple(transponders), crossings_us=crossings_us)
    return CompetitorSpec(skater_id, name, nation, (sk,), start_m=start_m, target_us=target_us,
                          pacing=pacing, falls=tuple(falls), dns=dns)


@dataclass(frozen=True)
class Decision:
    code: str
    after_us: int | None = None  # after the race's last finish; default seeded
    competitor_id: str | None = None
    skater_id: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Photo:
    skater_id: str
    delta_us: int = 0  # official = transponder finish + delta_us ...
    elapsed_us: int | None = None  # ... or this elapsed time, if given
    delay_us: int | None = None  # arrival after the finish; default 20-60 s (seeded)


@dataclass(frozen=True)
class Restart:
    recall_after_us: int  # elapsed after the first gun when the race is recalled
    new_gun_after_us: int  # the second gun, after the first gun


@dataclass(frozen=True)
class RaceSpec:
    race_id: str
    competition: str
    level: str
    format: str
    gender: str
    distance_m: int
    gun_us: int  # the (first) gun
    competitors: tuple[CompetitorSpec, ...]
    group: str | None = None
    places: tuple[int, ...] | None = None
    laps: int | None = None  # mass start
    sprints: Mapping[str, Sequence[int]] | None = None
    final: tuple[int, ...] | None = None
    photos: tuple[Photo, ...] = ()
    decisions: tuple[Decision, ...] = ()
    official: bool | None = None  # None: add OFFICIAL unless a VOID/OFFICIAL is given
    restart: Restart | None = None
    missed: tuple[tuple[str, int], ...] = ()  # (skater_id, distance): whole crossing unread
    drop_exact: tuple[tuple[str, int], ...] = ()  # (skater_id, distance): drop the earliest read
    setup_lead_us: int = 60 * S


@dataclass(frozen=True)
class SimOptions:
    sources: tuple[str, ...] = ("X2-A", "X2-B")
    primary_delay_us: int = 50_000  # first source: arrival 0..this after t_us
    max_delay_us: int = 2 * S  # other sources: arrival 0..this after t_us (<= 3 s)
    source_jitter_us: int = 300
    transponder_offset_us: tuple[int, int] = (5_000, 40_000)
    strength: tuple[int, int] = (60, 140)
    hits: tuple[int, int] = (10, 40)
    miss_rate: float = 0.0  # drop single reads (never the last read of a crossing)
    protect_finish_exact: bool = True  # never drop the read that IS a finish crossing's time
    resend_rate: float = 0.0  # duplicate a read (same source and seq), arriving later
    warmup_transponders: int = 0  # per race: unknown transponders with a few reads
    cooldown: bool = False  # reads at the next 1-4 loops after each finish
    cooldown_loops: tuple[int, int] = (1, 4)
    heartbeats: bool = True
    heartbeat_lead_us: int = 30 * S  # before a race's set-up
    heartbeat_tail_us: int = 10 * S  # after a race's last message
    heartbeat_bridge_us: int = 20 * 60 * S  # shorter idle gaps keep heartbeats running
    seq_start: int = 1

    @classmethod
    def realistic(cls, **kw) -> "SimOptions":
        base = dict(miss_rate=0.015, resend_rate=0.004, warmup_transponders=1, cooldown=True)
        base.update(kw)
        return cls(**base)


# ---------------------------------------------------------------------------
# truth and output
# ---------------------------------------------------------------------------


@dataclass
class SkaterTruth:
    skater_id: str
    competitor_id: str
    race_id: str
    transponders: tuple[str, ...]
    loops: dict[int, str] = field(default_factory=dict)  # distance -> loop
    physical: dict[int, int] = field(default_factory=dict)  # distance -> true crossing t_us
    crossings: dict[int, int] = field(default_factory=dict)  # distance -> earliest emitted read
    missed: set[int] = field(default_factory=set)  # crossings with no read emitted
    finish_distance: int | None = None  # distance_m if the skater reaches the line, else None
    finish_us: int | None = None  # finish crossing as read (t_us), None if DNF/DNS/missed
    finish_elapsed_us: int | None = None
    cooldown: list[tuple[str, int]] = field(default_factory=list)  # (loop, t_us) after finish
    aborted: list[tuple[str, int]] = field(default_factory=list)  # earlier attempts' crossings
    fall: Fall | None = None
    dns: bool = False


@dataclass
class CompetitorTruth:
    competitor_id: str
    start_m: int
    finish_loop: str
    skaters: dict[str, SkaterTruth]
    finish_elapsed_us: int | None  # team pursuit: third skater; None: did not finish
    dns: bool = False

    @property
    def time_ms(self) -> int | None:
        return None if self.finish_elapsed_us is None else self.finish_elapsed_us // 1000

    @property
    def time(self) -> str | None:
        return None if self.finish_elapsed_us is None else format_time(self.finish_elapsed_us)


@dataclass
class RaceTruth:
    race_id: str
    format: str
    distance_m: int
    setup_us: int
    guns: list[int]  # every attempt's gun; the last one counts
    competitors: dict[str, CompetitorTruth]
    last_finish_us: int
    photos: list[dict] = field(default_factory=list)
    decisions: list[dict] = field(default_factory=list)

    @property
    def gun_us(self) -> int:
        return self.guns[-1]

    def skater(self, skater_id: str) -> SkaterTruth:
        for c in self.competitors.values():
            if skater_id in c.skaters:
                return c.skaters[skater_id]
        raise KeyError(skater_id)


@dataclass
class SimTruth:
    races: dict[str, RaceTruth] = field(default_factory=dict)
    transponders: dict[str, str] = field(default_factory=dict)  # transponder -> skater_id
    unknown_transponders: set[str] = field(default_factory=set)
    max_lag_us: int = 0  # the largest arrival lag the options allow

    def results(self) -> dict[str, dict[str, str | None]]:
        """race_id -> competitor_id -> time string (None: no finish)."""
        return {rid: {cid: c.time for cid, c in r.competitors.items()}
                for rid, r in self.races.items()}


@dataclass
class SimFeed:
    lines: list[str]
    truth: SimTruth

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)

    def data(self) -> bytes:
        return self.text().encode("utf-8")

    def write(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(self.data())
        return p

    def messages(self) -> list[dict]:
        return [orjson.loads(line) for line in self.lines]


def format_time(elapsed_us: int) -> str:
    """Contract time string: hundredths, truncated: 173445123 -> '2:53.44', 34329999 -> '34.32'."""
    if elapsed_us < 0:
        raise ValueError("negative elapsed time")
    hs = elapsed_us // 10_000
    sec, hh = divmod(hs, 100)
    if sec >= 60:
        m, s = divmod(sec, 60)
        return f"{m}:{s:02d}.{hh:02d}"
    return f"{sec}.{hh:02d}"


# ---------------------------------------------------------------------------
# internals
# ---------------------------------------------------------------------------


def _rng(seed: object, *parts: object) -> random.Random:
    return random.Random("/".join(str(p) for p in (seed, *parts)))


@dataclass
class _Read:
    t: int
    source: str
    transponder: str
    loop: str
    arrival: int
    gen: int
    seq: int = 0
    strength: int = 0
    hits: int = 0
    resend_arrival: int | None = None


@dataclass
class _Crossing:
    """One physical crossing of one skater (or unknown transponder) at one loop."""
    skater_id: str | None
    transponders: tuple[str, ...]
    loop: str
    t: int
    kind: str  # race | cooldown | aborted | warmup
    distance: int | None = None
    is_finish: bool = False
    missed: bool = False
    drop_exact: bool = False
    reads: list[_Read] = field(default_factory=list)


def _crossing_distances(venue: VenueSpec, start_m: int, distance_m: int) -> list[tuple[int, str]]:
    lap = venue.lap_m
    out = []
    for loop, at in venue.loops:
        first = (at - start_m) % lap
        if first == 0:
            first = lap
        d = first
        while d <= distance_m:
            out.append((d, loop))
            d += lap
    out.sort()
    return out


def _default_start(race: RaceSpec, index: int, lap_m: int) -> int:
    if race.format == "individual":
        return (-race.distance_m) % lap_m
    if race.format == "team_pursuit":
        return 0 if index % 2 == 0 else lap_m // 2
    return 0


def _pace(rng: random.Random, fmt: str, dists: Sequence[int], target_us: int,
          pacing: Pacing | None) -> list[int]:
    """Elapsed crossing times (integers, strictly increasing) ending exactly at target_us."""
    n = len(dists)
    if n == 1:
        return [target_us]
    total_m = dists[-1]
    p = pacing or Pacing()
    mean100 = target_us * 100 / total_m
    if p.opener_us is not None:
        opener100 = float(p.opener_us)
    elif fmt == "team_pursuit":
        opener100 = rng.uniform(9.0, 10.0) * S
    elif fmt == "mass_start":
        opener100 = mean100 + rng.uniform(1.0, 2.0) * S
    else:
        opener100 = mean100 + rng.uniform(2.4, 2.9) * S
    fade = p.fade if p.fade is not None else rng.uniform(0.02, 0.06)
    noise = p.noise if p.noise is not None else (0.004 if fmt == "team_pursuit" else 0.006)
    first_len = dists[0]
    if first_len <= 100:
        first = opener100 * first_len / 100
    else:
        cruise = (target_us - opener100) * 100 / max(total_m - 100, 1)
        first = opener100 + cruise * (first_len - 100) / 100
    share = target_us * first_len / total_m
    first = min(max(first, share), share * 1.6)
    rest = target_us - first
    weights = []
    prev = dists[0]
    for d in dists[1:]:
        seg = d - prev
        mid = (prev + d) / 2 / total_m
        f = 1.0 + fade * (mid - 0.5) + rng.gauss(0.0, noise)
        weights.append(seg * max(f, 0.5))
        prev = d
    wsum = sum(weights)
    out = []
    acc = first
    out.append(round(acc))
    for w in weights:
        acc += rest * w / wsum
        out.append(round(acc))
    out[-1] = target_us
    for a, b in zip(out, out[1:]):
        if b <= a:
            raise ValueError("pacing produced non-increasing crossings (target too small?)")
    if out[0] <= 0:
        raise ValueError("target too small")
    return out


def _interpolate(dists: Sequence[int], given: Mapping[int, int]) -> list[int]:
    """Explicit (possibly sparse) crossings -> elapsed time at each distance up to the last given."""
    pts = sorted((int(d), int(t)) for d, t in given.items())
    if not pts:
        return []
    valid = set(dists)
    for d, _ in pts:
        if d not in valid:
            raise ValueError(f"explicit crossing at {d} m: no loop there for this competitor")
    last = pts[-1][0]
    knots = [(0, 0)] + pts
    out = []
    k = 0
    for d in dists:
        if d > last:
            break
        while knots[k + 1][0] < d:
            k += 1
        (d0, t0), (d1, t1) = knots[k], knots[k + 1]
        out.append(t1 if d == d1 else t0 + round((t1 - t0) * (d - d0) / (d1 - d0)))
    for a, b in zip([0] + out, out):
        if b <= a:
            raise ValueError("explicit crossings must be strictly increasing")
    return out


def _plan_competitor(race: RaceSpec, comp: CompetitorSpec, dists: Sequence[int],
                     rng: random.Random, lap: int) -> dict[str, list[int]]:
    """skater_id -> elapsed times at dists[:k] (k < len when the skater stops)."""
    falls = {f.skater_id: f for f in comp.falls}
    for f in comp.falls:
        if not any(s.skater_id == f.skater_id for s in comp.skaters):
            raise ValueError(f"fall of unknown skater {f.skater_id} in {comp.competitor_id}")
        if not 0 < f.at_m < race.distance_m:
            raise ValueError(f"fall at {f.at_m} m is outside the race")
    skaters = [s for s in comp.skaters if not s.dns]
    D = race.distance_m
    plans: dict[str, list[int]] = {}

    # explicit crossings: used as given, truncated by a fall without getting up
    explicit = [s for s in skaters if s.crossings_us is not None]
    for s in explicit:
        times = _interpolate(dists, s.crossings_us)
        f = falls.get(s.skater_id)
        if f is not None and not f.gets_up:
            times = [t for d, t in zip(dists, times) if d <= f.at_m]
        plans[s.skater_id] = times
    paced = [s for s in skaters if s.crossings_us is None]
    if not paced:
        return plans

    def lost(sid: str) -> float:
        f = falls.get(sid)
        if f is None:
            return 0
        return f.lost_us if f.gets_up else math.inf

    # unfallen finish offsets of the line (o_i) and the front's finish X
    pinned = {s.skater_id: s.finish_us for s in paced if s.finish_us is not None}
    if pinned and len(pinned) != len(paced):
        raise ValueError(f"{comp.competitor_id}: pin every skater's finish_us or none")
    if pinned:
        unfallen = {sid: fin - (lost(sid) if lost(sid) != math.inf else 0) for sid, fin in pinned.items()}
        X = min(unfallen.values())
        offs = {sid: u - X for sid, u in unfallen.items()}
        if comp.target_us is not None and race.format == "team_pursuit":
            finishers = sorted(pinned[s] for s in pinned if lost(s) != math.inf)
            if len(finishers) >= 3 and finishers[2] != comp.target_us:
                raise ValueError(f"{comp.competitor_id}: target is not the third pinned finish")
    else:
        if comp.target_us is None:
            raise ValueError(f"{comp.competitor_id}: no target_us and no explicit crossings")
        order = [s.skater_id for s in paced]
        rng.shuffle(order)
        if len(order) == 1:
            o = [0]
        elif len(order) == 3:
            e3 = rng.randint(100_000, 600_000)
            e2 = rng.randint(50_000, e3 - 20_000)
            o = [0, e3 - e2, e3]
        else:
            o = [0]
            for _ in order[1:]:
                o.append(o[-1] + rng.randint(30_000, 300_000))
        offs = dict(zip(order, o))
        if race.format == "team_pursuit" and len(order) >= 3:
            actual = sorted(offs[sid] + lost(sid) for sid in order)
            ref = actual[2] if actual[2] != math.inf else offs[order[-1]]
        else:
            ref = offs[order[0]] + lost(order[0])
            if ref == math.inf:
                ref = offs[order[0]]
        X = comp.target_us - int(ref)
    pace = comp.pacing or Pacing()
    front = _pace(rng, race.format, dists, X, comp.pacing)

    order_fin = sorted(offs, key=lambda sid: (offs[sid], sid))
    n = len(order_fin)
    gap_lo, gap_hi = pace.line_gap_us or (80_000, 250_000)
    lead_m = pace.lead_m or rng.choice((400, 600))
    start_order = list(order_fin)
    rng.shuffle(start_order)
    for sid in order_fin:
        plans[sid] = []
    for i, d in enumerate(dists):
        if i == len(dists) - 1:
            for sid in order_fin:
                plans[sid].append(front[i] + offs[sid])
            continue
        if n == 1:
            plans[order_fin[0]].append(front[i])
            continue
        if d > D - lap:
            line = order_fin
        else:
            k = (d - 1) // lead_m
            line = start_order[k % n:] + start_order[:k % n]
        # in the last lap the line converges to the finishing gaps
        mix = min(1.0, (D - d) / lap)
        off = 0
        for pos, sid in enumerate(line):
            if pos:
                off += rng.randint(gap_lo, gap_hi)
            plans[sid].append(front[i] + round(off * mix + offs[sid] * (1 - mix))
                              if line is order_fin else front[i] + off)
    for sid in list(order_fin):
        f = falls.get(sid)
        if f is None:
            continue
        times = plans[sid]
        if f.gets_up:
            plans[sid] = [t + (f.lost_us if d > f.at_m else 0) for d, t in zip(dists, times)]
        else:
            plans[sid] = [t for d, t in zip(dists, times) if d <= f.at_m]
    for sid, times in plans.items():
        for a, b in zip([0] + times, times):
            if b <= a:
                raise ValueError(f"{sid}: crossings not increasing")
    return plans


class _Builder:
    def __init__(self, venue: VenueSpec, races: Sequence[RaceSpec], records: Sequence[RecordRef],
                 seed: object, opts: SimOptions) -> None:
        self.venue = venue
        self.races = list(races)
        self.records = list(records)
        self.seed = seed
        self.o = opts
        self.gen = 0
        self.messages: list[tuple[int, int, dict]] = []  # (arrival, gen, msg)
        self.crossings: list[_Crossing] = []
        self.truth = SimTruth()
        self.windows: list[tuple[int, int]] = []

    # -- validation -------------------------------------------------------
    def validate(self) -> None:
        o, v = self.o, self.venue
        if not o.sources:
            raise ValueError("at least one source")
        if max(o.primary_delay_us, o.max_delay_us) > MAX_ARRIVAL_LAG_US:
            raise ValueError("arrival delay above 3 s")
        if min(o.primary_delay_us, o.max_delay_us) < 0:
            raise ValueError("negative delay")
        if not (0 <= o.miss_rate < 1 and 0 <= o.resend_rate <= 1):
            raise ValueError("rates out of range")
        ats = [at for _, at in v.loops]
        if len(set(ats)) != len(ats) or any(not 0 <= a < v.lap_m for a in ats):
            raise ValueError("bad loop positions")
        seen_tr: dict[str, str] = {}
        prev_gun = None
        ids = set()
        for race in self.races:
            if race.race_id in ids:
                raise ValueError(f"duplicate race {race.race_id}")
            ids.add(race.race_id)
            if race.format not in FORMATS:
                raise ValueError(f"bad format {race.format}")
            if prev_gun is not None and race.gun_us <= prev_gun:
                raise ValueError("races must be in time order")
            prev_gun = race.gun_us
            for c in race.competitors:
                for s in c.skaters:
                    if not 1 <= len(s.transponders) <= 2:
                        raise ValueError(f"{s.skater_id}: one or two transponders")
                    for tr in s.transponders:
                        if seen_tr.setdefault(tr, s.skater_id) != s.skater_id:
                            raise ValueError(f"transponder {tr} used by two skaters")
            for d in race.decisions:
                if d.code not in DECISION_CODES:
                    raise ValueError(f"bad decision code {d.code}")
        self.truth.transponders = seen_tr
        self.truth.max_lag_us = max(o.primary_delay_us, o.max_delay_us) if len(o.sources) > 1 \
            else o.primary_delay_us

    def emit(self, msg: dict, arrival: int | None = None) -> None:
        self.gen += 1
        self.messages.append((msg["t_us"] if arrival is None else arrival, self.gen, msg))

    # -- one race ---------------------------------------------------------
    def race(self, race: RaceSpec) -> None:
        v, o = self.venue, self.o
        rid = race.race_id
        setup = race.gun_us - race.setup_lead_us
        guns = [race.gun_us]
        if race.restart is not None:
            r = race.restart
            if not 0 < r.recall_after_us < r.new_gun_after_us - MAX_ARRIVAL_LAG_US:
                raise ValueError(f"{rid}: restart timing")
            guns.append(race.gun_us + r.new_gun_after_us)
        gun = guns[-1]
        first_msg_t = setup
        last_t = gun

        comps_msg = []
        comp_info = []
        for idx, c in enumerate(race.competitors):
            start_m = c.start_m if c.start_m is not None else _default_start(race, idx, v.lap_m)
            fin_loop = v.loop_at((start_m + race.distance_m) % v.lap_m)
            if fin_loop is None:
                raise ValueError(f"{rid}/{c.competitor_id}: no loop at the finish position")
            cd = _crossing_distances(v, start_m, race.distance_m)
            comp_info.append((c, start_m, fin_loop, cd))
            comps_msg.append({
                "competitor_id": c.competitor_id, "name": c.name, "nation": c.nation,
                "start_m": start_m,
                "skaters": [{"skater_id": s.skater_id, "name": s.name, "nation": s.nation,
                             "transponders": list(s.transponders)} for s in c.skaters]})
        msg = {"kind": "race", "v": 1, "t_us": setup, "race_id": rid, "venue": v.venue_id,
               "competition": race.competition, "level": race.level, "format": race.format,
               "gender": race.gender, "distance_m": race.distance_m}
        if race.group is not None:
            msg["group"] = race.group
        if race.places is not None:
            msg["places"] = list(race.places)
        if race.format == "mass_start":
            msg["laps"] = race.laps if race.laps is not None else race.distance_m // v.lap_m
            if race.sprints is not None:
                msg["sprints"] = {str(k): list(p) for k, p in race.sprints.items()}
            if race.final is not None:
                msg["final"] = list(race.final)
        msg["competitors"] = comps_msg
        self.emit(msg)
        for attempt, g in enumerate(guns, 1):
            self.emit({"kind": "start", "v": 1, "t_us": g, "venue": v.venue_id, "race_id": rid,
                       "attempt": attempt})

        missed = set(race.missed)
        drop_exact = set(race.drop_exact)
        ctruth: dict[str, CompetitorTruth] = {}
        race_crossings: list[_Crossing] = []
        finishes: list[int] = []
        crng = _rng(self.seed, rid, "cooldown")
        for c, start_m, fin_loop, cd in comp_info:
            dists = [d for d, _ in cd]
            loops = dict(cd)
            skaters_truth = {}
            # aborted attempts
            aborted_plan: dict[str, list[int]] = {}
            if race.restart is not None and not c.dns:
                arng = _rng(self.seed, rid, "pace-attempt1", c.competitor_id)
                aborted_plan = _plan_competitor(race, c, dists, arng, v.lap_m)
            plan = {} if c.dns else _plan_competitor(
                race, c, dists, _rng(self.seed, rid, "pace", c.competitor_id), v.lap_m)
            for s in c.skaters:
                st = SkaterTruth(s.skater_id, c.competitor_id, rid, tuple(s.transponders),
                                 dns=c.dns or s.dns)
                st.fall = next((f for f in c.falls if f.skater_id == s.skater_id), None)
                skaters_truth[s.skater_id] = st
                for d, el in zip(dists, aborted_plan.get(s.skater_id, [])):
                    if el >= race.restart.recall_after_us:
                        break
                    t = guns[0] + el
                    st.aborted.append((loops[d], t))
                    race_crossings.append(_Crossing(s.skater_id, s.transponders, loops[d], t, "aborted"))
                times = plan.get(s.skater_id, [])
                for d, el in zip(dists, times):
                    t = gun + el
                    st.loops[d] = loops[d]
                    st.physical[d] = t
                    cr = _Crossing(s.skater_id, s.transponders, loops[d], t, "race", distance=d,
                                   is_finish=(d == race.distance_m),
                                   missed=(s.skater_id, d) in missed,
                                   drop_exact=(s.skater_id, d) in drop_exact)
                    race_crossings.append(cr)
                    last_t = max(last_t, t)
                if times and len(times) == len(dists) and dists[-1] == race.distance_m:
                    st.finish_distance = race.distance_m
                    fin_t = gun + times[-1]
                    finishes.append(fin_t)
                    if o.cooldown:
                        self.cooldown(crng, st, s, start_m, fin_t, race_crossings)
            ctruth[c.competitor_id] = CompetitorTruth(c.competitor_id, start_m, fin_loop,
                                                      skaters_truth, None, dns=c.dns)
        for sid, d in missed | drop_exact:
            if not any(cr.skater_id == sid and cr.distance == d for cr in race_crossings):
                raise ValueError(f"{rid}: no crossing of {sid} at {d} m to miss/drop")
        last_finish = max(finishes) if finishes else last_t

        # warm-up transponders
        if o.warmup_transponders:
            wrng = _rng(self.seed, rid, "warmup")
            for _ in range(o.warmup_transponders):
                while True:
                    tr = f"999{wrng.randint(0, 999):03d}"
                    if tr not in self.truth.transponders and tr not in self.truth.unknown_transponders:
                        break
                self.truth.unknown_transponders.add(tr)
                n = wrng.randint(2, 4)
                li = wrng.randrange(len(v.loops))
                t = wrng.randint(setup + 10 * S, max(setup + 11 * S, last_finish))
                ordered = sorted(v.loops, key=lambda x: x[1])
                for _k in range(n):
                    loop, at = ordered[li % len(ordered)]
                    race_crossings.append(_Crossing(None, (tr,), loop, t, "warmup"))
                    nxt_at = ordered[(li + 1) % len(ordered)][1]
                    seg = (nxt_at - at) % v.lap_m or v.lap_m
                    t += round(seg / 100 * wrng.uniform(8.5, 12.0) * S)
                    li += 1

        # reads
        rrng = _rng(self.seed, rid, "reads")
        arng = _rng(self.seed, rid, "arrival")
        for cr in race_crossings:
            self.reads_for(cr, rrng, arng)
            last_t = max(last_t, cr.t)
        self.crossings.extend(race_crossings)

        # photos and decisions
        prng = _rng(self.seed, rid, "officials")
        photos = []
        latest = last_finish
        for ph in race.photos:
            st = next((c.skaters[ph.skater_id] for c in ctruth.values() if ph.skater_id in c.skaters),
                      None)
            if st is None or st.finish_distance is None:
                raise ValueError(f"{rid}: photo of {ph.skater_id}, who does not finish")
            fin = st.physical[race.distance_m]
            finish_us = gun + ph.elapsed_us if ph.elapsed_us is not None else fin + ph.delta_us
            delay = ph.delay_us if ph.delay_us is not None else prng.randint(20 * S, 60 * S)
            m = {"kind": "photo", "v": 1, "t_us": fin + delay, "race_id": rid,
                 "skater_id": ph.skater_id, "finish_us": finish_us}
            photos.append(m)
            latest = max(latest, m["t_us"])
        decisions = []
        for dc in race.decisions:
            after = dc.after_us if dc.after_us is not None else prng.randint(15 * S, 40 * S)
            m = {"kind": "decision", "v": 1, "t_us": last_finish + after, "race_id": rid}
            if dc.competitor_id is not None:
                m["competitor_id"] = dc.competitor_id
            if dc.skater_id is not None:
                m["skater_id"] = dc.skater_id
            m["code"] = dc.code
            if dc.note is not None:
                m["note"] = dc.note
            decisions.append(m)
            latest = max(latest, m["t_us"])
        official = race.official
        if official is None:
            official = not any(d.code in ("OFFICIAL", "VOID") for d in race.decisions)
        if official:
            t_off = max(last_finish + prng.randint(30 * S, 90 * S), latest + prng.randint(5 * S, 15 * S))
            decisions.append({"kind": "decision", "v": 1, "t_us": t_off, "race_id": rid,
                              "code": "OFFICIAL"})
        for m in sorted(photos + decisions, key=lambda m: m["t_us"]):
            self.emit(m)
            last_t = max(last_t, m["t_us"])

        rt = RaceTruth(rid, race.format, race.distance_m, setup, guns, ctruth, last_finish,
                       photos, decisions)
        self.truth.races[rid] = rt
        self.windows.append((first_msg_t, last_t + self.truth.max_lag_us))

    def cooldown(self, rng: random.Random, st: SkaterTruth, s: SkaterSpec, start_m: int,
                 fin_t: int, out: list[_Crossing]) -> None:
        v = self.venue
        lo, hi = self.o.cooldown_loops
        n = rng.randint(lo, hi)
        pos = (start_m + max(st.physical)) % v.lap_m
        ordered = sorted(at for _, at in v.loops)
        t = fin_t
        for _ in range(n):
            nxt = next((a for a in ordered if a > pos), ordered[0] + v.lap_m)
            seg = nxt - pos
            t += round(seg / 100 * rng.uniform(9.5, 12.5) * S)
            pos = nxt % v.lap_m
            loop = v.loop_at(pos)
            st.cooldown.append((loop, t))
            out.append(_Crossing(s.skater_id, s.transponders, loop, t, "cooldown"))

    def reads_for(self, cr: _Crossing, rng: random.Random, arng: random.Random) -> None:
        o = self.o
        srcs = o.sources
        trs = list(cr.transponders)
        rng.shuffle(trs)  # which ankle is read first
        reads: list[tuple[int, str, str, bool]] = []  # (t, source, transponder, exact)
        for i, tr in enumerate(trs):
            if i == 0:
                exact_src = rng.randrange(len(srcs))
                for j, src in enumerate(srcs):
                    if j == exact_src:
                        reads.append((cr.t, src, tr, True))
                    else:
                        reads.append((cr.t + rng.randint(1, o.source_jitter_us), src, tr, False))
            else:
                base = cr.t + rng.randint(*o.transponder_offset_us)
                for j, src in enumerate(srcs):
                    jt = 0 if j == 0 else rng.randint(-o.source_jitter_us, o.source_jitter_us)
                    reads.append((max(base + jt, cr.t + 1), src, tr, False))
        keep = [True] * len(reads)
        if cr.missed:
            keep = [False] * len(reads)
        else:
            if o.miss_rate:
                for k, r in enumerate(reads):
                    if rng.random() < o.miss_rate:
                        if r[3] and cr.is_finish and o.protect_finish_exact:
                            continue
                        keep[k] = False
                if not any(keep):
                    keep[rng.randrange(len(reads))] = True
            if cr.drop_exact:
                for k, r in enumerate(reads):
                    if r[3]:
                        keep[k] = False
                if not any(keep):
                    raise ValueError("drop_exact of a crossing with a single read")
        for k, (t, src, tr, _exact) in enumerate(reads):
            if not keep[k]:
                continue
            if src == srcs[0]:
                lag = arng.randint(0, o.primary_delay_us)
            elif arng.random() < 0.7:
                lag = arng.randint(0, min(300_000, o.max_delay_us))
            else:
                lag = arng.randint(0, o.max_delay_us)
            self.gen += 1
            rd = _Read(t, src, tr, cr.loop, t + lag, self.gen,
                       strength=rng.randint(*o.strength), hits=rng.randint(*o.hits))
            if o.resend_rate and arng.random() < o.resend_rate:
                rd.resend_arrival = min(rd.arrival + arng.randint(20_000, 1_000_000),
                                        t + self.truth.max_lag_us)
            cr.reads.append(rd)

    # -- whole feed -------------------------------------------------------
    def build(self) -> SimFeed:
        self.validate()
        v, o = self.venue, self.o
        first_setup = self.races[0].gun_us - self.races[0].setup_lead_us if self.races else 0
        vt = v.t_us if v.t_us is not None else (first_setup - 120 * S) // S * S
        self.emit({"kind": "venue", "v": 1, "t_us": vt, "venue": v.venue_id, "name": v.name,
                   "lap_m": v.lap_m, "loops": [{"loop": l, "at_m": a} for l, a in v.loops]})
        for rec in self.records:
            self.emit(rec.message(vt))
        for race in self.races:
            self.race(race)

        # seq per source, in read-time order
        reads = [r for cr in self.crossings for r in cr.reads]
        by_src: dict[str, list[_Read]] = {}
        for r in reads:
            by_src.setdefault(r.source, []).append(r)
        for src, rs in by_src.items():
            rs.sort(key=lambda r: (r.t, r.gen))
            for i, r in enumerate(rs):
                r.seq = o.seq_start + i
        resends = []
        for r in sorted(reads, key=lambda r: r.gen):
            m = {"kind": "passing", "v": 1, "t_us": r.t, "venue": v.venue_id, "source": r.source,
                 "seq": r.seq, "loop": r.loop, "transponder": r.transponder,
                 "strength": r.strength, "hits": r.hits}
            self.messages.append((r.arrival, r.gen, m))
            if r.resend_arrival is not None:
                resends.append((r.resend_arrival, m))
        for again, m in resends:
            self.gen += 1
            self.messages.append((again, self.gen, m))

        self._fill_truth()

        if o.heartbeats and self.windows:
            self.heartbeats()
        self.messages.sort(key=lambda x: (x[0], x[1]))
        dumps = orjson.dumps
        lines = [dumps(m).decode("utf-8") for _, _, m in self.messages]
        return SimFeed(lines, self.truth)

    def _fill_truth(self) -> None:
        index: dict[tuple[str, int, int], _Crossing] = {}
        for cr in self.crossings:
            if cr.kind == "race":
                index[(cr.skater_id, cr.distance, cr.t)] = cr
        for rt in self.truth.races.values():
            for ct in rt.competitors.values():
                for st in ct.skaters.values():
                    for d, t in st.physical.items():
                        cr = index[(st.skater_id, d, t)]
                        if cr.reads:
                            st.crossings[d] = min(r.t for r in cr.reads)
                        else:
                            st.missed.add(d)
                    if st.finish_distance is not None and st.finish_distance in st.crossings:
                        st.finish_us = st.crossings[st.finish_distance]
                        st.finish_elapsed_us = st.finish_us - rt.gun_us
                fins = sorted(s.finish_elapsed_us for s in ct.skaters.values()
                              if s.finish_elapsed_us is not None)
                if rt.format == "team_pursuit":
                    ct.finish_elapsed_us = fins[2] if len(fins) >= 3 else None
                else:
                    ct.finish_elapsed_us = fins[0] if fins else None

    def heartbeats(self) -> None:
        o = self.o
        wins = sorted((a - o.heartbeat_lead_us, b + o.heartbeat_tail_us) for a, b in self.windows)
        merged = [list(wins[0])]
        for a, b in wins[1:]:
            if a - merged[-1][1] <= o.heartbeat_bridge_us:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        vid = self.venue.venue_id
        for a, b in merged:
            t = -(-a // S) * S
            while t <= b:
                for src in o.sources:
                    self.gen += 1
                    self.messages.append((t, self.gen, {"kind": "heartbeat", "v": 1, "t_us": t,
                                                        "venue": vid, "source": src}))
                t += S


def simulate(venue: VenueSpec, races: Iterable[RaceSpec], records: Iterable[RecordRef] = (),
             seed: object = 0, options: SimOptions | None = None) -> SimFeed:
    """Simulate a recorded feed: the venue, record references, then each race in time order."""
    return _Builder(venue, list(races), list(records), seed, options or SimOptions()).build()
