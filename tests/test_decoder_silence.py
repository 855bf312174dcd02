"""Which decoder sources the worker watches for silence (agents/live.py
``Decoders``; the alert LapstreamDecoderSilent in deploy/prometheus/alerts.yml).

A stray heartbeat of an unknown source (a test decoder, a typo) creates no
series: a source is tracked once it has proved itself (``PROVE_BEATS``
heartbeats spanning ``PROVE_SPAN_US`` of their t_us). A tracked source that
dies mid-race keeps its silence growing (the page); one silent for
``FORGET_S`` by the worker's clock is forgotten and its series removed. The
live adapter is driven in memory with a fake clock."""
from __future__ import annotations

import asyncio

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st
from prometheus_client import generate_latest

from agents.live import FORGET_S, PROVE_BEATS, PROVE_SPAN_US, LiveAdapter
from streams.metrics import Metrics
from tests.test_faults import RAW, REFS, Log

PROFILE = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REAL = {"X2-A", "X2-B"}
START_AT = next(i for i, ln in enumerate(RAW) if b'"kind":"start"' in ln)
FIRST_FINISH = 1080          # (tests/test_ops_live.py: the race still runs at this line)


def series(m: Metrics, name: str) -> dict:
    out = {}
    for fam in m.registry.collect():
        for smp in fam.samples:
            if smp.name == name:
                out[(smp.labels["venue"], smp.labels["source"])] = smp.value
    return out


def hb(t_us: int, source: str) -> bytes:
    return orjson.dumps({"kind": "heartbeat", "v": 1, "t_us": t_us, "venue": "NSO", "source": source})


class Run:
    """An adapter over the final A with a fake wall clock: 10 records a second."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.m = Metrics()
        self.log = Log([])
        self.a = LiveAdapter(self.log.send, self.log.rebuild, metrics=self.m, clock=lambda: self.now)
        for r in REFS:
            self.a.on_ref(r)
        self.off = 0

    async def feed(self, records, step: float = 0.1, check=None) -> None:
        for rec in records:
            self.now += step
            await self.a.on_raw(0, self.off, b"NSO", rec)
            self.off += 1
            if check is not None:
                check(self)

    def gauges(self) -> tuple[dict, dict]:
        self.a.update_gauges()
        return (series(self.m, "lapstream_decoder_silence_seconds"),
                series(self.m, "lapstream_decoder_heartbeat_age_seconds"))


def unproven(draw_gaps):
    """Heartbeat t_us offsets (from the neighbour's) of a source that never proves itself:
    fewer than PROVE_BEATS beats, or more spanning less than PROVE_SPAN_US."""
    return st.one_of(
        st.lists(st.integers(0, 60_000_000), min_size=1, max_size=PROVE_BEATS - 1),
        st.lists(st.integers(0, PROVE_SPAN_US - 1), min_size=PROVE_BEATS, max_size=8))


def interleave(records: list, at: int, offsets, source: str) -> list:
    """Heartbeats of ``source`` at the t_us of record ``at`` plus each offset,
    each placed where the feed reaches its time (as a decoder's beats arrive)."""
    t0 = orjson.loads(records[at])["t_us"]
    times = [orjson.loads(r)["t_us"] for r in records]
    out = list(records)
    for o in sorted(offsets, reverse=True):
        i = at + 1
        while i < len(times) and times[i] <= t0 + o:
            i += 1
        out.insert(i, hb(t0 + o, source))
    return out


stray_name = st.text(alphabet="ABCXYZ-0123456789", min_size=1, max_size=8).filter(lambda s: s not in REAL)


@PROFILE
@given(st.lists(st.tuples(st.integers(0, len(RAW) - 1), stray_name, unproven(None)), min_size=1, max_size=4,
                unique_by=lambda s: s[1]))
def test_stray_heartbeats_create_no_series_and_everything_silent_30_min_is_forgotten(strays):
    records = list(RAW)
    for at, name, offsets in sorted(strays, key=lambda s: -s[0]):
        t = orjson.loads(records[at])["t_us"]
        records[at + 1:at + 1] = [hb(t + o, name) for o in sorted(offsets)]
    run = Run()

    def check(r: Run) -> None:
        if r.off % 97 == 0:
            silence, age = r.gauges()
            assert set(s for _, s in silence) <= REAL, silence
            assert set(s for _, s in age) <= REAL, age
    asyncio.run(run.feed(records, check=check))
    silence, age = run.gauges()
    assert set(silence) == {("NSO", s) for s in REAL} and all(v < 1 for v in silence.values())
    # 30 min of the worker's clock without a heartbeat: every source forgotten, series gone
    run.now += FORGET_S - 1
    silence, _ = run.gauges()
    assert set(silence) == {("NSO", s) for s in REAL}
    run.now += 2
    silence, age = run.gauges()
    assert silence == {} and age == {}
    text = generate_latest(run.m.registry).decode()
    assert "lapstream_decoder_silence_seconds{" not in text
    # a forgotten source that beats once again is a candidate, not a decoder
    t_last = orjson.loads(records[-1])["t_us"]
    asyncio.run(run.feed([hb(t_last + 1_000_000, "X2-A")]))
    assert run.gauges()[0] == {}


@PROFILE
@given(st.integers(START_AT + 10, FIRST_FINISH - 20),      # where the new decoder starts beating
       st.integers(PROVE_BEATS, 12),                        # how many heartbeats it sends
       st.integers(PROVE_SPAN_US // (PROVE_BEATS - 1), 2_000_000),   # its period (t_us)
       st.floats(6.0, 600.0))                               # how long the race goes on without it (s)
def test_a_proven_decoder_that_dies_mid_race_pages_until_forgotten(at, beats, period, silent_s):
    """A third decoder (X2-C) proves itself during the race, then dies: its
    silence series appears, grows past 5 s by the worker's clock while the
    race is active (the alert's condition), and goes only after FORGET_S."""
    records = interleave(list(RAW[:FIRST_FINISH]), at, [i * period for i in range(beats)], "X2-C")
    run = Run()
    asyncio.run(run.feed(records))
    silence, age = run.gauges()
    assert ("NSO", "X2-C") in silence and ("NSO", "X2-C") in age
    assert run.a.procs[0].engine.active_races() == 1
    run.now += silent_s
    silence, _ = run.gauges()
    assert silence[("NSO", "X2-C")] > 5
    assert run.m.active_races._value.get() == 1
    run.now += FORGET_S
    silence, age = run.gauges()
    assert ("NSO", "X2-C") not in silence and ("NSO", "X2-C") not in age


def test_a_takeover_watches_the_decoders_the_replay_proved_not_a_stray():
    """A new owner rebuilds the partition: the real decoders are watched from
    the takeover, a stray heartbeat in the log is not."""
    records = list(RAW)
    t = orjson.loads(records[40])["t_us"]
    records.insert(41, hb(t, "X2-TEST"))
    log = Log(records)
    now = [5000.0]
    m = Metrics()
    a = LiveAdapter(log.send, log.rebuild, metrics=m, clock=lambda: now[0])
    for r in REFS:
        a.on_ref(r)

    async def go():
        async def committed(p):
            return len(records)
        a.assign([0], committed)
        await a.pending[0]
    asyncio.run(go())
    a.update_gauges()
    silence = series(m, "lapstream_decoder_silence_seconds")
    age = series(m, "lapstream_decoder_heartbeat_age_seconds")
    assert set(silence) == {("NSO", s) for s in REAL} == set(age)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(4, 20), st.integers(300, 400))   # (>= 54 s of feed after it dies: more than ahead_s + 5 s)
def test_a_backup_decoder_running_seconds_ahead_is_watched_and_pages_when_it_dies(ahead_s, stop_back):
    """X2-C beats once a second, ``ahead_s`` s ahead of the venue's other
    decoders: the clock guard holds each beat until the venue catches up, so
    none is consumed as such; the worker still watches it (seen applied in
    the state at each gauge pass) and its silence grows once it dies
    mid-race while the others go on."""
    records = list(RAW[:FIRST_FINISH])
    stop = FIRST_FINISH - stop_back
    times = [orjson.loads(r)["t_us"] for r in records]
    out = []
    nxt = times[START_AT - 100] + ahead_s * 1_000_000
    for i, rec in enumerate(records):
        out.append(rec)
        while i < stop and nxt <= times[i] + ahead_s * 1_000_000:
            out.append(hb(nxt, "X2-C"))
            nxt += 1_000_000
    run = Run()

    def gauges_each_second(r: Run) -> None:
        if r.off % 10 == 0:
            r.a.update_gauges()
    asyncio.run(run.feed(out, check=gauges_each_second))
    silence, age = run.gauges()
    assert run.a.procs[0].engine.venues["NSO"].hb.get("X2-C"), "X2-C was never applied"
    assert ("NSO", "X2-C") in silence, silence
    assert silence[("NSO", "X2-C")] > 5 > max(silence[("NSO", s)] for s in REAL)
    assert run.a.procs[0].engine.active_races() == 1
