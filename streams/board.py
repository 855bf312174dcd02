"""What a broadcaster's graphics would show, built from derived events only.

``Board.apply(event)`` folds one derived event (from Kafka or from
``lapstream process``) into the view; ``Board.render()`` draws it with rich.
Kept separate from the demo's plumbing so it can be tested offline.

A fact is announced once. Its later revisions (docs/contract.md: a provisional
value, then the final one ~3 s later, often the same) are news only when
something a viewer sees changed (a time, a rank, a status...), never when only
``final``, ``revision`` or ``event_id`` did. ``apply`` says which it was.

A split, finish, incident or record with ``"withdrawn": true`` takes the fact
back (docs/contract.md): that is news, the row stops showing it, and a later
value of the same fact is shown again as new. Incidents follow the contract's
state too: per race, competitor, skater and type the latest that arrived is in
force, and a ``revision`` 0 is the skater's next incident.

An event the board cannot read (a field it draws missing or of the wrong type)
changes nothing but a counter and one alert: ``apply`` says ``UNREADABLE`` and
``problem`` why; neither ``apply``, ``render`` nor the demo's line raises.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text


@dataclass
class Row:
    competitor_id: str
    distance_m: int = 0
    time: str = ""
    rank: int | None = None
    behind_ms: int | None = None
    lap_ms: int | None = None
    finish: str | None = None
    irm: str | None = None
    records: list = field(default_factory=list)
    points: int | None = None
    splits: dict = field(default_factory=dict, repr=False)   # distance -> the split in force there


@dataclass
class RaceView:
    race_id: str
    status: str = "live"
    rows: dict = field(default_factory=dict)
    result: list = field(default_factory=list)
    revision: int = -1
    incidents: dict = field(default_factory=dict)   # (competitor, skater, type) -> the incident in force


NEW = "new"            # a fact not seen before (or given again after it was taken back)
REVISED = "revised"    # a fact seen before, with a value a viewer sees changed
WITHDRAWN = "withdrawn"  # a split, finish, incident or record taken back ("withdrawn": true)
UNREADABLE = "unreadable"  # an event the board cannot read: counted and said, nothing else changes

WITHDRAWABLE = ("split", "finish", "incident", "record")


def _str(v) -> bool:
    return isinstance(v, str)


def _opt_str(v) -> bool:
    return v is None or isinstance(v, str)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _opt_int(v) -> bool:
    return v is None or _int(v)


def _opt_num(v) -> bool:
    return v is None or _int(v) or isinstance(v, float)


def _bool(v) -> bool:
    return isinstance(v, bool)


def _list(v) -> bool:
    return isinstance(v, list)


def _strs(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _anything(v) -> bool:
    return True


_WHAT = {_str: "a string", _opt_str: "a string or null", _int: "an integer", _opt_int: "an integer or null",
         _opt_num: "a number or null", _bool: "true or false", _list: "a list", _strs: "a list of strings"}

# What the board and the demo's lines read of each kind: required fields, then
# fields that may be absent (they must have the right type when present).
_NEEDS = {
    "split": {"race_id": _str, "competitor_id": _str, "skater_id": _opt_str, "distance_m": _int,
              "time": _str, "rank": _opt_int, "behind_ms": _opt_int, "lap_ms": _opt_int},
    "finish": {"race_id": _str, "competitor_id": _str, "time": _str, "rank": _opt_int, "source": _str},
    "incident": {"race_id": _str, "competitor_id": _opt_str, "skater_id": _opt_str, "type": _str,
                 "status": _str, "at_m": _opt_num},
    "record": {"race_id": _str, "competitor_id": _str, "record": _str, "equalled": _bool, "time": _str,
               "previous_time": _opt_str, "previous_holder": _opt_str},
    "result": {"race_id": _str, "status": _str, "revision": _int, "ranking": _list},
    "standings": {"group": _str, "ranking": _list},
    "classification": {"event": _str, "ranking": _list},
}
_MAY = {"event_id": _str, "revision": _int, "attempt": _opt_int, "withdrawn": _bool, "points": _opt_int}
_ENTRY_NEEDS = {
    "result": {"rank": _opt_int, "competitor_id": _str, "time": _opt_str, "irm": _opt_str, "records": _strs},
    "standings": {"competitor_id": _str},
    "classification": {"place": _opt_int, "competitor_id": _str, "race_id": _str},
}
_ENTRY_MAY = {"rank": _opt_int, "time": _opt_str, "irm": _opt_str, "points": _opt_int}


def _bad_fields(obj: dict, needs: dict, may: dict) -> str | None:
    for name, ok in needs.items():
        if name not in obj:
            return f"no {name}"
        if not ok(obj[name]):
            return f"{name} is not {_WHAT[ok]}"
    for name, ok in may.items():
        if name in obj and name not in needs and not ok(obj[name]):
            return f"{name} is not {_WHAT[ok]}"
    return None


def problem(ev) -> str | None:
    """Why the board cannot read ``ev`` (one short phrase), or None when it can.

    A kind the board does not draw is readable (a line only); so is a dead
    letter. The demo's own ``{"kind": "unreadable", "error": ...}`` (a record
    that is not a JSON object) is not, for the reason it carries."""
    if not isinstance(ev, dict):
        return "not a JSON object"
    kind = ev.get("kind")
    if not isinstance(kind, str):
        return "no kind" if kind is None else "kind is not a string"
    if kind == "unreadable":
        return str(ev.get("error") or "unreadable")[:200]
    if kind == "deadletter":
        return None
    if "event_id" in ev and not _str(ev["event_id"]):
        return f"{kind[:40]}: event_id is not a string"
    needs = _NEEDS.get(kind)
    if needs is None:
        return None
    bad = _bad_fields(ev, needs, _MAY)
    if bad is None and kind in _ENTRY_NEEDS:
        for i, e in enumerate(ev["ranking"]):
            if not isinstance(e, dict):
                bad = f"ranking[{i}] is not an object"
            else:
                bad = _bad_fields(e, _ENTRY_NEEDS[kind], _ENTRY_MAY)
                bad = None if bad is None else f"ranking[{i}]: {bad}"
            if bad is not None:
                break
    return None if bad is None else f"{kind}: {bad}"


def fact(ev: dict) -> tuple[tuple, tuple] | None:
    """(identity, what a viewer sees) of a readable derived event (``problem`` is
    None), or None for a kind the board does not draw.

    The identity is the contract's "latest revision per fact" key (it does not
    name the attempt: revisions go on across a restart; for incidents it is the
    race, competitor, skater and type, the incident's number being the order of
    arrival); what a viewer sees leaves out ``event_id``, ``revision``,
    ``final``, ``t_us`` and ``withdrawn`` (``apply`` reads that apart).
    """
    k = ev.get("kind")
    if k == "split":
        return ((k, ev["race_id"], ev["competitor_id"], ev["skater_id"], ev["distance_m"]),
                (ev["time"], ev["rank"], ev["behind_ms"], ev["lap_ms"]))
    if k == "finish":
        return ((k, ev["race_id"], ev["competitor_id"]),
                (ev["time"], ev["rank"], ev["source"], ev.get("points")))
    if k == "incident":
        return ((k, ev["race_id"], ev["competitor_id"], ev["skater_id"], ev["type"]),
                (ev["status"], ev["at_m"]))
    if k == "record":
        return ((k, ev["race_id"], ev["competitor_id"], ev["record"]),
                (ev["equalled"], ev["time"], ev["previous_time"], ev["previous_holder"]))
    if k == "result":
        return ((k, ev["race_id"]),
                (ev.get("attempt"), ev["status"], tuple(   # as drawn: no behind_ms (the splits' is)
                    (e["rank"], e["competitor_id"], e["time"], e["irm"],
                     tuple(e["records"]), e.get("points")) for e in ev["ranking"])))
    if k == "standings":
        return ((k, ev["group"]),
                (ev.get("complete"), tuple((e.get("rank"), e["competitor_id"], e.get("time"), e.get("irm"),
                                            e.get("points")) for e in ev["ranking"])))
    if k == "classification":
        return ((k, ev["event"]),
                (ev.get("complete"), tuple((r["place"], r["competitor_id"], r["race_id"]) for r in ev["ranking"])))
    return None


class Board:
    def __init__(self, max_alerts: int = 8) -> None:
        self.races: dict[str, RaceView] = {}
        self.order: list[str] = []
        self.alerts: list[str] = []
        self.max_alerts = max_alerts
        self.standings: dict[str, dict] = {}
        self.classification: dict | None = None
        self.events = 0
        self.deadletters = 0
        self.unreadable = 0
        self.seen: dict[tuple, tuple] = {}   # fact identity -> (withdrawn, what a viewer last saw of it)
        self.ids: set[str] = set()           # event ids applied

    def race(self, rid: str) -> RaceView:
        rv = self.races.get(rid)
        if rv is None:
            rv = self.races[rid] = RaceView(rid)
            self.order.append(rid)
        return rv

    @property
    def current(self) -> RaceView | None:
        return self.races[self.order[-1]] if self.order else None

    def _alert(self, text: str) -> None:
        self.alerts.append(text)
        del self.alerts[:-self.max_alerts]

    def apply(self, ev: dict) -> str | None:
        """Fold one event into the view. Returns what a viewer sees of it: ``NEW``,
        ``REVISED``, ``WITHDRAWN``, ``UNREADABLE`` (``problem`` says why; nothing
        else changed), or None when nothing they see changed (a provisional value
        made final as it was, a withdrawal said already, an event delivered twice)."""
        self.events += 1
        why = problem(ev)
        if why is not None:
            self.unreadable += 1
            self._alert(f"unreadable event: {why[:80]}")
            return UNREADABLE
        kind = ev["kind"]
        if kind == "deadletter":
            self.deadletters += 1
            self._alert(f"dead letter: {str(ev.get('error', ''))[:60]}")
            return NEW
        eid = ev.get("event_id")
        if eid is not None:
            if eid in self.ids:
                return None   # delivered again (at-least-once): the same id, the same content
            self.ids.add(eid)
        ident = fact(ev)
        if ident is None:
            return NEW   # a kind this board does not draw (added to the contract later): a line only
        key, shown = ident
        gone = kind in WITHDRAWABLE and bool(ev.get("withdrawn"))
        before = self.seen.get(key)
        self.seen[key] = (gone, shown)
        if gone:    # taken back: news once (a second withdrawal of it is not)
            change = None if before is not None and before[0] else WITHDRAWN
        elif before is None or before[0]:   # first seen, or given again after it was taken back
            change = NEW
        elif kind == "incident" and ev.get("revision", 0) == 0:
            change = NEW   # the skater's next incident (a second fall), whatever it shows
        else:
            change = None if before[1] == shown else REVISED
        if kind == "standings":
            self.standings[ev["group"]] = ev
            return change
        if kind == "classification":
            self.classification = ev
            return change
        rv = self.race(ev["race_id"])
        if kind == "split":
            self._split(rv, ev, gone)
        elif kind == "finish":
            self._finish(rv, ev, gone, change, before)
        elif kind == "incident":
            who = ev["skater_id"] or ev["competitor_id"]
            ikey = (ev["competitor_id"], ev["skater_id"], ev["type"])
            if gone:
                rv.incidents.pop(ikey, None)
            else:
                rv.incidents[ikey] = ev
            if change == WITHDRAWN:
                self._alert(f"{ev['race_id']}: {ev['type'].upper()} {ev['status']} - {who} at {ev['at_m']} m "
                            f"taken back")
            elif change is not None:
                self._alert(f"{ev['race_id']}: {ev['type'].upper()} {ev['status']} - {who} at {ev['at_m']} m")
        elif kind == "record":
            if change == WITHDRAWN:
                self._alert(f"{ev['race_id']}: {ev['record']} {ev['time']} by {ev['competitor_id']} taken back")
            elif change is not None:
                verb = "equalled" if ev["equalled"] else "NEW"
                again = " (revised)" if change == REVISED else ""
                self._alert(f"{ev['race_id']}: {verb} {ev['record']} {ev['time']} by {ev['competitor_id']} "
                            f"(was {ev['previous_time']}, {ev['previous_holder']}){again}")
        elif kind == "result":
            if ev["revision"] >= rv.revision:
                rv.revision = ev["revision"]
                rv.status = ev["status"]
                rv.result = ev["ranking"]
                for e in ev["ranking"]:
                    row = rv.rows.setdefault(e["competitor_id"], Row(e["competitor_id"]))
                    row.irm = e["irm"]
                    row.records = e["records"]
                    row.points = e.get("points")
                    if e["rank"] is not None:
                        row.rank = e["rank"]
        return change

    @staticmethod
    def _split(rv: RaceView, ev: dict, gone: bool) -> None:
        if ev["skater_id"] is not None and ev["competitor_id"] != ev["skater_id"]:
            return   # team pursuit: the board follows the team, not each of its skaters
        cid, d = ev["competitor_id"], ev["distance_m"]
        if gone:
            row = rv.rows.get(cid)
            if row is None:
                return
            row.splits.pop(d, None)
            if row.distance_m == d:   # the split shown is taken back: the one before it in force, or none
                top = row.splits[max(row.splits)] if row.splits else None
                row.distance_m = top["distance_m"] if top else 0
                row.time = top["time"] if top else ""
                row.behind_ms = top["behind_ms"] if top else None
                row.lap_ms = top["lap_ms"] if top else None
                if row.finish is None:
                    row.rank = top["rank"] if top else None
            return
        row = rv.rows.setdefault(cid, Row(cid))
        row.splits[d] = ev
        row.distance_m = d
        row.time = ev["time"]
        row.rank = ev["rank"]
        row.behind_ms = ev["behind_ms"]
        row.lap_ms = ev["lap_ms"]

    def _finish(self, rv: RaceView, ev: dict, gone: bool, change: str | None, before: tuple | None) -> None:
        cid = ev["competitor_id"]
        if gone:
            row = rv.rows.get(cid)
            if row is not None:   # back to the split it showed before finishing (its rank too)
                row.finish = None
                top = row.splits.get(row.distance_m)
                row.rank = top["rank"] if top else None
            if change == WITHDRAWN:
                self._alert(f"{ev['race_id']}: {cid} finish {ev['time']} withdrawn")
            return
        row = rv.rows.setdefault(cid, Row(cid))
        row.finish = ev["time"]
        row.rank = ev["rank"]
        if change == REVISED:
            old_time, old_rank = before[1][0], before[1][1]
            what = [f"to {ev['time']}" + (f" (was {old_time})" if old_time != ev["time"] else "")]
            if old_rank != ev["rank"]:
                what.append(f"rank {ev['rank'] or '-'} (was {old_rank or '-'})")
            self._alert(f"{ev['race_id']}: {cid} finish revised {', '.join(what)} ({ev['source']})")

    # -- drawing ---------------------------------------------------------------

    def render(self, title: str = "lapstream") -> Group:
        """The view, every text from the events as text (``Text``), never as rich
        markup: "[official]" shows, and a "[/x]" in an id cannot break the drawing."""
        parts = []
        rv = self.current
        if rv is not None:
            t = Table(title=Text(f"{rv.race_id}  [{rv.status}]"), expand=True)
            for col in ("rank", "competitor", "distance", "time", "behind", "last lap", "finish", "records"):
                t.add_column(col, justify="right" if col not in ("competitor", "records") else "left")
            rows = sorted(rv.rows.values(), key=lambda r: (r.irm is not None, -(r.distance_m or 0) if not r.finish else -10**9,
                                                           r.rank or 99))
            for r in rows:
                behind = "" if r.behind_ms in (None, 0) else f"+{r.behind_ms / 1000:.2f}"
                lap = "" if r.lap_ms is None else f"{r.lap_ms / 1000:.2f}"
                notes = list(r.records) + [f"{i['type'].upper()} {i['status']}" for (cid, _, _), i
                                           in rv.incidents.items() if cid == r.competitor_id
                                           and i["status"] != "cleared"]
                t.add_row(*(Text(x) for x in (str(r.rank or "") if not r.irm else r.irm, r.competitor_id,
                                              f"{r.distance_m} m", r.time, behind, lap, r.finish or "",
                                              " ".join(notes))))
            parts.append(t)
        alerts = Text("\n".join(self.alerts) or "no alerts")
        parts.append(Panel(alerts, title="falls, records, revisions"))
        if self.classification is not None:
            c = self.classification
            t = Table(title=Text(f"classification {c['event']}" + (" (complete)" if c.get("complete") else "")))
            t.add_column("place", justify="right")
            t.add_column("competitor")
            t.add_column("race")
            for r in c["ranking"]:
                t.add_row(Text(str(r["place"] or "-")), Text(r["competitor_id"]), Text(r["race_id"]))
            parts.append(t)
        unreadable = f", {self.unreadable} unreadable" if self.unreadable else ""
        parts.append(Text(f"{self.events} events, {self.deadletters} dead letters{unreadable}", style="dim"))
        return Group(*parts)
