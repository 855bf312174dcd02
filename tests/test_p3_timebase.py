"""P3 ingest never mixes time bases within one decoder: a decoder on UTC
(GPS) that loses its fix keeps sending UTC times (its RTC put on UTC with
the RTC-UTC offset its records gave), or holds what it cannot put on UTC;
a decoder that started on its RTC stays there unless its RTC agrees with
UTC. Before, each record took UTC when it had it, else RTC: a decoder whose
RTC is hours off sent passings and heartbeats on two clocks."""
from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.p3 import codec as C
from streams.p3.ingest import IngestSettings, Link, P3Ingest
from streams.p3.mapping import HELD_MAX, Converter, DecoderMap
from streams.p3.records import Passing, Status
from tests.paths import DATA

MAP = DATA / "p3-map.json"
UTC0 = 1_700_000_000_000_000
HOURS3 = 3 * 3600 * 1_000_000


def conv() -> Converter:
    return Converter(DecoderMap.load(MAP))


def frame(rec):
    return C.decode_all(rec.encode())[0][0]


def passing(pn, utc=None, rtc=None, did=1001):
    return frame(Passing(passing_number=pn, transponder=410011, utc_us=utc, rtc_us=rtc, decoder_id=did))


def status(utc=None, rtc=None, did=1001):
    return frame(Status(noise=40, gps=1, decoder_id=did, utc_us=utc, rtc_us=rtc))


def times(out):
    return [(m["kind"], m["t_us"]) for m in out.messages]


def test_a_decoder_that_loses_its_fix_stays_on_utc():
    c = conv()
    rtc_off = -HOURS3                    # its RTC runs 3 h behind UTC
    assert times(c.convert(passing(1, utc=UTC0, rtc=UTC0 + rtc_off))) == [("passing", UTC0)]
    # the fix is lost: RTC only, put on UTC with the offset the first passing gave
    assert times(c.convert(passing(2, rtc=UTC0 + 1_000_000 + rtc_off))) == [("passing", UTC0 + 1_000_000)]
    assert times(c.convert(status(rtc=UTC0 + 2_000_000 + rtc_off))) == [("heartbeat", UTC0 + 2_000_000)]
    assert c.stats[("1001", "rtc_on_utc")] == 2
    assert c.stats[("1001", "time_base_held")] == 0


def test_rtc_times_are_held_until_the_offset_is_known():
    c = conv()
    rtc_off = 5 * 60 * 1_000_000           # RTC 5 min ahead
    assert times(c.convert(status(utc=UTC0))) == [("heartbeat", UTC0)]            # on UTC from here
    held = c.convert(passing(1, rtc=UTC0 + 500_000 + rtc_off))
    assert held.messages == [] and any(n[0] == "time_base" for n in held.notes)
    assert c.convert(status(rtc=UTC0 + 900_000 + rtc_off)).messages == []          # no stale heartbeat
    assert c.stats[("1001", "time_base_held")] == 2
    # a passing with both times gives the offset: the held one goes first, on UTC
    out = c.convert(passing(2, utc=UTC0 + 1_500_000, rtc=UTC0 + 1_500_000 + rtc_off))
    assert [(m["seq"], m["t_us"]) for m in out.messages] == [(100, UTC0 + 500_000), (200, UTC0 + 1_500_000)]
    assert c.stats[("1001", "time_base_released")] == 1 and c.stats[("1001", "passings")] == 2


def test_a_decoder_that_started_on_its_rtc_moves_to_utc_only_without_a_jump():
    c = conv()
    # decoder 1001: RTC 3 h off; it gets a fix later: it stays on its RTC (no jump of 3 h)
    assert times(c.convert(passing(1, rtc=UTC0 - HOURS3))) == [("passing", UTC0 - HOURS3)]
    assert times(c.convert(passing(2, utc=UTC0 + 10, rtc=UTC0 + 10 - HOURS3))) == [("passing", UTC0 + 10 - HOURS3)]
    assert times(c.convert(status(utc=UTC0 + 20))) == [("heartbeat", UTC0 + 20 - HOURS3)]
    assert c.stats[("1001", "utc_on_rtc")] == 1 and c.stats[("1001", "time_base_utc")] == 0
    # decoder 1002: RTC 300 ms off UTC: on UTC from its first record with both
    c.convert(passing(1, rtc=UTC0 + 300_000, did=1002))
    out = c.convert(passing(2, utc=UTC0 + 1_000_000, rtc=UTC0 + 1_300_000, did=1002))
    assert [m["t_us"] for m in out.messages] == [UTC0 + 1_000_000]
    assert c.stats[("1002", "time_base_utc")] == 1


def test_held_passings_are_bounded():
    c = conv()
    c.convert(passing(1, utc=UTC0))
    for pn in range(2, HELD_MAX + 12):
        assert c.convert(passing(pn, rtc=UTC0 + pn)).messages == []
    assert c.stats[("1001", "time_base_dropped")] == 10
    out = c.convert(passing(HELD_MAX + 12, utc=UTC0 + 10**7, rtc=UTC0 + 10**7))
    assert len(out.messages) == HELD_MAX + 1


# one decoder, a true RTC-UTC offset, each record with UTC, RTC or both
records = st.lists(st.tuples(st.sampled_from(["passing", "status"]), st.sampled_from(["utc", "rtc", "both"]),
                             st.integers(0, 10**9)), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(recs=records, offset=st.one_of(st.integers(-10 * HOURS3, -3_000_000), st.integers(3_000_000, 10 * HOURS3)))
def test_one_decoder_one_time_base(recs, offset):
    """Whatever mix of UTC-only, RTC-only and both a decoder sends, every
    message it gives is on one clock: all on UTC, or all on its RTC; and
    every timed passing is sent, held, or counted as dropped."""
    c = conv()
    pn = 0
    sent_passings = 0
    shift = set()
    for kind, which, dt in recs:
        utc = UTC0 + dt
        rtc = utc + offset
        u = utc if which in ("utc", "both") else None
        r = rtc if which in ("rtc", "both") else None
        if kind == "passing":
            pn += 1
            out = c.convert(passing(pn, utc=u, rtc=r))
        else:
            out = c.convert(status(utc=u, rtc=r))
        for m in out.messages:
            if m["kind"] == "passing":
                sent_passings += 1
                true = UTC0 + recs_dt(recs, m["seq"] // 100)    # a held one may come out later
            else:
                true = utc                                      # a heartbeat is this STATUS's
            shift.add(m["t_us"] - true)
    assert shift <= {0} or shift <= {offset}, shift
    st_ = next(iter(c.state.values()))
    assert sent_passings + len(st_.held) + c.stats[("1001", "time_base_dropped")] == pn


def recs_dt(recs, pn):
    """dt of the pn-th passing (1-based) of ``recs``."""
    return [dt for kind, _, dt in recs if kind == "passing"][pn - 1]


def test_ingest_counts_held_times_in_its_metric():
    class Producer:
        async def send(self, topic, value=None, key=None):
            f = asyncio.get_running_loop().create_future()
            f.set_result(None)
            return f

        async def flush(self):
            pass

    async def go():
        ing = P3Ingest(IngestSettings(decoders=["127.0.0.1:5403"]), DecoderMap.load(MAP), producer=Producer(),
                       wall_us=lambda: UTC0)
        link = Link("127.0.0.1:5403")
        data = (Status(decoder_id=1001, utc_us=UTC0).encode()
                + Passing(passing_number=1, transponder=1, rtc_us=UTC0 - HOURS3, decoder_id=1001).encode())
        await ing._handle(link, data)
        await ing.flush()
        return ing

    ing = asyncio.run(go())
    m = ing.metrics["lapstream_p3_records_total"]
    assert m.labels("127.0.0.1:5403", "time_base_held")._value.get() == 1
    assert ing.metrics["lapstream_p3_messages_produced_total"].labels("heartbeat")._value.get() == 1
    assert ing.metrics["lapstream_p3_messages_produced_total"].labels("passing")._value.get() == 0
