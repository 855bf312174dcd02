"""The gateway's state, positions, filters and resume backlog, without Kafka
(streams/gateway_state.py), on the shipped feeds' offline output and on
hypothesis-made orders and bytes; and the state topics' configuration."""
from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from streams import beijing
from streams import topics as T
from streams.gateway_state import (BadPosition, DERIVED_KINDS, Filter, GatewayState, RAW_INDEX,
                                   TOPIC_INDEX, decode_position, encode_position)
from streams.process import process_lines

FEEDS = [beijing.FINAL_A_FILE, beijing.WOMEN_FILE, beijing.MEN_FILE]
_CACHE: dict = {}


def feed(name):
    if name not in _CACHE:
        lines = (beijing.FEEDS_DIR / name).read_bytes().splitlines()
        _CACHE[name] = (lines, [e for e in process_lines(lines) if e["kind"] != "deadletter"])
    return _CACHE[name]


def partition_of(key: str, n: int = 12) -> int:
    return sum(key.encode()) % n    # any fixed function of the key: one key, one partition


def load(name, order=None):
    """A state fed like the gateway: raw set-ups, then each derived event at
    its topic's next offset on its key's partition."""
    lines, events = feed(name)
    s = GatewayState()
    for off, line in enumerate(lines):
        s.ingest_raw(line, 0, off)
    offsets: dict = {}
    for e in (order or events):
        topic = T.TOPIC_OF_KIND[e["kind"]]
        p = partition_of(T.key_of(e))
        o = offsets.get((topic, p), 0)
        offsets[(topic, p)] = o + 1
        s.ingest(topic, p, o, orjson.dumps(e))
    return s, events


# -- state topics ---------------------------------------------------------------------
def test_results_and_standings_topics_are_compacted_state_topics():
    for spec in (T.RESULTS, T.STANDINGS):
        assert spec.compacted, spec.name
        assert dict(spec.configs)["min.compaction.lag.ms"] == str(24 * 3600 * 1000)
    assert set(T.STATE) == {T.RESULTS, T.STANDINGS}
    # the other derived topics keep every event (they are changes, not state)
    for spec in (T.SPLITS, T.FINISHES, T.INCIDENTS, T.RECORDS):
        assert not spec.compacted


@pytest.mark.parametrize("name", FEEDS)
def test_latest_record_per_key_of_a_state_topic_is_the_whole_current_state(name):
    """What a compacted topic keeps (the last record per key) is the whole
    current state: revisions grow per key, and the last result of a race
    ranks every competitor of its start list; the last standings of a group
    every competitor of its races; the last classification every place."""
    lines, events = feed(name)
    starts = {}
    for ln in lines:
        m = orjson.loads(ln)
        if m.get("kind") == "race":
            starts[m["race_id"]] = m
    last: dict = {}
    for e in events:
        if T.TOPIC_OF_KIND[e["kind"]] in (T.RESULTS.name, T.STANDINGS.name):
            key = (e["kind"], T.key_of(e))
            if key in last and last[key]["kind"] == e["kind"]:
                assert e["revision"] > last[key]["revision"], key
            last[key] = e
    assert last
    for (kind, key), e in last.items():
        if kind == "result":
            want = {c["competitor_id"] for c in starts[key]["competitors"]}
            assert {r["competitor_id"] for r in e["ranking"]} == want, key
            assert e["status"] in ("official", "void")
        elif kind == "standings":
            races = [r for r in starts.values() if r.get("group", r["race_id"]) == key]
            want = {c["competitor_id"] for r in races for c in r["competitors"]}
            assert {r["competitor_id"] for r in e["ranking"]} == want, key
            assert e["complete"]
        else:
            places = [p for r in starts.values()
                      if f"{r['competition']}-{r['format']}-{r['gender']}-{r['distance_m']}" == key
                      for p in r.get("places", [])]
            assert [p["place"] for p in e["ranking"]] == sorted(places), key


# -- positions --------------------------------------------------------------------------
positions = st.dictionaries(st.tuples(st.integers(0, RAW_INDEX), st.integers(0, 63)),
                            st.integers(0, 2**62), max_size=40)


@given(positions)
def test_position_round_trips(pos):
    assert decode_position(encode_position(pos)) == pos


@given(st.one_of(st.text(max_size=60), st.from_regex(r"[0-9._²]{0,30}", fullmatch=True)))
def test_a_bad_position_is_refused_never_misread(text):
    try:
        pos = decode_position(text)
    except BadPosition:
        return
    assert all(set(part) <= set("0123456789.") for part in text.strip().split("_"))
    assert decode_position(encode_position(pos)) == pos


# -- state on the shipped feeds ---------------------------------------------------------
def test_final_a_state_is_the_official_result():
    s, _ = load(beijing.FINAL_A_FILE)
    (race,) = s.race_list()
    assert race["race_id"] == "OWG2022-TPW-FA" and race["status"] == "official" and race["venue"] == "NSO"
    d = s.races["OWG2022-TPW-FA"].detail()
    assert [(e["competitor_id"], e["time"]) for e in d["result"]["ranking"]] == [("CAN", "2:53.44"), ("JPN", "3:04.47")]
    assert [(r["competitor_id"], r["record"], r["time"]) for r in d["records"]] == [("CAN", "OR", "2:53.44")]
    assert [(i["skater_id"], i["status"]) for i in d["incidents"]] == [("JPN-TAKAGI-N", "confirmed")]
    teams = {c["competitor_id"]: c for c in d["latest_splits"]}
    assert teams["CAN"]["split"]["skater_id"] is None and teams["CAN"]["split"]["distance_m"] == 2400
    assert set(teams["JPN"]["skaters"]) == {"JPN-SATO", "JPN-TAKAGI-M", "JPN-TAKAGI-N"}
    assert all("transponders" not in sk for c in d["setup"]["competitors"] for sk in c["skaters"])
    assert s.standings["OWG2022-TPW-FA"]["complete"]
    assert [p["competitor_id"] for p in s.classifications["OWG2022-team_pursuit-W-2400"]["ranking"]] == ["CAN", "JPN"]


@pytest.mark.parametrize("name", [beijing.WOMEN_FILE, beijing.MEN_FILE])
def test_every_race_of_a_tournament_ends_official_with_its_last_result(name):
    s, events = load(name)
    last = {}
    for e in events:
        if e["kind"] == "result":
            last[e["race_id"]] = e
    assert {r["race_id"]: r["status"] for r in s.race_list()} == {k: v["status"] for k, v in last.items()}
    for rid, e in last.items():
        assert s.races[rid].result == e


# -- revisions, duplicates, attempts -------------------------------------------------------
def split(rev=None, final=None, eid=None, time_ms=10_000, attempt=1, dist=100):
    e = {"kind": "split", "v": 1, "event_id": eid or f"s{rev}-{time_ms}-{attempt}-{dist}", "race_id": "R",
         "t_us": 1, "attempt": attempt, "competitor_id": "A", "skater_id": "A", "distance_m": dist,
         "time_ms": time_ms, "time": "x", "lap_ms": None, "rank": 1, "behind_ms": 0}
    if rev is not None:
        e["revision"] = rev
    if final is not None:
        e["final"] = final
    return e


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.permutations(range(5)), st.booleans())
def test_the_newest_revision_is_current_whatever_the_arrival_order(order, with_final):
    s = GatewayState()
    for off, r in enumerate(order):
        ev = split(rev=r, final=(r == 4) if with_final else None, time_ms=10_000 + r)
        s.ingest(T.SPLITS.name, 0, off, orjson.dumps(ev))
    cur = s.races["R"].splits[("A", "A", 100)]
    assert cur["revision"] == 4 and cur["time_ms"] == 10_004


def test_events_without_revision_take_the_latest_and_duplicates_are_not_streamed():
    s = GatewayState()
    assert s.ingest(T.SPLITS.name, 0, 0, orjson.dumps(split(time_ms=1))) is not None
    assert s.ingest(T.SPLITS.name, 0, 1, orjson.dumps(split(time_ms=2))) is not None
    assert s.races["R"].splits[("A", "A", 100)]["time_ms"] == 2
    # a worker's re-emission after a crash: same event id, another offset
    assert s.ingest(T.SPLITS.name, 0, 2, orjson.dumps(split(time_ms=2))) is None
    assert len(s.log) == 2 and s.duplicates == 1 and s.position[(0, 0)] == 3


def test_a_restart_discards_the_earlier_attempt():
    s = GatewayState()
    s.ingest(T.SPLITS.name, 0, 0, orjson.dumps(split(attempt=1)))
    s.ingest(T.SPLITS.name, 0, 1, orjson.dumps(split(attempt=2, dist=200)))
    s.ingest(T.SPLITS.name, 0, 2, orjson.dumps(split(attempt=1, dist=300, eid="late")))
    assert list(s.races["R"].splits) == [("A", "A", 200)] and s.races["R"].attempt == 2


@settings(max_examples=150)
@given(st.binary(max_size=300), st.sampled_from([t.name for t in T.DERIVED]))
def test_any_bytes_on_a_topic_change_nothing_and_raise_nothing(data, topic):
    s = GatewayState()
    s.ingest_raw(data, 0, 0)
    s.ingest(topic, 0, 0, data)
    s.snapshot(Filter())
    s.race_list()


@settings(max_examples=150)
@given(st.dictionaries(st.sampled_from(["kind", "race_id", "group", "event", "revision", "event_id",
                                        "competitor_id", "distance_m", "attempt", "ranking", "record"]),
                       st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.text(max_size=5),
                                 st.sampled_from(list(DERIVED_KINDS)), st.lists(st.integers(-2**63, 2**63 - 1), max_size=2)),
                       max_size=11),
       st.sampled_from([t.name for t in T.DERIVED]))
def test_out_of_contract_objects_raise_nothing(obj, topic):
    s = GatewayState()
    s.ingest(topic, 0, 0, orjson.dumps(obj))
    s.ingest_raw(orjson.dumps({**obj, "competitors": obj.get("ranking")}), 0, 0)
    for r in s.races.values():
        r.detail()
    s.snapshot(Filter())


def test_a_tombstone_on_the_raw_topic_is_skipped():
    s = GatewayState()
    assert s.ingest_raw(None, 0, 0) is None and s.ingest_raw(b"", 0, 1) is None


@settings(max_examples=150)
@given(st.sampled_from(["group", "competitors", "venue", "race_id", "places", "format"]),
       st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.text(max_size=5), st.booleans(),
                 st.lists(st.text(max_size=3), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(-2**63, 2**63 - 1),
                                                                           max_size=2)))
def test_a_set_up_the_core_refuses_is_not_kept_and_breaks_no_client(field_name, value):
    """A race set-up with a field of the wrong type (which the core dead-letters)
    is not kept: snapshots, details and filters by group go on working."""
    from tests.gatewaykit import feed_lines

    s = GatewayState()
    race = next(orjson.loads(ln) for ln in feed_lines("beijing2022-tpw-final-a.jsonl") if b'"kind":"race"' in ln)
    bad = {**race, "race_id": "BAD", field_name: value}
    s.ingest_raw(orjson.dumps(bad), 0, 0)
    flt = Filter(groups={"G"})
    s.snapshot(Filter())
    s.snapshot(flt)
    for r in s.races.values():
        r.detail()
    s.race_list()
    s.backlog({}, flt)
    s.ingest(T.SPLITS.name, 0, 0, orjson.dumps({"kind": "split", "v": 1, "event_id": "x", "race_id": "BAD",
                                                 "group": ["a"], "competitor_id": "A", "distance_m": 200}))
    s.backlog({}, flt)


# -- resume ------------------------------------------------------------------------------------
def stream_ids(items):
    return [it.event.get("event_id") or (it.kind, it.offset) for it in items]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_resuming_from_any_position_gives_exactly_the_events_not_yet_sent(data):
    """A client sent the first k matching events (in the gateway's arrival
    order, partitions interleaved at random) resumes with the position after
    them and gets exactly the others, in the same order."""
    lines, events = feed(beijing.FINAL_A_FILE)
    rnd = random.Random(data.draw(st.integers(0, 2**32)))
    # interleave the per-topic sequences at random (keys keep their order)
    queues = {}
    for e in events:
        queues.setdefault(T.TOPIC_OF_KIND[e["kind"]], []).append(e)
    order = []
    while any(queues.values()):
        topic = rnd.choice([t for t, q in queues.items() if q])
        order.append(queues[topic].pop(0))
    s, _ = load(beijing.FINAL_A_FILE, order)
    flt = data.draw(st.sampled_from([Filter(), Filter(kinds=["split"]), Filter(races=["OWG2022-TPW-FA"]),
                                     Filter(kinds=["result", "standings", "classification"]),
                                     Filter(groups=["OWG2022-TPW-FA"]), Filter(venues=["NSO"])]))
    everything = s.backlog({}, flt)
    k = data.draw(st.integers(0, len(everything)))
    pos: dict = {}
    for it in everything[:k]:
        pos[(it.topic, it.partition)] = it.offset + 1
    rest = s.backlog(decode_position(encode_position(pos)), flt)
    assert stream_ids(rest) == stream_ids(everything[k:])


def test_filters_select_by_race_venue_group_and_kind():
    s, events = load(beijing.WOMEN_FILE)
    fa = s.backlog({}, Filter(races=["OWG2022-TPW-FA"]))
    assert {it.race_id for it in fa if it.race_id} == {"OWG2022-TPW-FA"}
    assert {it.kind for it in fa} >= {"race", "split", "result", "standings", "classification"}
    only = s.backlog({}, Filter(kinds=["incident"]))
    assert [it.event["event_id"] for it in only] == [e["event_id"] for e in events if e["kind"] == "incident"]
    assert s.backlog({}, Filter(venues=["NOWHERE"])) == []
    qf = [r for r in s.race_list() if "QF" in r["race_id"]]
    g = qf[0]["group"]
    grp = s.backlog({}, Filter(groups=[g]))
    assert {it.race_id for it in grp if it.race_id} == {r["race_id"] for r in s.race_list() if r["group"] == g}
    with pytest.raises(ValueError):
        Filter(kinds=["nonsense"])


def test_a_trimmed_log_asks_for_a_new_snapshot():
    lines, events = feed(beijing.FINAL_A_FILE)
    s = GatewayState(max_log=50)
    for off, e in enumerate(events):
        s.ingest(T.TOPIC_OF_KIND[e["kind"]], 0, off, orjson.dumps(e))
    assert len(s.log) == 50
    assert s.backlog({}, Filter()) is None
    assert len(s.backlog(dict(s.position), Filter())) == 0
    assert TOPIC_INDEX[T.RAW.name] == RAW_INDEX


def test_a_mass_start_lists_its_sprint_splits_for_the_points_so_far():
    from tests import msgs as M

    gun = M.T0 + 60 * M.S
    race = M.race("MS", [M.comp(n, 0) for n in ("A", "B", "C")], fmt="mass_start", distance=6400, laps=16)
    reads = [M.read(f"{n}-T1", at, gun + (lap - 1) * 30 * M.S + (at or 400) * 75_000 + i * 5_000)
             for lap in range(1, 10) for at in (100, 200, 300, 0) for i, n in enumerate(("C", "B", "A"))]
    msgs = [M.venue(), race, M.start("MS", gun)] + M.by_time(reads + M.heartbeats(gun, gun + 280 * M.S))
    s = GatewayState()
    for off, m in enumerate(msgs):
        s.ingest_raw(orjson.dumps(m), 0, off)
    for off, e in enumerate(process_lines(M.lines(msgs))):
        s.ingest(T.TOPIC_OF_KIND[e["kind"]], 0, off, orjson.dumps(e))
    d = s.race_detail(s.races["MS"])
    at = [(e["distance_m"], e["competitor_id"]) for e in d["sprint_splits"]]
    assert at == [(1600, "C"), (1600, "B"), (1600, "A"), (3200, "C"), (3200, "B"), (3200, "A")]
    assert "sprint_splits" not in s.race_detail(load(beijing.FINAL_A_FILE)[0].races["OWG2022-TPW-FA"])


def test_serve_is_a_lapstream_command():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "streams.cli", "serve", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0
    for flag in ("--broker", "--host", "--port", "--cors-origin", "--queue-size", "--send-buffer",
                 "--heartbeat", "--max-log"):
        assert flag in out.stdout
    assert "127.0.0.1" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "streams.cli", "serve", "--broker", "embedded"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "lapstream broker" in bad.stderr
