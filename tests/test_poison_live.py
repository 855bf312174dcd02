"""Poison pills on a real broker (issue 7, cases 1, 2 and 4): a worker keeps
going, the dead letter appears (cut to the producer's limit when too large),
later facts are unchanged, and a restarted worker does not trip over what
stays on the (compacted) reference topic. In-memory property tests:
tests/test_poison.py."""
from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams import beijing
from streams import topics as T
from tests import livekit as L
from tests import msgs as M

pytestmark = pytest.mark.timeout(600)

KIND_LIST = b'{"kind":[1]}'
HUGE = b'{"kind":"heartbeat","v":1,"venue":"NSO","pad":"' + b"x" * 1_300_000 + b'"}'
BAD_REF = (b'{"kind":"record_ref","v":1,"t_us":1644917053000000,"record":"XX","format":"team_pursuit",'
           b'"gender":"W","distance_m":2400,"scope":null,"time":"2:50.76","holder":"JPN"}')
HB_ON_REFS = b'{"kind":"heartbeat","v":1,"t_us":9223372036854775807,"venue":"NSO","source":"X2-A"}'


def produce(bootstrap, topic, items):
    async def go():
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024, acks="all")
        await p.start()
        try:
            for key, value in items:
                await p.send_and_wait(topic, value=value, key=key)
        finally:
            await p.stop()
    asyncio.run(go())


def dead_letters(bootstrap, expect, timeout=120.0):
    """(value, headers dict) of the dead-letter topic, until ``expect`` arrived."""
    async def go():
        c = AIOKafkaConsumer(T.DEADLETTER.name, bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="earliest", fetch_max_bytes=8 * 1024 * 1024,
                             max_partition_fetch_bytes=4 * 1024 * 1024)
        await c.start()
        out = []
        try:
            end = time.monotonic() + timeout
            while len(out) < expect and time.monotonic() < end:
                batch = await c.getmany(timeout_ms=500)
                for recs in batch.values():
                    out.extend((r.value, {k: v for k, v in r.headers}) for r in recs)
        finally:
            await c.stop()
        return out
    return asyncio.run(go())


def test_poison_pills_on_a_real_broker(tmp_path):
    tmp = L.tmpdir()
    broker = L.start_broker(tmp)
    workers = []
    try:
        lines = (beijing.FEEDS_DIR / beijing.FINAL_A_FILE).read_bytes().splitlines()
        want = L.offline(lines)
        w1 = L.Worker(broker.bootstrap, tmp, "w1").start()
        workers.append(w1)
        w1.wait_ready()
        # case 1 and 4 on the reference topic: an unhashable kind, a bad
        # record_ref, a raw kind that does not belong there
        produce(broker.bootstrap, T.RECORDS_REF.name, [(b"a", KIND_LIST), (b"b", BAD_REF), (b"c", HB_ON_REFS)])
        # case 1 and 2 on timing.raw, in the middle of the final
        mixed = list(lines)
        mixed.insert(900, HUGE)
        mixed.insert(300, KIND_LIST)
        L.replay_lines(broker.bootstrap, mixed, speed=None)
        got = L.record_all(broker.bootstrap, topics=[t.name for t in T.DERIVED], expect=len(want))
        assert M.by_id(got) == M.by_id(want)
        assert L.per_key_sequences(M.first_of_each(got)) == L.per_key_sequences(want)
        dead = dead_letters(broker.bootstrap, expect=5)
        assert w1.proc.poll() is None, w1.log.read_text()[-3000:]
        by_topic = {}
        for v, h in dead:
            by_topic.setdefault(h["source-topic"].decode(), []).append((v, h))
        refs = sorted(v for v, _ in by_topic[T.RECORDS_REF.name])
        assert refs == sorted([KIND_LIST, BAD_REF, HB_ON_REFS])
        raw = by_topic[T.RAW.name]
        assert len(raw) == 2
        small = [x for x in raw if x[0] == KIND_LIST]
        big = [x for x in raw if x[0] != KIND_LIST]
        assert small and big
        v, h = big[0]
        assert HUGE.startswith(v) and len(v) < 1_000_000
        assert h["truncated"] == b"true" and int(h["original-size"]) == len(HUGE)
        assert all(h["error"] and b"\n" not in h["error"] for _, h in dead)
        # a restart reads the same references again: it does not trip over them
        w1.stop()
        w2 = L.Worker(broker.bootstrap, tmp, "w2").start()
        workers.append(w2)
        w2.wait_ready()
        L.replay_lines(broker.bootstrap, [KIND_LIST], speed=None)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = w2.get("/metrics")
            if 'lapstream_raw_messages_total{kind="unknown",outcome="deadlettered"} 1.0' in text:
                break
            time.sleep(0.3)
        assert 'lapstream_raw_messages_total{kind="unknown",outcome="deadlettered"} 1.0' in text
        assert w2.proc.poll() is None
    finally:
        for w in workers:
            w.stop()
        broker.stop()
