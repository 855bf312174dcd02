"""A changed record re-judges every later finish of its identity.

When the record a finish set or equalled changes (a photo either way, a DQ,
a VOID, a restart), every later finish of the same record identity is judged
again, in finishing order, against the reference chain as it now stands: the
records (who holds which, against which reference), the result's record
codes and what goes to ``timing.records.ref`` end as they would had the
correction come before the later races (the reviewer's principle: the final
facts do not depend on when a correction arrives). The four reviewer cases
are explicit; a hypothesis property checks the principle on random
sequences of finishes around the references with random corrections arriving
at random points.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.core.engine import own_ref_update
from agents.core.timefmt import fmt_hundredths
from tests import msgs as M
from tests.msgs import S, T0

GAP = 100 * S   # between guns: a 500 m in ~34 s, the window closed, corrections in between


def gun(i: int) -> int:
    return T0 + 60 * S + i * GAP


def skate_ms(cid: str, i: int, ms: int) -> list[dict]:
    """A 500 m in race i finishing in ``ms`` (standing start at 300 m)."""
    reads, _ = M.skate(cid, 300, gun(i), 500, first_s=(ms - 24_000) / 1000, per100_s=6.0)
    return reads


def feed(finishes: list[tuple[str, int]], corrections: list[tuple[int, int, dict]],
         refs: list[dict] | None = None, late_refs: list[tuple[int, dict]] = ()) -> list[dict]:
    """Races R1.. with one finish each (competitor, ms); corrections
    (race index, arrival index: after that race, message) arrive after
    race ``arrival`` (in their list order); ``late_refs`` (arrival index,
    record_ref with its own ``t_us``) arrive after that race whatever their time."""
    refs = refs if refs is not None else [M.record_ref("WR", "34.40", "OLD")]
    msgs = [M.venue()] + refs
    for i, (cid, ms) in enumerate(finishes):
        msgs += [M.race(f"R{i + 1}", [M.comp(cid, 300)], group="G"), M.start(f"R{i + 1}", gun(i))]
        msgs += skate_ms(cid, i, ms)
    for k, (_, after, m) in enumerate(corrections):
        msgs.append({**m, "t_us": gun(after) + 60 * S + k * 1000})
    msgs += M.heartbeats(T0 + 30 * S, gun(len(finishes) - 1) + 60 * S + GAP)
    msgs = M.by_time(msgs)
    for after, m in late_refs:   # (in their list order, before the corrections of that slot)
        at = next(i for i, x in enumerate(msgs) if x["t_us"] >= gun(after) + 59 * S)
        msgs.insert(at, m)
    return msgs


def photo(i: int, cid: str, ms: int) -> dict:
    return M.photo(f"R{i + 1}", cid, gun(i) + ms * 1000, 0)


def dq(i: int, cid: str) -> dict:
    return M.decision(f"R{i + 1}", "DQ", 0, competitor_id=cid)


def state(events: list[dict]) -> dict:
    """What a subscriber ends with: each record key's last version (absent if
    withdrawn), the record codes of each race's last result, the own references
    on timing.records.ref; and the revisions count up by one per key."""
    last: dict[tuple, dict] = {}
    results: dict[str, dict] = {}
    refs: dict[str, tuple | None] = {}
    for e in events:
        if e["kind"] == "record":
            k = (e["race_id"], e["competitor_id"], e["record"])
            want = 0 if k not in last else last[k]["revision"] + 1
            assert e["revision"] == want, (k, e["revision"], want)
            last[k] = e
            upd = own_ref_update(e)
            if upd is not None:
                refs[upd[0]] = None if upd[1] is None else (upd[1]["time"], upd[1]["holder"])
        elif e["kind"] == "result":
            results[e["race_id"]] = e
    assert all(e["final"] for e in last.values())
    records = {k: (e["time"], e["equalled"], e["previous_time"], e["previous_holder"])
               for k, e in last.items() if not e["withdrawn"]}
    codes = {(rid, r["competitor_id"]): (r["records"], r["irm"], r["time_ms"])
             for rid, e in results.items() for r in e["ranking"]}
    return {"records": records, "codes": codes, "refs": {k: v for k, v in refs.items() if v is not None}}


def held(events: list[dict]) -> dict:
    return state(events)["records"]


# -- the reviewer's four cases --------------------------------------------------------


def test_an_equaller_of_a_disqualified_record_holds_it_and_a_slower_one_later_does_not():
    fin = [("A", 34_300), ("B", 34_305), ("C", 34_350)]
    late = M.run(feed(fin, [(0, 1, dq(0, "A"))]))          # DQ after R2, before R3
    early = M.run(feed(fin, [(0, 0, dq(0, "A"))]))
    assert held(late) == held(early) == {("R2", "B", "WR"): ("34.30", False, "34.40", "OLD")}
    assert state(late) == state(early)
    # C's 34.35 is never a WR: B's 34.30 is the reference in force at C's finish
    assert not [e for e in late if e["kind"] == "record" and e["competitor_id"] == "C"]
    assert [e["time"] for e in late if e["kind"] == "record" and e["competitor_id"] == "B" and e["final"]] \
        == ["34.30", "34.30"]   # equalled (A's), then broken (the old WR's)
    assert list(state(late)["refs"].values()) == [("34.30", "B")]


def test_a_faster_photo_of_the_holder_takes_back_a_record_set_against_its_first_time():
    fin = [("A", 34_300), ("B", 34_250)]
    late = M.run(feed(fin, [(0, 1, photo(0, "A", 34_200))]))
    early = M.run(feed(fin, [(0, 0, photo(0, "A", 34_200))]))
    assert held(late) == held(early) == {("R1", "A", "WR"): ("34.20", False, "34.40", "OLD")}
    assert state(late) == state(early)
    b = [e for e in late if e["kind"] == "record" and e["competitor_id"] == "B" and e["final"]]
    assert [(e["revision"], e["withdrawn"]) for e in b] == [(1, False), (2, True)]
    assert state(late)["codes"][("R2", "B")] == ([], None, 34_250)


def test_a_slower_photo_of_the_holder_passes_the_record_to_a_later_finish_under_it():
    fin = [("A", 34_300), ("B", 34_350)]
    late = M.run(feed(fin, [(0, 1, photo(0, "A", 34_380))]))
    early = M.run(feed(fin, [(0, 0, photo(0, "A", 34_380))]))
    want = {("R1", "A", "WR"): ("34.38", False, "34.40", "OLD"), ("R2", "B", "WR"): ("34.35", False, "34.38", "A")}
    assert held(late) == held(early) == want
    assert state(late) == state(early)
    assert state(late)["codes"][("R2", "B")] == (["WR"], None, 34_350)


def test_a_photo_after_the_reference_was_disqualified_is_judged_against_the_reference_in_force():
    fin = [("A", 34_300), ("B", 34_200)]
    corr = [(0, 1, dq(0, "A")), (1, 1, photo(1, "B", 34_350))]
    late = M.run(feed(fin, corr))
    early = M.run(feed(fin, [(0, 0, dq(0, "A")), (1, 1, photo(1, "B", 34_350))]))
    assert held(late) == held(early) == {("R2", "B", "WR"): ("34.35", False, "34.40", "OLD")}
    assert state(late) == state(early)
    assert list(state(late)["refs"].values()) == [("34.35", "B")]


def test_a_chain_of_records_is_judged_again_link_by_link():
    # A 34.30, B 34.25 (breaks A's), C 34.28 (nothing), D 34.27 (nothing). B is
    # disqualified: C now breaks A's (34.28 < 34.30), and D breaks C's.
    fin = [("A", 34_300), ("B", 34_250), ("C", 34_280), ("D", 34_270)]
    late = M.run(feed(fin, [(1, 3, dq(1, "B"))]))
    early = M.run(feed(fin, [(1, 1, dq(1, "B"))]))
    assert state(late) == state(early)
    assert held(late) == {("R1", "A", "WR"): ("34.30", False, "34.40", "OLD"),
                          ("R3", "C", "WR"): ("34.28", False, "34.30", "A"),
                          ("R4", "D", "WR"): ("34.27", False, "34.28", "C")}


def test_a_void_and_a_restart_pass_the_record_on_as_a_dq_does():
    fin = [("A", 34_300), ("B", 34_350)]
    void = M.run(feed(fin, [(0, 1, M.decision("R1", "VOID", 0))]))
    want = {("R2", "B", "WR"): ("34.35", False, "34.40", "OLD")}
    assert held(void) == want
    # a restart of R1 after R2: A's first attempt is gone; its second (later) is judged against B's
    msgs = feed(fin, [])
    g = gun(2)
    msgs = M.by_time(msgs + [M.start("R1", g, attempt=2)] + skate_ms("A", 2, 34_320)
                     + M.heartbeats(g, g + 60 * S))
    ev = M.run(msgs)
    assert held(ev) == {("R2", "B", "WR"): ("34.35", False, "34.40", "OLD"),
                        ("R1", "A", "WR"): ("34.32", False, "34.35", "B")}


# -- references that change: a record_ref, another venue's claim, its withdrawal ----------


def far_claim(time: str, t: int, holder: str = "FAR1") -> dict:
    return {**M.record_ref("WR", time, holder, t=t), "origin": "lapstream", "race_id": "FR1", "venue": "FAR"}


def test_a_federation_reference_that_arrives_after_the_finish_judges_it_as_a_rebuild_does():
    fin = [("A", 34_300), ("B", 34_250)]
    newer = M.record_ref("WR", "34.28", "NEW", t=gun(0) - 10 * S)   # in force from before R1
    first = M.run(feed(fin, [], [M.record_ref("WR", "34.40", "OLD"), newer]))
    late = M.run(feed(fin, [], late_refs=[(1, newer)]))
    assert held(first) == {("R2", "B", "WR"): ("34.25", False, "34.28", "NEW")}
    assert state(late) == state(first)
    # A's WR (against OLD's) is taken back; B's is judged again against NEW's, not A's
    assert [(e["competitor_id"], e["revision"], e["withdrawn"], e["previous_holder"])
            for e in late if e["kind"] == "record" and e["final"]] == \
        [("A", 1, False, "OLD"), ("B", 1, False, "A"), ("A", 2, True, "OLD"), ("B", 2, False, "NEW")]


def test_another_venues_claim_that_arrives_late_takes_back_what_it_beats():
    fin = [("A", 34_300)]
    claim = far_claim("34.25", gun(0) - 10 * S)
    first = M.run(feed(fin, [], [M.record_ref("WR", "34.40", "OLD"), claim]))
    late = M.run(feed(fin, [], late_refs=[(0, claim)]))
    assert held(first) == {}
    assert state(late) == state(first)
    a = [(e["revision"], e["withdrawn"]) for e in late if e["kind"] == "record" and e["final"]]
    assert a == [(1, False), (2, True)]
    assert state(late)["codes"][("R1", "A")] == ([], None, 34_300)


def test_a_reference_yields_nothing_itself_and_the_next_raw_message_publishes_the_change():
    from streams.process import Processor
    import orjson

    fin = [("A", 34_300), ("B", 34_280)]
    claim = far_claim("34.25", gun(0) - 10 * S)
    msgs = feed(fin, [], [M.record_ref("WR", "34.40", "OLD"), claim])
    proc = Processor()
    for m in msgs:
        proc.handle(orjson.dumps(m))
    # the tombstone of FAR's claim (an older version's withdrawn record_ref)
    assert proc.handle(orjson.dumps({**claim, "withdrawn": True, "t_us": gun(2)})) == ([], None)
    events, rej = proc.handle(orjson.dumps(M.hb(gun(2) + S)))
    assert rej is None
    recs = [(e["competitor_id"], e["time"], e["previous_holder"]) for e in events if e["kind"] == "record"]
    assert recs == [("A", "34.30", "OLD"), ("B", "34.28", "A")]
    assert {e["race_id"] for e in events if e["kind"] == "result"} == {"R1", "R2"}
    # the next message refused (a decision for a race never set up): nothing is lost,
    # what was judged again goes out with the message after it
    proc2 = Processor()
    for m in msgs:
        proc2.handle(orjson.dumps(m))
    proc2.handle(orjson.dumps({**claim, "withdrawn": True, "t_us": gun(2)}))
    bad, rej = proc2.handle(orjson.dumps(M.decision("NOPE", "DQ", gun(2) + S // 2, competitor_id="X")))
    assert bad == [] and rej is not None and rej.reason == "unknown_reference"
    again, rej = proc2.handle(orjson.dumps(M.hb(gun(2) + S)))
    assert rej is None
    assert [{**e, "t_us": 0} for e in again] == [{**e, "t_us": 0} for e in events]   # (judged at the refused one's time)
    # as if FAR's claim had never been
    assert state(M.run(feed(fin, []))) == state(M.run(msgs + [{**claim, "withdrawn": True, "t_us": gun(2)},
                                                              M.hb(gun(2) + S)]))


# -- the property ----------------------------------------------------------------------

POOL = ("NEDA", "NEDB", "NORC")
REFS = [M.record_ref("WR", "34.40", "OLD"), M.record_ref("TR", "34.42", "HOME", scope="OVL"),
        M.record_ref("NR", "34.45", "NEDX", scope="NED"),
        M.record_ref("PB", "34.44", "NEDA", scope="NEDA"), M.record_ref("PB", "34.38", "NORC", scope="NORC"),
        M.record_ref("SB", "34.50", "NEDB", scope="NEDB")]
TIMES = st.builds(lambda h, ms: h * 10 + ms, st.integers(3425, 3450), st.sampled_from([0, 0, 3, 9]))


@st.composite
def scenarios(draw):
    n = draw(st.integers(2, 5))
    fin = [(draw(st.sampled_from(POOL)), draw(TIMES)) for _ in range(n)]
    corr = []
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, n - 1))
        after = draw(st.integers(i, n - 1))
        kind = draw(st.sampled_from(["photo", "photo", "dq"]))
        m = photo(i, fin[i][0], draw(TIMES)) if kind == "photo" else dq(i, fin[i][0])
        corr.append((i, after, m))
    corr.sort(key=lambda c: c[1])   # (stable) the order they arrive in
    # a reference in force from before race k, arriving after race j >= k: the
    # federation's, another venue's claim, or one withdrawn later (as if never)
    refs = []
    for _ in range(draw(st.integers(0, 2))):
        k = draw(st.integers(0, n - 1))
        j = draw(st.integers(k, n - 1))
        time = fmt_hundredths(draw(TIMES) // 10)
        kind = draw(st.sampled_from(["fed", "far", "gone"]))
        t = gun(k) - 10 * S - len(refs) * 1000
        m = M.record_ref("WR", time, "NEW", t=t) if kind == "fed" else far_claim(time, t, f"FAR{len(refs)}")
        refs.append((kind, k, j, draw(st.integers(j, n - 1)), m))
    return fin, corr, refs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_the_final_records_do_not_depend_on_when_a_correction_arrives(sc):
    fin, corr, refs = sc
    late_refs = []
    for kind, _k, j, j2, m in refs:
        late_refs.append((j, m))
        if kind == "gone":
            late_refs.append((j2, {**m, "withdrawn": True, "t_us": gun(j2) + 59 * S}))
    late_refs.sort(key=lambda r: r[0])
    late = state(M.run(feed(fin, corr, REFS, late_refs)))
    in_order = REFS + [m for kind, _, _, _, m in refs if kind != "gone"]
    early = state(M.run(feed(fin, [(i, i, m) for i, _, m in corr], in_order)))
    assert late == early
