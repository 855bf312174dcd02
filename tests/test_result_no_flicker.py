"""A live result never drops a competitor for an instant.

When a competitor's finish closes (final) while another's is still
provisional, a final result from the closed finishes alone would rank the
first and drop the second, and the provisional result that follows in the
same message would add it back: the ranking a broadcaster shows flickers
(the women's quarter-final 1: POL final, BLR provisional). The result is
published once, ranking both, until every finish in it is final.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import beijing
from streams.process import process_lines
from tests.test_record_withdrawal_values import feed as close_finishes


def check(events: list[dict]) -> int:
    """Per race and attempt: a competitor timed in a result stays timed in the
    next, unless its finish was withdrawn or it got an IRM in between."""
    last: dict[tuple, set[str]] = {}
    withdrawn: set[tuple] = set()
    results = 0
    for e in events:
        if e["kind"] == "finish" and e.get("withdrawn"):
            withdrawn.add((e["race_id"], e["attempt"], e["competitor_id"]))
        if e["kind"] != "result" or e["status"] == "void":
            continue
        results += 1
        key = (e["race_id"], e["attempt"])
        timed = {r["competitor_id"] for r in e["ranking"] if r["time_ms"] is not None and r["irm"] is None}
        irm = {r["competitor_id"] for r in e["ranking"] if r["irm"] is not None}
        for cid in last.get(key, set()) - timed:
            assert cid in irm or (e["race_id"], e["attempt"], cid) in withdrawn, (e["race_id"], e["revision"], cid)
        last[key] = timed
        withdrawn = {w for w in withdrawn if (w[0], w[1]) != key}
    return results


def test_the_shipped_feeds():
    for name in (beijing.WOMEN_FILE, beijing.MEN_FILE, beijing.FINAL_A_FILE):
        assert check(list(process_lines((beijing.FEEDS_DIR / name).read_bytes().splitlines()))) > 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(targets=st.lists(st.integers(min_value=68_400_000, max_value=68_700_000), min_size=2, max_size=4),
       seed=st.integers(min_value=0, max_value=1000), dq=st.booleans())
def test_close_finishes_in_simulated_pairs(targets, seed, dq):
    assert check(list(process_lines(close_finishes(targets, seed, dq)))) > 0


LINES = (beijing.FEEDS_DIR / beijing.FINAL_A_FILE).read_bytes().splitlines()
OFFICIAL = next(i for i, ln in enumerate(LINES) if b'"OFFICIAL"' in ln)


@settings(max_examples=40, deadline=None)
@given(pos=st.integers(min_value=1100, max_value=OFFICIAL - 1), who=st.sampled_from(["CAN", "JPN"]))
def test_a_decision_while_a_finish_is_provisional(pos, who):
    """A DQ of either team at any moment of the final A, also while a finish
    is in the reorder window: the ranking never drops the other for an instant."""
    dq = b'{"kind":"decision","v":1,"t_us":1644917440000000,"race_id":"OWG2022-TPW-FA","code":"DQ",' \
         b'"competitor_id":"%s"}' % who.encode()
    events = list(process_lines(LINES[:pos] + [dq] + LINES[pos:]))
    assert check(events) > 0
    last = [e for e in events if e["kind"] == "result"][-1]
    assert last["status"] == "official" and last["final"] is True
    assert [r["competitor_id"] for r in last["ranking"] if r["irm"] == "DQ"] == [who]
