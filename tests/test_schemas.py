"""Tests of the v1 JSON Schemas (schemas/json/*.schema.json) and tests/schemacheck.py."""
from __future__ import annotations

import copy
import json
import os
import pathlib
import shutil
import subprocess
from typing import Any, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, ValidationError

from tests.paths import example_feed
from tests.schemacheck import SCHEMA_KINDS, load_schemas, validate, validator_for

RAW_KINDS = {"venue", "race", "start", "passing", "heartbeat", "photo", "decision", "record_ref"}
DERIVED_KINDS = {"split", "finish", "incident", "record", "result", "standings",
                 "classification", "deadletter"}
RACE_BOUND = {"split", "finish", "incident", "record", "result"}  # derived kinds carrying race_id

SCHEMA_DIR = pathlib.Path(__file__).resolve().parents[1] / "schemas" / "json"
EXAMPLE_FEED = pathlib.Path(os.environ.get("LAPSTREAM_EXAMPLE_FEED", "") or example_feed())

DELETE = object()


def is_valid(event: Any) -> bool:
    try:
        validate(event)
    except ValidationError:
        return False
    return True


def mutate(event: dict, path: tuple, value: Any) -> dict:
    """A deep copy of `event` with the value at `path` replaced (or deleted with DELETE)."""
    out = copy.deepcopy(event)
    node = out
    for step in path[:-1]:
        node = node[step]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


# --------------------------------------------------------------------- valid samples

def _feed_lines() -> list[dict]:
    with EXAMPLE_FEED.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


VENUE = {"kind": "venue", "v": 1, "t_us": 1644890000000000, "venue": "NSO",
         "name": "National Speed Skating Oval, Beijing", "lap_m": 400,
         "loops": [{"loop": "L000", "at_m": 0}, {"loop": "L100", "at_m": 100},
                   {"loop": "L200", "at_m": 200}, {"loop": "L300", "at_m": 300}]}

RACE_TP = {"kind": "race", "v": 1, "t_us": 1644900000000000, "race_id": "OWG2022-TPW-FA",
           "venue": "NSO", "competition": "OWG2022", "level": "OWG", "format": "team_pursuit",
           "gender": "W", "distance_m": 2400, "group": "OWG2022-TPW-FA", "places": [1, 2],
           "competitors": [
               {"competitor_id": "CAN", "name": "Canada", "nation": "CAN", "start_m": 0,
                "skaters": [
                    {"skater_id": "CAN-BLONDIN", "name": "Ivanie Blondin", "nation": "CAN",
                     "transponders": ["410011", "410012"]},
                    {"skater_id": "CAN-WEIDEMANN", "name": "Isabelle Weidemann", "nation": "CAN",
                     "transponders": ["410021"]},
                    {"skater_id": "CAN-MADDIN", "name": "Valerie Maltais", "nation": "CAN",
                     "transponders": ["410031", "410032"]}]},
               {"competitor_id": "JPN", "name": "Japan", "nation": "JPN", "start_m": 200,
                "skaters": [
                    {"skater_id": "JPN-TAKAGI-M", "name": "Miho Takagi", "nation": "JPN",
                     "transponders": ["420011", "420012"]}]}]}

RACE_MS = {"kind": "race", "v": 1, "t_us": 1644900000000000, "race_id": "OWG2022-MSM-F",
           "venue": "NSO", "competition": "OWG2022", "level": "OWG", "format": "mass_start",
           "gender": "M", "distance_m": 6400, "laps": 16,
           "sprints": {"4": [5, 3, 1], "8": [5, 3, 1], "12": [5, 3, 1]}, "final": [60, 40, 20],
           "competitors": [
               {"competitor_id": "KOR-CHUNG-J", "name": "Chung Jae-won", "nation": "KOR",
                "start_m": 0,
                "skaters": [{"skater_id": "KOR-CHUNG-J", "name": "Chung Jae-won",
                             "nation": "KOR", "transponders": ["7001"]}]}]}

START = {"kind": "start", "v": 1, "t_us": 1644900012345678, "venue": "NSO",
         "race_id": "OWG2022-TPW-FA", "attempt": 1}
PASSING = {"kind": "passing", "v": 1, "t_us": 1644900031234567, "venue": "NSO", "source": "X2-A",
           "seq": 1042, "loop": "L000", "transponder": "410011", "strength": 112, "hits": 27}
PASSING_BARE = {"kind": "passing", "v": 1, "t_us": 1644900031234567, "venue": "NSO",
                "source": "X2-B", "seq": 0, "loop": "L000", "transponder": "410011"}
HEARTBEAT = {"kind": "heartbeat", "v": 1, "t_us": 1644900032000000, "venue": "NSO",
             "source": "X2-A"}
PHOTO = {"kind": "photo", "v": 1, "t_us": 1644900186000000, "race_id": "OWG2022-TPW-FA",
         "skater_id": "CAN-BLONDIN", "finish_us": 1644900185794000}
DECISION_FALL = {"kind": "decision", "v": 1, "t_us": 1644900200000000,
                 "race_id": "OWG2022-TPW-FA", "competitor_id": "JPN",
                 "skater_id": "JPN-TAKAGI-N", "code": "FALL", "note": "last inner curve"}
DECISION_OFFICIAL = {"kind": "decision", "v": 1, "t_us": 1644900300000000,
                     "race_id": "OWG2022-TPW-FA", "code": "OFFICIAL"}
DECISION_VOID = {"kind": "decision", "v": 1, "t_us": 1644900300000000,
                 "race_id": "OWG2022-TPW-FA", "code": "VOID"}
DECISION_DQ = {"kind": "decision", "v": 1, "t_us": 1644900300000000,
               "race_id": "OWG2022-TPW-FA", "competitor_id": "JPN", "code": "DQ"}
RECORD_REF = {"kind": "record_ref", "v": 1, "t_us": 1644800000000000, "record": "OR",
              "format": "team_pursuit", "gender": "W", "distance_m": 2400, "scope": "OWG",
              "time": "2:53.89", "holder": "JPN", "set_on": "2018-02-21", "venue": "GANGNEUNG"}
RECORD_REF_WR = {"kind": "record_ref", "v": 1, "t_us": 1644800000000000, "record": "WR",
                 "format": "individual", "gender": "M", "distance_m": 10000, "scope": None,
                 "time": "12:30.74", "holder": "ROEST", "set_on": "2022-02-11", "venue": "NSO"}
RECORD_REF_PB = {"kind": "record_ref", "v": 1, "t_us": 1644800000000000, "record": "PB",
                 "format": "individual", "gender": "M", "distance_m": 500,
                 "scope": "CHN-GAO-T", "time": "34.32", "holder": "CHN-GAO-T",
                 "set_on": "2022-02-12", "venue": "NSO"}

SPLIT = {"kind": "split", "v": 1, "event_id": "OWG2022-M500-P14/1/split/CHN-GAO-T/100",
         "t_us": 1644573790390226, "race_id": "OWG2022-M500-P14", "attempt": 1,
         "competitor_id": "CHN-GAO-T", "skater_id": "CHN-GAO-T", "distance_m": 100,
         "time_ms": 9554, "time": "9.55", "lap_ms": None, "rank": 2, "behind_ms": 377,
         "loop": "L000"}
SPLIT_TEAM = {"kind": "split", "v": 1, "event_id": "tp/split/CAN/2400", "t_us": 1644900185794000,
              "race_id": "OWG2022-TPW-FA", "competitor_id": "CAN", "skater_id": None,
              "distance_m": 2400, "time_ms": 173444, "time": "2:53.44", "lap_ms": 29871,
              "rank": 1, "behind_ms": 0}
FINISH = {"kind": "finish", "v": 1, "event_id": "OWG2022-M500-P14/1/finish/CHN-GAO-T/0",
          "t_us": 1644573815161117, "race_id": "OWG2022-M500-P14", "competitor_id": "CHN-GAO-T",
          "time_ms": 34325, "time": "34.32", "rank": 1, "source": "transponder", "revision": 0}
FINISH_PHOTO = {"kind": "finish", "v": 1, "event_id": "ms/finish/KOR-CHUNG-J/1",
                "t_us": 1644900185794000, "race_id": "OWG2022-MSM-F", "attempt": 2,
                "competitor_id": "KOR-CHUNG-J", "skater_id": "KOR-CHUNG-J",
                "time_ms": 463170, "time": "7:43.17", "rank": None, "source": "photo",
                "revision": 1, "points": 60}
INCIDENT = {"kind": "incident", "v": 1, "event_id": "tp/incident/JPN/fall", "t_us": 1644900181000000,
            "race_id": "OWG2022-TPW-FA", "competitor_id": "JPN", "skater_id": "JPN-TAKAGI-N",
            "type": "fall", "status": "suspected", "at_m": 2300, "note": "no passing for 4 s"}
INCIDENT_NULLS = {"kind": "incident", "v": 1, "event_id": "x/incident/1", "t_us": 0,
                  "race_id": "R", "competitor_id": "C", "skater_id": None, "type": "anomaly",
                  "status": "cleared", "at_m": None}
RECORD = {"kind": "record", "v": 1, "event_id": "OWG2022-M500-P14/1/record/OR/CHN-GAO-T",
          "t_us": 1644573815161117, "race_id": "OWG2022-M500-P14", "competitor_id": "CHN-GAO-T",
          "record": "OR", "equalled": False, "time": "34.32", "previous_time": "34.41",
          "previous_holder": "LORENTZEN", "time_ms": 34325, "scope": "OWG",
          "format": "individual", "gender": "M", "distance_m": 500, "holder": "CHN-GAO-T",
          "revision": 0, "withdrawn": False}
RECORD_FIRST = {"kind": "record", "v": 1, "event_id": "x/record/NR", "t_us": 1,
                "race_id": "R", "competitor_id": "C", "record": "NR", "equalled": True,
                "time": "1:08.00", "previous_time": None, "previous_holder": None}
ENTRY_1 = {"rank": 1, "competitor_id": "CHN-GAO-T", "time_ms": 34325, "time": "34.32",
           "behind_ms": 0, "irm": None, "records": ["OR"]}
ENTRY_2 = {"rank": 2, "competitor_id": "KOR-CHA-M", "time_ms": 34392, "time": "34.39",
           "behind_ms": 67, "irm": None, "records": [], "name": "Cha Min-kyu", "nation": "KOR"}
ENTRY_DQ = {"rank": None, "competitor_id": "NED-X", "time_ms": None, "time": None,
            "behind_ms": None, "irm": "DQ", "records": []}
RESULT = {"kind": "result", "v": 1, "event_id": "OWG2022-M500-P14/1/result/3",
          "t_us": 1644573952284169, "race_id": "OWG2022-M500-P14", "attempt": 1,
          "status": "official", "revision": 3, "ranking": [ENTRY_1, ENTRY_2, ENTRY_DQ],
          "group": "OWG2022-M500", "format": "individual"}
RESULT_MS = {"kind": "result", "v": 1, "event_id": "ms/result/0", "t_us": 1644900185794000,
             "race_id": "OWG2022-MSM-F", "status": "live", "revision": 0,
             "ranking": [dict(ENTRY_1, competitor_id="KOR-CHUNG-J", points=63, records=[])]}
RESULT_VOID = {"kind": "result", "v": 1, "event_id": "r/void", "t_us": 5, "race_id": "R",
               "status": "void", "revision": 4, "ranking": []}
STANDINGS = {"kind": "standings", "v": 1, "event_id": "OWG2022-M500/standings/1",
             "t_us": 1644573952284169, "group": "OWG2022-M500",
             "ranking": [dict(ENTRY_1, race_id="OWG2022-M500-P14"),
                         dict(ENTRY_2, race_id="OWG2022-M500-P14")],
             "complete": True}
CLASSIFICATION = {"kind": "classification", "v": 1, "event_id": "cls/OWG2022-TPW-W-2400/1",
                  "t_us": 1644900300000000, "event": "OWG2022-team_pursuit-W-2400",
                  "ranking": [{"place": 1, "competitor_id": "CAN", "race_id": "OWG2022-TPW-FA"},
                              {"place": 2, "competitor_id": "JPN", "race_id": "OWG2022-TPW-FA"},
                              {"place": None, "competitor_id": "NED", "race_id": "OWG2022-TPW-FB"}],
                  "complete": False}
DEADLETTER = {"kind": "deadletter", "v": 1, "line": 17,
              "error": "passing: missing required field 'loop'",
              "raw": '{"kind":"passing","v":1,"t_us":1,"venue":"NSO"}'}
DEADLETTER_NOT_JSON = {"kind": "deadletter", "v": 1, "line": 1,
                       "error": "not valid JSON: Expecting value", "raw": "{oops"}
# a record of timing.deadletter as `lapstream record` writes it (the "recorded" shape)
DEADLETTER_RECORDED = {"kind": "deadletter", "v": 1, "error": "not valid JSON: unexpected character",
                       "raw": "{oops\\xff", "raw_b64": "e29vcHP/", "source_topic": "timing.raw",
                       "source_partition": 4, "source_offset": 1358, "key": "NSO"}

HANDWRITTEN = {
    "venue": VENUE, "race_tp": RACE_TP, "race_ms": RACE_MS, "start": START, "passing": PASSING,
    "passing_bare": PASSING_BARE, "heartbeat": HEARTBEAT, "photo": PHOTO,
    "decision_fall": DECISION_FALL, "decision_official": DECISION_OFFICIAL,
    "decision_void": DECISION_VOID, "decision_dq": DECISION_DQ, "record_ref": RECORD_REF,
    "record_ref_wr": RECORD_REF_WR, "record_ref_pb": RECORD_REF_PB,
    "split": SPLIT, "split_team": SPLIT_TEAM, "finish": FINISH, "finish_photo": FINISH_PHOTO,
    "incident": INCIDENT, "incident_nulls": INCIDENT_NULLS, "record": RECORD,
    "record_first": RECORD_FIRST, "result": RESULT, "result_ms": RESULT_MS,
    "result_void": RESULT_VOID, "standings": STANDINGS, "classification": CLASSIFICATION,
    "deadletter": DEADLETTER, "deadletter_not_json": DEADLETTER_NOT_JSON,
    "deadletter_recorded": DEADLETTER_RECORDED,
}
VALID_SAMPLES = list(HANDWRITTEN.values())


# ------------------------------------------------------------- the schema files

def test_schema_kinds_are_exactly_the_contract_kinds():
    assert SCHEMA_KINDS == RAW_KINDS | DERIVED_KINDS


def test_every_kind_has_a_handwritten_valid_sample():
    assert {s["kind"] for s in VALID_SAMPLES} == SCHEMA_KINDS


@pytest.mark.parametrize("kind", sorted(RAW_KINDS | DERIVED_KINDS))
def test_schema_is_valid_draft_2020_12(kind):
    schema = load_schemas()[kind]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://lapstream.example/schemas/v1/{kind}.schema.json"
    assert schema["title"] and schema["description"]


@pytest.mark.parametrize("kind", sorted(RAW_KINDS | DERIVED_KINDS))
def test_schema_envelope(kind):
    schema = load_schemas()[kind]
    props, required = schema["properties"], schema["required"]
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is True, "unknown extra fields are allowed"
    assert props["kind"]["const"] == kind
    assert props["v"]["const"] == 1
    assert {"kind", "v"} <= set(required)
    assert set(required) <= set(props), "every required field is listed with its type"
    assert len(required) == len(set(required))
    for name, sub in props.items():
        assert {"type", "const", "enum", "$ref", "anyOf"} & set(sub), f"{kind}.{name} is untyped"
    if kind in RAW_KINDS:
        assert "t_us" in required
    if kind in DERIVED_KINDS - {"deadletter"}:
        assert {"event_id", "t_us"} <= set(required)
    assert ("race_id" in required) == (kind in RACE_BOUND | RAW_KINDS - {
        "venue", "passing", "heartbeat", "record_ref"})
    if kind in RACE_BOUND:
        assert props["attempt"] == {"type": "integer", "minimum": 1,
                                    "description": props["attempt"]["description"]}
        assert "attempt" not in required


def test_time_pattern_is_identical_everywhere():
    defs = {k: s["$defs"]["time"] for k, s in load_schemas().items() if "time" in s.get("$defs", {})}
    assert set(defs) == {"record_ref", "split", "finish", "record", "result", "standings"}
    assert len({json.dumps(d, sort_keys=True) for d in defs.values()}) == 1


def test_standings_bundles_the_result_ranking_entry_unchanged():
    # standings.schema.json carries its own copy of result's ranking entry (and the time
    # it refers to), so that the file stands alone for any validator; the copy is exact
    standings, result = load_schemas()["standings"], load_schemas()["result"]
    assert standings["properties"]["ranking"]["items"] == {"$ref": "#/$defs/ranking_entry"}
    assert standings["$defs"] == {name: result["$defs"][name] for name in ("ranking_entry", "time")}


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


@pytest.mark.parametrize("kind", sorted(RAW_KINDS | DERIVED_KINDS))
def test_every_reference_stays_inside_its_own_file(kind):
    # a reference to another file resolves against the $id host: a validator without
    # the project's registry would go to the network for it
    refs = list(_refs(load_schemas()[kind]))
    assert all(r.startswith("#/") for r in refs), refs


def test_each_schema_file_alone_validates_its_samples():
    # no registry at all: what any standard validator given one file can do
    for sample in _all_valid_samples():
        Draft202012Validator(load_schemas()[sample["kind"]]).validate(sample)


# ------------------------------------------------------------- valid messages

def test_every_line_of_the_example_feed_validates():
    lines = _feed_lines()
    assert lines
    for number, event in enumerate(lines, start=1):
        try:
            validate(event)
        except ValidationError as exc:  # pragma: no cover - failure report
            pytest.fail(f"line {number} ({event.get('kind')}): {exc.message}")
    kinds = {e["kind"] for e in lines}
    assert {"venue", "record_ref", "race", "start", "passing", "heartbeat", "decision"} <= kinds


def test_example_feed_also_validates_with_plain_draft_2020_12():
    # The schema files alone (standard semantics, no helper strictness) accept the feed.
    schemas = load_schemas()
    for event in _feed_lines():
        Draft202012Validator(schemas[event["kind"]]).validate(event)


@pytest.mark.parametrize("name", sorted(HANDWRITTEN))
def test_handwritten_sample_validates(name):
    validate(HANDWRITTEN[name])


@pytest.mark.parametrize("time", ["0.00", "9.55", "34.32", "59.99", "1:08.00", "2:53.89",
                                  "13:01.20", "12:30.74", "61:00.00"])
def test_time_formats_accepted(time):
    validate(mutate(FINISH, ("time",), time))
    validate(mutate(RECORD_REF, ("time",), time))


@pytest.mark.parametrize("time", [
    "34.3", "34.321", "34", "34,32", ":34.32", "2:5.89", "2:60.00", "02:53.89", "0:34.32",
    "60.00", "134.32", "034.32", " 34.32", "34.32 ", "34.32\n", "\n34.32", "1:2:03.00",
    "\u0663\u0664.\u0663\u0662",  # Arabic-Indic digits: Python's \d would accept them
    "", "2:53.89Z"])
def test_time_formats_rejected(time):
    assert not is_valid(mutate(FINISH, ("time",), time))
    assert not is_valid(mutate(RECORD_REF, ("time",), time))
    assert not is_valid(mutate(RECORD, ("previous_time",), time))
    assert not is_valid(mutate(RESULT, ("ranking", 0, "time"), time))


def _contract_time(ms: int) -> str:
    """The contract's hundredths format, written independently of the schema."""
    hundredths = ms // 10
    seconds, hh = divmod(hundredths, 100)
    minutes, ss = divmod(seconds, 60)
    return f"{minutes}:{ss:02d}.{hh:02d}" if minutes else f"{ss}.{hh:02d}"


@given(st.integers(min_value=0, max_value=10 * 3600 * 1000))
def test_every_contract_time_matches_the_pattern(ms):
    validate(mutate(SPLIT, ("time",), _contract_time(ms)))


def test_decision_official_and_void_need_no_competitor():
    validate(DECISION_OFFICIAL)
    validate(DECISION_VOID)


@pytest.mark.parametrize("code", ["DQ", "DNF", "DNS", "WDR", "FALL"])
def test_decision_competitor_codes(code):
    validate(mutate(DECISION_DQ, ("code",), code))
    assert not is_valid(mutate(mutate(DECISION_DQ, ("code",), code), ("competitor_id",), DELETE))


def test_extra_fields_are_allowed_everywhere():
    validate(dict(PASSING, firmware="4.2", temperature_c=-3.5))
    race = copy.deepcopy(RACE_TP)
    race["competitors"][0]["bib"] = 7
    race["competitors"][0]["skaters"][0]["club"] = "X"
    validate(race)
    validate(mutate(RESULT, ("ranking", 0, "laps_led"), 3))
    validate(dict(DEADLETTER, event_id="dl/17", t_us=123, topic="timing.raw"))


# ------------------------------------------------------------- invalid messages

INVALID = [
    # envelope
    ("v 2", HEARTBEAT, ("v",), 2),
    ("v 0", HEARTBEAT, ("v",), 0),
    ("v string", HEARTBEAT, ("v",), "1"),
    ("v true", HEARTBEAT, ("v",), True),
    ("v null", HEARTBEAT, ("v",), None),
    ("v missing", HEARTBEAT, ("v",), DELETE),
    ("t_us negative", HEARTBEAT, ("t_us",), -1),
    ("t_us string", HEARTBEAT, ("t_us",), "1644900032000000"),
    ("t_us bool", HEARTBEAT, ("t_us",), True),
    ("t_us float", HEARTBEAT, ("t_us",), 1644900032000000.5),
    ("t_us missing", PASSING, ("t_us",), DELETE),
    # venue
    ("venue lap_m 0", VENUE, ("lap_m",), 0),
    ("venue lap_m bool", VENUE, ("lap_m",), True),
    ("venue no loops", VENUE, ("loops",), []),
    ("venue loops object", VENUE, ("loops",), {"L000": 0}),
    ("venue loop at_m negative", VENUE, ("loops", 1, "at_m"), -100),
    ("venue loop at_m string", VENUE, ("loops", 1, "at_m"), "100"),
    ("venue loop id int", VENUE, ("loops", 1, "loop"), 100),
    ("venue loop without at_m", VENUE, ("loops", 0, "at_m"), DELETE),
    ("venue name missing", VENUE, ("name",), DELETE),
    # race
    ("race format", RACE_TP, ("format",), "pursuit"),
    ("race format case", RACE_TP, ("format",), "Team_Pursuit"),
    ("race level", RACE_TP, ("level",), "ISU"),
    ("race level lower", RACE_TP, ("level",), "owg"),
    ("race distance 0", RACE_TP, ("distance_m",), 0),
    ("race distance float", RACE_TP, ("distance_m",), 2400.5),
    ("race distance bool", RACE_TP, ("distance_m",), True),
    ("race gender int", RACE_TP, ("gender",), 1),
    ("race no competitors", RACE_TP, ("competitors",), []),
    ("race competitors missing", RACE_TP, ("competitors",), DELETE),
    ("race competition missing", RACE_TP, ("competition",), DELETE),
    ("race start_m negative", RACE_TP, ("competitors", 1, "start_m"), -200),
    ("race start_m bool", RACE_TP, ("competitors", 1, "start_m"), False),
    ("race competitor name missing", RACE_TP, ("competitors", 0, "name"), DELETE),
    ("race competitor nation missing", RACE_TP, ("competitors", 0, "nation"), DELETE),
    ("race no skaters", RACE_TP, ("competitors", 0, "skaters"), []),
    ("race no transponders", RACE_TP, ("competitors", 0, "skaters", 0, "transponders"), []),
    ("race three transponders", RACE_TP, ("competitors", 0, "skaters", 0, "transponders"),
     ["1", "2", "3"]),
    ("race same transponder twice", RACE_TP, ("competitors", 0, "skaters", 0, "transponders"),
     ["1", "1"]),
    ("race transponder int", RACE_TP, ("competitors", 0, "skaters", 0, "transponders"), [410011]),
    ("race transponders string", RACE_TP, ("competitors", 0, "skaters", 0, "transponders"),
     "410011"),
    ("race skater_id missing", RACE_TP, ("competitors", 0, "skaters", 0, "skater_id"), DELETE),
    ("race places 0", RACE_TP, ("places",), [0, 1]),
    ("race places string", RACE_TP, ("places",), ["1"]),
    ("race places not array", RACE_TP, ("places",), 1),
    ("race group int", RACE_TP, ("group",), 3),
    ("race laps 0", RACE_MS, ("laps",), 0),
    ("race laps string", RACE_MS, ("laps",), "16"),
    ("race sprints key", RACE_MS, ("sprints",), {"four": [5, 3, 1]}),
    ("race sprints key 0", RACE_MS, ("sprints",), {"0": [5, 3, 1]}),
    ("race sprints negative", RACE_MS, ("sprints",), {"4": [5, -3, 1]}),
    ("race sprints not array", RACE_MS, ("sprints",), {"4": 5}),
    ("race sprints array", RACE_MS, ("sprints",), [[5, 3, 1]]),
    ("race final negative", RACE_MS, ("final",), [60, -40]),
    ("race final bool", RACE_MS, ("final",), [True]),
    # start
    ("start attempt 0", START, ("attempt",), 0),
    ("start attempt bool", START, ("attempt",), True),
    ("start attempt missing", START, ("attempt",), DELETE),
    ("start race_id empty", START, ("race_id",), ""),
    ("start venue missing", START, ("venue",), DELETE),
    # passing
    ("passing seq string", PASSING, ("seq",), "1042"),
    ("passing seq bool", PASSING, ("seq",), True),
    ("passing seq negative", PASSING, ("seq",), -1),
    ("passing transponder int", PASSING, ("transponder",), 410011),
    ("passing loop missing", PASSING, ("loop",), DELETE),
    ("passing source null", PASSING, ("source",), None),
    ("passing strength string", PASSING, ("strength",), "112"),
    ("passing hits bool", PASSING, ("hits",), True),
    ("passing hits float", PASSING, ("hits",), 27.5),
    # heartbeat
    ("heartbeat source missing", HEARTBEAT, ("source",), DELETE),
    ("heartbeat venue int", HEARTBEAT, ("venue",), 1),
    # photo
    ("photo finish_us missing", PHOTO, ("finish_us",), DELETE),
    ("photo finish_us string", PHOTO, ("finish_us",), "1644900185794000"),
    ("photo finish_us bool", PHOTO, ("finish_us",), True),
    ("photo skater_id null", PHOTO, ("skater_id",), None),
    # decision
    ("decision code", DECISION_FALL, ("code",), "DSQ"),
    ("decision code lower", DECISION_FALL, ("code",), "dq"),
    ("decision code missing", DECISION_FALL, ("code",), DELETE),
    ("decision FALL without competitor", DECISION_FALL, ("competitor_id",), DELETE),
    ("decision note int", DECISION_FALL, ("note",), 3),
    ("decision race_id missing", DECISION_OFFICIAL, ("race_id",), DELETE),
    # record_ref
    ("record_ref record", RECORD_REF, ("record",), "ER"),
    ("record_ref format", RECORD_REF, ("format",), "relay"),
    ("record_ref scope missing", RECORD_REF, ("scope",), DELETE),
    ("record_ref OR scope not OWG", RECORD_REF, ("scope",), "WCH"),
    ("record_ref OR scope null", RECORD_REF, ("scope",), None),
    ("record_ref WR scope string", RECORD_REF_WR, ("scope",), "WR"),
    ("record_ref PB scope null", RECORD_REF_PB, ("scope",), None),
    ("record_ref PB team pursuit", RECORD_REF_PB, ("format",), "team_pursuit"),
    ("record_ref time seconds", RECORD_REF, ("time",), 173.89),
    ("record_ref holder missing", RECORD_REF, ("holder",), DELETE),
    ("record_ref set_on missing", RECORD_REF, ("set_on",), DELETE),
    ("record_ref venue missing", RECORD_REF, ("venue",), DELETE),
    ("record_ref distance string", RECORD_REF, ("distance_m",), "2400"),
    # split
    ("split event_id missing", SPLIT, ("event_id",), DELETE),
    ("split event_id empty", SPLIT, ("event_id",), ""),
    ("split event_id int", SPLIT, ("event_id",), 7),
    ("split race_id missing", SPLIT, ("race_id",), DELETE),
    ("split attempt 0", SPLIT, ("attempt",), 0),
    ("split attempt bool", SPLIT, ("attempt",), True),
    ("split skater_id missing", SPLIT, ("skater_id",), DELETE),
    ("split skater_id int", SPLIT, ("skater_id",), 5),
    ("split rank 0", SPLIT, ("rank",), 0),
    ("split rank null", SPLIT, ("rank",), None),
    ("split rank bool", SPLIT, ("rank",), True),
    ("split time_ms negative", SPLIT, ("time_ms",), -1),
    ("split time_ms float", SPLIT, ("time_ms",), 9554.0),
    ("split behind_ms negative", SPLIT, ("behind_ms",), -377),
    ("split lap_ms missing", SPLIT, ("lap_ms",), DELETE),
    ("split lap_ms string", SPLIT, ("lap_ms",), "29871"),
    ("split lap_ms bool", SPLIT_TEAM, ("lap_ms",), False),
    ("split loop int", SPLIT, ("loop",), 0),
    ("split time missing", SPLIT, ("time",), DELETE),
    # finish
    ("finish source", FINISH, ("source",), "camera"),
    ("finish source missing", FINISH, ("source",), DELETE),
    ("finish revision negative", FINISH, ("revision",), -1),
    ("finish revision bool", FINISH, ("revision",), False),
    ("finish rank 0", FINISH, ("rank",), 0),
    ("finish rank missing", FINISH, ("rank",), DELETE),
    ("finish points string", FINISH_PHOTO, ("points",), "60"),
    ("finish skater_id int", FINISH_PHOTO, ("skater_id",), 1),
    # incident
    ("incident type", INCIDENT, ("type",), "crash"),
    ("incident status", INCIDENT, ("status",), "open"),
    ("incident at_m missing", INCIDENT, ("at_m",), DELETE),
    ("incident at_m bool", INCIDENT, ("at_m",), True),
    ("incident skater_id missing", INCIDENT, ("skater_id",), DELETE),
    ("incident note int", INCIDENT, ("note",), 1),
    # record
    ("record record", RECORD, ("record",), "OWG"),
    ("record equalled int", RECORD, ("equalled",), 0),
    ("record equalled string", RECORD, ("equalled",), "false"),
    ("record equalled missing", RECORD, ("equalled",), DELETE),
    ("record previous_time missing", RECORD, ("previous_time",), DELETE),
    ("record previous_holder missing", RECORD, ("previous_holder",), DELETE),
    ("record previous_holder int", RECORD, ("previous_holder",), 1),
    ("record withdrawn string", RECORD, ("withdrawn",), "no"),
    ("record OR scope not OWG", RECORD, ("scope",), "NSO"),
    ("record format", RECORD, ("format",), "pairs"),
    # result / ranking entries
    ("result status", RESULT, ("status",), "final"),
    ("result status upper", RESULT, ("status",), "OFFICIAL"),
    ("result revision missing", RESULT, ("revision",), DELETE),
    ("result ranking object", RESULT, ("ranking",), {"1": ENTRY_1}),
    ("result ranking missing", RESULT, ("ranking",), DELETE),
    ("result race_id missing", RESULT, ("race_id",), DELETE),
    ("entry irm", RESULT, ("ranking", 2, "irm"), "DSQ"),
    ("entry irm FALL", RESULT, ("ranking", 2, "irm"), "FALL"),
    ("entry irm missing", RESULT, ("ranking", 0, "irm"), DELETE),
    ("entry irm with rank", RESULT, ("ranking", 2, "rank"), 3),
    ("entry rank 0", RESULT, ("ranking", 0, "rank"), 0),
    ("entry rank bool", RESULT, ("ranking", 0, "rank"), True),
    ("entry rank missing", RESULT, ("ranking", 0, "rank"), DELETE),
    ("entry records missing", RESULT, ("ranking", 0, "records"), DELETE),
    ("entry records string", RESULT, ("ranking", 0, "records"), "OR"),
    ("entry records ints", RESULT, ("ranking", 0, "records"), [1]),
    ("entry behind_ms negative", RESULT, ("ranking", 1, "behind_ms"), -67),
    ("entry time_ms string", RESULT, ("ranking", 0, "time_ms"), "34325"),
    ("entry points string", RESULT_MS, ("ranking", 0, "points"), "63"),
    ("entry competitor_id missing", RESULT, ("ranking", 0, "competitor_id"), DELETE),
    # standings
    ("standings group missing", STANDINGS, ("group",), DELETE),
    ("standings complete missing", STANDINGS, ("complete",), DELETE),
    ("standings complete int", STANDINGS, ("complete",), 1),
    ("standings entry irm", STANDINGS, ("ranking", 0, "irm"), "X"),
    ("standings entry rank 0", STANDINGS, ("ranking", 0, "rank"), 0),
    ("standings entry records missing", STANDINGS, ("ranking", 1, "records"), DELETE),
    ("standings entry race_id int", STANDINGS, ("ranking", 1, "race_id"), 1),
    # classification
    ("classification event", CLASSIFICATION, ("event",), "OWG2022-TPW-FA"),
    ("classification event format", CLASSIFICATION, ("event",), "OWG2022-pursuit-W-2400"),
    ("classification event missing", CLASSIFICATION, ("event",), DELETE),
    ("classification place 0", CLASSIFICATION, ("ranking", 0, "place"), 0),
    ("classification place missing", CLASSIFICATION, ("ranking", 0, "place"), DELETE),
    ("classification race_id missing", CLASSIFICATION, ("ranking", 0, "race_id"), DELETE),
    ("classification complete string", CLASSIFICATION, ("complete",), "true"),
    # deadletter
    ("deadletter line 0", DEADLETTER, ("line",), 0),
    ("deadletter line string", DEADLETTER, ("line",), "17"),
    ("deadletter line bool", DEADLETTER, ("line",), True),
    ("deadletter error empty", DEADLETTER, ("error",), ""),
    ("deadletter error newline", DEADLETTER, ("error",), "bad\nthing"),
    ("deadletter error trailing newline", DEADLETTER, ("error",), "bad thing\n"),
    ("deadletter error leading newline", DEADLETTER, ("error",), "\nbad thing"),
    ("deadletter error CR", DEADLETTER, ("error",), "bad\rthing"),
    ("deadletter error missing", DEADLETTER, ("error",), DELETE),
    ("deadletter raw missing", DEADLETTER, ("raw",), DELETE),
    ("deadletter raw object", DEADLETTER, ("raw",), {"kind": "passing"}),
    ("deadletter line missing", DEADLETTER, ("line",), DELETE),
]


@pytest.mark.parametrize("base,path,value", [case[1:] for case in INVALID],
                         ids=[case[0] for case in INVALID])
def test_invalid_variant_rejected(base, path, value):
    validate(base)  # the base itself is valid
    with pytest.raises(ValidationError):
        validate(mutate(base, path, value))


@pytest.mark.parametrize("event", [
    None, [], "heartbeat", {}, {"v": 1}, {"kind": 1, "v": 1},
    {"kind": "lap", "v": 1, "t_us": 1}, {"kind": "Heartbeat", "v": 1, "t_us": 1},
])
def test_non_messages_rejected(event):
    with pytest.raises(ValidationError):
        validate(event)


def test_kind_must_match_the_schema():
    # A passing carries every heartbeat field, so only the `kind` const tells them apart.
    assert not validator_for("heartbeat").is_valid(PASSING)
    assert validator_for("heartbeat").is_valid(dict(PASSING, kind="heartbeat"))


def test_bool_is_not_an_integer_in_jsonschema():
    # jsonschema excludes bool from "integer" (bool subclasses int in Python); checked
    # against the plain validator too, not only this helper's strict one.
    plain = Draft202012Validator({"type": "integer"})
    assert plain.is_valid(1) and not plain.is_valid(True) and not plain.is_valid(False)
    assert not Draft202012Validator({"const": 1}).is_valid(True)
    assert not Draft202012Validator(load_schemas()["start"]).is_valid(dict(START, attempt=True))


def test_integral_float_is_an_integer_in_json_schema_but_not_for_the_helper():
    # JSON Schema: 1.0 is an integer, so the schema files accept it; the helper is stricter
    # and catches Python floats leaking into integer fields of the pipeline's output.
    plain = Draft202012Validator(load_schemas()["finish"])
    assert plain.is_valid(dict(FINISH, time_ms=34325.0))
    assert not is_valid(dict(FINISH, time_ms=34325.0))
    assert not is_valid(dict(HEARTBEAT, v=1.0))


# ------------------------------------------------------------- property tests

def _resolve(schema: dict, root: dict) -> tuple[dict, dict]:
    """Follow a $ref (local or to another kind's file); returns (schema, its root)."""
    while "$ref" in schema:
        target, _, pointer = schema["$ref"].partition("#")
        if target:
            root = load_schemas()[target.removesuffix(".schema.json")]
        schema = root
        for part in pointer.strip("/").split("/"):
            if part:
                schema = schema[part]
    return schema, root


def _walk(schema: dict, root: dict, instance: Any, path: tuple = ()) -> Iterator[tuple[str, tuple, dict]]:
    """Yield ("required", path, schema) for each present required field and
    ("integer", path, schema) for each integer-typed value, at any depth."""
    schema, root = _resolve(schema, root)
    types = schema.get("type")
    if types is None and "anyOf" in schema:
        types = [_resolve(s, root)[0].get("type") for s in schema["anyOf"]]
    if types == "integer" or (isinstance(types, list) and "integer" in types):
        yield "integer", path, schema
    if isinstance(instance, dict):
        for name in schema.get("required", []):
            if name in instance:
                yield "required", path + (name,), schema
        for name, sub in schema.get("properties", {}).items():
            if name in instance:
                yield from _walk(sub, root, instance[name], path + (name,))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, value in instance.items():
                if name not in schema.get("properties", {}):
                    yield from _walk(extra, root, value, path + (name,))
    elif isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            yield from _walk(schema["items"], root, item, path + (i,))


def _paths(event: dict, what: str) -> list[tuple]:
    root = load_schemas()[event["kind"]]
    return [p for w, p, _ in _walk(root, root, event) if w == what]


def _all_valid_samples() -> list[dict]:
    samples = list(VALID_SAMPLES)
    if EXAMPLE_FEED.exists():
        seen = set()
        for event in _feed_lines():
            if event["kind"] not in seen:  # one of each kind from the recorded feed
                seen.add(event["kind"])
                samples.append(event)
    return samples


SAMPLES = _all_valid_samples()
REQUIRED_CASES = [(e, p) for e in SAMPLES for p in _paths(e, "required")]
INTEGER_CASES = [(e, p) for e in SAMPLES for p in _paths(e, "integer")]


def test_walker_finds_nested_fields():
    assert ("competitors", 0, "skaters", 0, "transponders") in _paths(RACE_TP, "required")
    assert ("ranking", 0, "irm") in _paths(STANDINGS, "required")
    assert ("sprints", "4", 0) in _paths(RACE_MS, "integer")
    assert ("ranking", 2, "rank") in _paths(RESULT, "integer")
    assert len(REQUIRED_CASES) > 200 and len(INTEGER_CASES) > 100


@settings(max_examples=300)
@given(st.sampled_from(REQUIRED_CASES))
def test_dropping_any_required_field_invalidates(case):
    event, path = case
    assert not is_valid(mutate(event, path, DELETE)), path


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)


@settings(max_examples=300)
@given(st.sampled_from(INTEGER_CASES), st.one_of(
    st.booleans(), st.text(max_size=10),
    st.floats(allow_nan=False).filter(lambda f: not f.is_integer()), st.lists(st.integers(), max_size=2)))
def test_non_integer_where_integer_required_invalidates(case, value):
    event, path = case
    assert not is_valid(mutate(event, path, value)), (path, value)


@settings(max_examples=200)
@given(st.sampled_from(SAMPLES), json_values.filter(lambda x: not (type(x) is int and x == 1)))
def test_any_v_but_1_invalidates(event, v):
    assert not is_valid(dict(event, v=v))


@settings(max_examples=200)
@given(st.sampled_from(SAMPLES), st.text(min_size=1, max_size=12), json_values)
def test_unknown_extra_top_level_fields_are_allowed(event, name, value):
    known = load_schemas()[event["kind"]]["properties"]
    if name in known:
        return
    validate(dict(event, **{name: value}))


# ------------------------------------------------ an independent validator, offline

# Any download fails at once: every proxy points at a closed loopback port.
NO_NETWORK = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
              "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
              "ALL_PROXY": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}


def _check_jsonschema(*args: str) -> "subprocess.CompletedProcess[str]":
    exe = shutil.which("check-jsonschema")
    assert exe, "check-jsonschema is not installed: pip install -e '.[test]' (make deps)"
    return subprocess.run([exe, "--no-cache", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **NO_NETWORK})


@pytest.mark.parametrize("kind", sorted(RAW_KINDS | DERIVED_KINDS))
def test_check_jsonschema_validates_each_schema_file_offline(kind, tmp_path):
    """check-jsonschema (python-jsonschema through its own CLI and loader, the file as
    a path, no project registry) accepts every valid sample of the kind and rejects a
    broken one, with no network: every reference resolves from the file itself."""
    schema = SCHEMA_DIR / f"{kind}.schema.json"
    meta = _check_jsonschema("--check-metaschema", str(schema))
    assert meta.returncode == 0, meta.stdout + meta.stderr
    good = []
    for i, sample in enumerate(s for s in _all_valid_samples() if s["kind"] == kind):
        path = tmp_path / f"good{i}.json"
        path.write_text(json.dumps(sample))
        good.append(str(path))
    assert good
    ok = _check_jsonschema("--schemafile", str(schema), *good)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    sample = next(s for s in _all_valid_samples() if s["kind"] == kind)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({k: v for k, v in sample.items() if k != "kind"} | {"v": 2}))
    no = _check_jsonschema("--schemafile", str(schema), str(bad))
    assert no.returncode == 1, no.stdout + no.stderr
    assert "Unresolvable" not in no.stdout + no.stderr and "download" not in no.stdout + no.stderr


# ------------------------------------------------------ dead letters as recorded

header_text = st.one_of(st.none(), st.text(max_size=40), st.integers(-5, 10**12).map(str))


@settings(max_examples=300)
@given(value=st.binary(max_size=300), error=header_text, topic=header_text, partition=header_text,
       offset=header_text, key=st.one_of(st.none(), st.binary(max_size=20)))
def test_a_recorded_dead_letter_is_valid_whatever_the_record_holds(value, error, topic, partition,
                                                                  offset, key):
    """`lapstream record` turns any record of timing.deadletter (any bytes, headers
    missing or odd) into a line of the recorded shape, with the original bytes exact."""
    import base64

    from streams.deadletter import recorded_deadletter as deadletter_record

    headers = [(name, text.encode()) for name, text in (
        ("error", error), ("source-topic", topic), ("source-partition", partition),
        ("source-offset", offset)) if text is not None]
    line = deadletter_record(value, headers, key)
    validate(line)
    Draft202012Validator(load_schemas()["deadletter"]).validate(json.loads(json.dumps(line)))
    assert base64.b64decode(line["raw_b64"]) == value
    assert "\n" not in line["error"] and "\r" not in line["error"] and line["error"]
    if partition is not None and partition.isdigit() and partition.isascii():
        assert line["source_partition"] == int(partition)
    if error is not None and error.strip():
        assert line["error"] == " ".join(error.split())


def test_a_dead_letter_written_by_the_worker_is_recorded_with_its_coordinates():
    from streams.deadletter import recorded_deadletter as deadletter_record

    headers = [("error", b"passing: 'seq' is not an integer"), ("source-topic", b"timing.raw"),
               ("source-partition", b"4"), ("source-offset", b"1358")]
    line = deadletter_record(b'{"kind":"passing","seq":"x"}', headers, b"NSO")
    assert line == {"kind": "deadletter", "v": 1, "error": "passing: 'seq' is not an integer",
                    "raw": '{"kind":"passing","seq":"x"}',
                    "raw_b64": "eyJraW5kIjoicGFzc2luZyIsInNlcSI6IngifQ==",
                    "source_topic": "timing.raw", "source_partition": 4, "source_offset": 1358,
                    "key": "NSO"}
    validate(line)
    # neither shape: no line, no source coordinates
    with pytest.raises(ValidationError):
        validate({k: v for k, v in line.items() if not k.startswith("source_")})
    with pytest.raises(ValidationError):
        validate({k: v for k, v in DEADLETTER.items() if k != "line"})


# ------------------------------------------------ the contract document agrees

def test_the_contract_document_names_every_kind_field_and_topic():
    """docs/contract.md is read alone: every kind, every field of every schema, every
    topic and every header lapstream writes is in it, and so is every field name
    of the v1 contract (docs/feed-v1.md)."""
    import re

    from streams import topics as T

    repo = pathlib.Path(__file__).resolve().parents[1]
    doc = (repo / "docs" / "contract.md").read_text(encoding="utf-8")
    v1 = (repo / "docs" / "feed-v1.md").read_text(encoding="utf-8")

    def named(word: str) -> bool:
        return re.search(r"(?<![\w-])" + re.escape(word) + r"(?![\w-])", doc) is not None

    for kind, schema in load_schemas().items():
        assert f"`{kind}`" in doc, kind
        missing = [p for p in schema["properties"] if not named(p)]
        assert not missing, (kind, missing)
    for spec in T.ALL:
        assert f"`{spec.name}`" in doc, spec.name
    for header in ("lapstream-source", "error", "source-topic", "source-partition", "source-offset"):
        assert f"`{header}`" in doc, header
    missing = sorted(w for w in set(re.findall(r"`([a-z_]+)`", v1)) if not named(w))
    assert not missing, missing
    assert "(feed-v1.md)" in doc and "(docs/contract.md)" in (repo / "README.md").read_text(encoding="utf-8")


# ------------------------------------- every field the core emits is declared

def _emitted_events() -> Iterator[dict]:
    """Derived events of the example feed, a shipped Beijing feed and a simulated
    day with what makes rarer fields appear (a restart, a photo, a DQ, a record,
    a mass start, places for a classification)."""
    from streams.process import process_lines
    from streams.sim import (Decision, Photo, RaceSpec, RecordRef, Restart, SimOptions, VenueSpec,
                             individual, simulate)

    repo = pathlib.Path(__file__).resolve().parents[1]
    yield from process_lines(EXAMPLE_FEED.read_bytes().splitlines())
    yield from process_lines((repo / "streams" / "feeds" / "beijing2022-tpw-final-a.jsonl").read_bytes().splitlines())
    s = 1_000_000
    gun = 1_700_000_100_000_000

    def ind(i: int, t: int):
        return individual(f"S{i}", f"N{i}", "NED", [f"{i}01", f"{i}02"], target_us=t)

    races = [RaceSpec("R1", "C1", "WC", "individual", "M", 1000, gun, competitors=(ind(1, 68_500_000), ind(2, 69_100_000)),
                      restart=Restart(recall_after_us=40 * s, new_gun_after_us=120 * s),
                      photos=(Photo("S1", delta_us=-3000),), places=(1, 2)),
             RaceSpec("R2", "C1", "WC", "individual", "M", 1000, gun + 600 * s, group="R1",
                      competitors=(ind(3, 68_000_000), ind(4, 70_000_000)),
                      decisions=(Decision("DQ", competitor_id="S3"),), places=(3, 4)),
             RaceSpec("MS", "C1", "WC", "mass_start", "W", 6400, gun + 1200 * s,
                      competitors=tuple(ind(10 + i, 500_000_000 + i * 300_000) for i in range(4)))]
    ref = RecordRef("TR", "individual", "M", 1000, "NSO", "1:09.00", "X", "2020-01-01", "NSO")
    feed = simulate(VenueSpec("NSO", "Oval", t_us=gun - 100 * s), races, records=[ref], seed=1,
                    options=SimOptions.realistic())
    yield from process_lines([line.encode() for line in feed.lines])


def test_every_field_the_core_emits_is_declared_in_its_schema():
    """The schemas list every field lapstream adds (additionalProperties stays true,
    but a subscriber reads the schema to learn what it gets): top-level fields and
    those of ranking entries, of every derived kind the core emits."""
    schemas = load_schemas()
    undeclared: dict[str, set[str]] = {}
    kinds = set()
    for ev in _emitted_events():
        kind = ev["kind"]
        kinds.add(kind)
        schema = schemas[kind]
        Draft202012Validator(schema).validate(ev)
        undeclared.setdefault(kind, set()).update(set(ev) - set(schema["properties"]))
        ranking = schema["properties"].get("ranking")
        if ranking is not None:
            entry = ranking["items"]
            if "$ref" in entry:
                entry = schema["$defs"][entry["$ref"].rsplit("/", 1)[1]]
            for e in ev["ranking"]:
                undeclared.setdefault(kind + " entry", set()).update(set(e) - set(entry["properties"]))
    assert {"split", "finish", "incident", "record", "result", "standings", "classification"} <= kinds
    assert not {k: v for k, v in undeclared.items() if v}
