"""No poison pill, by construction (issue 7, case 1, 2, 4), in memory.

Every path from bytes to the core is total: the decoder raises only
``Rejected``; ``Processor.handle`` (offline and live) and the live adapter
(``timing.raw`` and ``timing.records.ref``) turn any bytes, any JSON value in
any field, into applied facts or a dead letter with a one-line reason and
the original bytes. tests/test_poison_live.py runs the named cases on a real
broker.
"""
from __future__ import annotations

import asyncio
import base64
import json

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st

from agents.live import LiveAdapter, deadletter_record
from schemas.decode import Rejected, decode
from streams.metrics import Metrics
from streams.process import Processor, process_lines
from streams.topics import DEADLETTER, RECORDS_REF
from tests.msgs import canon
from tests.test_faults import CLEAN, FEED, RAW, REFS, Log, adapter_for, derived, run_adapter, with_junk

PROFILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID = [orjson.loads(ln) for ln in FEED]
BY_KIND = {}
for _m in VALID:
    BY_KIND.setdefault(_m["kind"], _m)
BY_KIND["photo"] = {"kind": "photo", "v": 1, "t_us": VALID[-1]["t_us"], "race_id": "OWG2022-TPW-FA",
                    "skater_id": "CAN-BLONDIN", "finish_us": VALID[-1]["t_us"] - 5_000_000}

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=False), st.text(max_size=12),
                    st.sampled_from(["", "NSO", "L000", "WR", "OWG", "team_pursuit", "OFFICIAL", "1:00.00",
                                     "heartbeat", "passing", "X2-A", "CAN", "0", "²"]))
json_values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                        st.dictionaries(st.text(max_size=8), c, max_size=4)),
                           max_leaves=12)


def _paths(obj, prefix=()):
    """Every path (tuple of keys / indexes) in a JSON document."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _set(obj, path, value, delete=False):
    obj = json.loads(json.dumps(obj))   # a deep copy
    if not path:
        return value
    cur = obj
    for p in path[:-1]:
        cur = cur[p]
    if delete:
        del cur[path[-1]]
    else:
        cur[path[-1]] = value
    return obj


@st.composite
def broken_messages(draw):
    """A valid message of any kind with one field anywhere in it (top level,
    loops, competitors, skaters, transponders...) replaced by any JSON value
    or deleted; sometimes two."""
    msg = BY_KIND[draw(st.sampled_from(sorted(BY_KIND)))]
    for _ in range(draw(st.integers(min_value=1, max_value=2))):
        paths = [p for p in _paths(msg) if p]
        path = draw(st.sampled_from(paths))
        delete = draw(st.booleans()) and not isinstance(path[-1], int)
        msg = _set(msg, path, None if delete else draw(json_values), delete)
    return msg


def _dumps(obj) -> bytes:
    # stdlib json writes what orjson will not read (ints beyond 64 bits, NaN): the decoder must cope
    return json.dumps(obj).encode()


any_bytes = st.binary(max_size=200).filter(lambda b: b"\n" not in b and b"\r" not in b and b.strip() != b"")
poison = st.one_of(
    any_bytes,
    json_values.map(_dumps),
    st.dictionaries(st.sampled_from(["kind", "v", "t_us", "venue", "source", "race_id"]), json_values,
                    max_size=5).map(_dumps),
    broken_messages().map(_dumps),
)


# -- the decoder ----------------------------------------------------------------

@PROFILE
@given(raw=st.one_of(st.binary(max_size=300), poison))
def test_decode_raises_only_rejected(raw):
    try:
        msg = decode(raw)
    except Rejected as rej:
        assert str(rej) and "\n" not in str(rej) and rej.reason
    else:
        assert type(msg) is dict


def test_the_named_poison_pills():
    for raw in (b'{"kind":[1]}', b'{"kind":{"a":1}}', b'{"kind":"race","v":1,"sprints":{"\xc2\xb2":[1]}}',
                b"null", b"[1]"):
        out = list(process_lines([raw]))
        assert len(out) == 1 and out[0]["kind"] == "deadletter"
    p = Processor()
    _, rej = p.handle(b'{"kind":[1]}')
    assert rej is not None and p.kind == "unknown" and p.outcome == "deadlettered"
    _, rej = p.handle(None)
    assert rej is not None


# -- offline ---------------------------------------------------------------------

@PROFILE
@given(bad=st.lists(st.tuples(st.integers(min_value=0, max_value=len(FEED)), poison), min_size=1, max_size=5))
def test_offline_any_bytes_apply_or_become_a_dead_letter(bad):
    lines = with_junk(FEED, bad)
    out = list(process_lines(lines))       # never raises
    junk_lines = {}
    for pos, b in bad:
        junk_lines.setdefault(b, 0)
        junk_lines[b] += 1
    for d in (e for e in out if e["kind"] == "deadletter"):
        assert d["error"] and "\n" not in d["error"] and "\r" not in d["error"]
        assert lines[d["line"] - 1].decode("utf-8", "backslashreplace") == d["raw"]
        assert base64.b64decode(d["raw_b64"], validate=True) == lines[d["line"] - 1]   # the bytes exactly
    # only the inserted lines may be dead-lettered (a valid line of the feed
    # is never refused because junk came before it, except records a junk
    # message legitimately changed: not asserted for arbitrary valid values)
    dead_lines = [d["line"] for d in out if d["kind"] == "deadletter"]
    assert len(dead_lines) == len(set(dead_lines))


# -- live ------------------------------------------------------------------------

@PROFILE
@given(bad=st.lists(st.tuples(st.integers(min_value=0, max_value=len(RAW)), poison), min_size=1, max_size=4))
def test_live_adapter_any_bytes_apply_or_become_a_dead_letter(bad):
    records = with_junk(RAW, bad)
    log = run_adapter(records)             # never raises
    for t, k, v, h in log.sent:
        if t == DEADLETTER.name:
            hd = dict(h)
            assert records[int(hd["source-offset"])] == v
            assert hd["error"] and b"\n" not in hd["error"]
    # the same verdicts as offline
    offline_dead = sorted(orjson.dumps(d["raw"]) for d in process_lines(REFS + records, flush=False) if d["kind"] == "deadletter")
    live_dead = sorted(orjson.dumps(v.decode("utf-8", "backslashreplace")) for t, _, v, _ in log.sent
                       if t == DEADLETTER.name)
    assert live_dead == offline_dead


@PROFILE
@given(bad=st.lists(poison, min_size=1, max_size=4), at=st.integers(min_value=0, max_value=len(RAW)))
def test_bad_references_are_dead_lettered_live_and_change_nothing(bad, at):
    """Anything on timing.records.ref: never raises, a bad one goes to the
    dead-letter topic; junk that is not a valid record_ref changes no fact."""
    log = Log(RAW)
    refused = []

    async def go():
        a = adapter_for(log)
        for off, rec in enumerate(RAW):
            if off == at:
                for i, b in enumerate(bad):
                    rej = await a.on_ref_record(0, 100 + i, b"k", b)
                    refused.append(rej is not None)
            await a.on_raw(0, off, b"NSO", rec)
    asyncio.run(go())
    dead = [(v, dict(h)) for t, _, v, h in log.sent if t == DEADLETTER.name]
    assert len(dead) == sum(refused)
    for v, h in dead:
        assert h["source-topic"] == RECORDS_REF.name.encode() and bad[int(h["source-offset"]) - 100] == v
    valid_refs = [b for b, r in zip(bad, refused) if not r]
    if not valid_refs:
        assert canon(derived(log)) == canon(CLEAN)


def test_a_raw_kind_on_the_reference_topic_is_refused():
    """A heartbeat far ahead on timing.records.ref would move every worker's
    clock outside the raw log: only record_ref belongs there."""
    log = Log(RAW)

    async def go():
        a = adapter_for(log)
        hb = orjson.dumps({**orjson.loads(RAW[2]), "t_us": 2**62})
        assert (await a.on_ref_record(0, 7, None, hb)) is not None
        for off, rec in enumerate(RAW):
            await a.on_raw(0, off, b"NSO", rec)
    asyncio.run(go())
    assert canon(derived(log)) == canon(CLEAN)


def test_a_dead_letter_too_large_for_the_producer_is_truncated_and_says_so():
    value = b'{"kind":"heartbeat","pad":"' + b"x" * 2_000_000 + b'"}'
    k, v, h = deadletter_record(b"K" * 5000, value, [("error", b"too big")], limit=1_000_000)
    hd = dict(h)
    assert value.startswith(v) and len(v) < 1_000_000 and len(k) == 1024
    assert hd["truncated"] == b"true" and hd["original-size"] == str(len(value)).encode()
    assert hd["original-key-size"] == b"5000"
    small = b'{"kind":[1]}'
    assert deadletter_record(b"NSO", small, [("error", b"x")]) == (b"NSO", small, [("error", b"x")])


def test_live_a_huge_record_is_dead_lettered_within_the_producer_limit():
    huge = b'{"kind":"heartbeat","v":1,"pad":"' + b"x" * 1_500_000 + b'"}'
    records = with_junk(RAW, [(100, huge)])
    log = Log(records)
    sizes = []

    async def send(topic, key, value, headers):
        from agents.live import record_size
        sizes.append(record_size(key, value, headers))
        await Log.send(log, topic, key, value, headers)

    async def go():
        a = LiveAdapter(send, log.rebuild, Metrics())
        for r in REFS:
            a.on_ref(r)
        for off, rec in enumerate(records):
            await a.on_raw(0, off, b"NSO", rec)
    asyncio.run(go())
    dead = [(v, dict(h)) for t, _, v, h in log.sent if t == DEADLETTER.name]
    assert len(dead) == 1 and huge.startswith(dead[0][0]) and dead[0][1]["original-size"] == str(len(huge)).encode()
    assert max(sizes) <= 1_000_000
    assert canon(derived(log)) == canon(CLEAN)


def test_an_exception_anywhere_in_handling_dead_letters_the_record_and_goes_on(monkeypatch):
    """A bug outside the core (serialising an event, metrics) must not stop the
    worker: the record is dead-lettered (reason internal), the next ones go on."""
    import agents.live as live

    log = Log(RAW)
    calls = {"n": 0}
    real = live.key_of

    def flaky(ev):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("boom")
        return real(ev)

    monkeypatch.setattr(live, "key_of", flaky)

    async def go():
        a = LiveAdapter(log.send, log.rebuild, Metrics())
        for r in REFS:
            a.on_ref(r)
        a.metrics.core_duration.observe = None     # metrics break too: not a reason to stop
        for off, rec in enumerate(RAW):
            await a.on_raw(0, off, b"NSO", rec)
    asyncio.run(go())
    dead = [dict(h) for t, _, v, h in log.sent if t == DEADLETTER.name]
    assert len(dead) == 1 and dead[0]["error"].startswith(b"internal error on this message: RuntimeError: boom")
    assert len(derived(log)) > len(CLEAN) // 2


def test_metric_labels_are_bounded():
    m = Metrics()
    m.raw_messages("x" * 50, "weird").inc()
    m.deadletter("made-up")
    text = __import__("prometheus_client").generate_latest(m.registry).decode()
    assert 'kind="other",outcome="other"' in text and 'reason="other"' in text


def test_forged_sources_and_venues_do_not_grow_the_metrics():
    """20,000 heartbeats with distinct sources (and 2,000 venues) create a
    bounded number of series: known names up to a cap, then "other"."""
    import prometheus_client

    from agents.live import MAX_SOURCE_LABELS, MAX_VENUE_LABELS

    m = Metrics()
    log = Log(RAW)
    t0 = orjson.loads(RAW[2])["t_us"]

    async def go():
        a = adapter_for(log)
        a.metrics = m
        off = 0
        for off, rec in enumerate(RAW[:200]):
            await a.on_raw(0, off, b"NSO", rec)
        for i in range(20_000):
            off += 1
            await a.on_raw(0, off, b"NSO", orjson.dumps(
                {"kind": "heartbeat", "v": 1, "t_us": t0 + 100_000 + i, "venue": "NSO", "source": f"forged-{i}"}))
        # sources that prove themselves (3 heartbeats over 2 s: agents/live.py
        # Decoders) get series, capped; the single forged beats above get none
        t_c = orjson.loads(RAW[199])["t_us"]
        for i in range(50):
            for dt in (-2_000_000, -1_000_000, 0):
                off += 1
                await a.on_raw(0, off, b"NSO", orjson.dumps(
                    {"kind": "heartbeat", "v": 1, "t_us": t_c + dt, "venue": "NSO", "source": f"proven-{i}"}))
        for i in range(2_000):
            off += 1
            venue = {**orjson.loads(RAW[0]), "venue": f"V{i}"}
            await a.on_raw(0, off, b"NSO", orjson.dumps(venue))
            off += 1
            await a.on_raw(0, off, b"NSO", orjson.dumps(
                {"kind": "heartbeat", "v": 1, "t_us": venue["t_us"] + 1, "venue": f"V{i}", "source": "A"}))
        a.update_gauges()
    asyncio.run(go())
    text = prometheus_client.generate_latest(m.registry).decode()
    age = [ln for ln in text.splitlines() if ln.startswith("lapstream_decoder_heartbeat_age_seconds{")]
    silence = [ln for ln in text.splitlines() if ln.startswith("lapstream_decoder_silence_seconds{")]
    lag = [ln for ln in text.splitlines() if ln.startswith("lapstream_event_time_lag_seconds{")]
    assert len(lag) <= MAX_VENUE_LABELS + 1
    assert len(age) <= (MAX_VENUE_LABELS + 1) * (MAX_SOURCE_LABELS + 1) // 8 + MAX_SOURCE_LABELS + 2
    assert len(silence) <= len(age) + 1
    assert 'source="other",venue="NSO"' in text and 'venue="other"' in text
    assert "forged-" not in text
    assert len(text) < 200_000
