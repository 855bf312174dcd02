"""Corrections to finishes, whenever they arrive: photos, IRM decisions, VOID.

The final facts must not depend on when a correction arrives (inside the
3 s reordering window or long after), every fact's latest version must
agree with the result, and every natural key must end on a final version.
"""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from tests.msgs import S, T0, by_time, comp, decision, heartbeats, photo, race, record_ref, run, skate, start, venue
from tests.schemacheck import validate
from tests.test_properties import check_versions

GUN = T0 + 60 * S


def _pair(first_a=10.10, first_b=10.56, miss_b=()):
    ra, ta = skate("A", 300, GUN, 500, first_s=first_a, per100_s=6.0)
    rb, tb = skate("B", 300, GUN, 500, first_s=first_b, per100_s=6.0, miss=miss_b)
    return ra + rb, ta, tb


def _setup(extra=()):
    return [venue(), *extra, race("R1", [comp("A", 300), comp("B", 300)]), start("R1", GUN)]


def _latest(events, kind):
    """The latest version per competitor of ``kind`` (finish) or of the race (result)."""
    last = {}
    for e in events:
        if e["kind"] == kind:
            last[e.get("competitor_id") if kind == "finish" else e["race_id"]] = e
    return last


def _final_finishes(events):
    return {cid: (e["time_ms"], e["rank"], e["source"], e.get("withdrawn", False))
            for cid, e in _latest(events, "finish").items()}


def _final_splits(events, d):
    last = {}
    for e in events:
        if e["kind"] == "split" and e["distance_m"] == d:
            last[e["competitor_id"]] = (e["time_ms"], e["rank"], e.get("withdrawn", False), e["final"])
    return last


def _feed(reads, *msgs, until=130):
    return by_time(_setup() + list(msgs) + reads + [decision("R1", "OFFICIAL", GUN + 120 * S)]
                   + heartbeats(T0 + 30 * S, GUN + until * S))


# -- a photo inside the reordering window ------------------------------------------


@settings(max_examples=40, deadline=None)
@given(delay_ms=st.integers(0, 6000), slower_ms=st.integers(1, 40))
def test_a_photo_inside_the_window_gives_what_a_late_photo_gives(delay_ms, slower_ms):
    """B's photo (a little slower than its transponder time) arriving from 0 to 6 s
    after its finish: the same final finishes and the same final 500 m splits as
    the photo arriving 30 s later (reviewer's case: inside the window it settled
    B's finish before its crossing, ranked it 1st and withdrew its split)."""
    reads, _ta, tb = _pair()
    fin = tb[500] + slower_ms * 1000
    early = run(_feed(reads, photo("R1", "B", fin, tb[500] + delay_ms * 1000)))
    late = run(_feed(reads, photo("R1", "B", fin, tb[500] + 30 * S)))
    assert _final_finishes(early) == _final_finishes(late)
    assert _final_finishes(early)["B"][:3] == ((fin - GUN) // 1000, 2, "photo")
    assert _final_splits(early, 500) == _final_splits(late, 500)
    assert all(not v[2] and v[3] for v in _final_splits(early, 500).values())
    check_versions(early)


@settings(max_examples=30, deadline=None)
@given(delay_ms=st.integers(0, 8000))
def test_a_photo_of_a_missed_finish_finishes_the_skater_whenever_it_arrives(delay_ms):
    """B's finish crossing is not read at all: the photo finishes B, arriving while
    B's previous crossing (400 m) is still open or long after."""
    reads, _ta, tb = _pair(miss_b=(500,))
    fin = tb[400] + 6_000_000
    early = run(_feed(reads, photo("R1", "B", fin, tb[400] + delay_ms * 1000)))
    late = run(_feed(reads, photo("R1", "B", fin, fin + 40 * S)))
    assert _final_finishes(early)["B"] == ((fin - GUN) // 1000, 2, "photo", False)
    assert _final_finishes(early) == _final_finishes(late)
    check_versions(early)


def test_a_photo_of_a_missed_finish_at_the_end_of_a_recorded_feed():
    """The feed ends before the photo's time is behind the window: it still counts."""
    reads, _ta, tb = _pair(miss_b=(500,))
    fin = tb[400] + 6_000_000
    msgs = by_time(_setup() + reads + [photo("R1", "B", fin, fin + 100_000)]
                   + heartbeats(T0 + 30 * S, fin))
    events = run(msgs)
    assert _final_finishes(events)["B"][:3] == ((fin - GUN) // 1000, 2, "photo")


# -- every finish says the rank it has now -----------------------------------------


@settings(max_examples=40, deadline=None)
@given(a_photo_ms=st.integers(-60, 60), b_photo_ms=st.one_of(st.none(), st.integers(-60, 60)),
       dq=st.sampled_from([None, "A", "B"]), when_s=st.integers(35, 110))
def test_the_latest_finish_of_every_competitor_agrees_with_the_latest_result(a_photo_ms, b_photo_ms, dq, when_s):
    """Photos that swap the order, a DQ: a competitor whose rank in the race
    changed gets its finish again with the new rank (a DQ'd one: no rank)."""
    reads, ta, tb = _pair(first_a=10.10, first_b=10.12)
    extra = [photo("R1", "A", ta[500] + a_photo_ms * 1000 + 20_000, GUN + when_s * S)]
    if b_photo_ms is not None:
        extra.append(photo("R1", "B", tb[500] + b_photo_ms * 1000 + 20_000, GUN + (when_s + 1) * S))
    if dq is not None:
        extra.append(decision("R1", "DQ", GUN + (when_s + 2) * S, competitor_id=dq))
    events = run(_feed(reads, *extra))
    check_versions(events)
    for e in events:
        validate(e)
    result = _latest(events, "result")["R1"]
    rank_in_result = {e["competitor_id"]: e["rank"] for e in result["ranking"]}
    finishes = _latest(events, "finish")
    assert set(finishes) == {"A", "B"}
    for cid, f in finishes.items():
        assert f["final"] is True
        if f.get("withdrawn"):   # DQ'd while its finish was provisional: taken back
            assert rank_in_result[cid] is None
        else:
            assert f["rank"] == rank_in_result[cid], (cid, f, result["ranking"])


def test_a_photo_that_swaps_the_order_moves_the_other_finish_too():
    """The reviewer's case: A 34.10 and B 34.12 by transponder, A's photo 34.15."""
    reads, ta, _tb = _pair(first_a=10.10, first_b=10.12)
    events = run(_feed(reads, photo("R1", "A", GUN + 34_150_000, GUN + 70 * S)))
    finishes = _latest(events, "finish")
    assert (finishes["A"]["rank"], finishes["B"]["rank"]) == (2, 1)
    b_final = [(e["rank"], e["revision"]) for e in events
               if e["kind"] == "finish" and e["competitor_id"] == "B" and e["final"]]
    assert [r for r, _ in b_final] == [2, 1]   # 2nd when it finished, 1st after A's photo
    assert b_final[1][1] == b_final[0][1] + 1 and finishes["B"]["source"] == "transponder"


# -- IRM decisions and VOID ---------------------------------------------------------


def test_an_irm_for_the_last_competitor_on_the_track_makes_the_result_unofficial():
    """A finishes; B stops and gets a DNF: everyone has a finish or an IRM, so the
    result is unofficial (and the standings complete) before OFFICIAL."""
    ra, _ = skate("A", 300, GUN, 500, first_s=10.30, per100_s=6.0)
    rb, _ = skate("B", 300, GUN, 500, first_s=10.50, per100_s=6.0, stop_at=300)
    msgs = by_time(_setup() + ra + rb + [decision("R1", "DNF", GUN + 60 * S, competitor_id="B")]
                   + heartbeats(T0 + 30 * S, GUN + 100 * S))
    events = run(msgs)
    result = _latest(events, "result")["R1"]
    assert result["status"] == "unofficial" and result["final"] is True
    standings = [e for e in events if e["kind"] == "standings"]
    assert standings[-1]["complete"] is True


@settings(max_examples=40, deadline=None)
@given(after_ms=st.integers(-500, 8000), code=st.sampled_from(["DQ", "DNF", "VOID"]),
       with_record=st.booleans())
def test_an_irm_or_void_inside_the_window_leaves_no_key_provisional(after_ms, code, with_record):
    """A decision given while A's finish crossing is still open (or just after):
    every split, finish, record and result ends on a final version."""
    reads, ta, _tb = _pair()
    extra = [record_ref("WR", "34.20", "OLD")] if with_record else []
    dec = (decision("R1", "VOID", ta[500] + after_ms * 1000) if code == "VOID"
           else decision("R1", code, ta[500] + after_ms * 1000, competitor_id="A"))
    msgs = by_time(_setup(extra) + reads + [dec, decision("R1", "OFFICIAL", GUN + 120 * S)]
                   + heartbeats(T0 + 30 * S, GUN + 130 * S))
    events = run(msgs)
    check_versions(events)
    for e in events:
        validate(e)
    last = {}
    for e in events:
        if e["kind"] == "record":
            last[("record", e["competitor_id"], e["record"])] = e
        elif e["kind"] == "finish":
            last[("finish", e["competitor_id"])] = e
        elif e["kind"] == "result":
            last[("result",)] = e
    assert all(e["final"] is True for e in last.values()), {k: e["final"] for k, e in last.items()}
    if ("finish", "A") in last:   # A's finish: withdrawn (provisional before) or without rank
        fa = last[("finish", "A")]
        assert fa.get("withdrawn") or fa["rank"] is None
    for k, e in last.items():
        if k[0] == "record" and k[1] == "A":
            assert e["withdrawn"] is True


def test_void_closes_an_open_fall_suspicion():
    """B stops at 300 m (suspected fall, never confirmed); the race is made VOID:
    no OFFICIAL can follow, so the suspicion is cleared then."""
    ra, _ = skate("A", 300, GUN, 500, first_s=10.30, per100_s=6.0)
    rb, _ = skate("B", 300, GUN, 500, first_s=10.50, per100_s=6.0, stop_at=300)
    msgs = by_time(_setup() + ra + rb + [decision("R1", "VOID", GUN + 90 * S)]
                   + heartbeats(T0 + 30 * S, GUN + 200 * S))
    events = run(msgs)
    incidents = [e for e in events if e["kind"] == "incident" and e["competitor_id"] == "B"]
    assert [e["status"] for e in incidents] == ["suspected", "cleared"]
    assert incidents[-1]["note"] == "race void" and incidents[-1]["final"] is True
    assert incidents[-1]["revision"] == incidents[0]["revision"] + 1
