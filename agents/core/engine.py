"""The timing core: raw v1 messages in, derived v1 events out.

Pure: no I/O, no clock reads, no framework. ``Engine.apply(msg)`` takes one
decoded raw message (see ``schemas.decode``) and returns the derived events
it causes, in emission order. It raises ``Rejected`` for a message that
refers to something unknown (the caller dead-letters it).

Event time drives everything. Each venue has a clock: the newest ``t_us`` of
its passings and heartbeats. Reads may arrive out of order by up to
``reorder_us`` (3 s), so a crossing is *closed* (its earliest read final)
once the clock is more than ``reorder_us`` past it. Closed crossings and
fall deadlines are processed on one timeline in event-time order, so the
same feed gives the same events, with the same ids, in the same order,
whatever the batching, replay speed, or shuffling of reads within the
window.
"""
from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass, field

from schemas.decode import IRM_CODES, Rejected, parse_record_time

from . import falls, provisional
from .provisional import Pub, split_event
from .timefmt import elapsed_ms, event_id, fmt_hundredths, fmt_time, utc_date

INF = float("inf")
DEFAULT_SPRINTS = {4: [5, 3, 1], 8: [5, 3, 1], 12: [5, 3, 1]}
DEFAULT_FINAL = [60, 40, 20]


@dataclass(frozen=True)
class CoreConfig:
    reorder_us: int = 3_000_000       # reads may arrive this late (contract: a few seconds)
    group_us: int = 2_000_000         # reads of one skater at one loop this close are one crossing
    v_start_mps: float = 10.0         # assumed pace before a skater's first crossing
    v_cruise_mps: float = 12.5        # assumed speed after the start, to place a first crossing
    v_max_mps: float = 22.0           # faster than this between crossings is a misread
    fall_factor: float = 1.15         # overdue: not seen at the next TWO loops within factor x pace
    fall_slack_us: int = 500_000
    clear_ratio: float = 0.75         # turned up at >= this share of its pace: a missed read, cleared
    seq_keep_us: int = 120_000_000    # how long (source, seq) pairs are remembered for resends
    max_jump_us: int = 60_000_000     # a clock leap beyond this during a race is out of contract


# ---------------------------------------------------------------------------
# state
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class Pending:
    """A crossing still inside the reordering window: its earliest read so far,
    and its provisional placement (``d`` for ``sig`` = (t, skater's last_t))."""

    t: int
    run: "SkaterRun"
    loop: str
    at_m: int
    sig: tuple | None = None
    d: int | None = None


class Venue:
    __slots__ = ("id", "name", "lap_m", "loops", "clock", "hb", "seqs", "transponders",
                 "pending", "races", "next_due", "seq_pruned")

    def __init__(self, msg: dict) -> None:
        self.id = msg["venue"]
        self.clock = -1
        self.hb: dict[str, int] = {}
        self.seqs: dict[str, dict[int, int]] = {}
        self.transponders: dict[str, SkaterRun] = {}
        self.pending: dict[tuple, Pending] = {}  # (SkaterRun id, loop) -> the open crossing
        self.races: list[Race] = []            # started races (current attempts)
        self.next_due = INF
        self.seq_pruned = -1
        self.configure(msg)

    def configure(self, msg: dict) -> None:
        self.name = msg["name"]
        self.lap_m = msg["lap_m"]
        self.loops = {lp["loop"]: lp["at_m"] for lp in msg["loops"]}


class RaceDef:
    __slots__ = ("id", "venue", "competition", "level", "format", "gender", "distance", "group",
                 "places", "laps", "sprint_at", "final", "competitors", "event", "msg")

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
                raise Rejected("bad_value", f"race {self.id}: start_m {c['start_m']} of {c['competitor_id']!r} is not on a {lap} m lap")
            if finish_at not in venue.loops.values():
                raise Rejected("unknown_reference",
                               f"race {self.id}: venue {venue.id} has no loop at {finish_at} m, "
                               f"the finish of {c['competitor_id']!r}")
        self.competitors = msg["competitors"]
        self.sprint_at: dict[int, list[int]] = {}
        self.final = None
        self.laps = None
        if self.format == "mass_start":
            self.laps = msg.get("laps") or max(1, self.distance // lap)
            sprints = msg.get("sprints")
            sprints = {int(k): v for k, v in sprints.items()} if sprints else DEFAULT_SPRINTS
            for k, pts in sprints.items():
                if 0 < k < self.laps:
                    self.sprint_at[self.distance - (self.laps - k) * lap] = list(pts)
            self.final = list(msg.get("final") or DEFAULT_FINAL)


class SkaterRun:
    __slots__ = ("id", "name", "transponders", "comp", "race", "last_d", "last_t", "hist", "split_t",
                 "finished", "finish_t", "last_cross", "deadline", "incident_n", "suspected",
                 "overdue", "lost", "confirmed_t", "pace", "prov_sus")

    def __init__(self, s: dict, comp: "CompRun", race: "Race") -> None:
        self.id = s["skater_id"]
        self.name = s["name"]
        self.transponders = s["transponders"]
        self.comp = comp
        self.race = race
        self.last_d = 0
        self.last_t = race.gun
        self.hist: list[tuple[int, int]] = []   # closed crossings (distance, t_us)
        self.split_t: dict[int, int] = {}      # distance -> crossing t_us
        self.finished = False
        self.finish_t = None
        self.last_cross: dict[str, int] = {}   # loop -> t_us of the last closed crossing
        self.deadline = INF
        self.incident_n = 0
        self.suspected = False   # an open suspected fall (until cleared or confirmed)
        self.overdue = False     # not seen since its fall deadline passed
        self.confirmed_t = None  # when the referee last confirmed a fall
        self.pace: float | None = None   # cached recent pace (None: to compute)
        self.prov_sus: tuple | None = None   # provisional suspicion: (n, revision, event, (at_m, t))
        self.lost = False


class CompRun:
    __slots__ = ("id", "name", "nation", "start_m", "skaters", "offsets", "irm", "finish_tr",
                 "finish_ms", "source", "finish_rev", "finish_t_us", "points", "records",
                 "record_evals", "team_split", "caught", "order", "team_incidents", "final_points",
                 "prov_finish", "prov_rec", "rec_base")

    def __init__(self, c: dict, race: "Race", lap: int, loop_positions, order: int) -> None:
        self.id = c["competitor_id"]
        self.name = c["name"]
        self.nation = c["nation"]
        self.start_m = c["start_m"]
        self.order = order
        self.offsets = sorted({(a - self.start_m) % lap for a in loop_positions})
        self.skaters = [SkaterRun(s, self, race) for s in c["skaters"]]
        self.irm = None
        self.finish_tr = None       # transponder finish crossing (t_us)
        self.finish_ms = None       # effective finish time (photo or transponder)
        self.source = None
        self.finish_rev = -1
        self.finish_t_us = None
        self.points = 0
        self.records: list[str] = []
        self.record_evals: dict[tuple, dict] = {}  # book key -> record event state
        self.team_split: dict[int, int] = {}      # team distance -> t_us (third skater)
        self.caught = False
        self.team_incidents = 0
        self.final_points = 0
        self.prov_finish: tuple | None = None    # last provisional finish published (ms, rank, points, source)
        self.prov_rec: dict[tuple, dict] = {}    # book key -> provisional record state
        self.rec_base: dict[tuple, int] = {}     # book key -> first revision a final judgement takes


class Race:
    """One attempt of a race."""

    __slots__ = ("d", "attempt", "gun", "status", "comps", "by_comp", "by_skater", "split_idx",
                 "result_rev", "photos", "sprint_awards", "venue", "falls_confirmed", "pub",
                 "open", "prov_result")

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
        self.split_idx: dict[tuple, list[int]] = {}
        self.photos: dict[str, int] = {}
        self.sprint_awards: dict[int, int] = {}
        self.falls_confirmed: set = set()
        self.pub: dict[tuple, Pub] = {}          # (competitor, skater, distance) -> last split published
        # keys of ``pub`` not final -> what supports them (None: withdrawn for now)
        self.open: dict[tuple, tuple | None] = {}
        self.prov_result: tuple | None = None    # the provisional ranking last published

    @property
    def ended(self) -> bool:
        return self.status in ("official", "void")


class Ref:
    """A record reference: from a record_ref message, or a record set in a race."""

    __slots__ = ("time_h", "time", "holder", "set_on", "venue", "race_id", "t_us")

    def __init__(self, time_h, time, holder, set_on, venue, race_id=None, t_us=None):
        self.t_us = t_us          # a record set here: the event time of its finish
        self.time_h = time_h
        self.time = time
        self.holder = holder
        self.set_on = set_on
        self.venue = venue
        self.race_id = race_id


# ---------------------------------------------------------------------------
# the engine
# ---------------------------------------------------------------------------


class Engine:
    """All venues, races, record references, groups and events."""

    def __init__(self, config: CoreConfig | None = None) -> None:
        self.cfg = config or CoreConfig()
        self.venues: dict[str, Venue] = {}
        self.race_defs: dict[str, RaceDef] = {}
        self.races: dict[str, Race] = {}          # current attempt of each started race
        self.result_revs: dict[str, int] = {}
        self.pre_irm: dict[str, dict[str, str]] = {}   # IRM decisions given before the gun
        # Record references, per record identity (record, format, gender, distance, scope):
        # ``book`` the references in force from record_ref messages; ``claims`` the
        # records set in races here and still valid; ``foreign`` those lapstream
        # published from other venues. The reference in force is the fastest of all.
        self.book: dict[tuple, list[Ref]] = {}
        self.claims: dict[tuple, dict[tuple, Ref]] = {}
        self.foreign: dict[tuple, dict[tuple, Ref]] = {}
        self.finish_log: list[tuple[int, Race, CompRun]] = []   # first finishes, in the order judged
        self.groups: dict[str, list[str]] = {}
        self.group_rev: dict[str, int] = {}
        self.events: dict[str, list[str]] = {}
        self.event_rev: dict[str, int] = {}
        self.stats: dict[tuple[str, str], int] = {}
        self.outcome = "applied"
        # races whose provisional events need a refresh: the skaters touched (None: all)
        self.dirty: dict[Race, set[SkaterRun] | None] = {}
        self.max_jump_us = self.cfg.max_jump_us
        self._handlers = {
            "passing": self._passing,
            "heartbeat": self._heartbeat,
            "venue": self._venue,
            "race": self._race,
            "start": self._start,
            "photo": self._photo,
            "decision": self._decision,
            "record_ref": self._record_ref,
        }

    # -- entry points ------------------------------------------------------

    def apply(self, msg: dict) -> list[dict]:
        """Apply one decoded raw message; return the derived events."""
        out: list[dict] = []
        self.outcome = "applied"
        kind = msg["kind"]
        self._handlers[kind](msg, out)
        if self.dirty:
            self._refresh(out)
        key = (kind, self.outcome)
        stats = self.stats
        stats[key] = stats.get(key, 0) + 1
        return out

    def count_rejected(self, kind: str) -> None:
        key = (kind if kind in self._handlers else "unknown", "deadlettered")
        self.stats[key] = self.stats.get(key, 0) + 1

    def flush(self) -> list[dict]:
        """End of a recorded feed: no later read can come, close every crossing."""
        out: list[dict] = []
        for v in self.venues.values():
            if v.clock >= 0:
                self._timeline(v, v.clock + 1, out)
        if self.dirty:
            self._refresh(out)
        return out

    def _refresh(self, out: list) -> None:
        dirty = self.dirty
        self.dirty = {}
        for race in sorted(dirty, key=lambda r: (r.d.id, r.attempt)):
            provisional.refresh(self, race, dirty[race], out)

    def _touch(self, race: Race, run: SkaterRun | None = None) -> None:
        """Mark a race for a provisional refresh (of one skater, or all)."""
        dirty = self.dirty
        if run is None:
            dirty[race] = None
        elif race not in dirty:
            dirty[race] = {run}
        else:
            runs = dirty[race]
            if runs is not None:
                runs.add(run)

    def venue_clock(self, venue: str) -> int:
        v = self.venues.get(venue)
        return v.clock if v else -1

    def active_races(self) -> int:
        return sum(1 for r in self.races.values() if not r.ended)

    # -- raw kinds ---------------------------------------------------------

    def _venue(self, msg: dict, out: list) -> None:
        v = self.venues.get(msg["venue"])
        if v is None:
            self.venues[msg["venue"]] = Venue(msg)
        else:
            v.configure(msg)

    def _race(self, msg: dict, out: list) -> None:
        venue = self.venues.get(msg["venue"])
        if venue is None:
            raise Rejected("unknown_reference", f"race {msg['race_id']}: venue {msg['venue']!r} was never set up")
        rid = msg["race_id"]
        if rid in self.races and not self.races[rid].ended:
            self.outcome = "ignored_late"   # a started race's start list no longer changes
            return
        d = RaceDef(msg, venue)
        old = self.race_defs.get(rid)
        if old is not None:   # a new start list: leave the old group and event
            if old.group in self.groups and rid in self.groups[old.group]:
                self.groups[old.group].remove(rid)
            if old.places and rid in self.events.get(old.event, ()):
                self.events[old.event].remove(rid)
            kept = {c["competitor_id"] for c in d.competitors}
            pre = self.pre_irm.get(rid)
            if pre:
                for cid in [c for c in pre if c not in kept]:
                    del pre[cid]
        self.race_defs[rid] = d
        members = self.groups.setdefault(d.group, [])
        if rid not in members:
            members.append(rid)
        if d.places:
            evr = self.events.setdefault(d.event, [])
            if rid not in evr:
                evr.append(rid)

    def _start(self, msg: dict, out: list) -> None:
        rid = msg["race_id"]
        d = self.race_defs.get(rid)
        if d is None:
            raise Rejected("unknown_reference", f"start: race {rid!r} was never set up")
        if d.venue != msg["venue"]:
            raise Rejected("unknown_reference", f"start: race {rid!r} is at venue {d.venue!r}, not {msg['venue']!r}")
        attempt = msg.get("attempt", 1)
        old = self.races.get(rid)
        if old is not None and attempt <= old.attempt:
            self.outcome = "duplicate"
            return
        venue = self.venues[d.venue]
        rev = self.result_revs.get(rid, -1)
        race = Race(d, attempt, msg["t_us"], venue, rev)
        if old is not None:
            if old in venue.races:
                venue.races.remove(old)
            for key in [k for k, p in venue.pending.items() if p.run.race is old]:
                del venue.pending[key]
        for cid, code in self.pre_irm.get(rid, {}).items():
            if cid in race.by_comp:
                race.by_comp[cid].irm = code
        self.races[rid] = race
        venue.races.append(race)
        for c in race.comps:
            for s in c.skaters:
                for tp in s.transponders:
                    venue.transponders[tp] = s
        if old is not None:   # a restart: tell subscribers attempt 1 is gone
            self.dirty.pop(old, None)
            provisional.withdraw_attempt(old, out)
            for c in old.comps:
                for s in c.skaters:
                    s.deadline = INF
                    if s.suspected:
                        s.suspected = False
                        out.append(self._incident(old, c, s, "fall", "cleared", s.last_d, msg["t_us"],
                                                  note="attempt discarded by a restart"))
                self._withdraw_records(old, c, msg["t_us"], out)
            self._emit_result(race, msg["t_us"], out)
            self._emit_group(race, msg["t_us"], out)

    def _heartbeat(self, msg: dict, out: list) -> None:
        v = self.venues.get(msg["venue"])
        if v is None:
            raise Rejected("unknown_reference", f"heartbeat: venue {msg['venue']!r} was never set up")
        t = msg["t_us"]
        if t > v.clock + self.max_jump_us and v.clock >= 0:
            self._check_jump(v, t, "heartbeat")
        hb = v.hb
        src = msg["source"]
        if t > hb.get(src, -1):
            hb[src] = t
        if t > v.clock:
            if t - v.clock > falls.OUTAGE_GAP_US and v.clock >= 0:
                falls.venue_dark(v, v.clock, t, self.cfg.reorder_us)
            v.clock = t
            if t - self.cfg.reorder_us > v.next_due:
                self._timeline(v, t - self.cfg.reorder_us, out)

    def _passing(self, msg: dict, out: list) -> None:
        v = self.venues.get(msg["venue"])
        if v is None:
            raise Rejected("unknown_reference", f"passing: venue {msg['venue']!r} was never set up")
        loop = msg["loop"]
        at_m = v.loops.get(loop)
        if at_m is None:
            raise Rejected("unknown_reference", f"passing: venue {v.id} has no loop {loop!r}")
        t = msg["t_us"]
        if t > v.clock + self.max_jump_us and v.clock >= 0:
            self._check_jump(v, t, "passing")
        src = msg["source"]
        seqs = v.seqs.get(src)
        if seqs is None:
            seqs = v.seqs[src] = {}
        seq = msg["seq"]
        if seq in seqs:
            self.outcome = "duplicate"
            return
        seqs[seq] = t
        if t > v.seq_pruned + self.cfg.seq_keep_us:
            v.seq_pruned = t
            for sq in v.seqs.values():
                self._prune_seqs(v, sq)
        if t > v.clock:
            # close what this read proves final first: a read at t can only
            # belong to a crossing later than t - reorder_us
            self._advance(v, t, out)
        self._read(v, msg["transponder"], loop, at_m, t)

    def _read(self, v: Venue, tp: str, loop: str, at_m: int, t: int) -> None:
        run = v.transponders.get(tp)
        if run is None:
            self.outcome = "ignored_unknown_transponder"
            return
        race = run.race
        if t < race.gun:
            self.outcome = "ignored_before_start"
            return
        if run.finished or run.lost or run.comp.irm is not None or race.ended:
            fin = run.finish_t
            if fin is not None and abs(t - fin) <= self.cfg.group_us and loop == _finish_loop(run, v):
                self.outcome = "duplicate"   # another read of the finish crossing
            else:
                self.outcome = "ignored_after_finish"
            return
        last = run.last_cross.get(loop)
        if last is not None and abs(t - last) <= self.cfg.group_us:
            self.outcome = "duplicate"       # another read of a crossing already closed
            return
        if t < v.clock - self.cfg.reorder_us:
            self.outcome = "ignored_late"
            return
        key = (id(run), loop)
        p = v.pending.get(key)
        if p is None:
            v.pending[key] = Pending(t, run, loop, at_m)
            if t < v.next_due:
                v.next_due = t
            self._touch(race, run)
        elif t < p.t:
            p.t = t
            if t < v.next_due:
                v.next_due = t
            self._touch(race, run)

    def _check_jump(self, v: Venue, t: int, kind: str) -> None:
        """A decoder clock leaping far ahead during a race would close every open
        crossing and suspect every skater: that message is out of contract."""
        if v.clock < 0 or t <= v.clock + self.cfg.max_jump_us:
            return
        recent = v.clock - 1_800_000_000   # a race started in the last half hour and still running
        ref = max([v.clock] + [r.gun for r in v.races if r.status == "live" and r.gun >= recent])
        if ref > v.clock or any(r.status == "live" and r.gun >= recent for r in v.races):
            if t <= ref + self.cfg.max_jump_us:
                return
            raise Rejected("bad_value", f"{kind}: t_us {t} is {(t - v.clock) / 1e6:.0f} s ahead of venue "
                                        f"{v.id}'s clock during a race (a decoder clock jump?)")

    def _prune_seqs(self, v: Venue, seqs: dict) -> None:
        horizon = v.clock - self.cfg.seq_keep_us
        for k in [k for k, tt in seqs.items() if tt < horizon]:
            del seqs[k]

    def _photo(self, msg: dict, out: list) -> None:
        race = self._race_of(msg, "photo")
        sid = msg["skater_id"]
        run = race.by_skater.get(sid)
        if run is None:
            raise Rejected("unknown_reference", f"photo: skater {sid!r} is not in race {race.d.id}")
        fin = msg["finish_us"]
        if fin <= race.gun:
            raise Rejected("bad_value", f"photo: finish_us of {sid!r} is not after the gun of {race.d.id}")
        race.photos[sid] = fin
        self._touch(race)
        comp = run.comp
        if not run.finished and (run.hist or run.lost) and comp.irm is None and not race.ended:
            # the camera saw a finish the loops missed
            run.finished = True
            run.lost = False
            run.finish_t = fin
            run.deadline = INF
            need = 3 if race.d.format == "team_pursuit" else 1
            if comp.finish_tr is None and sum(1 for x in comp.skaters if x.finished) >= need:
                comp.finish_tr = fin
        if comp.finish_tr is not None:
            self._settle_finish(race, comp, msg["t_us"], out)

    def _decision(self, msg: dict, out: list) -> None:
        rid = msg["race_id"]
        race = self.races.get(rid)
        if race is None:
            d = self.race_defs.get(rid)
            if d is None:
                raise Rejected("unknown_reference", f"decision: race {rid!r} was never set up")
            cid = msg.get("competitor_id")
            if msg["code"] in IRM_CODES and cid is not None:
                if cid not in {c["competitor_id"] for c in d.competitors}:
                    raise Rejected("unknown_reference", f"decision: competitor {cid!r} is not in race {rid}")
                # before the gun (a DNS or WDR): it applies from the start
                self.pre_irm.setdefault(rid, {})[cid] = msg["code"]
            else:
                self.outcome = "ignored_before_start"
            return
        code = msg["code"]
        t = msg["t_us"]
        self._touch(race)
        cid = msg.get("competitor_id")
        comp = None
        if cid is not None:
            comp = race.by_comp.get(cid)
            if comp is None:
                raise Rejected("unknown_reference", f"decision: competitor {cid!r} is not in race {rid}")
        if code in IRM_CODES:
            if comp.irm == code:
                self.outcome = "duplicate"
                return
            comp.irm = code
            for s in comp.skaters:
                s.deadline = INF
            self._withdraw_records(race, comp, t, out)
            self._after_change(race, t, out)
        elif code == "FALL":
            ident = (sid_ := msg.get("skater_id"), cid, t)
            if ident in race.falls_confirmed:
                self.outcome = "duplicate"
                return
            race.falls_confirmed.add(ident)
            sid = sid_
            run = None
            if sid is not None:
                run = race.by_skater.get(sid)
                if run is None or (comp is not None and run.comp is not comp):
                    raise Rejected("unknown_reference", f"decision: skater {sid!r} is not in race {rid}"
                                   + (f" for {cid!r}" if cid else ""))
                comp = run.comp
            elif len(comp.skaters) == 1:
                run = comp.skaters[0]
            if run is not None:
                if not run.suspected:
                    run.incident_n += 1
                run.suspected = False
                run.overdue = False
                run.deadline = INF
                run.confirmed_t = t   # no suspicion for the gap this fall explains
                at = run.last_d
            else:
                comp.team_incidents += 1
                at = None
            out.append(self._incident(race, comp, run, "fall", "confirmed", at, t,
                                      note=msg.get("note")))
        elif code == "OFFICIAL":
            if race.status == "official":
                self.outcome = "duplicate"
                return
            if race.status == "void":
                self.outcome = "ignored_late"
                return
            for c in race.comps:
                if c.finish_ms is None and c.irm is None:
                    c.irm = "DNF" if any(s.hist for s in c.skaters) else "DNS"
                for s in c.skaters:
                    s.deadline = INF
                    if s.suspected:
                        # the referee has spoken without confirming it
                        s.suspected = False
                        out.append(self._incident(race, c, s, "fall", "cleared", s.last_d, t,
                                                  note="not confirmed by the referee"))
            race.status = "official"
            self._retire(race)
            self._emit_result(race, t, out)
            self._emit_group(race, t, out)
        elif code == "VOID":
            if race.status == "void":
                self.outcome = "duplicate"
                return
            race.status = "void"
            self._retire(race)
            for c in race.comps:
                self._withdraw_records(race, c, t, out)
                for s in c.skaters:
                    s.deadline = INF
            self._emit_result(race, t, out)
            self._emit_group(race, t, out)

    def _retire(self, race: Race) -> None:
        """An official or void race no longer takes part in the venue's timeline
        (its pending crossings are dropped; its transponders stay known so that
        cool-down reads are counted as such)."""
        v = race.venue
        if race in v.races:
            v.races.remove(race)
        for key in [k for k, p in v.pending.items() if p.run.race is race]:
            del v.pending[key]
        self._touch(race)

    def _record_ref(self, msg: dict, out: list) -> None:
        key = (msg["record"], msg["format"], msg["gender"], msg["distance_m"], msg["scope"])
        th = parse_record_time(msg["time"])
        if msg.get("origin") == "lapstream":
            # A record this pipeline set in a race (or withdrew). At the race's own
            # venue the core derives it itself (and again on a rebuild), so it
            # only counts where that venue is not ours.
            claims = self.foreign.setdefault(key, {})
            ck = (msg.get("race_id"), msg["holder"])
            if msg.get("withdrawn"):
                if claims.pop(ck, None) is None:
                    self.outcome = "duplicate"
                return
            cur = claims.get(ck)
            if cur is not None and cur.time_h == th:
                self.outcome = "duplicate"
                return
            claims[ck] = Ref(th, fmt_hundredths(th), msg["holder"], msg.get("set_on"), msg.get("venue"),
                             msg.get("race_id"), msg["t_us"])
            return
        # The federation's word, kept with its event time: a finish is judged
        # against what was in force at the finish, whenever a reference arrives
        # (so a rebuild after a crash judges as the original run did).
        hist = self.book.setdefault(key, [])
        ref = Ref(th, fmt_hundredths(th), msg["holder"], msg.get("set_on"), msg.get("venue"), None, msg["t_us"])
        for r in hist:
            if r.t_us == ref.t_us and r.time_h == th and r.holder == ref.holder:
                self.outcome = "duplicate"
                return
        hist.append(ref)
        hist.sort(key=lambda r: r.t_us)

    def _reference(self, key: tuple, exclude: tuple | None = None, before: int | None = None) -> Ref | None:
        """The reference in force: the fastest of the book, the valid records set
        here (but ``exclude``'s own; only those set before ``before``) and those
        set at other venues; on a tie the older stands."""
        best = None
        hist = self.book.get(key)
        if hist:
            if before is None:
                best = hist[-1]
            else:
                for r in hist:   # the latest word of the federation before the finish
                    if r.t_us < before:
                        best = r
                if best is None:
                    best = hist[0]   # none that old (compacted away): the oldest known
        for ck, r in self.claims.get(key, {}).items():
            if ck != exclude and (before is None or r.t_us < before) and (best is None or r.time_h < best.time_h):
                best = r
        for r in self.foreign.get(key, {}).values():
            if (r.venue not in self.venues and (before is None or r.t_us < before)
                    and (best is None or r.time_h < best.time_h)):
                best = r
        return best

    def _race_of(self, msg: dict, kind: str) -> Race:
        rid = msg["race_id"]
        race = self.races.get(rid)
        if race is None:
            if rid in self.race_defs:
                raise Rejected("unknown_reference", f"{kind}: race {rid!r} has not started")
            raise Rejected("unknown_reference", f"{kind}: race {rid!r} was never set up")
        return race

    # -- the event-time timeline ------------------------------------------

    def _advance(self, v: Venue, t: int, out: list) -> None:
        if t - v.clock > falls.OUTAGE_GAP_US and v.clock >= 0:
            falls.venue_dark(v, v.clock, t, self.cfg.reorder_us)
        v.clock = t
        horizon = t - self.cfg.reorder_us
        if horizon > v.next_due:
            self._timeline(v, horizon, out)

    def _timeline(self, v: Venue, horizon: int, out: list) -> None:
        """Process closed crossings and fall deadlines before ``horizon`` in time order."""
        pending = v.pending
        while True:
            best_t = INF
            best_key = None
            for key, p in pending.items():
                if p.t < best_t or (p.t == best_t and _order(p.run) < _order(pending[best_key].run)):
                    best_t = p.t
                    best_key = key
            dl_t = INF
            dl_run = None
            for race in v.races:
                for c in race.comps:
                    for s in c.skaters:
                        if s.deadline < dl_t:
                            dl_t = s.deadline
                            dl_run = s
            if best_t <= dl_t and best_t < horizon:
                p = pending.pop(best_key)
                self._touch(p.run.race, p.run)
                self._crossing(p.run, p.loop, p.at_m, p.t, out)
            elif dl_t < best_t and dl_t < horizon:
                self._overdue(dl_run, int(dl_t), out)
            else:
                v.next_due = min(best_t, dl_t)
                return

    def _crossing(self, run: SkaterRun, loop: str, at_m: int, t: int, out: list) -> None:
        race = run.race
        if run.finished or run.lost or race.ended or run.comp.irm is not None:
            return
        d_race = race.d
        comp = run.comp
        last_d = run.last_d
        dt = t - run.last_t
        v = self._pace(run)
        d = self._place(run, at_m, t, last_d, run.last_t, bool(run.hist), v)
        if d is None:
            return
        run.last_cross[loop] = t
        if d > d_race.distance:
            # seen beyond the finish without a finish crossing: the finish read was missed
            run.lost = True
            run.deadline = INF
            run.incident_n += 1
            out.append(self._incident(race, comp, run, "anomaly", "suspected", last_d, t,
                                      note="finish crossing not read"))
            return
        prev_v = v
        moving = bool(run.hist)
        run.hist.append((d, t))
        run.pace = None
        run.last_d = d
        run.last_t = t
        run.split_t[d] = t
        if run.overdue:
            run.overdue = False
            if (d - last_d) / dt >= self.cfg.clear_ratio * prev_v:
                # it was only missed reads: the skater turned up at its pace
                run.suspected = False
                out.append(self._incident(race, comp, run, "fall", "cleared", d, t))
            # else it turned up late: the suspicion stays open until the referee decides
        elif moving and not falls.explained(run) and falls.lost_time(dt, d - last_d, prev_v):
            # back at its pace, but this segment lost the time a fall costs
            run.suspected = True
            run.incident_n += 1
            out.append(self._incident(race, comp, run, "fall", "suspected", last_d, t))
        team = d_race.format == "team_pursuit"
        out.append(self._split(race, comp, run, d, t, loop, "skater" if team else "comp"))
        if team:
            n = sum(1 for s in comp.skaters if d in s.split_t)
            if n == 3:
                comp.team_split[d] = t
                out.append(self._split(race, comp, None, d, t, loop, "comp"))
                self._check_caught(race, comp, d, t, out)
        elif d in d_race.sprint_at:
            if self._award(race, comp, d, d_race.sprint_at[d]):
                self._emit_result(race, t, out)
        elif d_race.final is not None and d == d_race.distance:
            before = comp.points
            self._award(race, comp, d, d_race.final)
            comp.final_points = comp.points - before
        if d == d_race.distance:
            run.finished = True
            run.finish_t = t
            run.deadline = INF
            if team:
                if sum(1 for s in comp.skaters if s.finished) == 3:
                    comp.finish_tr = t
                    self._settle_finish(race, comp, t, out)
            else:
                comp.finish_tr = t
                self._settle_finish(race, comp, t, out)
        else:
            self._set_deadline(run)

    def _place(self, run: SkaterRun, at_m: int, t: int, last_d: int, last_t: int, moving: bool,
               v: float) -> int | None:
        """The race distance of a crossing of the loop at ``at_m`` at ``t`` by a
        skater last placed at ``last_d`` at ``last_t``; None if impossible."""
        dt = t - last_t
        if dt <= 0:
            return None
        lap = run.race.venue.lap_m
        offset = (at_m - run.comp.start_m) % lap
        if moving:
            d_est = last_d + dt * v
        else:   # no crossing yet: a standing start (~2 s lost), then cruising
            d_est = max(0.0, dt - 2_000_000) * self.cfg.v_cruise_mps / 1e6
        c_min = offset if offset > last_d else offset + ((last_d - offset) // lap + 1) * lap
        j = round((d_est - c_min) / lap)
        d = c_min + (j if j > 0 else 0) * lap
        if (d - last_d) * 1e6 / dt > self.cfg.v_max_mps:
            return None  # e.g. a read on the start line just after the gun
        return d

    def _pace(self, run: SkaterRun) -> float:
        """Recent pace in metres per microsecond (over up to the last lap)."""
        v = run.pace
        if v is not None:
            return v
        hist = run.hist
        if not hist:
            v = self.cfg.v_start_mps / 1e6
        else:
            last_d, last_t = hist[-1]
            ref_d, ref_t = 0, run.race.gun
            lap = run.race.venue.lap_m
            for i in range(len(hist) - 2, -1, -1):
                d, tt = hist[i]
                if last_d - d > lap:
                    break
                ref_d, ref_t = d, tt
            if last_t <= ref_t:
                v = self.cfg.v_start_mps / 1e6
            else:
                v = (last_d - ref_d) / (last_t - ref_t)
        run.pace = v
        return v

    def _set_deadline(self, run: SkaterRun) -> None:
        """When a skater not seen at its next two loops is overdue."""
        offs = run.comp.offsets
        lap = run.race.venue.lap_m
        d = run.last_d
        nxt = []
        base = (d // lap) * lap
        while len(nxt) < 2:
            for o in offs:
                x = base + o
                if x > d and (not nxt or x > nxt[-1]):
                    nxt.append(x)
                    if len(nxt) == 2:
                        break
            base += lap
        v = self._pace(run)
        if not run.hist:
            run.deadline = INF   # not moving yet: nothing to be overdue against
            return
        dl = run.last_t + (nxt[1] - d) / v * self.cfg.fall_factor + self.cfg.fall_slack_us
        run.deadline = dl
        venue = run.race.venue
        if dl < venue.next_due:
            venue.next_due = dl

    def _overdue(self, run: SkaterRun, t: int, out: list) -> None:
        run.deadline = INF
        race = run.race
        run.overdue = True
        if run.suspected:
            return   # a suspicion for this skater is still open
        if run.confirmed_t is not None and run.confirmed_t >= run.last_t:
            return   # the referee already confirmed the fall that explains this gap
        run.suspected = True
        run.incident_n += 1
        out.append(self._incident(race, run.comp, run, "fall", "suspected", run.last_d, t))

    def _check_caught(self, race: Race, comp: CompRun, d: int, t: int, out: list) -> None:
        lap = race.venue.lap_m
        for other in race.comps:
            if other is comp or other.caught or other.finish_tr is not None or other.irm:
                continue
            gap = (other.start_m - comp.start_m) % lap
            if gap == 0:
                continue
            # the other team's trailing skater, estimated at time t
            trailing = INF
            moving = [s for s in other.skaters if s.hist and not s.finished]
            if len(moving) < 3:
                continue   # not three skaters on the track (a reserve never skates)
            for s in moving:
                trailing = min(trailing, s.last_d + (t - s.last_t) * self._pace(s))
            if d - gap >= trailing:
                other.caught = True
                out.append(self._incident(race, other, None, "caught", "confirmed", int(trailing), t,
                                          note=f"caught by {comp.id}"))

    def _reaward_final(self, race: Race) -> None:
        """Mass start: a photo revision can change who crossed the line first;
        the final points follow the effective finishing order."""
        done = sorted((c for c in race.comps if c.finish_ms is not None and c.irm is None),
                      key=lambda c: (c.finish_ms, c.order))
        pts = race.d.final
        for i, c in enumerate(done):
            new = pts[i] if i < len(pts) else 0
            c.points += new - c.final_points
            c.final_points = new

    def _award(self, race: Race, comp: CompRun, d: int, pts: list[int]) -> bool:
        """Mass start: points to the first across the line at a sprint or the finish."""
        n = race.sprint_awards.get(d, 0)
        race.sprint_awards[d] = n + 1
        if n < len(pts) and pts[n]:
            comp.points += pts[n]
            return True
        return False

    # -- finishes, records, results ---------------------------------------

    def _effective_finish(self, race: Race, comp: CompRun) -> tuple[int, str]:
        """Finish time in ms (photo over transponder) and its source."""
        if race.d.format == "team_pursuit":
            times = []
            used_photo = False
            for s in comp.skaters:
                if not s.finished:
                    continue
                ph = race.photos.get(s.id)
                if ph is not None:
                    times.append((ph, True))
                else:
                    times.append((s.finish_t, False))
            times.sort()
            t_abs, used_photo = times[2]
            return elapsed_ms(t_abs, race.gun), "photo" if used_photo else "transponder"
        run = comp.skaters[0]
        ph = race.photos.get(run.id)
        if ph is not None:
            return elapsed_ms(ph, race.gun), "photo"
        return elapsed_ms(run.finish_t, race.gun), "transponder"

    def _settle_finish(self, race: Race, comp: CompRun, t: int, out: list) -> None:
        ms, source = self._effective_finish(race, comp)
        if comp.finish_ms == ms and comp.source == source:
            return
        first = comp.finish_ms is None
        comp.finish_ms = ms
        comp.source = source
        comp.finish_rev += 1
        if first:
            comp.finish_t_us = t
            comp.prov_finish = None
            self.finish_log.append((t, race, comp))
        elif race.d.final is not None:
            self._reaward_final(race)
        rank = self._rank_in_race(race, comp)
        ev = {"kind": "finish", "v": 1,
              "event_id": event_id("finish", race.d.id, race.attempt, comp.id, comp.finish_rev),
              "race_id": race.d.id, "t_us": t, "attempt": race.attempt,
              "competitor_id": comp.id, "time_ms": ms, "time": fmt_time(ms), "rank": rank,
              "source": source, "revision": comp.finish_rev, "final": True}
        if race.d.format == "mass_start":
            ev["points"] = comp.points
        out.append(ev)
        if comp.irm is None and race.status != "void":
            self._evaluate_records(race, comp, t, out)
        if all(c.finish_ms is not None or c.irm is not None for c in race.comps) and race.status == "live":
            race.status = "unofficial"
            if race in race.venue.races:   # nobody left on the track: out of the timeline
                race.venue.races.remove(race)
        self._after_change(race, t, out)

    def _rank_in_race(self, race: Race, comp: CompRun) -> int | None:
        for e in self._ranking(race):
            if e["competitor_id"] == comp.id:
                return e["rank"]
        return None

    def _book_keys(self, race: Race, comp: CompRun):
        d = race.d
        if d.format == "mass_start":
            return
        base = (d.format, d.gender, d.distance)
        yield ("WR",) + base + (None,)
        if d.level == "OWG":
            yield ("OR",) + base + ("OWG",)
        yield ("TR",) + base + (d.venue,)
        yield ("NR",) + base + (comp.nation,)
        if d.format == "individual":
            sid = comp.skaters[0].id
            yield ("PB",) + base + (sid,)
            yield ("SB",) + base + (sid,)

    def _evaluate_records(self, race: Race, comp: CompRun, t: int, out: list) -> None:
        lost = []
        for key in self._book_keys(race, comp):
            was = comp.record_evals.get(key)
            was_broken = was is not None and was["equalled"] is False
            self._judge(race, comp, key, t, out)
            now = comp.record_evals.get(key)
            if was_broken and now["equalled"] is not False:
                lost.append(key)
        comp.records = _record_codes(comp)
        if lost:   # a revision took a record back: who else was under the reference now in force?
            self._rejudge([(k, comp.finish_t_us) for k in lost], race, t, out)

    def _judge(self, race: Race, comp: CompRun, key: tuple, t: int, out: list) -> bool:
        """Judge one finish for one record identity; True if a record event was emitted."""
        th = comp.finish_ms // 10
        me = (race.d.id, comp.id)
        ev_state = comp.record_evals.get(key)
        pr = None
        if ev_state is not None:
            # a revision: judged against the reference this finish was judged against
            prev = ev_state["prev"]
            prev_h = ev_state["prev_h"]
        else:
            pr = comp.prov_rec.pop(key, None)
            if pr is not None:   # the final judgement follows the provisional ones
                comp.rec_base[key] = pr["rev"] + 1
            prev = self._reference(key, exclude=me, before=comp.finish_t_us)
            if prev is None:
                return self._drop_provisional_record(race, comp, key, pr, t, out)
            prev_h = prev.time_h
        if th < prev_h:
            equalled = False
        elif th == prev_h:
            equalled = True
        else:
            equalled = None
        if ev_state is None and equalled is None:
            return self._drop_provisional_record(race, comp, key, pr, t, out)
        if ev_state is not None and ev_state["equalled"] == equalled and ev_state["th"] == th:
            return False
        rev = comp.rec_base.get(key, 0) if ev_state is None else ev_state["rev"] + 1
        new_state = {"prev": prev, "prev_h": prev_h, "equalled": equalled, "th": th, "rev": rev}
        comp.record_evals[key] = new_state
        self._claim(key, me, race, comp, th, equalled, t)
        out.append(self._record_event(race, comp, key, new_state, t))
        return True

    def _drop_provisional_record(self, race: Race, comp: CompRun, key: tuple, pr: dict | None,
                                 t: int, out: list) -> bool:
        """The final judgement found no record where a provisional one was published."""
        if pr is None:
            return False
        st = dict(pr, equalled=None, rev=pr["rev"] + 1)
        comp.rec_base[key] = st["rev"] + 1
        ev = self._record_event(race, comp, key, st, t)
        ev["time_ms"] = comp.finish_ms
        out.append(ev)
        return False

    def _rejudge(self, lost: list, caller: Race, t: int, out: list) -> None:
        """A record was taken back (DQ, VOID, restart, photo): the finishes after
        it that were judged against it are judged again, in event-time order,
        against the reference in force at their own finish."""
        affected = []
        for ft, race, comp in self.finish_log:
            if race.status == "void" or comp.irm is not None or self.races.get(race.d.id) is not race:
                continue
            keys = None
            for key, after in lost:
                if ft <= after or comp.record_evals.get(key) is not None:
                    continue
                if keys is None:
                    keys = set(self._book_keys(race, comp))
                if key in keys and self._judge(race, comp, key, t, out):
                    comp.records = _record_codes(comp)
                    if race is not caller and race not in affected:
                        affected.append(race)
        for race in affected:
            self._after_change(race, t, out)

    def _claim(self, key, me, race, comp, th, equalled, t) -> None:
        claims = self.claims.setdefault(key, {})
        if equalled is False:
            cur = claims.get(me)
            claims[me] = Ref(th, fmt_hundredths(th), comp.id, cur.set_on if cur else utc_date(t),
                             race.d.venue, race.d.id, comp.finish_t_us)
        else:
            claims.pop(me, None)

    def _record_event(self, race: Race, comp: CompRun, key: tuple, st: dict, t: int,
                      final: bool = True) -> dict:
        rec, fmt, gender, dist, scope = key
        prev = st["prev"]
        ev = {"kind": "record", "v": 1,
              "event_id": event_id("record", race.d.id, race.attempt, comp.id, rec, st["rev"]),
              "race_id": race.d.id, "t_us": t, "attempt": race.attempt,
              "competitor_id": comp.id, "record": rec, "equalled": bool(st["equalled"]),
              "time": fmt_hundredths(st["th"]), "previous_time": prev.time if prev else None,
              "previous_holder": prev.holder if prev else None,
              "time_ms": comp.finish_ms, "scope": scope, "format": fmt, "gender": gender,
              "distance_m": dist, "holder": comp.id, "set_on": utc_date(t), "venue": race.d.venue,
              "revision": st["rev"], "withdrawn": st["equalled"] is None, "final": final}
        return ev

    def _withdraw_records(self, race: Race, comp: CompRun, t: int, out: list) -> None:
        me = (race.d.id, comp.id)
        lost = []
        for key, st in list(comp.record_evals.items()):
            if st["equalled"] is None:
                continue
            if st["equalled"] is False:
                lost.append((key, comp.finish_t_us))
            st = dict(st, equalled=None, rev=st["rev"] + 1)
            comp.record_evals[key] = st
            self._claim(key, me, race, comp, st["th"], None, t)
            out.append(self._record_event(race, comp, key, st, t))
        comp.records = []
        if lost:
            self._rejudge(lost, race, t, out)

    def _ranking(self, race: Race, prov: dict | None = None) -> list[dict]:
        """The race's ranking; ``prov`` adds provisional finishes: comp -> (ms, points, records)."""
        if race.status == "void":
            return []
        mass = race.d.format == "mass_start"
        done = []
        for c in race.comps:
            if c.irm is not None:
                continue
            if c.finish_ms is not None:
                done.append((c, c.finish_ms, c.points, c.records))
            elif prov is not None and c in prov:
                ms, pts, recs = prov[c]
                done.append((c, ms, pts, recs))
        if mass:
            done.sort(key=lambda x: (-x[2], x[1], x[0].order))
        else:
            done.sort(key=lambda x: (x[1], x[0].order))
        out = []
        best = done[0][1] if done else None
        prev_key = None
        rank = 0
        for i, (c, ms, pts, recs) in enumerate(done):
            k = (pts, ms) if mass else ms
            if k != prev_key:
                rank = i + 1
                prev_key = k
            e = {"rank": rank, "competitor_id": c.id, "time_ms": ms,
                 "time": fmt_time(ms), "behind_ms": ms - best,
                 "irm": None, "records": list(recs), "name": c.name, "nation": c.nation}
            if mass:
                e["points"] = pts
            out.append(e)
        for c in race.comps:
            if c.irm is not None:
                e = {"rank": None, "competitor_id": c.id, "time_ms": None, "time": None,
                     "behind_ms": None, "irm": c.irm, "records": [], "name": c.name,
                     "nation": c.nation}
                if mass:
                    e["points"] = c.points
                out.append(e)
        return out

    def _after_change(self, race: Race, t: int, out: list) -> None:
        self._emit_result(race, t, out)
        self._emit_group(race, t, out)

    def _emit_result(self, race: Race, t: int, out: list) -> None:
        race.result_rev += 1
        self.result_revs[race.d.id] = race.result_rev
        out.append({"kind": "result", "v": 1,
                    "event_id": event_id("result", race.d.id, race.result_rev),
                    "race_id": race.d.id, "t_us": t, "attempt": race.attempt,
                    "status": race.status, "revision": race.result_rev,
                    "ranking": self._ranking(race), "group": race.d.group,
                    "format": race.d.format, "final": True})
        race.prov_result = None

    def _emit_group(self, race: Race, t: int, out: list) -> None:
        d = race.d
        group = d.group
        entries = []
        irms = []
        complete = True
        mass = d.format == "mass_start"
        for rid in self.groups.get(group, ()):
            r = self.races.get(rid)
            if r is None:
                complete = False
                continue
            if r.status not in ("official", "unofficial"):
                complete = False
            for e in self._ranking(r):
                e = dict(e, race_id=rid)
                (entries if e["irm"] is None else irms).append(e)
        if mass:
            entries.sort(key=lambda e: (-e["points"], e["time_ms"]))
        else:
            entries.sort(key=lambda e: e["time_ms"])
        best = entries[0]["time_ms"] if entries else None
        prev_key = None
        rank = 0
        for i, e in enumerate(entries):
            k = (e.get("points"), e["time_ms"])
            if k != prev_key:
                rank = i + 1
                prev_key = k
            e["rank"] = rank
            e["behind_ms"] = e["time_ms"] - best
        rev = self.group_rev.get(group, -1) + 1
        self.group_rev[group] = rev
        out.append({"kind": "standings", "v": 1, "event_id": event_id("standings", group, rev),
                    "t_us": t, "group": group, "ranking": entries + irms, "complete": complete,
                    "revision": rev})
        if d.places:
            self._emit_classification(d.event, t, out)

    def _emit_classification(self, event: str, t: int, out: list) -> None:
        rows = []
        complete = True
        places_seen = []
        defs = sorted((self.race_defs[rid] for rid in self.events[event]), key=lambda d: min(d.places))
        for d in defs:
            r = self.races.get(d.id)
            places_seen.extend(d.places)
            if r is None or r.status != "official":
                complete = False
            if r is None:
                continue
            # places in ranking order: tied competitors share a place; those with
            # an IRM (DNF, DQ...) take the places left, in the ranking's order
            # (DNS and WDR never skated the final: no place)
            for i, e in enumerate(self._ranking(r)):
                if e["rank"] is not None:
                    k = e["rank"] - 1
                elif e["irm"] in ("DNF", "DQ"):
                    k = i
                else:
                    k = None
                rows.append({"place": d.places[k] if k is not None and k < len(d.places) else None,
                             "competitor_id": e["competitor_id"], "race_id": d.id})
        if sorted(places_seen) != list(range(1, len(places_seen) + 1)):
            complete = False
        rows.sort(key=lambda row: (row["place"] is None, row["place"] or 0))
        rev = self.event_rev.get(event, -1) + 1
        self.event_rev[event] = rev
        out.append({"kind": "classification", "v": 1,
                    "event_id": event_id("classification", event, rev), "t_us": t,
                    "event": event, "ranking": rows, "complete": complete, "revision": rev})

    # -- event builders ----------------------------------------------------

    def _split(self, race: Race, comp: CompRun, run: SkaterRun | None, d: int, t: int,
               loop: str, level: str) -> dict:
        ms = elapsed_ms(t, race.gun)
        lap = race.venue.lap_m
        if run is not None:
            prev = run.split_t.get(d - lap)
        else:
            prev = comp.team_split.get(d - lap)
        lap_ms = ms - elapsed_ms(prev, race.gun) if prev is not None else None
        idx = race.split_idx.get((level, d))
        if idx is None:
            idx = race.split_idx[(level, d)] = []
        insort(idx, ms)
        rank = bisect_left(idx, ms) + 1
        sid = run.id if run is not None else None
        key = (comp.id, sid, d)
        pub = race.pub.get(key)
        rev = 0 if pub is None else pub.rev + 1
        behind = ms - idx[0]
        ev = split_event(race, comp.id, sid, d, t, ms, lap_ms, rank, behind, loop, rev, True)
        race.pub[key] = Pub(rev, (t, ms, lap_ms, rank, behind), True, ev)
        if pub is not None:
            race.open.pop(key, None)
        return ev

    def _incident(self, race: Race, comp: CompRun, run: SkaterRun | None, typ: str, status: str,
                  at_m, t: int, note: str | None = None) -> dict:
        sid = run.id if run is not None else None
        n = run.incident_n if run is not None else (comp.team_incidents if typ == "fall" else 1)
        rev = falls.final_revision(run, n) if status == "suspected" and typ == "fall" else 0
        ev = {"kind": "incident", "v": 1,
              "event_id": event_id("incident", race.d.id, race.attempt, comp.id, sid, typ, n, status, rev),
              "race_id": race.d.id, "t_us": int(t), "attempt": race.attempt,
              "competitor_id": comp.id, "skater_id": sid, "type": typ, "status": status,
              "at_m": at_m, "revision": rev, "final": True}
        if note:
            ev["note"] = note
        return ev


def _record_codes(comp: CompRun) -> list[str]:
    return [("=" if s["equalled"] else "") + k[0] for k, s in comp.record_evals.items()
            if s["equalled"] is not None]


def _order(run: SkaterRun) -> tuple:
    return (run.comp.order, run.id)


def _finish_loop(run: SkaterRun, v: Venue) -> str | None:
    at = (run.comp.start_m + run.race.d.distance) % v.lap_m
    for name, pos in v.loops.items():
        if pos == at:
            return name
    return None


def record_key(rec: str, fmt: str, gender: str, distance: int, scope) -> str:
    """The identity of a record (the key on ``timing.records.ref``)."""
    return f"{rec}|{fmt}|{gender}|{distance}|{'' if scope is None else scope}"


def record_ref_of(ev: dict) -> dict | None:
    """What a record event tells the other venues, as a v1 ``record_ref`` (with
    ``origin``, ``race_id`` and ``withdrawn`` added): a broken record is a new
    reference, a withdrawn one is taken back. None for an equalled record
    (the reference does not change)."""
    if ev["kind"] != "record" or (ev["equalled"] and not ev.get("withdrawn")):
        return None
    return {"kind": "record_ref", "v": 1, "t_us": ev["t_us"], "record": ev["record"],
            "format": ev["format"], "gender": ev["gender"], "distance_m": ev["distance_m"],
            "scope": ev["scope"], "time": ev["time"], "holder": ev["holder"], "set_on": ev["set_on"],
            "venue": ev["venue"], "origin": "lapstream", "race_id": ev["race_id"],
            "withdrawn": bool(ev.get("withdrawn")), "event_id": ev["event_id"]}


def own_record_key(ref: dict) -> str:
    """Key of a reference lapstream publishes: one per race and holder, so that
    compaction keeps the federation's reference (another key) and the latest
    word on each record set here."""
    return (record_key(ref["record"], ref["format"], ref["gender"], ref["distance_m"], ref["scope"])
            + f"|{ref['race_id']}|{ref['holder']}")
