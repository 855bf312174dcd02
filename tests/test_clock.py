"""Clocks that cannot be hijacked (issue 7, case 3): agents/core/clockguard.py
wired into streams.process.Processor, so offline and live decide alike.

A message far ahead of its venue's clock (between races too) never moves the
clock unless the venue's next messages confirm it; an older feed replayed
onto a venue that has moved on is refused (``stale_feed``)."""
from __future__ import annotations

import asyncio

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from agents.live import LiveAdapter
from streams import beijing
from streams.process import Processor, process_lines
from streams.topics import DEADLETTER, RECORDS_REF
from tests.msgs import by_id, canon
from tests.test_faults import Log

WOMEN = (beijing.FEEDS_DIR / beijing.WOMEN_FILE).read_bytes().splitlines()
MEN = (beijing.FEEDS_DIR / beijing.MEN_FILE).read_bytes().splitlines()
CLEAN = list(process_lines(WOMEN))
INT64_MAX = 2**63 - 1


def _officials(lines):
    return [i for i, ln in enumerate(lines) if b'"OFFICIAL"' in ln]


def _hb(t, source="X2-A"):
    return orjson.dumps({"kind": "heartbeat", "v": 1, "t_us": t, "venue": "NSO", "source": source})


def _clock_before(lines, pos):
    """The venue's clock before line ``pos`` (its set-up time before its first clock message)."""
    return max(orjson.loads(ln)["t_us"] for ln in lines[:max(pos, 1)]
               if b'"heartbeat"' in ln or b'"passing"' in ln or b'"venue"' in ln)


def _split(out):
    out = list(out)
    facts = [e for e in out if e["kind"] != "deadletter"]
    dead = [e for e in out if e["kind"] == "deadletter"]
    return facts, dead


def _live(lines):
    """The same lines through the live adapter (in memory): derived events and dead letters."""
    log = Log(lines)

    async def go():
        a = LiveAdapter(log.send, log.rebuild)
        for off, rec in enumerate(lines):
            if b'"record_ref"' in rec:
                a.on_ref(rec)
            else:
                await a.on_raw(0, off, b"NSO", rec)
    asyncio.run(go())
    facts = [orjson.loads(v) for t, _, v, _ in log.sent if t not in (DEADLETTER.name, RECORDS_REF.name)]
    dead = [(v, dict(h)) for t, _, v, h in log.sent if t == DEADLETTER.name]
    return facts, dead


@pytest.mark.parametrize("ahead", ["3 days", "int64 max", "1 hour after OFFICIAL"])
@pytest.mark.parametrize("which", [0, 3, -1])
def test_a_heartbeat_far_ahead_between_races_erases_nothing(ahead, which):
    pos = _officials(WOMEN)[which] + 1       # right after an OFFICIAL: between races
    clock = _clock_before(WOMEN, pos)
    t = {"3 days": clock + 3 * 86400 * 10**6, "int64 max": INT64_MAX,
         "1 hour after OFFICIAL": clock + 3600 * 10**6}[ahead]
    bad = _hb(t)
    lines = WOMEN[:pos] + [bad] + WOMEN[pos:]
    facts, dead = _split(process_lines(lines))
    assert canon(facts) == canon(CLEAN)
    assert [(d["line"], d["raw"]) for d in dead] == [(pos + 1, bad.decode())]
    assert "ahead of venue NSO's clock" in dead[0]["error"]
    # live gives the same: same facts, the same dead letter
    lfacts, ldead = _live(lines)
    assert by_id(lfacts) == by_id(CLEAN)
    assert [(v, h["source-offset"]) for v, h in ldead] == [(bad, str(pos).encode())]
    assert ldead[0][1]["error"].decode() == dead[0]["error"]


def test_a_passing_far_ahead_during_a_race_and_a_burst_of_two_erase_nothing():
    pos = next(i for i, ln in enumerate(WOMEN) if b'"start"' in ln) + 40
    clock = _clock_before(WOMEN, pos)
    ps = orjson.loads(next(ln for ln in WOMEN[pos:] if b'"passing"' in ln))
    bad = [orjson.dumps({**ps, "t_us": clock + 90 * 10**6, "seq": 10**9}), _hb(clock + 91 * 10**6, "X2-B")]
    lines = WOMEN[:pos] + bad + WOMEN[pos:]
    facts, dead = _split(process_lines(lines))
    assert canon(facts) == canon(CLEAN)
    assert sorted(d["raw"] for d in dead) == sorted(b.decode() for b in bad)


def test_a_real_new_session_is_confirmed_and_loses_nothing():
    """The women's tournament spans three days: the clock leaps (257,250 s) between
    sessions, confirmed by the venue's next messages; nothing is dead-lettered."""
    assert not [e for e in CLEAN if e["kind"] == "deadletter"]
    p = Processor()
    for ln in WOMEN:
        p.handle(ln)
    assert not p.guard.held


def test_a_leap_held_at_the_end_of_a_feed_is_refused_there():
    bad = _hb(INT64_MAX)
    facts, dead = _split(process_lines(WOMEN + [bad]))
    assert canon(facts) == canon(CLEAN)
    assert [d["line"] for d in dead] == [len(WOMEN) + 1]


def test_an_older_feed_replayed_onto_a_venue_that_has_moved_on_is_refused():
    """The men's tournament ends after the women's at the same venue: replaying
    the women's feed onto it publishes nothing (no race made official with every
    team DNS) and says why."""
    alone = list(process_lines(MEN, flush=False))
    out = list(process_lines(MEN + WOMEN, flush=False))
    facts, dead = _split(out)
    assert canon(facts) == canon(alone)
    stale = [d for d in dead if "stale" in d["error"] or "behind venue NSO's clock" in d["error"]]
    assert len(stale) > 0.9 * len(WOMEN)
    assert not [e for e in facts[len(alone):] if e["kind"] == "result"]


def test_the_guard_counts_refusals_as_dead_letters_with_their_reason_class():
    from streams.metrics import Metrics

    m = Metrics()
    log = Log([])

    async def go():
        a = LiveAdapter(log.send, None, m)
        for off, ln in enumerate(MEN + WOMEN[:3000]):
            if b'"record_ref"' in ln:
                await a.on_ref_record(0, off, None, ln)
            else:
                await a.on_raw(0, off, b"NSO", ln)
    asyncio.run(go())
    text = __import__("prometheus_client").generate_latest(m.registry).decode()
    assert 'lapstream_deadletters_total{reason="stale_feed"}' in text


PROFILE = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROFILE
@given(bad=st.lists(st.tuples(st.integers(min_value=1, max_value=len(WOMEN)),
                              st.sampled_from(["heartbeat", "passing"]),
                              st.one_of(st.integers(min_value=31, max_value=10**7),
                                        st.just(2**63 // 10**6))),
                    min_size=1, max_size=3))
def test_far_ahead_clock_messages_anywhere_never_erase_facts(bad):
    """One to three messages, each alone, anywhere in the tournament, 31 s to
    months (or int64 max) ahead of the venue's clock: the same facts."""
    lines = list(WOMEN)
    inserted = []
    for pos, kind, secs in sorted(bad, reverse=True):
        if pos in {p for p, _ in inserted} or pos - 1 in {p for p, _ in inserted} or pos + 1 in {p for p, _ in inserted}:
            continue
        clock = _clock_before(WOMEN, pos)
        t = min(INT64_MAX, clock + secs * 10**6)
        if kind == "heartbeat":
            raw = _hb(t)
        else:
            raw = orjson.dumps({"kind": "passing", "v": 1, "t_us": t, "venue": "NSO", "source": "X2-A",
                                "seq": 10**12 + pos, "loop": "L000", "transponder": "411022"})
        inserted.append((pos, raw))
    for pos, raw in inserted:      # descending positions: earlier indexes stay valid
        lines.insert(pos, raw)
    facts, dead = _split(process_lines(lines))
    assert canon(facts) == canon(CLEAN)
    refused = {d["raw"] for d in dead}
    assert refused <= {r.decode() for _, r in inserted}
    for pos, raw in inserted:
        if raw.decode() in refused:
            continue
        # accepted only where the feed itself soon reached that time (the venue's
        # real first heartbeats come 91 s after its set-up, so a message 61 s
        # ahead of the set-up is not a leap)
        t = orjson.loads(raw)["t_us"]
        soon = [orjson.loads(x).get("t_us", 0) for x in WOMEN[pos:pos + 50]]
        assert t <= max(soon), (pos, raw)


def test_a_bad_leap_among_real_ones_refuses_only_itself():
    """The venue's first heartbeats leap 91 s from its set-up (real, held until
    confirmed); a forged one at int64 max among them is the only dead letter."""
    pos = 4
    bad = _hb(INT64_MAX)
    lines = WOMEN[:pos] + [bad] + WOMEN[pos:]
    facts, dead = _split(process_lines(lines))
    assert canon(facts) == canon(CLEAN)
    assert [(d["line"], d["raw"]) for d in dead] == [(pos + 1, bad.decode())]
