"""Bad input and crashes, with many inputs (hypothesis), in memory.

The live adapter (agents/live.py) is the same code the Faust agent calls;
here an in-memory log stands in for the partition, so that crash points and
junk can be explored by the hundred. tests/test_live.py runs the same
scenarios against a real broker and real worker processes.
"""
from __future__ import annotations

import asyncio
import json

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st

from agents.live import LiveAdapter
from streams import beijing
from streams.process import process_lines
from streams.topics import DEADLETTER, RECORDS_REF, TOPIC_OF_KIND, key_of
from tests.msgs import by_id, canon

FEED = (beijing.FEEDS_DIR / beijing.FINAL_A_FILE).read_bytes().splitlines()
REFS = [ln for ln in FEED if b'"record_ref"' in ln]
RAW = [ln for ln in FEED if b'"record_ref"' not in ln]
CLEAN = list(process_lines(FEED))
PROFILE = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])




class Log:
    """A partition in memory, and what was sent to each topic."""

    def __init__(self, records):
        self.records = records
        self.sent: list[tuple[str, bytes | None, bytes, list | None]] = []

    async def send(self, topic, key, value, headers):
        self.sent.append((topic, key, value, headers))

    async def rebuild(self, partition, start, end):
        for off in range(start, min(end, len(self.records))):
            yield off, b"NSO", self.records[off]


def adapter_for(log: Log) -> LiveAdapter:
    a = LiveAdapter(log.send, log.rebuild)
    for r in REFS:
        a.on_ref(r)
    return a


def derived(log: Log) -> list[dict]:
    return [orjson.loads(v) for t, _, v, _ in log.sent if t not in (DEADLETTER.name, RECORDS_REF.name)]


def run_adapter(records, crash_at=None):
    log = Log(records)

    async def go():
        a = adapter_for(log)
        for off, rec in enumerate(records):
            if crash_at is not None and off == crash_at:
                # kill -9: the worker's memory is gone; a new one is handed the
                # partition at the committed offset and rebuilds from the log
                a = adapter_for(log)
            await a.on_raw(0, off, b"NSO", rec)
    asyncio.run(go())
    return log


def test_the_adapter_in_memory_gives_what_process_gives():
    log = run_adapter(RAW)
    assert canon(derived(log)) == canon(CLEAN)
    for t, k, v, h in log.sent:
        if t in TOPIC_OF_KIND.values():
            ev = orjson.loads(v)
            assert k == key_of(ev).encode() and TOPIC_OF_KIND[ev["kind"]] == t
            assert h and h[0][0] == "lapstream-source"
    refs = [orjson.loads(v) for t, _, v, _ in log.sent if t == RECORDS_REF.name]
    assert [(r["record"], r["holder"], r["time"], r["origin"]) for r in refs] == [("OR", "CAN", "2:53.44", "lapstream")]


@PROFILE
@given(crash_at=st.integers(min_value=1, max_value=len(RAW) - 1),
       redo=st.integers(min_value=0, max_value=50))
def test_a_crash_anywhere_loses_and_changes_nothing(crash_at, redo):
    """Crash after ``crash_at`` records, resume ``redo`` records earlier (the
    last commit): every fact arrives, repeats carry the same id and content."""
    log = Log(RAW)

    async def go():
        a = adapter_for(log)
        for off in range(crash_at):
            await a.on_raw(0, off, b"NSO", RAW[off])
        b = adapter_for(log)    # the restarted worker
        for off in range(max(0, crash_at - redo), len(RAW)):
            await b.on_raw(0, off, b"NSO", RAW[off])
    asyncio.run(go())
    got = derived(log)
    assert by_id(got) == by_id(CLEAN)


def _dumps(obj) -> bytes:
    """stdlib json: it also writes integers beyond 64 bits (a decoder must cope)."""
    return json.dumps(obj).encode()


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
junk_objects = st.dictionaries(st.text(max_size=12), json_scalars, max_size=6)


def _mutations():
    """Valid messages of the feed with one field broken in a way the contract forbids."""
    valid = [orjson.loads(ln) for ln in RAW]
    hb = next(m for m in valid if m["kind"] == "heartbeat")
    ps = next(m for m in valid if m["kind"] == "passing")
    return st.one_of(
        st.builds(lambda m, f: {k: v for k, v in m.items() if k != f}, st.just(ps),
                  st.sampled_from(["t_us", "venue", "source", "seq", "loop", "transponder", "v", "kind"])),
        st.builds(lambda m, f, bad: {**m, f: bad}, st.just(ps),
                  st.sampled_from(["t_us", "seq", "v"]), st.one_of(st.text(max_size=5), st.booleans(), st.floats())),
        st.builds(lambda m, bad: {**m, "venue": bad}, st.just(hb), st.text(min_size=1, max_size=8).filter(lambda x: x != "NSO")),
        st.builds(lambda m, bad: {**m, "loop": bad}, st.just(ps), st.text(min_size=1, max_size=8).filter(
            lambda x: x not in ("L000", "L100", "L200", "L300"))),
        st.builds(lambda m, k: {**m, "kind": k}, st.just(hb), st.text(max_size=10).filter(
            lambda k: k not in ("venue", "race", "start", "passing", "heartbeat", "photo", "decision", "record_ref"))),
    )


junk = st.one_of(
    st.binary(max_size=60).filter(lambda b: b.strip() != b"" and b"\n" not in b and b"\r" not in b),
    junk_objects.map(_dumps),
    st.lists(json_scalars, max_size=4).map(_dumps),
    _mutations().map(_dumps),
    st.integers(min_value=256 * 1024 + 1, max_value=300_000).map(lambda n: b'{"kind":"heartbeat","pad":"' + b"x" * n + b'"}'),
)


def with_junk(lines, bad) -> list[bytes]:
    """``lines`` with each (position, junk) of ``bad`` inserted before the
    original line at that position."""
    out = list(lines)
    for pos, b in sorted(bad, key=lambda x: x[0], reverse=True):
        out.insert(pos, b)
    return out


@PROFILE
@given(bad=st.lists(st.tuples(st.integers(min_value=0, max_value=len(FEED)), junk), min_size=1, max_size=6))
def test_junk_anywhere_is_dead_lettered_with_its_bytes_and_nothing_else_changes(bad):
    lines = with_junk(FEED, bad)
    out = list(process_lines(lines))
    dl = [e for e in out if e["kind"] == "deadletter"]
    assert len(dl) == len(bad)
    for d in dl:
        assert d["error"] and "\n" not in d["error"]
        assert lines[d["line"] - 1].decode("utf-8", "backslashreplace") == d["raw"]
    assert canon([e for e in out if e["kind"] != "deadletter"]) == canon(CLEAN)


@PROFILE
@given(bad=st.lists(st.tuples(st.integers(min_value=0, max_value=len(RAW)), junk), min_size=1, max_size=4))
def test_junk_on_kafka_goes_to_the_dead_letter_topic_with_headers(bad):
    records = with_junk(RAW, bad)
    log = run_adapter(records)
    dead = [(k, v, dict(h)) for t, k, v, h in log.sent if t == DEADLETTER.name]
    assert sorted(v for _, v, _ in dead) == sorted(b for _, b in bad)
    for _, v, h in dead:
        off = int(h["source-offset"])
        assert records[off] == v
        assert h["source-topic"] == b"timing.raw" and h["source-partition"] == b"0"
        assert h["error"] and b"\n" not in h["error"]
    assert canon(derived(log)) == canon(CLEAN)


def test_a_reference_published_after_the_race_does_not_change_a_rebuild():
    """The federation ratifies CAN's record after the final; a worker killed before
    OFFICIAL rebuilds and must judge the final as the original run did."""
    ratified = orjson.dumps({**orjson.loads(REFS[-1]), "time": "2:53.44", "holder": "CAN",
                             "t_us": orjson.loads(RAW[-1])["t_us"] - 1})
    crash = len(RAW) - 40
    log = Log(RAW)

    async def go():
        a = adapter_for(log)
        for off in range(crash):
            await a.on_raw(0, off, b"NSO", RAW[off])
        a.on_ref(ratified)
        b = adapter_for(log)
        b.on_ref(ratified)
        for off in range(crash - 10, len(RAW)):
            await b.on_raw(0, off, b"NSO", RAW[off])
    asyncio.run(go())
    by_id(derived(log))


def test_records_skipped_by_an_abandoned_batch_are_emitted_not_lost():
    log = Log(RAW)

    async def go():
        a = adapter_for(log)
        for off in range(600):
            await a.on_raw(0, off, b"NSO", RAW[off])
        # offsets 600..649 were delivered in a batch the agent never handled
        for off in range(650, len(RAW)):
            await a.on_raw(0, off, b"NSO", RAW[off])
    asyncio.run(go())
    assert canon(derived(log)) == canon(CLEAN)


def test_a_revoke_during_a_rebuild_falls_back_instead_of_crashing():
    log = Log(RAW)

    async def committed(p):
        await asyncio.sleep(0.01)
        return 500

    async def go():
        a = adapter_for(log)
        for off in range(500):
            await a.on_raw(0, off, b"NSO", RAW[off])
        b = adapter_for(log)
        b.assign([0], committed)
        agent = asyncio.ensure_future(b.on_raw(0, 500, b"NSO", RAW[500]))
        await asyncio.sleep(0)
        b.assign([], committed)      # a rebalance takes it away mid-build ...
        b.assign([0], committed)     # ... and gives it back
        await agent
        for off in range(501, len(RAW)):
            await b.on_raw(0, off, b"NSO", RAW[off])
    asyncio.run(go())
    seen = {}
    for e in derived(log):
        seen.setdefault(e["event_id"], orjson.dumps(e, option=orjson.OPT_SORT_KEYS))
    assert set(seen) == {e["event_id"] for e in CLEAN}


# -- offsets after a broker's data loss (issue 7, case 5) --------------------------


def test_offsets_reused_after_a_broker_lost_its_tail_are_handled_not_skipped():
    """The worker handled records [0, n); the broker loses the last k of them
    (acknowledged, then gone: kill -9 of a broker without fsync) and the
    records produced next reuse offsets n-k.. . Content, not the offset, says
    whether a record was handled: every fact comes out, as offline."""
    from streams.metrics import Metrics

    n, k = 700, 71
    log = Log(list(RAW))
    m = Metrics()

    async def go():
        a = LiveAdapter(log.send, log.rebuild, m)
        for r in REFS:
            a.on_ref(r)
        for off in range(n):
            await a.on_raw(0, off, b"NSO", RAW[off])
        # the log after the loss, refilled by the producer with the rest of the feed
        log.records = RAW[:n - k] + RAW[n:]
        for off in range(n - k, len(log.records)):
            await a.on_raw(0, off, b"NSO", log.records[off])
        assert a.truncations == 1
    asyncio.run(go())
    assert canon(derived(log)) == canon(CLEAN)
    assert "lapstream_log_truncations_total 1.0" in __import__("prometheus_client").generate_latest(m.registry).decode()


def test_redeliveries_are_still_skipped():
    log = Log(RAW)

    async def go():
        a = adapter_for(log)
        for off in range(800):
            await a.on_raw(0, off, b"NSO", RAW[off])
        for off in range(600, len(RAW)):          # a rebalance hands 600.. again
            await a.on_raw(0, off, b"NSO", RAW[off])
        assert a.truncations == 0
    asyncio.run(go())
    assert canon(derived(log)) == canon(CLEAN)


def test_a_restart_after_the_broker_lost_records_before_the_committed_offset():
    """The group committed offset 700, then the broker lost offsets 640..699:
    a new worker rebuilds what the log has, and handles the records that
    reuse those offsets instead of skipping them up to the committed offset:
    it emits what the log now holds gives from offset 640 on (the lost
    records are lost: their facts were published before the loss)."""
    from streams.process import Processor

    n, k = 700, 60
    log = Log(RAW[:n - k])
    after = RAW[:n - k] + RAW[n:]
    proc = Processor()
    for r in REFS:
        proc.handle(r)
    want = []
    for off, rec in enumerate(after):
        events, _ = proc.handle(rec)
        if off >= n - k:
            want.extend(events)

    async def committed(p):
        return n

    async def go():
        b = adapter_for(log)
        b.assign([0], committed)
        await asyncio.sleep(0)
        log.records = after
        for off in range(n - k, len(after)):
            await b.on_raw(0, off, b"NSO", after[off])
        assert b.truncations == 1
    asyncio.run(go())
    assert want and canon(derived(log)) == canon(want)
