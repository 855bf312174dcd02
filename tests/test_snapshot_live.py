"""Snapshots live: a restarted worker rebuilds its partition from the newest
snapshot on ``timing.snapshots`` and replays only the raw records after it,
and the derived output is still exactly ``lapstream process``'s (same ids,
same order per key). A real broker on loopback and real worker processes.
"""
from __future__ import annotations

import threading
import time

import orjson
import pytest

from streams import beijing
from streams import topics as T
from tests import livekit as L
from tests import msgs as M

pytestmark = [pytest.mark.timeout(600), pytest.mark.live]

SNAP_ENV = {"LAPSTREAM_SNAPSHOT_EVERY": "1500", "LAPSTREAM_SNAPSHOT_MIN": "500",
            "LAPSTREAM_SNAPSHOT_MIN_WALL_S": "0"}


@pytest.fixture
def stack():
    with L.live_stack() as s:
        yield s


def test_a_restarted_worker_loads_a_snapshot_and_reads_few_records(stack):
    broker, worker, tmp = stack
    lines = (beijing.FEEDS_DIR / beijing.WOMEN_FILE).read_bytes().splitlines()
    want = L.offline(lines)
    cut = int(len(lines) * 0.7)          # mid-way through the semi-finals
    w1 = worker("w1", SNAP_ENV)
    w1.wait_ready()
    L.replay_lines(broker.bootstrap, lines[:cut], speed=None)
    before = L.raw_count(lines[:cut])
    # every record handled and committed; snapshots are saved once the group
    # has committed their offset (one waits per partition: a newer one replaces it)
    L.wait_for(lambda: L.committed_total(broker.bootstrap) >= before, "every record committed")
    st = L.wait_for(lambda: w1.snapshots_settled(taken=before // 1500), "snapshots taken and saved")
    assert st["saved"] >= 1
    w1.stop()
    # the rest of the tournament arrives while no worker runs
    L.replay_lines(broker.bootstrap, lines[cut:], speed=None)
    w2 = worker("w2", SNAP_ENV)
    w2.wait_ready()
    r = w2.readyz()
    assert r["snapshots"]["loaded"] == 1 and r["snapshots"]["rejected"] == 0, r
    # it read the records after the newest snapshot only, not the 70 %
    assert 0 <= r["rebuilt_messages"] <= 1500 + 50, r
    got = L.record_all(broker.bootstrap, expect=len(want), timeout=180)
    seen, want_ids = M.by_id(got), M.by_id(want)
    assert set(seen) == set(want_ids), (len(set(want_ids) - set(seen)), len(set(seen) - set(want_ids)))
    assert seen == want_ids
    assert L.per_key_sequences(M.first_of_each(got)) == L.per_key_sequences(want)
    metrics = w2.get("/metrics")
    assert 'lapstream_snapshot_loads_total{result="loaded"} 1.0' in metrics
    # a worker without snapshots reads the whole partition (what the snapshot saved)
    w2.stop()
    w3 = worker("w3", {"LAPSTREAM_SNAPSHOT_EVERY": "0"})
    w3.wait_ready()
    committed = L.committed_total(broker.bootstrap)
    assert committed >= L.raw_count(lines) - 5
    r3 = w3.readyz()
    assert r3["rebuilt_messages"] == committed and r3["snapshots"]["loaded"] == 0, r3


def test_kill_9_mid_race_with_snapshots_loses_and_changes_nothing(stack):
    broker, worker, tmp = stack
    lines = (beijing.FEEDS_DIR / beijing.WOMEN_FILE).read_bytes().splitlines()
    want = L.offline(lines)
    env = {"LAPSTREAM_SNAPSHOT_EVERY": "700", "LAPSTREAM_SNAPSHOT_MIN": "300", "LAPSTREAM_SNAPSHOT_MIN_WALL_S": "0"}
    w1 = worker("w1", env)
    w1.wait_ready()
    cut = int(len(lines) * 0.5)
    L.replay_lines(broker.bootstrap, lines[:cut], speed=None)
    L.wait_for(w1.snapshots_settled, "snapshots saved")
    # the rest arrives (paced, so snapshots are being taken and saved) while w1 is killed
    t = threading.Thread(target=L.replay_lines, args=(broker.bootstrap, lines[cut:], 400.0))
    t.start()
    time.sleep(3.0)
    w1.kill9()
    t.join()
    w2 = worker("w2", env)
    w2.wait_ready()
    r = w2.readyz()
    assert r["snapshots"]["loaded"] == 1, r
    got = L.record_all(broker.bootstrap, expect=len(want), timeout=180)
    seen, want_ids = M.by_id(got), M.by_id(want)
    assert set(seen) == set(want_ids), (len(set(want_ids) - set(seen)), len(set(seen) - set(want_ids)))
    assert seen == want_ids
    assert L.per_key_sequences(M.first_of_each(got)) == L.per_key_sequences(want)


def test_the_kafka_store_gives_the_newest_complete_snapshot_at_or_below_an_offset(stack):
    """streams.app.KafkaSnapshots on a real broker: chunks and manifests,
    newest first, none beyond the offset asked, a snapshot whose chunk is
    damaged skipped for the older one."""
    import asyncio
    import os

    from aiokafka import AIOKafkaProducer

    from streams.app import KafkaSnapshots

    broker, _, _ = stack
    blobs = {off: os.urandom(2500 + off) for off in (100, 200, 300)}

    async def go():
        store = KafkaSnapshots(broker.bootstrap, {})
        store.CHUNK = 1000                          # several chunks each
        try:
            for off, data in blobs.items():
                await store.save(3, off, data)
            got = [d async for d in store.candidates(3, 10**9)]
            assert got == [blobs[300], blobs[200], blobs[100]]
            assert [d async for d in store.candidates(3, 250)] == [blobs[200], blobs[100]]
            assert [d async for d in store.candidates(3, 99)] == []
            assert [d async for d in store.candidates(4, 10**9)] == []      # another partition
            # a manifest naming a chunk that is not what it says: skipped
            prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
            await prod.start()
            try:
                md = await prod.send_and_wait(T.SNAPSHOTS.name, b"x" * 10, key=b"3:0:0", partition=3)
                bad = {"snapshot": 1, "partition": 3, "offset": 400, "slot": 0, "chunks": [[md.offset, 1000]],
                       "size": 1000, "sum": "0" * 32}
                await prod.send_and_wait(T.SNAPSHOTS.name, orjson.dumps(bad), key=b"3", partition=3)
                await prod.send_and_wait(T.SNAPSHOTS.name, b"{not json", key=b"3", partition=3)
            finally:
                await prod.stop()
            got = [d async for d in store.candidates(3, 10**9)]
            assert got[:1] == [blobs[300]]
        finally:
            await store.close()
    asyncio.run(go())
