"""The core's fast paths give exactly what the plain code they replace gives.

The timing core keeps a few hand-tuned helpers on its hot path (see the
README's core cost figures); each is checked here against the obvious
implementation over generated inputs, so a speed-up can never change a byte
of output.
"""
from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from agents.core.timefmt import event_id, fmt_time, id_prefix, split_id


def plain_fmt_time(time_ms: int) -> str:
    hund = time_ms // 10
    secs, hh = divmod(hund, 100)
    mins, secs = divmod(secs, 60)
    if mins:
        return f"{mins}:{secs:02d}.{hh:02d}"
    return f"{secs}.{hh:02d}"


def plain_event_id(*parts: object) -> str:
    text = "\x1f".join("" if p is None else str(p) for p in parts)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


@given(st.integers(min_value=-10**9, max_value=10**10))
def test_fmt_time_matches_the_plain_formula(ms):
    assert fmt_time(ms) == plain_fmt_time(ms)


def test_fmt_time_at_the_boundaries():
    for ms in (0, 9, 10, 59_999, 60_000, 60_009, 599_990, 3_600_000, -1, -10, -60_000, -60_010):
        assert fmt_time(ms) == plain_fmt_time(ms), ms
    assert fmt_time(34321) == "34.32" and fmt_time(173614) == "2:53.61"


ids = st.text(min_size=0, max_size=12)


@given(ids, st.integers(min_value=1, max_value=99), ids, st.one_of(st.none(), ids),
       st.integers(min_value=0, max_value=100_000), st.integers(min_value=0, max_value=50))
def test_split_id_is_the_event_id_of_a_split(rid, attempt, cid, sid, d, rev):
    want = plain_event_id("split", rid, attempt, cid, sid, d, rev)
    assert event_id("split", rid, attempt, cid, sid, d, rev) == want
    prefix = id_prefix("split", rid, attempt)
    assert split_id(prefix, cid, sid, d, rev) == want
    assert split_id(prefix, cid, sid, d, rev) == want   # the prefix is not consumed


# -- a heartbeat applied inline is what window.heartbeat does ------------------

from hypothesis import settings  # noqa: E402
from schemas.decode import Rejected  # noqa: E402

from agents.core import Engine  # noqa: E402
from tests import msgs as M  # noqa: E402


def slow_apply(eng: Engine, msg: dict) -> list[dict]:
    """Engine.apply without its inline heartbeat: every message through its handler."""
    out: list[dict] = []
    eng.outcome = "applied"
    eng._handlers[msg["kind"]](eng, msg, out)
    if eng.dirty:
        eng._refresh(out)
    eng._counts[msg["kind"]][eng.outcome] += 1
    return out


def outcome_of(apply, eng, msg):
    try:
        return apply(msg), None
    except Rejected as rej:
        return None, str(rej)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["beat", "beat", "beat", "late", "dark", "jump"]),
                          st.sampled_from(["A", "B"])), min_size=5, max_size=40),
       st.integers(min_value=0, max_value=3))
def test_inline_heartbeat_is_the_handler(steps, phase):
    """Reads of a pair race with heartbeats that go on, arrive late, leave the
    venue dark (an outage) or leap ahead (a clock jump): the same events,
    rejections and counts whether heartbeats go inline or through the handler."""
    gun = M.T0 + 10 * M.S
    reads = []
    for sid, start_m in (("AAA", 0), ("BBB", 200)):
        r, _ = M.skate(sid, start_m, gun, 500)
        reads += r
    setup = [M.venue(), M.race("R1", [M.comp("AAA", 0), M.comp("BBB", 200)]), M.start("R1", gun)]
    feed = list(setup)
    t = gun + phase * 250_000
    reads = sorted(reads, key=lambda m: m["t_us"])
    i = 0
    for kind, src in steps:
        if kind == "beat":
            t += M.S
        elif kind == "dark":
            t += 4 * M.S
        elif kind == "jump":
            t += 90 * M.S
        while i < len(reads) and reads[i]["t_us"] <= t:
            feed.append(reads[i])
            i += 1
        feed.append(M.hb(t - 5 * M.S if kind == "late" else t, src))
    feed += reads[i:]
    fast, slow = Engine(), Engine()
    for msg in feed:
        assert outcome_of(fast.apply, fast, msg) == outcome_of(lambda m: slow_apply(slow, m), slow, msg)
        assert fast.outcome == slow.outcome
    assert fast.flush() == slow.flush()
    assert fast.stats == slow.stats
    assert {k: v.clock for k, v in fast.venues.items()} == {k: v.clock for k, v in slow.venues.items()}


def test_the_engine_state_still_pickles():
    """The ops gauge pickles each partition's engine (``state_size``): the
    cached id prefixes pickle as their text and give the same ids after."""
    import pickle

    gun = M.T0 + 10 * M.S
    reads, _ = M.skate("AAA", 0, gun, 500)
    eng = Engine()
    for msg in [M.venue(), M.race("R1", [M.comp("AAA", 0)]), M.start("R1", gun)] + reads[:4]:
        eng.apply(msg)
    assert pickle.dumps(eng, protocol=pickle.HIGHEST_PROTOCOL)
    prefix = pickle.loads(pickle.dumps(eng.races["R1"].split_h))
    for sid, d, rev in (("AAA", 100, 0), (None, 500, 3)):
        assert split_id(prefix, "AAA", sid, d, rev) == event_id("split", "R1", 1, "AAA", sid, d, rev)


# -- a heartbeat through fastpath.beat is what ClockGuard.offer + Engine.apply do --

import orjson  # noqa: E402

import streams.process as process_mod  # noqa: E402
from streams import beijing  # noqa: E402

FINAL_A = (beijing.FEEDS_DIR / beijing.FINAL_A_FILE).read_bytes().splitlines()
_HB_AT = [i for i, ln in enumerate(FINAL_A) if b'"heartbeat"' in ln]


def _through(lines: list[bytes], fast: bool):
    saved = process_mod.beat
    if not fast:
        process_mod.beat = lambda guard, eng, msg: None
    try:
        proc = process_mod.Processor()
        out = list(process_mod.process_lines(lines, proc))
    finally:
        process_mod.beat = saved
    g = proc.guard
    state = ({k: (s.by, s.top_src, s.top, s.second) for k, s in g.sources.items()}, dict(g.leapt),
             {k: v.clock for k, v in proc.engine.venues.items()},
             {k: dict(v.hb) for k, v in proc.engine.venues.items()})
    return out, proc.engine.stats, state


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=len(_HB_AT) - 1),
                          st.sampled_from([-700, -30, -4, -1, 0, 1, 2, 3, 5, 12, 25, 40, 90, 4000]),
                          st.sampled_from(["X2-A", "X2-B", "X3"])), max_size=12))
def test_fast_heartbeat_is_guard_then_engine(inserts):
    """Heartbeats of the women's final A, with extra ones from the decoders or
    a third source, behind, at or ahead of the clock (leaps held, confirmed or
    refuted, stale ones refused): the same events, dead letters, counts and
    clocks with the one-step heartbeat as through the guard and the engine."""
    lines = list(FINAL_A)
    for pos, delta_s, src in sorted(inserts, reverse=True):
        i = _HB_AT[pos]
        msg = orjson.loads(lines[i])
        msg["t_us"] += delta_s * 1_000_000
        msg["source"] = src
        lines.insert(i + 1, orjson.dumps(msg))
    assert _through(lines, True) == _through(lines, False)
