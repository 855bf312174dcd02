"""What a broadcaster's graphics would show, built from derived events only.

``Board.apply(event)`` folds one derived event (from Kafka or from
``lapstream process``) into the view; ``Board.render()`` draws it with rich.
Kept separate from the demo's plumbing so it can be tested offline.
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

    def apply(self, ev: dict) -> None:
        self.events += 1
        kind = ev.get("kind")
        if kind == "deadletter":
            self.deadletters += 1
            self._alert(f"dead letter: {ev.get('error', '')[:60]}")
            return
        if kind in ("standings",):
            self.standings[ev["group"]] = ev
            return
        if kind == "classification":
            self.classification = ev
            return
        rv = self.race(ev["race_id"])
        if kind == "split":
            if ev["skater_id"] is not None and rv.rows.get(ev["competitor_id"]) is not None \
                    and ev["competitor_id"] != ev["skater_id"]:
                return  # team pursuit: the board follows the team (third skater)
            if ev["skater_id"] is not None and ev["competitor_id"] != ev["skater_id"]:
                return
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
            if ev["revision"] > 0:
                self._alert(f"{ev['race_id']}: {ev['competitor_id']} finish revised to {ev['time']} ({ev['source']})")
        elif kind == "incident":
            who = ev["skater_id"] or ev["competitor_id"]
            self._alert(f"{ev['race_id']}: {ev['type'].upper()} {ev['status']} - {who} at {ev['at_m']} m")
        elif kind == "record":
            if ev.get("withdrawn"):
                self._alert(f"{ev['race_id']}: {ev['record']} by {ev['competitor_id']} withdrawn")
            else:
                verb = "equalled" if ev["equalled"] else "NEW"
                self._alert(f"{ev['race_id']}: {verb} {ev['record']} {ev['time']} by {ev['competitor_id']} "
                            f"(was {ev['previous_time']}, {ev['previous_holder']})")
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
