"""The timing core: raw v1 messages in, derived v1 events out.

Pure: no I/O, no clock reads, no framework. ``Engine.apply(msg)`` takes one
decoded raw message (see ``schemas.decode``) and returns the derived events
it causes, in emission order. It raises ``Rejected`` for a message that
refers to something unknown (the caller dead-letters it).

The ``Engine`` holds the state and dispatches; each rule family has its
module: ``window`` (reads, the reordering window, the event-time timeline),
``tracking`` (a closed crossing placed on the race distance: splits, a
finish, a team caught), ``falls``, ``mass_start``, ``records``, ``results``
(finishes, rankings, results), ``standings`` (standings, classifications),
``provisional`` and ``live_finish`` (what an open crossing says at its first
read), ``events`` (event builders), ``referee`` (the referee's decisions:
IRM, FALL, OFFICIAL, VOID), ``model`` (the state; ``model_records``,
``model_kept``) and ``config``. The engine itself orchestrates what touches
several: start lists, a start (and a
restart), a race retired from the timeline.
"""
from __future__ import annotations

from typing import Callable

from schemas.decode import Rejected

from . import falls, provisional, records, records_rejudge, referee, results, retention, window
from .config import CoreConfig
from .falls import OUTAGE_GAP_US
from .model import CompRun, Outcome, Race, RaceDef, SkaterRun, Venue
from .model_kept import Kept
from .model_records import Ref
from .record_keys import (encode_own_key, own_record_key, own_ref_update, parse_own_record_key, record_key,
                      record_ref_of)

__all__ = ["CoreConfig", "Engine", "Outcome", "encode_own_key", "own_record_key", "own_ref_update",
           "parse_own_record_key", "record_key", "record_ref_of"]

Handler = Callable[["Engine", dict, list], None]
# Engine.outcome holds the plain string of an Outcome (equal to the member, and the
# same metric label): a StrEnum member hashes through a Python-level slot, which
# made the (kind, outcome) stats key cost ~1 us a message. A module constant: an
# Enum member lookup costs ~0.2 us.
APPLIED: str = Outcome.APPLIED.value


def _race_order(r: Race) -> tuple[str, int]:
    return (r.d.id, r.attempt)


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
        # record identities whose references changed since the last raw message -> since when
        # (None: any time); judged again at the next one (``records_rejudge``), and the
        # events of that judging when the message was refused (they go out with the next)
        self.rejudge_due: dict[tuple, int | None] = {}
        self.rejudge_carried: list[dict] = []
        self.groups: dict[str, list[str]] = {}
        self.group_rev: dict[str, int] = {}
        self.events: dict[str, list[str]] = {}
        self.event_rev: dict[str, int] = {}
        self.outcome: str = APPLIED   # the value of an Outcome
        # races whose provisional events need a refresh: the skaters touched (None: all)
        self.dirty: dict[Race, set[SkaterRun] | None] = {}
        self.kept = Kept()   # released races, their release queue, standings state (retention.py)
        self.max_jump_us = self.cfg.max_jump_us
        self.reorder_us = self.cfg.reorder_us
        self._handlers: dict[str, Handler] = {
            "passing": window.passing,
            "heartbeat": window.heartbeat,
            "venue": Engine._venue,
            "race": Engine._race,
            "start": Engine._start,
            "photo": results.photo,
            "decision": referee.decision,
            "record_ref": records.record_ref,
        }
        # messages per kind and outcome (``stats``); every pair there is, at 0,
        # so that counting one is two lookups of a string
        outcomes = [o.value for o in Outcome] + ["deadlettered"]
        self._counts: dict[str, dict[str, int]] = {k: dict.fromkeys(outcomes, 0)
                                                   for k in (*self._handlers, "unknown")}
        self.beats = self._counts["heartbeat"]   # (fastpath.beat counts there)

    # -- entry points ------------------------------------------------------

    def apply(self, msg: dict) -> list[dict]:
        """Apply one decoded raw message; return the derived events."""
        out: list[dict] = []
        self.outcome = APPLIED
        kind = msg["kind"]
        if kind == "heartbeat" and not self.rejudge_due:
            # two thirds of a feed: a beat that closes nothing, inline (what
            # ``window.heartbeat`` does then); anything else takes the full path
            v = self.venues.get(msg["venue"])
            if v is not None:
                t = msg["t_us"]
                clock = v.clock
                if t <= clock + self.max_jump_us and (
                        t <= clock or (clock >= 0 and t - clock <= OUTAGE_GAP_US
                                       and t - self.reorder_us <= v.next_due)):
                    hb = v.hb
                    src = msg["source"]
                    if t > hb.get(src, -1):
                        hb[src] = t
                    if t > clock:
                        v.clock = t
                    if self.dirty:
                        self._refresh(out)
                    self._counts["heartbeat"][APPLIED] += 1
                    if t >= self.kept.release_at:
                        retention.sweep(self)
                    return out
        if self.rejudge_due and kind != "record_ref":
            # references changed since the last raw message: the finishes they
            # touch are judged again first (this message is judged after them);
            # if it is refused, what that published goes out with the next one
            records_rejudge.run_due(self, msg["t_us"], out)
            n = len(out)
            try:
                self._dispatch(kind, msg, out)
            except Exception:
                records_rejudge.carry(self, out[:n])
                raise
        else:
            self._dispatch(kind, msg, out)
        if self.dirty:
            self._refresh(out)
        try:
            self._counts[kind][self.outcome] += 1
        except KeyError:   # pragma: no cover - every kind and outcome is there
            per = self._counts.setdefault(kind, {})
            per[self.outcome] = per.get(self.outcome, 0) + 1
        if msg["t_us"] >= self.kept.release_at:
            retention.sweep(self)
        return out

    def _dispatch(self, kind: str, msg: dict, out: list) -> None:
        if kind in retention.RACE_KINDS and msg["race_id"] in self.kept.released:
            retention.late(self, msg)   # a duplicate, or a dead letter
        else:
            self._handlers[kind](self, msg, out)

    def count_rejected(self, kind: str, n: int = 1) -> None:
        per = self._counts[kind if kind in self._handlers else "unknown"]
        per["deadlettered"] += n

    @property
    def stats(self) -> dict[tuple[str, str], int]:
        """Messages counted, per (kind, outcome) (the labels of a metric): a copy."""
        return {(k, o): n for k, per in self._counts.items() for o, n in per.items() if n}

    def flush(self) -> list[dict]:
        """End of a recorded feed: no later read can come, close every crossing."""
        out: list[dict] = []
        if self.rejudge_due:
            records_rejudge.run_due(self, max((v.clock for v in self.venues.values()), default=0), out)
        for v in self.venues.values():
            if v.clock >= 0:
                window.timeline(self, v, v.clock + 1, out)
                window.flush_photos(self, v, out)
        if self.dirty:
            self._refresh(out)
        return out

    def venue_clock(self, venue: str) -> int:
        v = self.venues.get(venue)
        return v.clock if v else -1

    def active_races(self) -> int:
        return sum(1 for r in self.races.values() if not r.ended)

    # -- provisional events ------------------------------------------------

    def _refresh(self, out: list) -> None:
        dirty = self.dirty
        self.dirty = {}
        if len(dirty) == 1:   # the common case: nothing to sort
            for race, runs in dirty.items():
                provisional.refresh(self, race, runs, out)
            return
        for race in sorted(dirty, key=_race_order):
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

    # -- set-up: venues, start lists, starts ---------------------------------

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
            self.outcome = Outcome.IGNORED_LATE.value   # a started race's start list no longer changes
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
            self.outcome = Outcome.DUPLICATE.value
            return
        venue = self.venues[d.venue]
        t = msg["t_us"]
        race = Race(d, attempt, t, venue, self.result_revs.get(rid, -1))
        if old is not None:
            self._retire(old)
        for cid, code in self.pre_irm.get(rid, {}).items():
            if cid in race.by_comp:
                race.by_comp[cid].irm = code
        self.races[rid] = race
        retention.started(self, race)
        venue.races.append(race)
        for c in race.comps:
            for s in c.skaters:
                for tp in s.transponders:
                    venue.transponders[tp] = s
        if old is not None:   # a restart: tell subscribers the recalled attempt is gone
            self.dirty.pop(old, None)
            provisional.withdraw_attempt(old, out)
            falls.clear_all(old, t, "attempt discarded by a restart", out)
            for c in old.comps:
                records.withdraw_records(self, old, c, t, out)
            race.continue_revisions(old)
            results.after_change(self, race, t, out)

    def _retire(self, race: Race) -> None:
        """A race that is official, void or restarted no longer takes part in the
        venue's timeline (its open crossings are dropped; its transponders stay
        known so that cool-down reads are counted as such)."""
        v = race.venue
        if race in v.races:
            v.races.remove(race)
        for key in [k for k, p in v.pending.items() if p.run.race is race]:
            del v.pending[key]
        self._touch(race)
        retention.ended(self, race)

    def _race_of(self, msg: dict, kind: str) -> Race:
        rid = msg["race_id"]
        race = self.races.get(rid)
        if race is None:
            if rid in self.race_defs:
                raise Rejected("unknown_reference", f"{kind}: race {rid!r} has not started")
            raise Rejected("unknown_reference", f"{kind}: race {rid!r} was never set up")
        return race
