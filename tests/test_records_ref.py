"""A record lapstream set and then took back is a tombstone on timing.records.ref.

In memory: the key of lapstream's own references (unambiguous, read back),
what the adapter publishes for a record set and for one withdrawn, the core
taking back another venue's claim from the withdrawal the adapter builds of
a tombstone, malformed tombstones dead-lettered, the older ``withdrawn:
true`` reference still accepted, and the recorded tombstone line that
``lapstream replay`` produces again. tests/test_records_ref_live.py runs it
on a real broker with two workers.
"""
from __future__ import annotations

import asyncio

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from agents.core.engine import (encode_own_key, own_record_key, own_ref_update, parse_own_record_key,
                                record_key, record_ref_of)
from agents.core.timefmt import fmt_hundredths
from agents.live import LiveAdapter, RefLog
from schemas.decode import Rejected
from streams.process import Processor
from streams.replay import route
from streams.tombstones import tombstone_line, tombstone_of_line, withdrawal_of_tombstone
from streams.topics import DEADLETTER, RECORDS_REF
from tests import msgs as M
from tests.msgs import S, T0

PROFILE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# any text, with the characters the key uses weighted in
texts = st.text(alphabet=st.one_of(st.sampled_from("|\\e"), st.characters(codec="utf-8")), max_size=12)
fields = st.tuples(texts, texts, texts, st.integers(min_value=-10**12, max_value=10**12),
                   st.none() | texts, st.none() | texts, texts)


# -- the key ------------------------------------------------------------------------


@PROFILE
@given(f=fields)
def test_an_own_key_reads_back_to_its_fields(f):
    key = encode_own_key(*f)
    rec, fmt, gender, dist, scope, race_id, holder = f
    assert parse_own_record_key(key) == ((rec, fmt, gender, dist, scope), race_id, holder)


@PROFILE
@given(a=fields, b=fields)
def test_two_claims_never_share_a_key(a, b):
    assert (encode_own_key(*a) == encode_own_key(*b)) == (a == b)


@PROFILE
@given(text=st.text(alphabet=st.one_of(st.sampled_from("|\\e0-5 "), st.characters()), max_size=40))
def test_any_text_is_an_own_key_exactly_as_written_or_none(text):
    got = parse_own_record_key(text)
    if got is not None:
        (rec, fmt, gender, dist, scope), race_id, holder = got
        assert encode_own_key(rec, fmt, gender, dist, scope, race_id, holder) == text


def test_the_key_of_a_plain_claim_is_the_one_before_the_escapes():
    # a tombstone under it deletes a reference an older version published
    assert encode_own_key("WR", "individual", "M", 500, None, "R1", "NED-A") == "WR|individual|M|500||R1|NED-A"
    assert encode_own_key("OR", "team_pursuit", "W", 2400, "OWG", "OWG2022-TPW-FA", "CAN") == \
        "OR|team_pursuit|W|2400|OWG|OWG2022-TPW-FA|CAN"
    # what was ambiguous is not any more
    assert encode_own_key("NR", "individual", "M", 500, "A|B", "R", "H") != \
        encode_own_key("NR", "individual", "M", 500, "A", "B|R", "H")
    assert encode_own_key("WR", "individual", "M", 500, None, "R", "H") != \
        encode_own_key("WR", "individual", "M", 500, "", "R", "H")
    for bad in ("WR|individual|M|500||R1", "WR|individual|M|0500||R1|H", "WR|individual|M| 500||R1|H",
                "WR|individual|M|500||R1|H\\", "WR|individual|M|500||R1|\\x", "WR|individual|M|1_000||R|H",
                "WR|individual|M|500||R1|"):
        assert parse_own_record_key(bad) is None, bad


def test_the_federations_keys_are_unchanged():
    assert record_key("WR", "individual", "M", 500, None) == "WR|individual|M|500|"
    assert record_key("OR", "team_pursuit", "W", 2400, "OWG") == "OR|team_pursuit|W|2400|OWG"
    assert parse_own_record_key("OR|team_pursuit|W|2400|OWG") is None
    fed = M.record_ref("WR", "40.00", "OLD")
    assert route(orjson.dumps(fed), {}, None) == (RECORDS_REF.name, b"WR|individual|M|500|", T0)
    own = {**fed, "origin": "lapstream", "race_id": "R|1", "holder": "A"}
    assert route(orjson.dumps(own), {}, None)[1] == own_record_key(own).encode()


# -- what the adapter publishes -----------------------------------------------------


def _dq_feed():
    """At OVL: a WR by A (set, then A disqualified) and an equalled one by B."""
    g1 = T0 + 60 * S
    r1 = M.race("R1", [M.comp("A", 300), M.comp("B", 300)], group="G")
    ra, ta = M.skate("A", 300, g1, 500, per100_s=6.0)     # 33.50: a WR, later disqualified
    rb, _ = M.skate("B", 300, g1, 500, per100_s=6.4)      # 35.10
    return [M.venue(), M.record_ref("WR", "40.00", "OLD"), r1, M.start("R1", g1)] + \
        M.by_time(ra + rb + M.heartbeats(g1, g1 + 50 * S)) + \
        [M.decision("R1", "DQ", g1 + 60 * S, competitor_id="A")], ta


class Log:
    def __init__(self):
        self.sent = []

    async def send(self, topic, key, value, headers):
        self.sent.append((topic, key, value, headers))

    async def rebuild(self, partition, start, end):
        return
        yield


def _adapter_run(msgs):
    log = Log()

    async def go():
        a = LiveAdapter(log.send, log.rebuild)
        for off, m in enumerate(msgs):
            raw = orjson.dumps(m)
            if m["kind"] == "record_ref":
                assert a.on_ref(raw) is None
            else:
                await a.on_raw(0, off, b"OVL", raw)
        return a
    return asyncio.run(go()), log


def test_a_disqualified_record_is_a_tombstone_under_its_own_key():
    feed, _ = _dq_feed()
    _, log = _adapter_run(feed)
    refs = [(k, v) for t, k, v, _ in log.sent if t == RECORDS_REF.name]
    key = encode_own_key("WR", "individual", "M", 500, None, "R1", "A").encode()
    assert [k for k, _ in refs][:2] == [key, key]
    assert refs[1][1] is None                                  # the tombstone: no value
    first = orjson.loads(refs[0][1])
    assert first["kind"] == "record_ref" and first["holder"] == "A" and first["withdrawn"] is False
    # a plain v1 consumer never reads a withdrawn record as a record_ref
    assert not any(v is not None and orjson.loads(v).get("withdrawn") for _, v in refs)
    # B's record after A's went (35.10 under 40.00) is the reference now
    assert refs[2][0] == encode_own_key("WR", "individual", "M", 500, None, "R1", "B").encode()
    assert orjson.loads(refs[2][1])["time"] == "35.10"
    # the fact for subscribers is the record event with withdrawn: true
    recs = [orjson.loads(v) for t, _, v, _ in log.sent if t == "timing.records"]
    assert [(r["competitor_id"], r["withdrawn"]) for r in recs if r["final"]] == \
        [("A", False), ("A", True), ("B", False)]


def _record(**kw):
    ev = {"kind": "record", "t_us": 5, "record": "WR", "format": "individual", "gender": "M", "distance_m": 500,
          "scope": None, "time": "33.50", "holder": "A", "set_on": "2020-01-01", "venue": "OVL",
          "race_id": "R1", "event_id": "e", "equalled": False, "withdrawn": False, "final": True, "revision": 0}
    ev.update(kw)
    return ev


def test_what_each_record_event_puts_on_the_reference_topic():
    key = encode_own_key("WR", "individual", "M", 500, None, "R1", "A")
    assert own_ref_update(_record()) == (key, record_ref_of(_record()))
    assert own_ref_update(_record(withdrawn=True)) == (key, None)
    assert own_ref_update(_record(withdrawn=True, equalled=True, revision=1)) == (key, None)
    assert own_ref_update(_record(final=False)) is None                 # provisional
    assert own_ref_update(_record(equalled=True)) is None               # never a reference
    # equalled after a revision: it may have been a broken record, published
    assert own_ref_update(_record(equalled=True, revision=2)) == (key, None)
    assert record_ref_of(_record(withdrawn=True)) is None


# -- another venue: the claim, and the tombstone that takes it back ---------------------


def _far_feed(rid, gun, cid="C", per100_s=6.2):
    """At FAR: one skater at 34.30 (under OLD's 40.00, not under A's 33.50)."""
    race = M.race(rid, [M.comp(cid, 300)], venue_id="FAR", t=gun - 30 * S)
    reads, _ = M.skate(cid, 300, gun, 500, per100_s=per100_s)
    body = [dict(m, venue="FAR") for m in M.by_time(reads + M.heartbeats(gun - 5 * S, gun + 50 * S))]
    return [race, M.start(rid, gun, venue_id="FAR")] + body


def _claim(ta_500):
    fin = ta_500 - (T0 + 60 * S)
    th = fin // 10_000
    return {**M.record_ref("WR", fmt_hundredths(th), "A", t=ta_500), "origin": "lapstream",
            "race_id": "R1", "venue": "OVL", "set_on": "2020-01-01"}


def test_the_core_takes_back_a_claim_from_the_withdrawal_of_a_tombstone():
    _, ta = _dq_feed()
    claim = _claim(ta[500])
    start = [M.venue("FAR"), M.record_ref("WR", "40.00", "OLD"), claim]
    proc = Processor()
    for m in start + _far_feed("F0", T0 + 200 * S, cid="D"):
        proc.handle(orjson.dumps(m))
    ident = ("WR", "individual", "M", 500, None)
    assert list(proc.engine.foreign[ident]) == [("R1", "A")]
    msg = withdrawal_of_tombstone(own_record_key(claim).encode())
    assert msg["kind"] == "record_ref" and msg["withdrawn"] is True and "time" not in msg
    events, rej = proc.handle_msg(msg)
    assert (events, rej) == ([], None) and proc.engine.foreign[ident] == {}
    assert proc.handle_msg(msg) == ([], None) and proc.outcome == "duplicate"
    events = []
    for m in _far_feed("F1", T0 + 400 * S):
        events += proc.handle(orjson.dumps(m))[0]
    events += proc.flush()
    # D was judged against A's claim (no record); with the claim gone it is judged
    # again, at the next raw message (a reference's own events would not be published
    # live), as a rebuild given the references would judge it: a WR against OLD's;
    # C's same 34.30 after it equals D's
    recs = [(e["competitor_id"], e["previous_holder"], e["equalled"]) for e in events
            if e["kind"] == "record" and e["final"]]
    assert recs == [("D", "OLD", False), ("C", "D", True)]
    first = next(e for e in events if e["kind"] == "record")
    assert first["competitor_id"] == "D" and first["revision"] == 0 and first["race_id"] == "F0"
    assert [e["ranking"][0]["records"] for e in events if e["kind"] == "result" and e["race_id"] == "F0"] == [["WR"]]


def test_offline_the_recorded_tombstone_line_does_what_the_tombstone_does_live():
    _, ta = _dq_feed()
    claim = _claim(ta[500])
    tomb = orjson.loads(tombstone_line(RECORDS_REF.name, own_record_key(claim).encode()))
    base = [M.venue("FAR"), M.record_ref("WR", "40.00", "OLD"), claim]
    held = M.run(base + _far_feed("F1", T0 + 400 * S))
    back = M.run(base + [tomb] + _far_feed("F1", T0 + 400 * S))
    assert [e for e in held if e["kind"] == "record"] == []
    assert [(e["competitor_id"], e["previous_holder"], e["final"]) for e in back if e["kind"] == "record"] == \
        [("C", "OLD", False), ("C", "OLD", True)]
    # and the older version's record_ref with withdrawn: true still does it
    old = M.run(base + [{**claim, "withdrawn": True}] + _far_feed("F1", T0 + 400 * S))
    assert old == back
    # a tombstone line whose key is not ours is a dead letter, and changes nothing
    junk = {**tomb, "key": "WR|individual|M|500|", "key_b64": None}
    out = M.run(base + [junk] + _far_feed("F1", T0 + 400 * S))
    assert [e["kind"] for e in out if e["kind"] == "deadletter"] == ["deadletter"]
    assert [e for e in out if e["kind"] != "deadletter"] == held


def test_the_adapter_lets_every_processor_and_the_reference_log_go_of_the_claim():
    _, ta = _dq_feed()
    claim = _claim(ta[500])
    log = Log()

    async def go():
        a = LiveAdapter(log.send, log.rebuild)
        for m in [M.record_ref("WR", "40.00", "OLD"), claim]:
            assert await a.on_ref_record(0, 0, b"k", orjson.dumps(m)) is None
        for off, m in enumerate([M.venue("FAR")] + _far_feed("F0", T0 + 200 * S, cid="D")):
            await a.on_raw(3, off, b"FAR", orjson.dumps(m))
        assert len(a.refs) == 2
        assert await a.on_ref_record(0, 2, own_record_key(claim).encode(), None) is None
        assert len(a.refs) == 1                 # as compaction keeps it: the federation's word only
        assert a.procs[3].engine.foreign[("WR", "individual", "M", 500, None)] == {}
        n = 1 + len(_far_feed("F0", T0 + 200 * S))
        for off, m in enumerate(_far_feed("F1", T0 + 400 * S), n):
            await a.on_raw(3, off, b"FAR", orjson.dumps(m))
        # a processor built now (another partition) from the log holds no claim either
        await a.on_raw(5, 0, b"X", orjson.dumps(M.venue("X")))
        assert not any(a.procs[5].engine.foreign.values())
    asyncio.run(go())
    recs = [orjson.loads(v) for t, _, v, _ in log.sent if t == "timing.records"]
    # D (judged against the claim: no record) is judged again without it at the next raw
    # message, and published: a WR against OLD's; C then equals D's
    assert [(r["competitor_id"], r["previous_holder"]) for r in recs if r["final"]] == [("D", "OLD"), ("C", "D")]
    assert not [s for s in log.sent if s[0] == DEADLETTER.name]


keys = st.one_of(st.none(), st.binary(max_size=60),
                 fields.map(lambda f: encode_own_key(*f).encode()),
                 st.sampled_from([b"WR|individual|M|500|", b"WR|individual|M|500||R1|A", b"XX|individual|M|500||R|A",
                                  b"OR|team_pursuit|W|2400|WCH|R|CAN", b"PB|mass_start|M|500|P|R|P"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=keys)
def test_a_tombstone_with_any_key_is_a_withdrawal_or_a_dead_letter_never_a_crash(key):
    log = Log()

    async def go():
        a = LiveAdapter(log.send, log.rebuild)
        a.on_ref(orjson.dumps(M.record_ref("WR", "40.00", "OLD")))
        await a.on_raw(0, 0, b"OVL", orjson.dumps(M.venue()))
        return await a.on_ref_record(0, 9, key, None)
    rej = asyncio.run(go())
    try:
        ok = withdrawal_of_tombstone(key)
    except Rejected:
        ok = None
    dead = [(k, v, dict(h)) for t, k, v, h in log.sent if t == DEADLETTER.name]
    if ok is not None:
        assert rej is None and dead == []
        (rec, fmt, gender, dist, scope), race_id, holder = parse_own_record_key(key.decode())
        assert (ok["record"], ok["scope"], ok["race_id"], ok["holder"]) == (rec, scope, race_id, holder)
    else:
        assert rej is not None and "\n" not in str(rej)
        assert len(dead) == 1
        k, v, h = dead[0]
        assert k == (key[:1024] if key is not None else None) and v == b""
        assert h["null-value"] == b"true" and h["source-topic"] == RECORDS_REF.name.encode()
        assert h["source-offset"] == b"9" and h["error"]


def test_a_wellformed_key_of_no_record_identity_is_refused():
    for key in (b"XX|individual|M|500||R|A", b"WR|individual|M|500|X|R|A", b"OR|individual|M|500|WCH|R|A",
                b"PB|team_pursuit|M|500|P|R|A", b"WR|relay|M|500||R|A",
                b"WR|individual|W|-5||R1|X", b"WR|individual|W|0||R1|X", b"WR|individual|\\e|500||R|A",
                b"TR|individual|M|500|\\e|R|A"):
        with pytest.raises(Rejected):
            withdrawal_of_tombstone(key)
    with pytest.raises(Rejected):
        withdrawal_of_tombstone(b"\xff\xfe")


# -- the reference log is what the compacted topic keeps -----------------------------


def test_the_reference_log_forgets_a_withdrawn_claim_whichever_way_it_came():
    _, ta = _dq_feed()
    claim = _claim(ta[500])
    for withdraw in ("tombstone", "old"):
        log = RefLog()
        fed = M.record_ref("WR", "40.00", "OLD")
        log.add(orjson.dumps(fed), fed)
        log.add(orjson.dumps(claim), claim)
        assert len(log) == 2
        if withdraw == "old":
            log.add(orjson.dumps({**claim, "withdrawn": True}), {**claim, "withdrawn": True})
        else:
            m = withdrawal_of_tombstone(own_record_key(claim).encode())
            log.forget((m["record"], m["format"], m["gender"], m["distance_m"], m["scope"]), m["race_id"],
                       m["holder"])
        assert list(log) == [orjson.dumps(fed)]


# -- record and replay ---------------------------------------------------------------


@PROFILE
@given(key=st.binary(max_size=80))
def test_a_recorded_tombstone_line_is_replayed_as_the_same_tombstone(key):
    line = tombstone_line(RECORDS_REF.name, key)
    assert b"\n" not in line
    assert tombstone_of_line(orjson.loads(line)) == (RECORDS_REF.name, key)


def test_only_tombstones_of_the_reference_topic_are_replayed_as_tombstones():
    line = orjson.loads(tombstone_line("timing.results", b"R1"))
    assert tombstone_of_line(line) is None
    assert tombstone_of_line(orjson.loads(tombstone_line(RECORDS_REF.name, None))) is None
    assert tombstone_of_line({"kind": "tombstone", "topic": RECORDS_REF.name, "key_b64": "!!"}) is None
    assert tombstone_of_line(M.record_ref("WR", "40.00", "OLD")) is None

