"""The gateway's state: no I/O, no clock, no Kafka (streams/gateway.py feeds it).

``GatewayState.ingest(topic, partition, offset, value)`` takes one record of a
derived topic (or a ``race``/``venue`` message of ``timing.raw``) and keeps:

- the current state: per race its set-up (from the raw ``race`` message, if
  the worker applied it: ``ingest_raw`` judges set-ups with the worker's code), the
  newest revision of every fact (result; split per competitor, skater and
  distance; finish per competitor; the latest incident in arrival order per
  competitor, skater and type;
  record per competitor and record), standings per group, classification per
  event;
- a log of the derived events in arrival order with their Kafka position, for
  the stream's resume (bounded: ``max_log`` events);
- the gateway's position: per (topic, partition) the next offset to read.

Positions and stream ids
------------------------
A stream event's ``id`` is the client's position after it: for every
(topic, partition) that the client has been sent anything from, the next
offset it has not been sent, written ``T.P.O`` (T the index of the topic in
``streams.topics.DERIVED``) and joined by ``_``, e.g. ``0.7.190_4.7.12``.
Kafka offsets are stable (a restarted gateway reads the same records at the
same offsets), so resuming from an id sends exactly the matching events at or
after each partition's offset, in whatever order the partitions interleave,
and it works across gateway restarts and behind a load balancer. A partition
absent from the id means "from its start". The snapshot's id is the gateway's
whole position when it was taken.

Revisions: the newest revision per natural key is current (``revision``
absent counts as 0; a lower revision arriving later, e.g. a worker's
re-emission after a crash, never replaces a higher one). Events whose
``event_id`` was seen already (at-least-once re-emission) change nothing and
are not streamed again.
"""
from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Optional

import orjson

from streams import topics as T
from agents.live import handle_raw
from streams.process import Processor

# Stream positions name topics by index: the derived topics, then timing.raw
# (whose ``race`` and ``venue`` set-ups are streamed too, as kinds ``race``
# and ``venue``, without transponders).
TOPIC_NAMES = tuple(t.name for t in T.DERIVED) + (T.RAW.name,)
TOPIC_INDEX = {name: i for i, name in enumerate(TOPIC_NAMES)}
RAW_INDEX = TOPIC_INDEX[T.RAW.name]
DERIVED_KINDS = ("split", "finish", "incident", "record", "result", "standings", "classification")
KINDS = DERIVED_KINDS + ("race", "venue")
SETUP_KINDS = ("venue", "race", "start")   # the raw kinds that change the gateway's view


_DIGITS = re.compile(r"[0-9]{1,19}")


class BadPosition(ValueError):
    """A Last-Event-ID that is not a position this gateway wrote."""


def encode_position(pos: dict) -> str:
    return "_".join(f"{t}.{p}.{o}" for (t, p), o in sorted(pos.items()))


def decode_position(text: str) -> dict:
    pos: dict = {}
    text = (text or "").strip()
    if not text:
        return pos
    if len(text) > 8192:
        raise BadPosition("position too long")
    for part in text.split("_"):
        bits = part.split(".")
        if len(bits) != 3 or not all(_DIGITS.fullmatch(b) for b in bits):
            raise BadPosition(f"not a stream position: {part!r}")
        t, p, o = (int(b) for b in bits)
        if t >= len(TOPIC_NAMES):
            raise BadPosition(f"unknown topic index {t}")
        pos[(t, p)] = o
    return pos


_STR = (str,)
_OPT_STR = (str, type(None))
_INT = (int,)
_LIST = (list,)
# The fields the gateway relies on, per kind (the schemas in schemas/json say
# more; an event the worker would never write is skipped, not half-applied).
_NEEDS = {
    "split": {"race_id": _STR, "competitor_id": _STR, "skater_id": _OPT_STR, "distance_m": _INT},
    "finish": {"race_id": _STR, "competitor_id": _STR},
    "incident": {"race_id": _STR, "competitor_id": _OPT_STR, "skater_id": _OPT_STR, "type": _STR,
                 "status": _STR},
    "record": {"race_id": _STR, "competitor_id": _STR, "record": _STR},
    "result": {"race_id": _STR, "status": _STR, "ranking": _LIST},
    "standings": {"group": _STR, "ranking": _LIST},
    "classification": {"event": _STR, "ranking": _LIST},
}


def well_formed(ev: dict) -> bool:
    kind = ev.get("kind")
    needs = _NEEDS.get(kind) if isinstance(kind, str) else None
    if needs is None or not isinstance(ev.get("t_us", 0), int):
        return False
    for k in ("revision", "attempt"):
        if k in ev and (not isinstance(ev[k], int) or isinstance(ev[k], bool)):
            return False
    for k, types in needs.items():
        if not isinstance(ev.get(k), types):
            return False
    if "ranking" in needs and not all(isinstance(e, dict) and isinstance(e.get("competitor_id"), str)
                                      for e in ev["ranking"]):
        return False
    return True


def rev(ev: dict) -> int:
    r = ev.get("revision")
    return r if isinstance(r, int) else 0


def event_key_of_race(meta: dict) -> Optional[str]:
    """The classification key (``event``) a race contributes to (contract)."""
    try:
        return f"{meta['competition']}-{meta['format']}-{meta['gender']}-{meta['distance_m']}"
    except KeyError:
        return None


@dataclass
class Item:
    """One derived event in the log, with where it came from."""
    topic: int
    partition: int
    offset: int
    kind: str
    event: dict
    data: bytes          # the record's value, as published
    arrived: float       # the caller's clock when it was read (fan-out latency)
    race_id: Optional[str]
    group: Optional[str]
    venue: Optional[str]
    cls_event: Optional[str]


@dataclass
class RaceState:
    race_id: str
    meta: dict = field(default_factory=dict)
    attempt: int = 1
    started_t_us: Optional[int] = None
    result: Optional[dict] = None
    splits: dict = field(default_factory=dict)      # (competitor, skater, distance) -> split
    finishes: dict = field(default_factory=dict)    # competitor -> finish
    incidents: dict = field(default_factory=dict)   # (competitor, skater, type) -> incident
    records: dict = field(default_factory=dict)     # (competitor, record) -> record
    updated_t_us: int = 0

    @property
    def status(self) -> str:
        if self.result is not None:
            return self.result["status"]
        if self.splits or self.finishes or self.started_t_us is not None:
            return "running"
        return "scheduled"

    def clear_attempt(self) -> None:
        self.splits.clear()
        self.finishes.clear()
        self.incidents.clear()
        self.records.clear()

    def summary(self) -> dict:
        m = self.meta
        return {"race_id": self.race_id, "venue": m.get("venue"), "competition": m.get("competition"),
                "format": m.get("format"), "gender": m.get("gender"), "distance_m": m.get("distance_m"),
                "group": self.group, "event": event_key_of_race(m) if m else None,
                "status": self.status, "attempt": self.attempt,
                "revision": rev(self.result) if self.result else None,
                "started_t_us": self.started_t_us, "updated_t_us": self.updated_t_us or None}

    @property
    def group(self) -> Optional[str]:
        if self.meta.get("group"):
            return self.meta["group"]
        if self.result is not None and self.result.get("group"):
            return self.result["group"]
        return self.race_id if self.meta else None

    def public_setup(self) -> dict:
        """The race message as subscribers see it: no transponders (the venue's business)."""
        meta = {k: v for k, v in self.meta.items() if k not in ("kind", "v")}
        comps = []
        for c in meta.get("competitors", ()) or ():
            if not isinstance(c, dict):
                continue
            comps.append({**{k: v for k, v in c.items() if k != "skaters"},
                          "skaters": [{k: v for k, v in s.items() if k != "transponders"}
                                      for s in c.get("skaters", ()) or () if isinstance(s, dict)]})
        if comps:
            meta["competitors"] = comps
        return meta

    def sprint_distances(self, lap_m: int = 400) -> set:
        """Mass start: the distances of the intermediate sprints (contract:
        laps 4, 8, 12 unless the race says otherwise)."""
        if self.meta.get("format") != "mass_start":
            return set()
        sprints = self.meta.get("sprints")
        laps = sprints.keys() if isinstance(sprints, dict) else ("4", "8", "12")
        out = set()
        for lap in laps:
            try:
                out.add(int(lap) * lap_m)
            except (TypeError, ValueError):
                continue
        return out

    def detail(self, lap_m: int = 400) -> dict:
        """Everything the gateway knows of the race now (REST and snapshot).
        A mass start also lists every split at an intermediate sprint
        (``sprint_splits``: who crossed first, for the sprint points)."""
        latest: dict = {}
        for (comp, skater, dist), ev in self.splits.items():
            c = latest.setdefault(comp, {"competitor_id": comp, "split": None, "skaters": {}})
            if skater is None or self.meta.get("format") != "team_pursuit":
                if c["split"] is None or dist > c["split"]["distance_m"]:
                    c["split"] = ev
            if skater is not None:
                cur = c["skaters"].get(skater)
                if cur is None or dist > cur["distance_m"]:
                    c["skaters"][skater] = ev
        return {**self.summary(), "setup": self.public_setup() or None, "result": self.result,
                "latest_splits": sorted(latest.values(), key=lambda c: c["competitor_id"]),
                "finishes": sorted(self.finishes.values(), key=lambda e: e["competitor_id"]),
                "incidents": sorted(self.incidents.values(), key=lambda e: e.get("t_us", 0)),
                "records": sorted(self.records.values(), key=lambda e: e.get("t_us", 0)),
                **self._sprint_splits(lap_m)}

    def _sprint_splits(self, lap_m: int) -> dict:
        at = self.sprint_distances(lap_m)
        if not at:
            return {}
        splits = [e for (_, _, d), e in self.splits.items() if d in at]
        splits.sort(key=lambda e: (e["distance_m"], e.get("time_ms") if isinstance(e.get("time_ms"), int) else 0))
        return {"sprint_splits": splits}


class Filter:
    """Which stream events a client wants (every given criterion must hold)."""

    def __init__(self, races=(), venues=(), groups=(), kinds=()) -> None:
        self.races = frozenset(races)
        self.venues = frozenset(venues)
        self.groups = frozenset(groups)
        self.kinds = frozenset(kinds)
        # equal filters have equal keys (the fan-out judges an event once per key)
        self.key = (self.races, self.venues, self.groups, self.kinds)
        unknown = self.kinds - set(KINDS)
        if unknown:
            raise ValueError(f"unknown kind(s): {', '.join(sorted(unknown))}")

    @classmethod
    def from_query(cls, query) -> "Filter":
        def many(name):
            out = []
            for v in query.getall(name, []) if hasattr(query, "getall") else query.get(name, []):
                out += [x for x in v.split(",") if x]
            return out
        return cls(many("race"), many("venue"), many("group"), many("kind"))

    @property
    def empty(self) -> bool:
        return not (self.races or self.venues or self.groups or self.kinds)

    def match(self, item: Item, state: "GatewayState") -> bool:
        if self.kinds and item.kind not in self.kinds:
            return False
        if self.races:
            if item.kind == "venue":
                if not (item.venue in {self_r.meta.get("venue") for rid in self.races
                                       if (self_r := state.races.get(rid)) is not None}):
                    return False
            elif item.race_id is not None:
                if item.race_id not in self.races:
                    return False
            elif not (state.keys_of_races(self.races) & {item.group, item.cls_event}):
                return False
        if self.venues:
            venues = state.venues_of(item)
            if not (venues & self.venues):
                return False
        if self.groups:
            if item.kind == "venue":
                if not any(r.group in self.groups and r.meta.get("venue") == item.venue
                           for r in state.races.values()):
                    return False
            elif item.cls_event is not None:
                if not (state.groups_of_event(item.cls_event) & self.groups):
                    return False
            elif state.group_of(item) not in self.groups:
                return False
        return True

    def match_race(self, race: RaceState, state: "GatewayState") -> bool:
        if self.races and race.race_id not in self.races:
            return False
        if self.venues and race.meta.get("venue") not in self.venues:
            return False
        if self.groups and race.group not in self.groups:
            return False
        return True


def _safe_match(flt: "Filter", item: "Item", state: "GatewayState") -> bool:
    try:
        return flt.match(item, state)
    except Exception:   # odd field types from a foreign producer: not sent
        return False


class GatewayState:
    def __init__(self, max_log: int = 200_000) -> None:
        self.venues: dict[str, dict] = {}
        self.races: dict[str, RaceState] = {}
        self.standings: dict[str, dict] = {}
        self.classifications: dict[str, dict] = {}
        self.position: dict = {}          # (topic index, partition) -> next offset
        self.log: deque[Item] = deque()
        self.max_log = max_log
        self.trimmed: dict = {}           # (topic index, partition) -> lowest offset still in the log,
                                          # for partitions the bounded log has dropped events of
        self.seen_ids: set[str] = set()
        self.duplicates = 0
        self.version = 0                  # bumps on every change (REST caches)
        self.judges: dict[int, Processor] = {}   # timing.raw partition -> the worker's decisions
        self.judged: dict[int, int] = {}         # timing.raw partition -> next offset to judge

    # -- ingest ----------------------------------------------------------------
    def race(self, race_id: str) -> RaceState:
        r = self.races.get(race_id)
        if r is None:
            r = self.races[race_id] = RaceState(race_id)
        return r

    def judge(self, partition: int) -> Processor:
        """The worker's decisions for one partition of timing.raw: the very
        processor the worker runs (decoder, clock guard, core), fed the same
        records in the same order."""
        proc = self.judges.get(partition)
        if proc is None:
            proc = self.judges[partition] = Processor()
        return proc

    def ingest_raw(self, value: bytes, partition: int = 0, offset: int = 0,
                   arrived: float = 0.0) -> Optional[Item]:
        """A record of timing.raw: keeps the ``venue`` and ``race`` set-ups
        (streamed as kinds ``venue`` and ``race``) and the starts that the
        worker applies, and nothing the worker refuses or ignores.

        Every record goes through the partition's ``judge``, a
        ``streams.process.Processor`` like the worker's (through the live
        adapter's own entry, ``agents.live.handle_raw``): a set-up changes the
        view only when that processor applied it (outcome ``applied``), so a
        ``start`` the worker dead-letters (``stale_feed``, ``race_released``,
        ``unknown_reference``), a repeated one (``duplicate``) or a new start
        list of a running race (``ignored_late``) changes nothing here either.
        Set-ups are never held by the clock guard: the decision is known at
        the record itself. Records at an offset already judged are skipped."""
        if offset < self.judged.get(partition, 0):
            return None   # read again: judged already (the core is not idempotent)
        self.judged[partition] = offset + 1
        if not value:
            return None   # a null value, a tombstone (the worker refuses it: no state change)
        proc = self.judge(partition)
        handle_raw(proc, value, offset)
        msg = proc.msg
        if msg is None or proc.outcome != "applied":
            return None   # refused, held, a duplicate, ignored
        kind = msg["kind"]
        if kind not in SETUP_KINDS:
            return None
        item = None
        try:
            if kind == "venue":
                v = {k: msg.get(k) for k in ("venue", "name", "lap_m", "loops")}
                self.venues[msg["venue"]] = v
                item = Item(RAW_INDEX, partition, offset, "venue", {"kind": "venue", **v},
                            orjson.dumps({"kind": "venue", **v}), arrived, None, None, msg["venue"], None)
            elif kind == "race":
                r = self.race(msg["race_id"])
                r.meta = orjson.loads(value)   # (its own copy: the core keeps the decoded one)
                setup = {"kind": "race", **r.public_setup()}
                item = Item(RAW_INDEX, partition, offset, "race", setup, orjson.dumps(setup), arrived,
                            msg["race_id"], r.group, msg.get("venue"), None)
            else:   # start: the core applied it, so its race was set up and its attempt is new
                r = self.race(msg["race_id"])
                attempt = msg.get("attempt") if isinstance(msg.get("attempt"), int) else 1
                if attempt > r.attempt:
                    r.attempt = attempt
                    r.clear_attempt()
                if attempt >= r.attempt:
                    r.started_t_us = msg.get("t_us")
        except (TypeError, AttributeError, ValueError):   # (a decoded set-up has what is read; belt and braces)
            return None
        self.version += 1
        if item is not None:
            tp = (RAW_INDEX, partition)
            self.position[tp] = max(self.position.get(tp, 0), offset + 1)
            self._log(item)
        return item

    def ingest(self, topic: str, partition: int, offset: int, value: bytes,
               arrived: float = 0.0) -> Optional[Item]:
        """One record of a derived topic. Returns the log item to stream, or
        None (not JSON, a duplicate event id, a dead letter)."""
        t = TOPIC_INDEX[topic]
        tp = (t, partition)
        self.position[tp] = max(self.position.get(tp, 0), offset + 1)
        try:
            ev = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(ev, dict) or not well_formed(ev):
            return None
        eid = ev.get("event_id")
        if isinstance(eid, str) and eid in self.seen_ids:
            self.duplicates += 1
            return None
        try:
            item = self._apply(t, partition, offset, ev, value, arrived)
        except (KeyError, TypeError, AttributeError, ValueError):
            return None
        if item is None:
            return None
        if isinstance(eid, str):      # forgotten with the item when the log drops it
            self.seen_ids.add(eid)
        self.version += 1
        self._log(item)
        return item

    def _log(self, item: Item) -> None:
        self.log.append(item)
        while len(self.log) > self.max_log:
            old = self.log.popleft()
            self.trimmed[(old.topic, old.partition)] = old.offset + 1
            if isinstance(old.event.get("event_id"), str):
                self.seen_ids.discard(old.event["event_id"])

    def _apply(self, t, partition, offset, ev, value, arrived) -> Optional[Item]:
        kind = ev["kind"]
        race_id = ev.get("race_id") if isinstance(ev.get("race_id"), str) else None
        group = None
        cls_event = None
        if kind == "standings":
            group = ev["group"]
            cur = self.standings.get(group)
            if cur is None or rev(ev) >= rev(cur):
                self.standings[group] = ev
        elif kind == "classification":
            cls_event = ev["event"]
            cur = self.classifications.get(cls_event)
            if cur is None or rev(ev) >= rev(cur):
                self.classifications[cls_event] = ev
        elif race_id is not None and kind in KINDS:
            r = self.race(race_id)
            attempt = ev.get("attempt") if isinstance(ev.get("attempt"), int) else r.attempt
            if attempt > r.attempt:
                r.attempt = attempt
                r.clear_attempt()
            current = attempt >= r.attempt
            r.updated_t_us = max(r.updated_t_us, ev.get("t_us") or 0)
            if kind == "split" and current:
                self._newest(r.splits, (ev["competitor_id"], ev.get("skater_id"), ev["distance_m"]), ev)
            elif kind == "finish" and current:
                self._newest(r.finishes, ev["competitor_id"], ev)
            elif kind == "incident" and current:
                # the latest in arrival order (docs/contract.md): a revision 0 is
                # the skater's next incident, a higher one the current one's next state
                r.incidents[(ev.get("competitor_id"), ev.get("skater_id"), ev.get("type"))] = ev
            elif kind == "record" and current:
                self._newest(r.records, (ev["competitor_id"], ev["record"]), ev)
            elif kind == "result":
                if r.result is None or rev(ev) >= rev(r.result) or attempt > r.result.get("attempt", 1):
                    r.result = ev
            group = r.group
        else:
            return None
        venue = None
        if race_id is not None and race_id in self.races:
            venue = self.races[race_id].meta.get("venue")
        return Item(t, partition, offset, kind, ev, value, arrived, race_id, group, venue, cls_event)

    @staticmethod
    def _newest(table: dict, key, ev: dict) -> None:
        cur = table.get(key)
        if cur is None or rev(ev) >= rev(cur):
            table[key] = ev

    # -- lookups used by filters ---------------------------------------------------
    def keys_of_races(self, races: Iterable[str]) -> set:
        out = set()
        for rid in races:
            r = self.races.get(rid)
            if r is None:
                continue
            out.add(r.group)
            if r.meta:
                out.add(event_key_of_race(r.meta))
        out.discard(None)
        return out

    def group_of(self, item: Item) -> Optional[str]:
        if item.group is not None:
            return item.group
        if item.race_id is not None and item.race_id in self.races:
            return self.races[item.race_id].group
        return None

    def groups_of_event(self, cls_event: str) -> set:
        return {r.group for r in self.races.values() if r.meta and event_key_of_race(r.meta) == cls_event}

    def venues_of(self, item: Item) -> set:
        if item.kind == "venue":
            return {item.venue}
        if item.race_id is not None:
            r = self.races.get(item.race_id)
            return {r.meta.get("venue")} if r is not None and r.meta else set()
        out = set()
        for r in self.races.values():
            if not r.meta:
                continue
            if (item.group is not None and r.group == item.group) or \
                    (item.cls_event is not None and event_key_of_race(r.meta) == item.cls_event):
                out.add(r.meta.get("venue"))
        return out

    # -- views -----------------------------------------------------------------------
    def race_detail(self, r: RaceState) -> dict:
        v = self.venues.get(r.meta.get("venue")) or {}
        lap = v.get("lap_m") if isinstance(v.get("lap_m"), int) and v.get("lap_m") > 0 else 400
        return r.detail(lap)

    def race_list(self, flt: Optional[Filter] = None) -> list[dict]:
        rs = [r for r in self.races.values() if flt is None or flt.match_race(r, self)]
        return [r.summary() for r in sorted(rs, key=lambda r: (r.started_t_us or r.updated_t_us or 0, r.race_id))]

    def snapshot(self, flt: Filter) -> dict:
        races = [r for r in self.races.values() if flt.match_race(r, self)]
        races.sort(key=lambda r: (r.started_t_us or r.updated_t_us or 0, r.race_id))
        keys = set()
        for r in races:
            keys.add(r.group)
            if r.meta:
                keys.add(event_key_of_race(r.meta))
        everything = not (flt.races or flt.venues or flt.groups)
        standings = [s for g, s in sorted(self.standings.items()) if everything or g in keys]
        classes = [c for e, c in sorted(self.classifications.items()) if everything or e in keys]
        return {"kind": "snapshot", "position": encode_position(self.position),
                "venues": [v for k, v in sorted(self.venues.items())
                           if not flt.venues or k in flt.venues],
                "races": [self.race_detail(r) for r in races], "standings": standings,
                "classifications": classes}

    def backlog(self, pos: dict, flt: Filter) -> Optional[list[Item]]:
        """The matching logged events at or after ``pos``; None when some of
        them are no longer in the log (the client must start again from a
        snapshot)."""
        for tp, low in self.trimmed.items():
            if pos.get(tp, 0) < low:
                return None
        return [it for it in self.log
                if it.offset >= pos.get((it.topic, it.partition), 0) and _safe_match(flt, it, self)]
