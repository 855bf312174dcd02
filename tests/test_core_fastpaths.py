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
