"""The live pipeline against a real Kafka-protocol broker on loopback.

Broker (tansu or noida, ``LAPSTREAM_TEST_BROKER``) and workers are real
processes; the feeds are the shipped Beijing 2022 recordings.
"""
from __future__ import annotations

import re
import time

import pytest

from streams import beijing
from streams import topics as T
from tests import livekit as L
from tests import msgs as M

pytestmark = [pytest.mark.timeout(600), pytest.mark.live]


@pytest.fixture
def stack():
    with L.live_stack() as s:
        yield s


def feed_lines(name):
    return (beijing.FEEDS_DIR / name).read_bytes().splitlines()


@pytest.mark.parametrize("name", [beijing.FINAL_A_FILE, beijing.WOMEN_FILE, beijing.MEN_FILE])
def test_live_equals_offline(stack, name):
    broker, worker, _ = stack
    w = worker()
    w.wait_ready()
    lines = feed_lines(name)
    want = L.offline(lines)
    counts = L.replay_lines(broker.bootstrap, lines, speed=None)
    assert counts[T.RECORDS_REF.name] == sum(1 for ln in lines if b'"record_ref"' in ln)
    got = L.record_all(broker.bootstrap, expect=len(want))
    # same events, same ids, same order per topic and key
    assert sorted(e["event_id"] for e in got) == sorted(e["event_id"] for e in want)
    assert L.per_key_sequences(got) == L.per_key_sequences(want)
    # the new Olympic records went to the compacted reference topic too
    refs = L.record_all(broker.bootstrap, topics=[T.RECORDS_REF.name], idle_s=1.0)
    published = [r for r in refs if r.get("origin") == "lapstream"]
    assert [(r["race_id"], r["holder"], r["time"]) for r in published] == \
        [(e["race_id"], e["competitor_id"], e["time"]) for e in want
         if e["kind"] == "record" and not e["equalled"] and not e["withdrawn"] and e["final"]]


@pytest.mark.parametrize("env", [
    # a tiny stream buffer: records wait for room (the eager hand-over's slow
    # path, Faust's pause/resume of partitions) and nothing changes
    {"LAPSTREAM_FAUST_SETTINGS": '{"stream_buffer_maxsize": 64}'},
    # the batch setting: the agent takes records in batches (take_events)
    {"LAPSTREAM_BATCH_MAX": "500", "LAPSTREAM_BATCH_WAIT_MS": "5"},
], ids=["small-buffer", "batches"])
def test_live_equals_offline_whatever_the_worker_settings(stack, env):
    broker, worker, _ = stack
    w = worker(env=env)
    w.wait_ready()
    lines = feed_lines(beijing.FINAL_A_FILE)
    want = L.offline(lines)
    L.replay_lines(broker.bootstrap, lines, speed=None)
    got = L.record_all(broker.bootstrap, expect=len(want))
    assert sorted(e["event_id"] for e in got) == sorted(e["event_id"] for e in want)
    assert L.per_key_sequences(got) == L.per_key_sequences(want)
    metrics = w.get("/metrics")
    consumed = sum(float(v) for v in re.findall(r"^lapstream_raw_messages_total\{[^}]*\} (\S+)$", metrics, re.M))
    assert consumed == L.raw_count(lines)


def test_kill_9_mid_race_loses_and_changes_nothing(stack):
    broker, worker, tmp = stack
    lines = feed_lines(beijing.WOMEN_FILE)
    want = L.offline(lines)
    w1 = worker("w1")
    w1.wait_ready()
    # the first 60% of the tournament (mid-way through the semi-finals) ...
    cut = int(len(lines) * 0.6)
    L.replay_lines(broker.bootstrap, lines[:cut], speed=None)
    first = L.record_all(broker.bootstrap, idle_s=3.0)
    assert first, "the worker produced nothing before the kill"
    # ... then the rest arrives while the worker is killed mid-stream
    import threading

    t = threading.Thread(target=L.replay_lines, args=(broker.bootstrap, lines[cut:], None))
    t.start()
    time.sleep(0.3)
    w1.kill9()
    t.join()
    w2 = worker("w2")
    w2.wait_ready()
    got = L.record_all(broker.bootstrap, expect=len(want), timeout=180)
    # a repeated event only with the same id and the same content
    seen, want_ids = M.by_id(got), M.by_id(want)
    assert set(seen) == set(want_ids), (len(set(want_ids) - set(seen)), len(set(seen) - set(want_ids)))
    assert seen == want_ids
    # after deduplication by id, each race's events come in the offline order
    assert L.per_key_sequences(M.first_of_each(got)) == L.per_key_sequences(want)
    # the restarted worker rebuilt its state from the raw topic
    metrics = w2.get("/metrics")
    assert "lapstream_raw_messages_total" in metrics


def test_a_second_worker_joining_mid_stream_shares_the_work_and_changes_nothing(stack):
    broker, worker, _ = stack
    lines = feed_lines(beijing.WOMEN_FILE)
    want = L.offline(lines)
    w1 = worker("w1")
    w1.wait_ready()
    cut = int(len(lines) * 0.4)
    L.replay_lines(broker.bootstrap, lines[:cut], speed=None)
    import threading

    # the rest is replayed (paced, so the rebalance lands mid-stream) while w2 joins
    t = threading.Thread(target=L.replay_lines, args=(broker.bootstrap, lines[cut:], 200.0))
    t.start()
    w2 = worker("w2")
    w2.wait_ready()
    t.join()
    got = L.record_all(broker.bootstrap, expect=len(want), timeout=180)
    assert M.by_id(got) == M.by_id(want)
    assert L.per_key_sequences(M.first_of_each(got)) == L.per_key_sequences(want)
    # both kept running through the rebalance, and both own partitions now
    assert w1.proc.poll() is None and w2.proc.poll() is None
    parts = [set(w.readyz()["partitions"]) for w in (w1, w2)]
    assert parts[0] and parts[1] and not parts[0] & parts[1]


def test_an_event_that_cannot_be_sent_stops_the_worker_before_any_commit_past_its_record(stack):
    broker, worker, _ = stack
    lines = feed_lines(beijing.FINAL_A_FILE)
    want = L.offline(lines)
    # a producer that refuses every derived event (too large for its request limit)
    w1 = worker("w1", env={"LAPSTREAM_FAUST_SETTINGS": '{"producer_max_request_size": 200}'})
    w1.wait_ready()
    L.replay_lines(broker.bootstrap, lines, speed=None)
    deadline = time.monotonic() + 60
    while w1.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert w1.proc.poll() not in (None, 0), "the worker did not stop on a lost event"
    log = w1.log.read_text()
    m = re.search(r"timing\.raw:(\d+):(\d+) not fully handled", log)
    assert m, log[-2000:]
    part, off = int(m.group(1)), int(m.group(2))
    committed = L.committed(broker.bootstrap, part)
    assert committed is None or committed <= off, (committed, off)
    # the next worker handles that record again: every fact is out, unchanged
    w2 = worker("w2")
    w2.wait_ready()
    got = L.record_all(broker.bootstrap, expect=len(want))
    assert M.by_id(got) == M.by_id(want)


BAD = [
    b"{not json at all",
    b'{"kind":"passing","v":1,"t_us":1644652800000000,"venue":"NSO","source":"X2-A","seq":"x","loop":"L000","transponder":"1"}',
    b'{"kind":"teleport","v":1}',
    b'{"kind":"heartbeat","v":1,"t_us":1644652800000000,"venue":"ATLANTIS","source":"X2-A"}',
    b'{"kind":"passing","v":1,"t_us":1644652800000000,"venue":"NSO","source":"X2-A","seq":99999999,"loop":"L999","transponder":"1"}',
]


def test_bad_input_goes_to_the_dead_letter_topic_and_the_race_goes_on(stack):
    broker, worker, _ = stack
    w = worker()
    w.wait_ready()
    lines = feed_lines(beijing.FINAL_A_FILE)
    want = L.offline(lines)
    mixed = list(lines)
    positions = [5, 300, 600, 900, 1200]
    for pos, bad in sorted(zip(positions, BAD), reverse=True):
        mixed.insert(pos, bad)
    L.replay_lines(broker.bootstrap, mixed, speed=None)
    got = L.record_all(broker.bootstrap, expect=len(want) + len(BAD))
    dl = [e for e in got if e["kind"] == "deadletter"]
    assert sorted(d["raw"] for d in dl) == sorted(b.decode() for b in BAD)
    for d in dl:
        assert d["error"] and "\n" not in d["error"]
        assert d["source_topic"] == T.RAW.name
        assert isinstance(d["source_partition"], int) and isinstance(d["source_offset"], int)
    good = [e for e in got if e["kind"] != "deadletter"]
    assert L.per_key_sequences(good) == L.per_key_sequences(want)
    # the worker counted what it consumed and dead-lettered
    text = w.get("/metrics")
    total = sum(float(v) for v in re.findall(r'^lapstream_raw_messages_total\{[^}]*\} (\S+)$', text, re.M))
    raw_lines = L.raw_count(mixed)
    assert total == raw_lines
    dead = sum(float(v) for v in re.findall(r'^lapstream_deadletters_total\{[^}]*\} (\S+)$', text, re.M))
    assert dead == len(BAD)
