"""``lapstream demo`` and its terminal board: a fact announced once, lines in event-time
order, an end of its own, nothing left behind (processes, temporary directories)."""
from __future__ import annotations

import argparse
import io
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import beijing
from streams.board import NEW, REVISED, UNREADABLE, WITHDRAWN, Board, problem
from streams.demo import GIVE_UP_S, QUIET_S, TimeOrder, _line, exits_when_done, expected_official, settled
from streams.process import process_lines
from tests.test_revisions_restart import feed   # a 1000 m race recalled, then started again

REPO = Path(__file__).resolve().parents[1]
FINAL_A = beijing.FEEDS_DIR / beijing.FINAL_A_FILE


def finish(rev: int, final: bool, time_s: str = "2:53.44", rank: int = 1, source: str = "transponder") -> dict:
    return {"kind": "finish", "v": 1, "event_id": f"f{rev}", "race_id": "R1", "t_us": 1_000_000, "attempt": 1,
            "competitor_id": "CAN", "time_ms": 173445, "time": time_s, "rank": rank, "source": source,
            "revision": rev, "final": final}


def record(rev: int, final: bool, withdrawn: bool = False, time_s: str = "2:53.44") -> dict:
    return {"kind": "record", "v": 1, "event_id": f"r{rev}", "race_id": "R1", "t_us": 1_000_000, "attempt": 1,
            "competitor_id": "CAN", "record": "OR", "equalled": False, "time": time_s, "previous_time": "2:53.61",
            "previous_holder": "JPN", "revision": rev, "withdrawn": withdrawn, "final": final}


def incident(rev: int, final: bool, status: str = "suspected", at_m: int = 2300, withdrawn: bool = False,
             eid: str | None = None) -> dict:
    ev = {"kind": "incident", "v": 1, "event_id": eid or f"i{rev}", "race_id": "R1", "t_us": 2_000_000,
          "attempt": 1, "competitor_id": "JPN", "skater_id": "JPN-TAKAGI-N", "type": "fall", "status": status,
          "at_m": at_m, "revision": rev, "final": final}
    if withdrawn:
        ev["withdrawn"] = True
    return ev


def split(rev: int, d: int, time_s: str, rank: int = 1, withdrawn: bool = False, final: bool = False,
          cid: str = "CAN") -> dict:
    ev = {"kind": "split", "v": 1, "event_id": f"{cid}{d}-{rev}", "race_id": "R1", "t_us": 1_000_000 + d,
          "attempt": 1, "competitor_id": cid, "skater_id": None, "distance_m": d, "time_ms": 1000,
          "time": time_s, "lap_ms": None, "rank": rank, "behind_ms": 0, "loop": "inner", "revision": rev,
          "final": final}
    if withdrawn:
        ev["withdrawn"] = True
    return ev


def withdrawn(ev: dict, rev: int, final: bool = True) -> dict:
    """The next revision of ``ev`` taken back, as the core publishes it (agents/core/events.withdrawn)."""
    return {**ev, "event_id": f"{ev['event_id']}-w{rev}", "revision": rev, "withdrawn": True, "final": final}


def drawn(board: Board) -> str:
    out = io.StringIO()
    Console(file=out, width=160, color_system=None).print(board.render())
    return out.getvalue()


def table_row(board: Board, cid: str) -> str:
    """The current race's table row of ``cid`` as drawn ("" when it has none)."""
    rows = [ln for ln in drawn(board).splitlines() if any(c.strip() == cid for c in ln.split("│"))]
    assert len(rows) <= 1
    return rows[0] if rows else ""


# ---------------------------------------------------------------- the board: a fact once

def test_a_provisional_finish_made_final_with_the_same_values_is_one_fact():
    board = Board()
    assert board.apply(finish(0, False)) == NEW
    assert board.apply(finish(1, True)) is None      # only final / revision / event_id changed
    assert board.alerts == []
    assert board.current.rows["CAN"].finish == "2:53.44"


def test_a_finish_whose_time_changed_is_revised():
    board = Board()
    board.apply(finish(0, False))
    assert board.apply(finish(1, True, time_s="2:53.47", source="photo")) == REVISED
    assert board.alerts == ["R1: CAN finish revised to 2:53.47 (was 2:53.44) (photo)"]
    assert board.current.rows["CAN"].finish == "2:53.47"
    assert "(revised)" in _line(finish(1, True, time_s="2:53.47"), REVISED)


def test_a_finish_whose_rank_changed_is_revised():
    board = Board()
    board.apply(finish(0, False))
    assert board.apply(finish(1, True, rank=2)) == REVISED
    assert board.alerts == ["R1: CAN finish revised to 2:53.44, rank 2 (was 1) (transponder)"]


def test_a_record_and_an_incident_are_announced_once():
    board = Board()
    assert board.apply(record(0, False)) == NEW
    assert board.apply(record(1, True)) is None
    assert board.apply(incident(0, False)) == NEW
    assert board.apply(incident(1, True)) is None
    assert board.apply(incident(2, True, status="confirmed", at_m=2400)) == REVISED
    assert board.alerts == ["R1: NEW OR 2:53.44 by CAN (was 2:53.61, JPN)",
                            "R1: FALL suspected - JPN-TAKAGI-N at 2300 m",
                            "R1: FALL confirmed - JPN-TAKAGI-N at 2400 m"]


def test_a_withdrawn_record_is_shown_as_taken_back_and_a_new_award_as_new():
    board = Board()
    board.apply(record(0, False))
    assert board.apply(record(1, True, withdrawn=True)) == WITHDRAWN
    assert board.alerts[-1] == "R1: OR 2:53.44 by CAN taken back"
    assert _line(record(1, True, withdrawn=True), WITHDRAWN).endswith("taken back")
    assert board.apply(record(2, True, withdrawn=True)) is None     # taken back once
    assert board.apply(record(3, True)) == NEW                       # given again
    assert board.alerts[-1].startswith("R1: NEW OR 2:53.44 by CAN")


def test_an_event_delivered_twice_is_news_once():
    board = Board()
    ev = finish(0, False)
    assert board.apply(ev) == NEW
    assert board.apply(dict(ev)) is None          # at-least-once: the same id, the same content
    assert board.apply(finish(1, True, time_s="2:53.47")) == REVISED
    assert board.apply(finish(0, False)) is None   # the earlier revision again changes nothing
    assert board.current.rows["CAN"].finish == "2:53.47"


def test_a_result_is_news_when_its_status_or_ranking_changes_not_its_revision():
    def result(rev, status, behind):
        return {"kind": "result", "v": 1, "event_id": f"res{rev}", "race_id": "R1", "t_us": 1, "attempt": 1,
                "status": status, "revision": rev, "final": rev > 0,
                "ranking": [{"rank": 1, "competitor_id": "POL", "time_ms": 182050, "time": "3:02.05",
                             "behind_ms": 0, "irm": None, "records": []},
                            {"rank": 2, "competitor_id": "BLR", "time_ms": 182890, "time": "3:02.89",
                             "behind_ms": behind, "irm": None, "records": []}]}
    board = Board()
    assert board.apply(result(0, "live", 834)) == NEW
    assert board.apply(result(1, "live", 833)) is None       # a gap the board does not draw
    assert board.apply(result(2, "official", 833)) == REVISED
    assert board.current.status == "official"
    assert _line(result(2, "official", 833), REVISED).startswith("result   R1 [official] 1. POL 3:02.05")


def test_a_kind_the_board_does_not_draw_is_a_line_not_a_crash():
    board = Board()
    assert board.apply({"kind": "lap_chart", "v": 1, "event_id": "x1", "t_us": 1}) == NEW
    assert board.current is None and board.events == 1
    assert _line({"kind": "lap_chart"}, NEW).startswith("lap_chart")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["2:53.44", "2:53.45", "2:54.00"]), st.integers(1, 3),
                          st.sampled_from(["transponder", "photo"]), st.booleans()), min_size=1, max_size=12))
def test_revised_is_said_exactly_when_a_value_shown_changes(revisions):
    board = Board()
    changes = [board.apply(finish(i, final, t, rank, src)) for i, (t, rank, src, final) in enumerate(revisions)]
    shown = [(t, rank, src) for t, rank, src, _ in revisions]
    expected = [NEW] + [REVISED if shown[i] != shown[i - 1] else None for i in range(1, len(shown))]
    assert changes == expected
    assert len(board.alerts) == min(board.max_alerts, sum(c == REVISED for c in changes))
    assert all("revised" in a for a in board.alerts)


def test_the_beijing_final_is_announced_without_repeats():
    board = Board(max_alerts=100)
    lines = []
    for ev in process_lines(FINAL_A.read_bytes().splitlines()):
        change = board.apply(ev)
        if change is not None:
            lines.append(_line(ev, change))
    assert board.alerts == ["OWG2022-TPW-FA: NEW OR 2:53.44 by CAN (was 2:53.61, JPN)",
                            "OWG2022-TPW-FA: FALL suspected - JPN-TAKAGI-N at 2300 m",
                            "OWG2022-TPW-FA: FALL confirmed - JPN-TAKAGI-N at 2400 m"]
    assert sum(ln.startswith("FINISH") for ln in lines) == 2
    assert sum(ln.startswith("RECORD") for ln in lines) == 1
    assert len(lines) == len(set(lines))          # no line printed twice
    assert [ln for ln in lines if ln.startswith("result")][-1].startswith("result   OWG2022-TPW-FA [official]")


# ---------------------------------------------------------------- withdrawals: taken back, then shown again

def test_a_withdrawn_provisional_finish_leaves_the_row_and_comes_back_as_new():
    board = Board()
    first = finish(0, False, time_s="34.00")
    assert board.apply(first) == NEW
    assert board.current.rows["CAN"].finish == "34.00" and board.current.rows["CAN"].rank == 1
    gone = withdrawn(first, 1)
    assert board.apply(gone) == WITHDRAWN
    row = board.current.rows["CAN"]
    assert row.finish is None and row.rank is None
    assert board.alerts[-1] == "R1: CAN finish 34.00 withdrawn"
    assert _line(gone, WITHDRAWN).startswith("FINISH   R1 CAN") and _line(gone, WITHDRAWN).endswith(" withdrawn")
    assert table_row(board, "CAN") and "34.00" not in table_row(board, "CAN")
    assert board.apply(withdrawn(first, 2)) is None               # taken back once
    assert board.apply(finish(3, True, time_s="34.10")) == NEW    # a later value shows again
    assert board.current.rows["CAN"].finish == "34.10" and board.current.rows["CAN"].rank == 1
    assert "34.10" in table_row(board, "CAN")


def test_a_withdrawn_finish_gives_the_row_back_its_split_and_its_rank():
    board = Board()
    board.apply(split(0, 2400, "2:50.00", rank=3))
    board.apply(finish(0, False, rank=1))
    assert board.apply(withdrawn(finish(0, False, rank=1), 1)) == WITHDRAWN
    row = board.current.rows["CAN"]
    assert (row.finish, row.rank, row.distance_m, row.time) == (None, 3, 2400, "2:50.00")


def test_a_withdrawn_split_gives_the_row_the_split_before_it_or_none():
    board = Board()
    s200, s600 = split(0, 200, "19.50", rank=2), split(0, 600, "45.10", rank=1)
    board.apply(s200)
    board.apply(s600)
    gone = withdrawn(s600, 1, final=False)
    assert board.apply(gone) == WITHDRAWN
    row = board.current.rows["CAN"]
    assert (row.distance_m, row.time, row.rank) == (200, "19.50", 2)
    assert _line(gone, WITHDRAWN).endswith(" withdrawn") and "45.10" in _line(gone, WITHDRAWN)
    assert board.apply(withdrawn(s600, 2, final=True)) is None     # its final withdrawal: said already
    assert board.apply(withdrawn(s200, 1)) == WITHDRAWN            # a restart takes back the rest
    row = board.current.rows["CAN"]
    assert (row.distance_m, row.time, row.rank, row.behind_ms) == (0, "", None, None)
    assert board.apply(split(3, 600, "45.20", rank=1)) == NEW      # the new attempt's revision goes on
    assert (row.distance_m, row.time) == (600, "45.20")


def test_a_withdrawn_suspicion_is_taken_back_and_a_new_one_announced():
    board = Board()
    board.apply(split(0, 2000, "2:20.00", cid="JPN"))                 # the team's row
    assert board.apply(incident(0, False)) == NEW
    assert "FALL suspected" in table_row(board, "JPN")
    gone = incident(1, True, withdrawn=True)
    assert board.apply(gone) == WITHDRAWN
    assert board.alerts[-1] == "R1: FALL suspected - JPN-TAKAGI-N at 2300 m taken back"
    assert _line(gone, WITHDRAWN).endswith("at 2300 m taken back")
    assert board.current.incidents == {} and "FALL" not in table_row(board, "JPN")
    assert board.apply(incident(2, False, at_m=2400)) == NEW       # raised again: its next revision
    assert board.alerts[-1] == "R1: FALL suspected - JPN-TAKAGI-N at 2400 m"
    assert board.apply(incident(3, True, status="confirmed", at_m=2400)) == REVISED
    assert "FALL confirmed" in table_row(board, "JPN")
    # the skater's next incident starts at revision 0 again: news, even where it shows the same
    assert board.apply(incident(0, False, status="confirmed", at_m=2400, eid="i0-second")) == NEW
    assert board.apply(incident(0, False, eid="i0-second")) is None   # delivered twice


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([200, 600, 1000]), st.sampled_from(["a", "b"]), st.booleans()),
                min_size=1, max_size=20))
def test_the_row_never_shows_a_split_taken_back(steps):
    board = Board()
    state: dict[int, tuple] = {}      # distance -> (withdrawn, time): the latest word on each split
    for rev, (d, t, gone) in enumerate(steps):
        before = state.get(d)
        change = board.apply(split(rev, d, f"{d}.{t}", withdrawn=gone))
        state[d] = (gone, f"{d}.{t}")
        if gone:
            assert change == (None if before is not None and before[0] else WITHDRAWN)
        elif before is None or before[0]:
            assert change == NEW
        else:
            assert change == (None if before[1] == f"{d}.{t}" else REVISED)
        in_force = {dd: tt for dd, (g, tt) in state.items() if not g}
        row = board.current.rows.get("CAN")
        if row is None:
            assert not in_force
        elif not in_force:
            assert (row.distance_m, row.time, row.rank) == (0, "", None)
        else:
            assert in_force.get(row.distance_m) == row.time


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recall_s=st.integers(min_value=15, max_value=50), seed=st.integers(min_value=0, max_value=10_000))
def test_after_a_restart_the_board_shows_none_of_the_recalled_attempt(recall_s, seed):
    events = list(process_lines(feed(recall_s, recall_s + 60, seed)))
    assert any(e.get("withdrawn") for e in events)
    board = Board()
    latest: dict[tuple, dict] = {}    # (competitor, distance) -> the latest word on the team's/skater's split
    for e in events:
        change = board.apply(e)
        if e["kind"] == "split" and (e["skater_id"] is None or e["skater_id"] == e["competitor_id"]):
            latest[(e["competitor_id"], e["distance_m"])] = e
            if e.get("withdrawn"):
                assert change in (WITHDRAWN, None)
        for cid, row in board.races["R1"].rows.items() if "R1" in board.races else ():
            shown = latest.get((cid, row.distance_m))
            if row.distance_m:
                assert shown is not None and not shown.get("withdrawn") and shown["time"] == row.time
        if e["kind"] == "result" and e.get("attempt") == 2 and not e["ranking"]:   # the restart announced
            assert all(not r.distance_m and r.finish is None for r in board.races["R1"].rows.values())
    assert board.races["R1"].status in ("official", "live", "provisional")
    assert all(r.distance_m == 1000 or r.irm for r in board.races["R1"].rows.values())


# ---------------------------------------------------------------- events the board cannot read

def test_a_split_without_race_id_or_a_result_without_status_is_one_unreadable_line():
    board = Board()
    for bad, why in (({"kind": "split"}, "split: no race_id"),
                     ({**finish(0, False), "time": None}, "finish: time is not a string"),
                     ({"kind": "result", "v": 1, "race_id": "R1", "revision": 0, "ranking": []},
                      "result: no status")):
        assert board.apply(bad) == UNREADABLE
        assert problem(bad) == why
        assert _line(bad, UNREADABLE) == f"unreadable event: {why}"
        assert board.alerts[-1] == f"unreadable event: {why}"
    assert board.unreadable == 3 and board.races == {} and board.ids == set()
    assert "3 events, 0 dead letters, 3 unreadable" in drawn(board)
    assert board.apply(finish(0, False)) == NEW                    # and it goes on


def test_the_board_draws_text_from_events_as_text_not_markup():
    board = Board()
    board.apply(split(0, 200, "[/x]", cid="[/b]"))
    board.apply({**incident(0, False), "competitor_id": "[/b]", "type": "[/t]"})
    board.apply({"kind": "result", "v": 1, "event_id": "res", "race_id": "R1", "status": "official", "revision": 0,
                 "ranking": []})
    out = drawn(board)
    assert "R1  [official]" in out and "[/x]" in table_row(board, "[/b]") and "[/T] suspected" in out


def test_every_event_of_the_beijing_final_is_readable():
    events = list(process_lines(FINAL_A.read_bytes().splitlines()))
    assert [e for e in events if problem(e) is not None] == []


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64) | st.floats(allow_nan=False,
                                                                                         allow_infinity=False)
                    | st.text(max_size=8) | st.sampled_from(["[/b]", "[bold]", "[", "]"]),   # not markup
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=3),
                    max_leaves=8)
KINDS = st.sampled_from(["split", "finish", "incident", "record", "result", "standings", "classification",
                         "deadletter", "unreadable", "lap_chart"]) | JSON
FIELDS = ["race_id", "competitor_id", "skater_id", "distance_m", "time", "rank", "behind_ms", "lap_ms", "source",
          "points", "type", "status", "at_m", "record", "equalled", "previous_time", "previous_holder", "revision",
          "ranking", "group", "event", "complete", "withdrawn", "event_id", "attempt", "t_us", "error"]
ANY_OBJECT = st.builds(lambda kind, fields, extra: {**extra, **fields, "kind": kind}, KINDS,
                       st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=8),
                       st.dictionaries(st.text(max_size=8), JSON, max_size=3)) | st.dictionaries(st.text(max_size=8),
                                                                                                JSON, max_size=5)
_REAL: list[dict] = []


def real_events() -> list[dict]:
    if not _REAL:
        _REAL.extend(process_lines(FINAL_A.read_bytes().splitlines()))
        _REAL.extend([withdrawn(finish(0, False), 1), incident(1, True, withdrawn=True),
                      withdrawn(split(0, 200, "19.50"), 1)])
    return _REAL


@st.composite
def damaged_real_event(draw) -> dict:
    """A real derived event with some fields removed or given another JSON value (a ranking entry's too)."""
    by_kind: dict[str, list] = {}
    for e in real_events():
        by_kind.setdefault(e["kind"], []).append(e)
    ev = dict(draw(st.sampled_from(sorted(by_kind)).flatmap(lambda k: st.sampled_from(by_kind[k]))))
    for name in draw(st.lists(st.sampled_from(sorted(ev)), max_size=3)):
        if draw(st.booleans()):
            ev.pop(name, None)
        else:
            ev[name] = draw(JSON)
    if isinstance(ev.get("ranking"), list) and ev["ranking"] and draw(st.booleans()):
        i = draw(st.integers(0, len(ev["ranking"]) - 1))
        entry = dict(ev["ranking"][i]) if isinstance(ev["ranking"][i], dict) else {}
        name = draw(st.sampled_from(sorted(entry) or ["rank"]))
        if draw(st.booleans()):
            entry.pop(name, None)
        else:
            entry[name] = draw(JSON)
        ev["ranking"] = [*ev["ranking"][:i], entry, *ev["ranking"][i + 1:]]
    return ev


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ANY_OBJECT | damaged_real_event(), min_size=1, max_size=12))
def test_the_board_and_its_lines_never_raise_on_any_json_object(events):
    board = Board()
    order = TimeOrder(hold_s=1.0)
    for n, ev in enumerate(events):
        order.add(ev, now=float(n))
        change = board.apply(ev)
        assert change in (NEW, REVISED, WITHDRAWN, UNREADABLE, None)
        line = _line(ev, change)
        assert isinstance(line, str) and line
        if problem(ev) is not None:
            assert change == UNREADABLE and line.startswith("unreadable event: ")
    drawn(board)
    assert len(order.due(0.0, flush=True)) == len(events)
    assert board.events == len(events)


# ---------------------------------------------------------------- lines in event-time order

def ev(kind: str, t: int, n: int, race: str = "R1") -> dict:
    return {"kind": kind, "race_id": race, "t_us": t, "n": n}


def test_lines_follow_t_us_across_topics():
    order = TimeOrder(hold_s=1.0)
    for n, t in enumerate([10, 20, 30, 40]):        # every split first, as the consumer hands them over
        order.add(ev("split", t, n), now=100.0)
    order.add(ev("result", 15, 4), now=100.5)
    order.add(ev("finish", 35, 5), now=100.6)
    assert order.due(100.9) == []                   # nothing has waited its hold yet
    assert [e["t_us"] for e in order.due(101.0)] == [10, 15, 20, 30, 35, 40]
    assert order.due(10**6, flush=True) == []     # nothing left waiting


def test_an_event_waits_its_hold_at_most_and_a_flush_empties_the_queue():
    order = TimeOrder(hold_s=1.0)
    order.add(ev("split", 50, 0), now=0.0)
    order.add(ev("split", 60, 1), now=0.8)
    assert [e["n"] for e in order.due(1.0)] == [0]  # the first is due; the second still waits
    order.add(ev("result", 55, 2), now=1.1)         # came too late to go before t 50: next, then
    assert [e["n"] for e in order.due(1.1, flush=True)] == [2, 1]


def test_one_race_keeps_its_order_whatever_the_t_us():
    order = TimeOrder(hold_s=1.0)
    order.add(ev("finish", 100, 0), now=0.0)
    order.add(ev("finish", 90, 1), now=0.0)         # a revision of the same race with an earlier t_us
    order.add(ev("split", 95, 2), now=0.0)
    order.add({"kind": "deadletter", "error": "bad input"}, now=0.0)   # no t_us: where it came
    assert [e.get("n") for e in order.due(5.0)] == [2, 0, 1, None]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["split", "finish", "result"]), st.sampled_from(["R1", "R2"]),
                          st.integers(0, 50)), max_size=30))
def test_reordering_never_swaps_two_events_of_one_key(events):
    order = TimeOrder(hold_s=1.0)
    for n, (kind, race, t) in enumerate(events):
        order.add(ev(kind, t, n, race), now=0.0)
    out = order.due(0.0, flush=True)
    assert sorted(e["n"] for e in out) == list(range(len(events)))
    for key in {(k, r) for k, r, _ in events}:
        ns = [e["n"] for e in out if (e["kind"], e["race_id"]) == key]
        assert ns == sorted(ns)


# ---------------------------------------------------------------- when the demo ends

def test_the_demo_ends_by_itself_unless_asked_to_stay():
    def a(**kw):
        return argparse.Namespace(**{"stay": False, "exit_when_done": False, "web": False, **kw})
    assert exits_when_done(a()) is True
    assert exits_when_done(a(stay=True)) is False
    assert exits_when_done(a(web=True)) is False                        # serving the page
    assert exits_when_done(a(web=True, exit_when_done=True)) is True


def test_done_when_the_feed_races_are_official_and_nothing_comes():
    board = Board()
    for e in process_lines(FINAL_A.read_bytes().splitlines()):
        board.apply(e)
    races = expected_official(FINAL_A.read_bytes().splitlines())
    assert races == {"OWG2022-TPW-FA"}
    assert settled(board, {"replayed": False, "last": 0.0}, races, now=1000.0) is None
    assert settled(board, {"replayed": True, "last": 0.0}, races, now=QUIET_S / 2) is None
    assert settled(board, {"replayed": True, "last": 0.0}, races, now=QUIET_S) == "official"
    # a race the feed makes official but the board does not show so yet: wait, then give up
    unfinished = Board()
    assert settled(unfinished, {"replayed": True, "last": 0.0}, races, now=QUIET_S) is None
    assert settled(unfinished, {"replayed": True, "last": 0.0}, races, now=GIVE_UP_S) == "quiet"
    assert settled(unfinished, {"replayed": True, "last": 0.0}, set(), now=GIVE_UP_S) == "quiet"


def test_the_races_a_feed_makes_official():
    lines = [b'{"kind":"decision","v":1,"t_us":1,"race_id":"A","code":"OFFICIAL"}',
             b'{"kind":"decision","v":1,"t_us":2,"race_id":"B","code":"VOID"}',
             b'{"kind":"decision","v":1,"t_us":3,"race_id":"C","competitor_id":"X","code":"DQ"}',
             b'{"kind":"decision" broken', b'["decision"]', b'{"kind":"decision","code":"OFFICIAL","race_id":7}']
    assert expected_official(lines) == {"A", "B"}


def _no_official(lines: list[bytes]) -> list[bytes]:
    """A feed without its OFFICIAL / VOID decisions: races set up and started, never decided."""
    return [ln for ln in lines if not (b'"decision"' in ln and (b'"OFFICIAL"' in ln or b'"VOID"' in ln))]


race_ids = st.text(st.characters(min_codepoint=65, max_codepoint=90), min_size=1, max_size=4)


@settings(max_examples=200, deadline=None)
@given(races=st.dictionaries(race_ids, st.tuples(st.booleans(), st.booleans(), st.booleans()), max_size=6),
       order=st.randoms(use_true_random=False))
def test_a_race_set_up_and_started_is_expected_official(races, order):
    """README: a feed that never makes its race official ends after 20 s naming it: the
    races expected are those the feed makes official or void, and those it sets up and starts."""
    lines = []
    for rid, (set_up, started, decided) in races.items():
        if set_up:
            lines.append(b'{"kind":"race","v":1,"t_us":1,"race_id":"%s","competitors":[]}' % rid.encode())
        if started:
            lines.append(b'{"kind":"start","v":1,"t_us":2,"venue":"NSO","race_id":"%s","attempt":1}' % rid.encode())
        if decided:
            lines.append(b'{"kind":"decision","v":1,"t_us":3,"race_id":"%s","code":"OFFICIAL"}' % rid.encode())
    lines.append(b'{"kind":"race" broken')
    order.shuffle(lines)
    want = {rid for rid, (set_up, started, decided) in races.items() if decided or (set_up and started)}
    assert expected_official(lines) == want


def test_a_feed_that_never_makes_its_race_official_is_not_done_until_it_gives_up():
    lines = _no_official(FINAL_A.read_bytes().splitlines())
    board = Board()
    for e in process_lines(lines):
        board.apply(e)
    races = expected_official(lines)
    assert races == {"OWG2022-TPW-FA"}     # before the fix: none, and the demo passed for done
    assert settled(board, {"replayed": True, "last": 0.0}, races, now=QUIET_S) is None
    assert settled(board, {"replayed": True, "last": 0.0}, races, now=GIVE_UP_S) == "quiet"


def test_no_stray_kill_file_in_the_repository():
    """demo3.kill (a timestamp) was committed at the root by mistake; nothing writes *.kill."""
    assert not list(REPO.glob("*.kill"))
    r = subprocess.run(["git", "ls-files", "*.kill", "**/*.kill"], cwd=REPO, capture_output=True, text=True)
    if r.returncode == 0:   # (a git checkout)
        assert r.stdout == ""


def test_help_says_when_the_demo_ends():
    r = subprocess.run([sys.executable, "-m", "streams.cli", "demo", "--help"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"})
    assert r.returncode == 0
    assert "ends by itself (exit 0)" in r.stdout and "--stay" in r.stdout and "pipe" in r.stdout


def test_a_demo_that_fails_leaves_no_temporary_directory(cli, free_port, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = cli("demo", "--plain", "--broker", f"kafka://127.0.0.1:{free_port}", "--http-port", "0",
            env={"TMPDIR": str(tmp)})
    assert r.returncode == 1 and "cannot reach the Kafka broker" in r.stderr
    assert list(tmp.iterdir()) == []


# ---------------------------------------------------------------- live: the README's command

def _started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None if it is gone
    (a zombie counts as gone: it holds no port and runs nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()   # after "pid (comm) ": state, ppid, ...
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _tree(root: int) -> dict[int, int]:
    """The processes below ``root`` now: pid -> start time (a pid reused later is another process)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parent[int(d.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found, todo = {}, [root]
    while todo:
        p = todo.pop()
        for child, pp in parent.items():
            if pp == p and child not in found:
                started = _started(child)
                if started is not None:
                    found[child] = started
                    todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Demo:
    """``lapstream demo ARGS`` for a live test: its output read by a thread into a
    queue, so every wait has a deadline even when the demo hangs without a word;
    its child processes (broker, worker...) noted while it runs, so the test can
    tell they are gone without asking about ports another process may own now."""

    def __init__(self, args: list[str], tmp: Path) -> None:
        self.tmp = tmp   # its TMPDIR
        self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "demo", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp)})
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        self.children: dict[int, int] = {}
        self.ended = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in iter(self.proc.stdout.readline, b""):
            self.lines.put(raw.decode(errors="replace"))
        self.lines.put(None)   # end of output

    @property
    def out(self) -> str:
        return "".join(self.seen)

    def _next(self, deadline: float, what: str) -> str | None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {what} by the deadline; the demo said:\n{self.out[-3000:]}")
            try:
                line = self.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if line is None:
                self.ended = True
            else:
                self.seen.append(line)
            return line

    def until(self, prefix: str, timeout: float = 300) -> str:
        """Read up to the first line starting with ``prefix``; fails if the demo ends first."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._next(deadline, f"line starting {prefix!r}")
            assert line is not None, "the demo ended: " + self.out[-3000:]
            if line.startswith(prefix):
                return line

    def note_children(self) -> None:
        """Note the demo's processes now: at least the broker and the worker."""
        self.children = _tree(self.proc.pid)
        assert any(" streams.cli worker " in _cmdline(p) for p in self.children), self.children
        assert len(self.children) >= 2, {p: _cmdline(p) for p in self.children}

    def wait(self, timeout: float = 300) -> int:
        """Read to the end of its output and its exit; its exit code."""
        deadline = time.monotonic() + timeout
        while not self.ended:
            self._next(deadline, "end of output")
        return self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))

    def left_behind(self) -> dict[int, str]:
        """The demo's noted processes still running (the same pid and start time)."""
        return {p: _cmdline(p) for p, started in self.children.items() if _started(p) == started}

    def kill(self) -> None:
        """Kill what is left of the demo and of the processes it started (each in a
        session of its own: its group), and wait until they are gone."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for p in self.left_behind():
            for kill in (os.killpg, os.kill):
                try:
                    kill(p, signal.SIGKILL)
                except OSError:
                    pass
        _gone(self, timeout=30)


@pytest.fixture
def demo(tmp_path):
    """Start ``lapstream demo`` with ``demo(*args)`` (TMPDIR: an empty ``tmp_path/"tmp"``,
    returned as ``.tmp``); whatever is left of it is killed at the end of the test."""
    started: list[Demo] = []
    tmp = tmp_path / "tmp"
    tmp.mkdir()

    def start(*args: str) -> Demo:
        d = Demo(list(args), tmp)
        started.append(d)
        return d
    yield start
    for d in started:
        d.kill()


def _gone(d: Demo, timeout: float = 120) -> dict[int, str]:
    """Wait until the demo's processes are gone; those still running at the deadline."""
    deadline = time.monotonic() + timeout
    while d.left_behind() and time.monotonic() < deadline:
        time.sleep(0.2)
    return d.left_behind()


@pytest.mark.live
def test_the_demo_ends_by_itself_and_leaves_nothing_behind(demo):
    # no --exit-when-done, stdout a pipe: what a person or CI gets from the README's command
    d = demo("--speed", "max", "--http-port", "0")
    d.until("replaying")
    d.note_children()
    code = d.wait(timeout=300)
    out = d.out
    assert code == 0, out[-3000:]
    lines = out.splitlines()
    # a pipe gets lines, one fact a line, then the final board, each message on its own line
    assert any(ln.startswith("split    OWG2022-TPW-FA") for ln in lines)
    assert sum(ln.startswith("FINISH") for ln in lines) == 2
    assert sum(ln.startswith("RECORD") for ln in lines) == 1
    assert "459 events, 0 dead letters" in lines
    assert not any(ln.startswith("unreadable event") for ln in lines)
    assert lines[-1].startswith("metrics were at http://127.0.0.1:")
    assert sum("NEW OR 2:53.44 by CAN" in ln for ln in lines) == 1 and "revised to 2:53.44" not in out
    assert list(d.tmp.iterdir()) == []            # logs and the worker's data directory removed
    assert d.left_behind() == {}                  # the broker and the worker stopped with it


@pytest.mark.live
def test_a_demo_whose_race_is_never_official_ends_naming_it(demo, tmp_path):
    feed = tmp_path / "no_official.jsonl"
    feed.write_bytes(b"\n".join(_no_official(FINAL_A.read_bytes().splitlines())) + b"\n")
    d = demo("--feed", str(feed), "--speed", "max", "--http-port", "0")
    d.until("replaying")
    d.note_children()
    code = d.wait(timeout=300)
    out = d.out
    assert code == 0, out[-3000:]
    assert f"not shown as official (nothing came for {GIVE_UP_S:g} s): OWG2022-TPW-FA" in out.splitlines()
    assert "Traceback" not in out
    assert list(d.tmp.iterdir()) == [] and _gone(d) == {}


@pytest.mark.live
def test_the_demo_asked_to_stay_prints_lines_as_they_come_and_cleans_up_on_sigterm(demo):
    d = demo("--plain", "--stay", "--speed", "max", "--http-port", "0")
    d.until("replaying")
    d.note_children()
    d.until("the feed is replayed and the output has settled")   # lines come as they are printed
    out = d.out
    assert "result   OWG2022-TPW-FA [official]" in out, out
    assert d.proc.poll() is None                  # --stay: still running
    os.kill(d.proc.pid, signal.SIGTERM)
    code = d.wait(timeout=120)
    rest = d.out[len(out):]
    assert code == 130, rest
    assert rest.splitlines()[-1] == "stopped"
    assert list(d.tmp.iterdir()) == []
    assert d.left_behind() == {}


@pytest.mark.live
def test_a_sigkill_soon_after_sigterm_leaves_no_directory_and_no_process(demo):
    """A supervisor's SIGTERM, then its SIGKILL while the worker still shuts down
    (script(1) waits 2 s): the directory is already gone, the children follow."""
    d = demo("--plain", "--stay", "--speed", "max", "--http-port", "0")
    d.until("replaying")
    d.note_children()
    assert len(list(d.tmp.iterdir())) == 1          # one directory: the demo's (the broker's is inside)
    os.kill(d.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 120
    while list(d.tmp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(d.tmp.iterdir()) == []
    if d.proc.poll() is None:
        os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(timeout=60)
    assert _gone(d) == {}                           # the children follow (SIGTERM from the kernel)
    assert list(d.tmp.iterdir()) == []
