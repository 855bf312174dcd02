"""A ``record_ref`` belongs on ``timing.records.ref`` (docs/contract.md: the
raw topic carries every kind but ``record_ref``). One produced to
``timing.raw`` is dead-lettered by the live adapter with a reason naming the
right topic and changes nothing (it would otherwise reach only its venue's
partition), also when the partition is rebuilt; a recorded feed is not
Kafka: ``lapstream process`` still applies its ``record_ref`` lines and
``lapstream replay`` routes them to ``timing.records.ref``."""
from __future__ import annotations

import asyncio

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st

from streams import topics as T
from streams.process import process_lines
from streams.replay import route
from streams.topics import DEADLETTER
from tests.msgs import canon
from tests.test_faults import CLEAN, FEED, RAW, REFS, Log, adapter_for, derived

PROFILE = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T_US = orjson.loads(RAW[0])["t_us"]

ref = st.builds(
    lambda rec, scope, m, s, h, holder, own, withdrawn: {
        "kind": "record_ref", "v": 1, "t_us": T_US, "record": rec, "format": "team_pursuit", "gender": "W",
        "distance_m": 2400, "scope": scope, "time": f"{m}:{s:02d}.{h:02d}", "holder": holder,
        "set_on": "2022-02-15", "venue": "NSO",
        **({"origin": "lapstream", "race_id": "OWG2022-TPW-FA"} if own else {}),
        **({"withdrawn": True} if own and withdrawn else {})},
    st.sampled_from(["WR", "OR", "TR"]), st.sampled_from([None, "OWG"]), st.integers(2, 3),
    st.integers(0, 59), st.integers(0, 99), st.sampled_from(["JPN", "CAN", "NED", "XXX"]),
    st.booleans(), st.booleans())


@PROFILE
@given(st.lists(st.tuples(st.integers(0, len(RAW)), ref), min_size=1, max_size=4),
       st.one_of(st.none(), st.integers(1, len(RAW))))
def test_a_record_ref_on_the_raw_topic_is_dead_lettered_and_changes_nothing(refs, crash_at):
    records = list(RAW)
    inserted = []
    for at, msg in sorted(refs, key=lambda r: -r[0]):
        b = orjson.dumps(msg)
        records.insert(at, b)
        inserted.append(b)
    log = Log(records)

    async def go():
        a = adapter_for(log)
        for off, rec in enumerate(records):
            if crash_at is not None and off == crash_at:
                a = adapter_for(log)      # kill -9: the partition is rebuilt from the log
            await a.on_raw(0, off, b"NSO", rec)
    asyncio.run(go())
    dead = [(v, dict(h)) for t, _, v, h in log.sent if t == DEADLETTER.name]
    assert sorted(v for v, _ in dead) == sorted(inserted)
    for v, h in dead:
        assert h["source-topic"] == T.RAW.name.encode()
        err = h["error"].decode()
        assert "timing.records.ref" in err and "\n" not in err
    assert canon(derived(log)) == canon(CLEAN)
    # a recorded feed holding them: replay sends each to timing.records.ref
    for b in inserted:
        assert route(b, {}, None)[0] == T.RECORDS_REF.name


def test_a_recorded_feed_still_applies_its_record_refs_offline():
    """The same kind of line that is refused on timing.raw counts offline: a
    faster Olympic record in the feed takes Canada's Olympic record away."""
    faster = orjson.dumps({"kind": "record_ref", "v": 1, "t_us": T_US, "record": "OR", "format": "team_pursuit",
                           "gender": "W", "distance_m": 2400, "scope": "OWG", "time": "2:40.00",
                           "holder": "XXX", "set_on": "2022-02-13", "venue": "NSO"})
    out = list(process_lines(REFS + [faster] + RAW))
    assert not [e for e in out if e["kind"] == "deadletter"]
    ors = [e for e in CLEAN if e["kind"] == "record" and e["record"] == "OR" and not e.get("withdrawn")]
    assert ors, "the final A sets an Olympic record"
    assert not [e for e in out if e["kind"] == "record" and e["record"] == "OR" and not e.get("withdrawn")]
    # and live, on timing.records.ref where it belongs, it counts too
    log = Log(RAW)

    async def go():
        a = adapter_for(log)
        assert a.on_ref(faster) is None
        for off, rec in enumerate(RAW):
            await a.on_raw(0, off, b"NSO", rec)
    asyncio.run(go())
    assert canon(derived(log)) == canon([e for e in out if e["kind"] != "deadletter"])
    assert not [1 for t, *_ in log.sent if t == DEADLETTER.name]
    assert FEED  # (the shipped feed holds its references first: REFS)
