"""What a broadcaster's graphics would show, built from derived events only.

``Board.apply(event)`` folds one derived event (from Kafka or from
``lapstream process``) into the view; ``Board.render()`` draws it with rich.
Kept separate from the demo's plumbing so it can be tested offline.

A fact is announced once. Its later revisions (docs/contract.md: a provisional
value, then the final one ~3 s later, often the same) are news only when
something a viewer sees changed (a time, a rank, a status...), never when only
``final``, ``revision`` or ``event_id`` did. ``apply`` says which it was.
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


@dataclass
class RaceView:
    race_id: str
    status: str = "live"
    rows: dict = field(default_factory=dict)
    result: list = field(default_factory=list)
    revision: int = -1


NEW = "new"            # a fact not seen before (or given again after it was taken back)
REVISED = "revised"    # a fact seen before, with a value a viewer sees changed
WITHDRAWN = "withdrawn"  # a record taken back


def fact(ev: dict) -> tuple[tuple, tuple] | None:
    """(identity, what a viewer sees) of a derived event, or None for a dead letter.

    The identity is the contract's "latest revision per fact" key; what a viewer
    sees leaves out ``event_id``, ``revision``, ``final`` and ``t_us``.
    """
    k = ev.get("kind")
    if k == "split":
        return ((k, ev["race_id"], ev.get("attempt"), ev["competitor_id"], ev["skater_id"], ev["distance_m"]),
                (ev["time"], ev["rank"], ev["behind_ms"], ev["lap_ms"]))
    if k == "finish":
        return ((k, ev["race_id"], ev.get("attempt"), ev["competitor_id"]),
                (ev["time"], ev["rank"], ev["source"], ev.get("points")))
    if k == "incident":
        return ((k, ev["race_id"], ev.get("attempt"), ev["competitor_id"], ev["skater_id"], ev["type"]),
                (ev["status"], ev["at_m"]))
    if k == "record":
        return ((k, ev["race_id"], ev["competitor_id"], ev["record"]),
                (bool(ev.get("withdrawn")), ev["equalled"], ev["time"], ev["previous_time"], ev["previous_holder"]))
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
        self.seen: dict[tuple, tuple] = {}   # fact identity -> what a viewer last saw of it
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
        ``REVISED``, ``WITHDRAWN``, or None when nothing they see changed (a
        provisional value made final as it was, an event delivered twice)."""
        self.events += 1
        kind = ev.get("kind")
        if kind == "deadletter":
            self.deadletters += 1
            self._alert(f"dead letter: {ev.get('error', '')[:60]}")
            return NEW
        eid = ev.get("event_id")
        if eid is not None:
            if eid in self.ids:
                return None   # delivered again (at-least-once): the same id, the same content
            self.ids.add(eid)
        ident = fact(ev)
        if ident is None:
            return NEW   # a kind this board does not draw (added to the contract later): a line only
        before = self.seen.get(ident[0])
        self.seen[ident[0]] = ident[1]
        if before is None:
            change = NEW
        elif before == ident[1]:
            change = None
        else:
            change = REVISED
        if kind == "record":
            if ev.get("withdrawn"):
                change = WITHDRAWN if change is not None else None
            elif change is not None and (before is None or before[0]):   # first seen, or given again
                change = NEW
        if kind in ("standings",):
            self.standings[ev["group"]] = ev
            return change
        if kind == "classification":
            self.classification = ev
            return change
        rv = self.race(ev["race_id"])
        if kind == "split":
            if ev["skater_id"] is not None and rv.rows.get(ev["competitor_id"]) is not None \
                    and ev["competitor_id"] != ev["skater_id"]:
                return change  # team pursuit: the board follows the team (third skater)
            if ev["skater_id"] is not None and ev["competitor_id"] != ev["skater_id"]:
                return change
            row = rv.rows.setdefault(ev["competitor_id"], Row(ev["competitor_id"]))
            row.distance_m = ev["distance_m"]
            row.time = ev["time"]
            row.rank = ev["rank"]
            row.behind_ms = ev["behind_ms"]
            row.lap_ms = ev["lap_ms"]
        elif kind == "finish":
            row = rv.rows.setdefault(ev["competitor_id"], Row(ev["competitor_id"]))
            row.finish = ev["time"]
            row.rank = ev["rank"]
            if change == REVISED:
                old_time, old_rank = before[0], before[1]
                what = [f"to {ev['time']}" + (f" (was {old_time})" if old_time != ev["time"] else "")]
                if old_rank != ev["rank"]:
                    what.append(f"rank {ev['rank'] or '-'} (was {old_rank or '-'})")
                self._alert(f"{ev['race_id']}: {ev['competitor_id']} finish revised {', '.join(what)} "
                            f"({ev['source']})")
        elif kind == "incident":
            if change is not None:
                who = ev["skater_id"] or ev["competitor_id"]
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

    # -- drawing ---------------------------------------------------------------

    def render(self, title: str = "lapstream") -> Group:
        parts = []
        rv = self.current
        if rv is not None:
            t = Table(title=f"{rv.race_id}  [{rv.status}]", expand=True)
            for col in ("rank", "competitor", "distance", "time", "behind", "last lap", "finish", "records"):
                t.add_column(col, justify="right" if col not in ("competitor", "records") else "left")
            rows = sorted(rv.rows.values(), key=lambda r: (r.irm is not None, -(r.distance_m or 0) if not r.finish else -10**9,
                                                           r.rank or 99))
            for r in rows:
                behind = "" if r.behind_ms in (None, 0) else f"+{r.behind_ms / 1000:.2f}"
                lap = "" if r.lap_ms is None else f"{r.lap_ms / 1000:.2f}"
                t.add_row(str(r.rank or "") if not r.irm else r.irm, r.competitor_id, f"{r.distance_m} m",
                          r.time, behind, lap, r.finish or "", " ".join(r.records))
            parts.append(t)
        alerts = Text("\n".join(self.alerts) or "no alerts")
        parts.append(Panel(alerts, title="falls, records, revisions"))
        if self.classification is not None:
            c = self.classification
            t = Table(title=f"classification {c['event']}" + (" (complete)" if c["complete"] else ""))
            t.add_column("place", justify="right")
            t.add_column("competitor")
            t.add_column("race")
            for r in c["ranking"]:
                t.add_row(str(r["place"] or "-"), r["competitor_id"], r["race_id"])
            parts.append(t)
        parts.append(Text(f"{self.events} events, {self.deadletters} dead letters", style="dim"))
        return Group(*parts)
