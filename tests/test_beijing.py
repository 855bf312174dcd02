"""Acceptance: the shipped Beijing 2022 team pursuit feeds give the official facts."""
from __future__ import annotations

from functools import lru_cache

import orjson
import pytest

from streams import beijing
from streams.process import process_lines
from tests.schemacheck import validate

FEEDS = beijing.FEEDS_DIR


@lru_cache(maxsize=None)
def events_of(name: str) -> tuple:
    with open(FEEDS / name, "rb") as f:
        return tuple(process_lines(f))


def is_final(e) -> bool:
    """The final view: provisional versions and withdrawn provisional splits/finishes left out."""
    return e.get("final", True) and not (e["kind"] in ("split", "finish", "incident") and e.get("withdrawn"))


def kinds(events, kind):
    return [e for e in events if e["kind"] == kind and is_final(e)]


@pytest.mark.parametrize("name", [beijing.WOMEN_FILE, beijing.MEN_FILE, beijing.FINAL_A_FILE])
def test_every_official_time_and_rank(name):
    events = events_of(name)
    expected = beijing.expected_results()
    fins = kinds(events, "finish")
    assert fins
    got = {}
    for f in fins:
        got[(f["race_id"], f["competitor_id"])] = f
    races = {rid for rid, _ in got}
    for rid in races:
        want = expected[rid]
        assert {cid: got[(rid, cid)]["time"] for cid in want} == want, rid
        # rank in the race = order of the official times
        order = sorted(want, key=lambda c: got[(rid, c)]["time_ms"])
        final = [r for r in kinds(events, "result") if r["race_id"] == rid][-1]
        assert [e["competitor_id"] for e in final["ranking"]] == order
        assert [e["rank"] for e in final["ranking"]] == [1, 2]
        assert final["status"] == "official"
    assert not kinds(events, "deadletter")


def test_olympic_records_exactly_where_they_fell():
    recs = []
    for name in (beijing.WOMEN_FILE, beijing.MEN_FILE):
        recs += [(r["race_id"], r["competitor_id"], r["record"], r["time"])
                 for r in kinds(events_of(name), "record")]
    assert recs == beijing.expected_records()
    # the final A alone starts from the record JPN set in the quarter-final
    fa = [(r["competitor_id"], r["record"], r["time"], r["previous_time"], r["previous_holder"])
          for r in kinds(events_of(beijing.FINAL_A_FILE), "record")]
    assert fa == [("CAN", "OR", "2:53.44", "2:53.61", "JPN")]


@pytest.mark.parametrize("name", [beijing.WOMEN_FILE, beijing.FINAL_A_FILE])
def test_takagi_falls_suspected_before_her_finish_confirmed_after_the_referee(name):
    events = list(events_of(name))
    inc = [e for e in kinds(events, "incident") if e["race_id"] == "OWG2022-TPW-FA"]
    assert [(e["skater_id"], e["type"], e["status"]) for e in inc] == [
        (beijing.TAKAGI, "fall", "suspected"), (beijing.TAKAGI, "fall", "confirmed")]
    sus, conf = inc
    # her own finish crossing (the team's, as third skater)
    takagi_finish = [e for e in kinds(events, "split") if e["skater_id"] == beijing.TAKAGI
                     and e["race_id"] == "OWG2022-TPW-FA" and e["distance_m"] == 2400][0]
    jpn_finish = [e for e in kinds(events, "finish") if e["race_id"] == "OWG2022-TPW-FA"
                  and e["competitor_id"] == "JPN"][0]
    assert sus["t_us"] < takagi_finish["t_us"]
    assert events.index(sus) < events.index(takagi_finish) < events.index(jpn_finish)
    # live: the suspicion comes out (provisionally) before the first version of her finish split
    first_sus = [e for e in events if e["kind"] == "incident" and e["skater_id"] == beijing.TAKAGI][0]
    first_split = [e for e in events if e["kind"] == "split" and e["skater_id"] == beijing.TAKAGI
                   and e["race_id"] == "OWG2022-TPW-FA" and e["distance_m"] == 2400][0]
    assert (first_sus["status"], first_sus["at_m"], first_sus["final"]) == ("suspected", 2300, False)
    assert events.index(first_sus) < events.index(first_split)
    assert first_split["final"] is False
    assert sus["at_m"] == 2300   # last loop she passed before falling at 2370 m
    # confirmed only by the referee's FALL decision, after the finish
    with open(FEEDS / name, "rb") as f:
        fall = [m for m in map(orjson.loads, f) if m["kind"] == "decision" and m["code"] == "FALL"][0]
    assert conf["t_us"] == fall["t_us"] > jpn_finish["t_us"]
    assert jpn_finish["time"] == "3:04.47"
    # no other incident anywhere in the tournaments
    for n in (beijing.WOMEN_FILE, beijing.MEN_FILE):
        others = [e for e in kinds(events_of(n), "incident") if e["skater_id"] != beijing.TAKAGI]
        assert others == []


@pytest.mark.parametrize("name,gender", [(beijing.WOMEN_FILE, "W"), (beijing.MEN_FILE, "M")])
def test_final_classification(name, gender):
    cls = kinds(events_of(name), "classification")[-1]
    assert [r["competitor_id"] for r in cls["ranking"]] == beijing.expected_classification(gender)
    assert [r["place"] for r in cls["ranking"]] == list(range(1, 9))
    assert cls["complete"] is True
    if gender == "W":
        assert [r["competitor_id"] for r in cls["ranking"]] == ["CAN", "JPN", "NED", "ROC", "CHN", "NOR", "BLR", "POL"]


def test_quarter_final_standings_rank_all_heats_together():
    st = [e for e in kinds(events_of(beijing.WOMEN_FILE), "standings") if e["group"] == "OWG2022-TPW-QF"][-1]
    assert st["complete"] is True
    assert [e["competitor_id"] for e in st["ranking"]] == ["JPN", "CAN", "NED", "ROC", "CHN", "NOR", "POL", "BLR"]
    jpn = st["ranking"][0]
    assert jpn["records"] == ["OR"] and jpn["time"] == "2:53.61"


@pytest.mark.parametrize("name", [beijing.WOMEN_FILE, beijing.MEN_FILE, beijing.FINAL_A_FILE])
def test_every_event_follows_its_schema_and_ids_are_unique(name):
    events = events_of(name)
    for e in events:
        validate(e)
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids))
