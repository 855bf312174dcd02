"""A record taken back is a tombstone on timing.records.ref: live, two workers.

A real broker on loopback and two ``lapstream worker`` processes, each
owning the partition of one venue. At venue 1 (worker 1) skater A breaks the
WR: the reference goes to ``timing.records.ref`` under its own key, and
worker 2 judges a race at venue 2 against it. A is disqualified: a
tombstone under that key (never a ``record_ref`` with ``withdrawn``), and
worker 2 judges again, at its next raw message, the race it judged against
A's record (D, under the federation's WR, now holds it: published by worker
2, as a rebuild given the references would judge it), and its next race
against D's. What
``lapstream record`` wrote of the topic, replayed, gives the same records
(the tombstone too).
"""
from __future__ import annotations

import asyncio
import base64
import io
import re
import time

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2

from agents.core.engine import encode_own_key
from streams import topics as T
from streams.replay import record, replay
from tests import livekit as L
from tests import msgs as M
from tests.msgs import S, T0

pytestmark = [pytest.mark.timeout(600), pytest.mark.live]

DEADLINE_S = 120


@pytest.fixture
def stack():
    tmp = L.tmpdir()
    broker = L.start_broker(tmp)
    workers = []

    def worker(wid):
        w = L.Worker(broker.bootstrap, tmp, wid).start()
        workers.append(w)
        return w

    yield broker, worker
    for w in workers:
        w.stop()
    broker.stop()


def partition_of(key: str) -> int:
    """The partition a keyed record goes to (the Kafka clients' default partitioner)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % T.RAW.partitions


def ready(w) -> dict:
    return orjson.loads(w.get("/readyz"))


def wait_for(cond, what: str, timeout: float = DEADLINE_S):
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.3)


def refs_topic(bootstrap: str, start: int = 0) -> list[tuple[int, bytes | None, bytes | None]]:
    """(offset, key, value) of timing.records.ref from ``start`` to its end."""
    async def go():
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        await c.start()
        try:
            tp = TopicPartition(T.RECORDS_REF.name, 0)
            c.assign([tp])
            c.seek(tp, start)
            end = (await c.end_offsets([tp]))[tp]
            out = []
            while True:
                batch = await c.getmany(tp, timeout_ms=300)
                recs = batch.get(tp, [])
                out += [(r.offset, r.key, r.value) for r in recs]
                if not recs and await c.position(tp) >= end:
                    return out
        finally:
            await c.stop()
    return asyncio.run(go())


def derived(bootstrap: str, topics) -> list[dict]:
    async def go():
        buf = io.BytesIO()
        await record(bootstrap, buf, topics, idle_exit_s=1.0)
        return buf.getvalue()
    return [orjson.loads(ln) for ln in go_run(go).splitlines() if ln]


def go_run(f):
    return asyncio.run(f())


def race_at(vid: str, rid: str, cid: str, gun: int, per100_s: float) -> list[dict]:
    """One skater over 500 m at venue ``vid``, closed by heartbeats and OFFICIAL."""
    race = M.race(rid, [M.comp(cid, 300)], venue_id=vid, t=gun - 30 * S)
    reads, _ = M.skate(cid, 300, gun, 500, per100_s=per100_s)
    body = [dict(m, venue=vid) for m in M.by_time(reads + M.heartbeats(gun - 5 * S, gun + 50 * S))]
    return [race, M.start(rid, gun, venue_id=vid)] + body + [M.decision(rid, "OFFICIAL", gun + 51 * S)]


def send(bootstrap: str, msgs: list[dict]) -> None:
    L.replay_lines(bootstrap, M.lines(msgs))


def applied_refs(w) -> int:
    return ready(w).get("refs_next_offset", {}).get("0", 0)


def finals(events, kind, race_id):
    return [e for e in events if e["kind"] == kind and e["race_id"] == race_id and e.get("final", True)]


def test_a_disqualified_record_is_a_tombstone_and_the_other_venue_judges_again_without_it(stack):
    broker, worker = stack
    boot = broker.bootstrap
    w1 = worker("w1")
    w1.wait_ready()
    w2 = worker("w2")
    w2.wait_ready()
    # the group settled: each worker owns partitions, none twice, all of them
    parts = wait_for(lambda: (lambda p: p if p[0] and p[1] and not p[0] & p[1]
                              and len(p[0] | p[1]) == T.RAW.partitions else None)(
        [set(ready(w)["partitions"]) for w in (w1, w2)]), "both workers own partitions")
    v1 = next(v for v in (f"VA{i}" for i in range(1000)) if partition_of(v) in parts[0])
    v2 = next(v for v in (f"VB{i}" for i in range(1000)) if partition_of(v) in parts[1])

    # venue 1: A breaks the federation's WR (40.00) in 33.50
    g1 = T0 + 60 * S
    send(boot, [M.venue(v1), M.venue(v2), M.record_ref("WR", "40.00", "OLD")]
         + race_at(v1, "R1", "A", g1, per100_s=6.0))
    key = encode_own_key("WR", "individual", "M", 500, None, "R1", "A").encode()
    set_at = wait_for(lambda: [o for o, k, v in refs_topic(boot) if k == key and v is not None],
                      "A's record on timing.records.ref")[0]
    ref = orjson.loads(dict((o, v) for o, _, v in refs_topic(boot))[set_at])
    assert (ref["kind"], ref["holder"], ref["time"], ref["origin"]) == ("record_ref", "A", "33.50", "lapstream")
    wait_for(lambda: applied_refs(w2) > set_at, "worker 2 applied A's record")

    # venue 2 (worker 2): D in 34.30 is under 40.00 but not under A's record
    send(boot, race_at(v2, "F0", "D", T0 + 200 * S, per100_s=6.2))
    wait_for(lambda: finals(derived(boot, [T.FINISHES.name]), "finish", "F0"), "D's final finish")

    # A is disqualified: a tombstone under the key of A's record
    # (a decision carries no venue: replay keys it by the venue of the line before)
    send(boot, [M.hb(g1 + 55 * S, venue_id=v1), M.decision("R1", "DQ", g1 + 60 * S, competitor_id="A")])
    gone_at = wait_for(lambda: [o for o, k, v in refs_topic(boot) if k == key and v is None],
                       "the tombstone on timing.records.ref")[0]
    assert gone_at > set_at
    wait_for(lambda: applied_refs(w2) > gone_at, "worker 2 applied the tombstone")

    # venue 2: D, judged again at worker 2's next raw message, holds the WR against
    # the federation's; C in 34.30 equals D's
    send(boot, race_at(v2, "F1", "C", T0 + 400 * S, per100_s=6.2))
    recs = wait_for(lambda: finals(derived(boot, [T.RECORDS.name]), "record", "F1"), "C's record")
    assert [(r["competitor_id"], r["record"], r["equalled"], r["previous_holder"], r["previous_time"])
            for r in recs] == [("C", "WR", True, "D", "34.30")]

    events = derived(boot, [t.name for t in T.DERIVED] + [T.DEADLETTER.name])
    assert [e for e in events if e["kind"] == "deadletter"] == []
    assert [(r["competitor_id"], r["previous_holder"], r["withdrawn"])   # judged again without A's
            for r in finals(events, "record", "F0")] == [("D", "OLD", False)]
    f0 = finals(events, "result", "F0")
    assert f0[-1]["status"] == "official" and f0[-1]["ranking"][0]["records"] == ["WR"]
    a_recs = finals(events, "record", "R1")
    assert [(r["competitor_id"], r["withdrawn"]) for r in a_recs] == [("A", False), ("A", True)]
    # the topic: the federation's word, A's record, its tombstone, D's record, and
    # under C's key a tombstone (an equalled record is no reference; its final
    # version, after the provisional one, takes back whatever that key held);
    # never a withdrawn record a plain consumer would read as a record in force
    topic = refs_topic(boot)
    d_key = encode_own_key("WR", "individual", "M", 500, None, "F0", "D").encode()
    c_key = encode_own_key("WR", "individual", "M", 500, None, "F1", "C").encode()
    assert [(k, v is None) for _, k, v in topic] == \
        [(b"WR|individual|M|500|", False), (key, False), (key, True), (d_key, False), (c_key, True)]
    assert not any(v is not None and orjson.loads(v).get("withdrawn") for _, _, v in topic)
    # each venue was its own worker's: the other judged only from the topic
    lag = r'lapstream_event_time_lag_seconds\{venue="%s"\}'
    m1, m2 = w1.get("/metrics"), w2.get("/metrics")
    assert re.search(lag % v1, m1) and not re.search(lag % v1, m2)
    assert re.search(lag % v2, m2) and not re.search(lag % v2, m1)

    # record the topic, replay the recording: the same records again, tombstone too
    async def rec_refs():
        buf = io.BytesIO()
        await record(boot, buf, [T.RECORDS_REF.name], idle_exit_s=1.0)
        return buf.getvalue()
    lines = go_run(rec_refs).splitlines()
    assert len(lines) == 5 and orjson.loads(lines[2]) == {
        "kind": "tombstone", "v": 1, "topic": T.RECORDS_REF.name, "key": key.decode(),
        "key_b64": base64.b64encode(key).decode()}
    end = topic[-1][0] + 1
    counts = go_run(lambda: replay(boot, lines, speed=None))
    assert counts[T.RECORDS_REF.name] == 5
    again = wait_for(lambda: (lambda r: r if len(r) >= 5 else None)(refs_topic(boot, end)), "the replayed records")
    assert [(k, v) for _, k, v in again] == [(k, v) for _, k, v in topic]
