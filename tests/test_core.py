"""Rules of the timing core, one by one, on small hand-built feeds."""
from __future__ import annotations

import random

import orjson
import pytest

from agents.core import Engine
from schemas.decode import Rejected, decode
from streams.process import process_lines
from tests import msgs as M
from tests.paths import example_feed
from tests.schemacheck import validate

S = M.S
T0 = M.T0
EXAMPLE = example_feed()


def is_final(e) -> bool:
    """The final view a subscriber converges to: provisional versions (final:
    false) and withdrawn provisional splits/finishes left out."""
    return e.get("final", True) and not (e["kind"] in ("split", "finish", "incident") and e.get("withdrawn"))


def kinds(events, kind):
    return [e for e in events if e["kind"] == kind and is_final(e)]


def last(events, kind):
    found = kinds(events, kind)
    assert found, f"no {kind} event"
    return found[-1]


def pair_feed(gun=T0 + 60 * S, distance=500, a=dict(), b=dict(), extra=(), end_s=80, level="WC",
              a_id="NED-A", b_id="NOR-B"):
    """A pair at one venue: venue, race, gun, reads of both skaters, heartbeats."""
    start_m = (-distance) % 400
    race = M.race("R1", [M.comp(a_id, start_m), M.comp(b_id, start_m)], distance=distance, level=level)
    ra, ta = M.skate(a_id, start_m, gun, distance, **a)
    rb, tb = M.skate(b_id, start_m, gun, distance, **b)
    body = M.by_time(ra + rb + M.heartbeats(gun - 5 * S, gun + end_s * S) + list(extra))
    return [M.venue(), race, M.start("R1", gun)] + body, ta, tb


# -- the worked example of the contract ----------------------------------------


def test_worked_example_m500_pair():
    with open(EXAMPLE, "rb") as f:
        events = list(process_lines(f))
    for e in events:
        validate(e)
    fin = {e["competitor_id"]: e for e in kinds(events, "finish")}
    assert (fin["CHN-GAO-T"]["time"], fin["CHN-GAO-T"]["rank"]) == ("34.32", 1)
    assert (fin["KOR-CHA-M"]["time"], fin["KOR-CHA-M"]["rank"]) == ("34.39", 2)
    recs = kinds(events, "record")
    assert [(r["competitor_id"], r["record"], r["equalled"], r["previous_time"], r["previous_holder"])
            for r in recs] == [("CHN-GAO-T", "OR", False, "34.41", "LORENTZEN")]
    res = last(events, "result")
    assert res["status"] == "official"
    st = last(events, "standings")
    assert st["group"] == "OWG2022-M500"
    assert [e["competitor_id"] for e in st["ranking"]] == ["CHN-GAO-T", "KOR-CHA-M"]
    assert st["complete"] is True
    assert not kinds(events, "incident") and not kinds(events, "deadletter")
    # the 100 m split is the first crossing of the finish line
    first = kinds(events, "split")[0]
    assert first["distance_m"] == 100 and first["loop"] == "L000"


# -- times ----------------------------------------------------------------------


def test_times_truncated_not_rounded_and_ties_share_rank():
    gun = T0 + 60 * S
    feed, ta, tb = pair_feed(gun=gun)
    events = M.run(feed)
    fa = [e for e in kinds(events, "finish") if e["competitor_id"] == "NED-A"][0]
    assert fa["time_ms"] == (ta[500] - gun) // 1000
    # a hand-made tie: two skaters 999 us apart within the same thousandth
    g = T0 + 60 * S
    feed2 = [M.venue(), M.race("R1", [M.comp("A", 300), M.comp("B", 300)]), M.start("R1", g)]
    body = M.heartbeats(g, g + 40 * S)
    for d, secs in ((100, 9.5), (200, 15.7), (300, 21.9), (400, 28.1)):
        body += [M.read("A-T1", (300 + d) % 400, g + int(secs * S)),
                 M.read("B-T1", (300 + d) % 400, g + int(secs * S) + 50_000)]
    body += [M.read("A-T1", 0, g + 34_321_000), M.read("B-T1", 0, g + 34_321_999)]
    ev = M.run(feed2 + M.by_time(body))
    assert not kinds(ev, "incident")
    fins = {e["competitor_id"]: e for e in kinds(ev, "finish")}
    assert fins["A"]["time_ms"] == fins["B"]["time_ms"] == 34321
    assert fins["A"]["time"] == "34.32"
    res = last(ev, "result")
    assert [(r["competitor_id"], r["rank"]) for r in res["ranking"]] == [("A", 1), ("B", 1)]


# -- crossings -------------------------------------------------------------------


def facts(events):
    """The final derived facts, independent of emission batching (provisional
    versions depend on the order reads arrive in; ids carry the revision)."""
    out = []
    for e in events:
        if is_final(e):
            e = {k: v for k, v in e.items() if k not in ("event_id", "revision")}
            out.append((e["kind"], orjson.dumps(e, option=orjson.OPT_SORT_KEYS)))
    return out


def test_earliest_read_wins_and_resends_are_ignored():
    gun = T0 + 60 * S
    feed, ta, _ = pair_feed(gun=gun)
    base = M.run(feed)
    # resend every passing (same source and seq) a little later
    dup = []
    for m in feed:
        dup.append(m)
        if m["kind"] == "passing":
            dup.append(dict(m))
    assert facts(M.run(dup)) == facts(base)
    # a later read of another source never changes the time; an earlier one does
    split100 = [e for e in kinds(base, "split") if e["competitor_id"] == "NED-A" and e["distance_m"] == 100][0]
    assert split100["time_ms"] == (ta[100] - gun) // 1000


def test_out_of_order_reads_within_three_seconds_give_the_same_facts():
    gun = T0 + 60 * S
    feed, _, _ = pair_feed(gun=gun)
    base = M.run(feed)
    rng = random.Random(7)
    head, body = feed[:3], feed[3:]
    arrival = sorted(((m["t_us"] + (rng.randint(0, 2_900_000) if m["kind"] == "passing" else 0), i, m)
                      for i, m in enumerate(body)), key=lambda x: (x[0], x[1]))
    shuffled = head + [m for _, _, m in arrival]
    assert shuffled != feed
    assert facts(M.run(shuffled)) == facts(base)


def test_unknown_transponder_and_cooldown_reads_are_counted_and_ignored():
    gun = T0 + 60 * S
    extra = [M.read("WARMUP-9", 100, gun + 3 * S), M.read("NED-A-T1", 100, gun + 45 * S)]
    feed, _, _ = pair_feed(gun=gun, extra=extra)
    eng = Engine()
    from streams.process import Processor
    proc = Processor(eng)
    events = list(process_lines(M.lines(feed), proc))
    assert eng.stats[("passing", "ignored_unknown_transponder")] == 1
    assert eng.stats[("passing", "ignored_after_finish")] >= 1
    assert not kinds(events, "deadletter")
    assert len(kinds(events, "finish")) == 2


@pytest.mark.parametrize("distance,start_m,first_split", [
    (500, 300, 100), (1000, 200, 200), (1500, 100, 300), (3000, 200, 200), (5000, 200, 200),
    (10000, 0, 100)])
def test_geometry_of_individual_distances(distance, start_m, first_split):
    """Loops at 0 and 200 only (2 loops a lap): splits fall where the geometry says."""
    gun = T0 + 60 * S
    loops = (0, 200)
    race = M.race("R1", [M.comp("A", start_m)], distance=distance)
    venue = M.venue(loops=loops)
    reads, truth = M.skate("A", start_m, gun, distance, loops=loops)
    end = max(truth.values()) + 10 * S
    feed = [venue, race, M.start("R1", gun)] + M.by_time(reads + M.heartbeats(gun, end))
    events = M.run(feed)
    splits = [e["distance_m"] for e in kinds(events, "split")]
    assert splits == sorted(truth)
    assert splits[0] == min(truth)
    fin = last(events, "finish")
    assert fin["time_ms"] == (truth[distance] - gun) // 1000
    assert not kinds(events, "incident")
    # lap times: 400 m after the previous split at the same loop
    s = {e["distance_m"]: e for e in kinds(events, "split")}
    for d, e in s.items():
        if d - 400 in s:
            assert e["lap_ms"] == e["time_ms"] - s[d - 400]["time_ms"]
        else:
            assert e["lap_ms"] is None


def test_a_missed_crossing_does_not_shift_distances_or_raise_a_fall():
    gun = T0 + 60 * S
    feed, ta, _ = pair_feed(gun=gun, distance=1500, a=dict(miss={700}), end_s=130)
    events = M.run(feed)
    da = [e["distance_m"] for e in kinds(events, "split") if e["competitor_id"] == "NED-A"]
    assert 700 not in da and da == sorted(d for d in ta if d != 700)
    assert not kinds(events, "incident")
    assert {e["competitor_id"] for e in kinds(events, "finish")} == {"NED-A", "NOR-B"}


# -- falls -------------------------------------------------------------------------


def test_fall_is_suspected_before_the_next_loop_and_confirmed_by_the_referee():
    gun = T0 + 60 * S
    # A falls after 1000 m (of 1500), loses 12 s, gets up and finishes
    ref = M.decision("R1", "FALL", gun + 150 * S, competitor_id="NED-A", skater_id="NED-A")
    feed, ta, _ = pair_feed(gun=gun, distance=1500, a=dict(lose=(1000, 12.0)), extra=[ref], end_s=160)
    events = M.run(feed)
    inc = kinds(events, "incident")
    assert [(i["competitor_id"], i["type"], i["status"]) for i in inc] == [
        ("NED-A", "fall", "suspected"), ("NED-A", "fall", "confirmed")]
    sus = inc[0]
    assert sus["at_m"] == 1000
    assert sus["t_us"] < ta[1100], "suspected before the skater reached the next loop"
    # suspicion was emitted before the skater's next split (first versions: live, at the first read)
    idx = [i for i, e in enumerate(events) if e["kind"] == "incident"][0]
    assert events[idx]["status"] == "suspected" and events[idx]["final"] is False
    nxt = [i for i, e in enumerate(events) if e["kind"] == "split" and e["competitor_id"] == "NED-A"
           and e["distance_m"] == 1100][0]
    assert idx < nxt
    # and the final suspicion before the final split
    nxt_final = [i for i, e in enumerate(events) if e["kind"] == "split" and e["competitor_id"] == "NED-A"
                 and e["distance_m"] == 1100 and e["final"]][0]
    assert events.index(sus) < nxt_final
    assert inc[0]["event_id"] != inc[1]["event_id"]
    # the fallen skater still finishes
    assert any(e["competitor_id"] == "NED-A" for e in kinds(events, "finish"))


def test_two_missed_crossings_raise_then_clear_a_suspicion():
    gun = T0 + 60 * S
    feed, _, _ = pair_feed(gun=gun, distance=1500, a=dict(miss={700, 800, 900}), end_s=130)
    events = M.run(feed)
    inc = [(i["status"], i["at_m"]) for i in kinds(events, "incident")]
    assert inc == [("suspected", 600), ("cleared", 1000)]


def test_a_skater_who_stops_is_suspected_and_dnf_by_the_referee():
    gun = T0 + 60 * S
    dnf = M.decision("R1", "DNF", gun + 140 * S, competitor_id="NED-A")
    off = M.decision("R1", "OFFICIAL", gun + 150 * S)
    feed, _, _ = pair_feed(gun=gun, distance=1500, a=dict(stop_at=900), extra=[dnf, off], end_s=160)
    events = M.run(feed)
    # the referee gave a DNF, no FALL: at OFFICIAL the open suspicion is closed
    assert [i["status"] for i in kinds(events, "incident")] == ["suspected", "cleared"]
    res = last(events, "result")
    assert res["status"] == "official"
    assert res["ranking"][0]["competitor_id"] == "NOR-B" and res["ranking"][0]["rank"] == 1
    assert res["ranking"][1] == {**res["ranking"][1], "competitor_id": "NED-A", "rank": None, "irm": "DNF",
                                 "time_ms": None}


# -- decisions ---------------------------------------------------------------------


def test_dq_removes_the_rank_and_official_gives_dns_to_who_never_started():
    gun = T0 + 60 * S
    race = M.race("R1", [M.comp("A", 300), M.comp("B", 300), M.comp("C", 300)])
    ra, _ = M.skate("A", 300, gun, 500, per100_s=6.5)
    rb, _ = M.skate("B", 300, gun, 500)
    body = M.by_time(ra + rb + M.heartbeats(gun, gun + 60 * S))
    feed = [M.venue(), race, M.start("R1", gun)] + body + [
        M.decision("R1", "DQ", gun + 61 * S, competitor_id="A"),
        M.decision("R1", "OFFICIAL", gun + 62 * S)]
    events = M.run(feed)
    res = last(events, "result")
    rows = [(r["competitor_id"], r["rank"], r["irm"]) for r in res["ranking"]]
    assert rows == [("B", 1, None), ("A", None, "DQ"), ("C", None, "DNS")]
    assert [r["status"] for r in kinds(events, "result")][-1] == "official"
    for e in events:
        validate(e)


def test_void_withdraws_results_and_records():
    gun = T0 + 60 * S
    feed, _, _ = pair_feed(gun=gun, extra=[M.decision("R1", "VOID", gun + 70 * S)])
    feed.insert(1, M.record_ref("WR", "40.00", "OLD"))
    events = M.run(feed)
    rec = kinds(events, "record")
    assert rec[0]["withdrawn"] is False and rec[-1]["withdrawn"] is True
    res = last(events, "result")
    assert res["status"] == "void" and res["ranking"] == []


def test_restart_discards_the_first_attempt():
    g1 = T0 + 60 * S
    g2 = g1 + 30 * S
    race = M.race("R1", [M.comp("A", 300)])
    r1, _ = M.skate("A", 300, g1, 200)     # false start: only up to 200 m
    r2, t2 = M.skate("A", 300, g2, 500)
    feed = [M.venue(), race, M.start("R1", g1)] + M.by_time(r1 + M.heartbeats(g1, g2 - S)) + \
        [M.start("R1", g2, attempt=2)] + M.by_time(r2 + M.heartbeats(g2, g2 + 50 * S))
    events = M.run(feed)
    fin = kinds(events, "finish")
    assert len(fin) == 1 and fin[0]["attempt"] == 2 and fin[0]["time_ms"] == (t2[500] - g2) // 1000
    # a result marks the restart, with an empty ranking, then attempt 2 results
    res = kinds(events, "result")
    assert res[0]["attempt"] == 2 and res[0]["ranking"] == []
    revs = [r["revision"] for r in res]
    assert revs == sorted(revs) and len(set(revs)) == len(revs)
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids))
    # a repeated start of the same attempt changes nothing
    again = feed[:3] + [M.start("R1", g1)] + feed[3:]
    assert facts(M.run(again)) == facts(events)


def test_photo_finish_revises_the_finish_and_the_result():
    gun = T0 + 60 * S
    feed, ta, tb = pair_feed(gun=gun)
    # B's photo time is 0.08 s faster than its transponder time: B wins
    ph = M.photo("R1", "NOR-B", ta[500] - 10_000, gun + 75 * S)
    events = M.run(feed + [ph])
    fb = [e for e in kinds(events, "finish") if e["competitor_id"] == "NOR-B"]
    assert [f["source"] for f in fb] == ["transponder", "photo"]
    assert fb[1]["revision"] == fb[0]["revision"] + 1
    assert fb[1]["time_ms"] == (ta[500] - 10_000 - gun) // 1000
    res = last(events, "result")
    assert [r["competitor_id"] for r in res["ranking"]] == ["NOR-B", "NED-A"]
    assert res["revision"] > kinds(events, "result")[0]["revision"]


# -- records ------------------------------------------------------------------------


def test_records_pb_sb_tr_and_equalled_and_new_reference_for_later_races():
    gun = T0 + 60 * S
    ta_ms = None
    feed, ta, tb = pair_feed(gun=gun, b=dict(per100_s=7.2))
    ta_ms = (ta[500] - gun) // 1000
    th = ta_ms // 10
    from agents.core.timefmt import fmt_hundredths
    refs = [M.record_ref("TR", fmt_hundredths(th), "HOLDER", scope="OVL"),           # equalled
            M.record_ref("PB", fmt_hundredths(th + 50), "NED-A", scope="NED-A"),      # broken
            M.record_ref("SB", fmt_hundredths(th + 1), "NED-A", scope="NED-A"),       # broken
            M.record_ref("NR", fmt_hundredths(th - 1), "X", scope="NED")]             # not
    events = M.run(feed[:1] + refs + feed[1:])
    got = {(r["competitor_id"], r["record"], r["equalled"]) for r in kinds(events, "record")}
    assert got == {("NED-A", "TR", True), ("NED-A", "PB", False), ("NED-A", "SB", False)}
    entry = [r for r in last(events, "result")["ranking"] if r["competitor_id"] == "NED-A"][0]
    assert sorted(entry["records"]) == ["=TR", "PB", "SB"]
    for e in events:
        validate(e)


def test_a_record_set_is_the_reference_for_later_races_and_only_the_first_under_holds_it():
    g = T0 + 60 * S
    race1 = M.race("R1", [M.comp("A", 300), M.comp("B", 300)], group="G")
    race2 = M.race("R2", [M.comp("C", 300)], group="G", t=g + 100 * S)
    ra, ta = M.skate("A", 300, g, 500, per100_s=6.0)    # fastest
    rb, tb = M.skate("B", 300, g, 500, per100_s=6.1)    # also under the old record
    g2 = g + 200 * S
    rc, tc = M.skate("C", 300, g2, 500, per100_s=6.05)   # between A and B: no record
    feed = [M.venue(), M.record_ref("WR", "40.00", "OLD"), race1, M.start("R1", g)] + \
        M.by_time(ra + rb + M.heartbeats(g, g + 60 * S)) + [race2, M.start("R2", g2)] + \
        M.by_time(rc + M.heartbeats(g2, g2 + 60 * S))
    events = M.run(feed)
    recs = [(r["race_id"], r["competitor_id"], r["previous_holder"]) for r in kinds(events, "record")]
    assert recs == [("R1", "A", "OLD")]
    st = last(events, "standings")
    assert [e["competitor_id"] for e in st["ranking"]] == ["A", "C", "B"]
    assert {e["race_id"] for e in st["ranking"]} == {"R1", "R2"}


# -- team pursuit -------------------------------------------------------------------


def tp_feed(gun, times, falls=None, stop=None, official_at=None):
    """Two teams of three: (team -> per-100 m pace); skaters 0.1 s apart."""
    comps = []
    reads = []
    truth = {}
    for team, start_m in (("CAN", 0), ("JPN", 200)):
        skaters = [M.skater(f"{team}-{i}", team) for i in range(3)]
        comps.append(M.comp(team, start_m, skaters, nation=team))
        for i in range(3):
            sid = f"{team}-{i}"
            lose = (falls or {}).get(sid)
            st = (stop or {}).get(sid)
            r, tr = M.skate(sid, start_m, gun + i * 100_000, 2400, first_s=9.8, per100_s=times[team],
                            lose=lose, stop_at=st)
            reads += r
            truth[sid] = tr
    race = M.race("TP", comps, fmt="team_pursuit", distance=2400, gender="W", level="OWG", places=[1, 2])
    end = gun + 240 * S
    extra = [M.decision("TP", "OFFICIAL", official_at)] if official_at else []
    return [M.venue(), race, M.start("TP", gun)] + M.by_time(reads + M.heartbeats(gun, end) + extra), truth


def test_team_pursuit_is_timed_on_the_third_skater():
    gun = T0 + 60 * S
    feed, truth = tp_feed(gun, {"CAN": 7.2, "JPN": 7.25})
    events = M.run(feed)
    fins = {e["competitor_id"]: e for e in kinds(events, "finish")}
    assert fins["CAN"]["time_ms"] == (truth["CAN-2"][2400] - gun) // 1000
    assert fins["JPN"]["time_ms"] == (truth["JPN-2"][2400] - gun) // 1000
    team_splits = [e for e in kinds(events, "split") if e["skater_id"] is None]
    assert {e["competitor_id"] for e in team_splits} == {"CAN", "JPN"}
    for e in team_splits:
        third = truth[f"{e['competitor_id']}-2"][e["distance_m"]]
        assert e["time_ms"] == (third - gun) // 1000
    cls = last(events, "classification")
    assert [(r["place"], r["competitor_id"]) for r in cls["ranking"]] == [(1, "CAN"), (2, "JPN")]
    assert cls["event"] == "TEST-team_pursuit-W-2400"


def test_team_pursuit_with_two_finishers_did_not_finish():
    gun = T0 + 60 * S
    feed, _ = tp_feed(gun, {"CAN": 7.2, "JPN": 7.25}, stop={"JPN-1": 1500}, official_at=gun + 230 * S)
    events = M.run(feed)
    assert {e["competitor_id"] for e in kinds(events, "finish")} == {"CAN"}
    res = last(events, "result")
    assert [(r["competitor_id"], r["irm"]) for r in res["ranking"]] == [("CAN", None), ("JPN", "DNF")]


def test_team_pursuit_caught():
    gun = T0 + 60 * S
    # CAN so much faster that it closes 200 m before the end
    feed, _ = tp_feed(gun, {"CAN": 6.0, "JPN": 9.5})
    events = M.run(feed)
    caught = [e for e in kinds(events, "incident") if e["type"] == "caught"]
    assert [(e["competitor_id"], e["status"]) for e in caught] == [("JPN", "confirmed")]


def test_fall_in_the_last_corner_of_a_team_pursuit():
    gun = T0 + 60 * S
    feed, truth = tp_feed(gun, {"CAN": 7.23, "JPN": 7.2}, falls={"JPN-2": (2300, 11.0)})
    feed.append(M.decision("TP", "FALL", gun + 230 * S, competitor_id="JPN", skater_id="JPN-2"))
    events = M.run(feed)
    inc = kinds(events, "incident")
    assert [(e["skater_id"], e["status"]) for e in inc] == [("JPN-2", "suspected"), ("JPN-2", "confirmed")]
    fin = {e["competitor_id"]: e for e in kinds(events, "finish")}
    assert inc[0]["t_us"] < truth["JPN-2"][2400]
    assert events.index(inc[0]) < events.index(fin["JPN"])
    assert fin["JPN"]["time_ms"] == (truth["JPN-2"][2400] - gun) // 1000
    assert [r["competitor_id"] for r in last(events, "result")["ranking"]] == ["CAN", "JPN"]


# -- mass start ----------------------------------------------------------------------


def test_mass_start_points_then_finishing_order():
    gun = T0 + 60 * S
    names = ["A", "B", "C", "D", "E"]
    comps = [M.comp(n, 0) for n in names]
    race = M.race("MS", comps, fmt="mass_start", distance=6400, laps=16)
    reads = []
    # lap times 30 s; at sprints (laps 4, 8, 12) and the finish the order differs
    order = {4: ["E", "D", "C", "B", "A"], 8: ["E", "C", "D", "A", "B"], 12: ["D", "E", "C", "B", "A"],
             16: ["A", "B", "C", "D", "E"]}
    for lap in range(1, 17):
        o = order.get(lap, names)
        for i, n in enumerate(o):
            t = gun + lap * 30 * S + i * 150_000
            reads.append(M.read(f"{n}-T1", 0, t))
    feed = [M.venue(), race, M.start("MS", gun)] + M.by_time(reads + M.heartbeats(gun, gun + 500 * S))
    events = M.run(feed)
    res = last(events, "result")
    pts = {r["competitor_id"]: r["points"] for r in res["ranking"]}
    # E: 5+5+3 = 13, D: 3+1+5 = 9, C: 1+3+1 (+20 final) = 25, A: 60, B: 40
    assert pts == {"A": 60, "B": 40, "C": 25, "D": 9, "E": 13}
    assert [r["competitor_id"] for r in res["ranking"]] == ["A", "B", "C", "E", "D"]
    assert all(r["rank"] == i + 1 for i, r in enumerate(res["ranking"]))
    for e in events:
        validate(e)


# -- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("line,reason", [
    (b"{not json", "not valid JSON"),
    (b"[1,2]", "must be a JSON object"),
    (b'{"kind":"passing","v":2}', "version"),
    (b'{"kind":"mystery","v":1}', "unknown kind"),
    (b'{"kind":"heartbeat","v":1,"venue":"OVL","source":"A"}', "t_us"),
    (b'{"kind":"heartbeat","v":1,"t_us":true,"venue":"OVL","source":"A"}', "t_us"),
    (b'{"kind":"heartbeat","v":1,"t_us":1,"venue":"NOWHERE","source":"A"}', "never set up"),
    (b'{"kind":"passing","v":1,"t_us":1,"venue":"OVL","source":"A","seq":1,"loop":"L999","transponder":"x"}',
     "no loop"),
    (b'{"kind":"start","v":1,"t_us":1,"venue":"OVL","race_id":"NOPE","attempt":1}', "never set up"),
    (b'{"kind":"decision","v":1,"t_us":1,"race_id":"NOPE","code":"OFFICIAL"}', "never set up"),
    (b'{"kind":"decision","v":1,"t_us":1,"race_id":"R1","code":"MAYBE"}', "unknown code"),
    (b'{"kind":"record_ref","v":1,"t_us":1,"record":"WR","format":"individual","gender":"M",'
     b'"distance_m":500,"scope":null,"time":"fast","holder":"X","set_on":"2020-01-01","venue":"V"}', "time"),
    (b'{"kind":"record_ref","v":1,"t_us":1,"record":"WR","format":"individual","gender":"M",'
     b'"distance_m":500,"scope":null,"time":"34.00","holder":"X"}', "set_on"),
    (b"x" * 300_000, "exceeds"),
])
def test_bad_lines_become_dead_letters_and_the_race_goes_on(line, reason):
    gun = T0 + 60 * S
    feed, _, _ = pair_feed(gun=gun)
    good = M.run(feed)
    lines = M.lines(feed)
    lines.insert(5, line)
    out = list(process_lines(lines))
    dl = kinds(out, "deadletter")
    assert len(dl) == 1
    assert dl[0]["line"] == 6 and reason in dl[0]["error"] and "\n" not in dl[0]["error"]
    assert dl[0]["raw"] == line.decode("utf-8", "backslashreplace")
    validate(dl[0])
    assert facts([e for e in out if e["kind"] != "deadletter"]) == facts(good)


def test_decode_rejects_with_reason_classes():
    with pytest.raises(Rejected) as e:
        decode(b'{"kind":"passing","v":1,"t_us":1,"venue":"V","source":"A","seq":"1","loop":"L","transponder":"t"}')
    assert e.value.reason == "wrong_type"
    with pytest.raises(Rejected) as e:
        decode(b'{"kind":"race","v":1,"t_us":1}')
    assert e.value.reason == "missing_field"


def test_same_feed_twice_gives_identical_events_and_unique_ids():
    gun = T0 + 60 * S
    feed, _ = tp_feed(gun, {"CAN": 7.2, "JPN": 7.25}, official_at=gun + 230 * S)
    a = M.run(feed)
    b = M.run(feed)
    assert facts(a) == facts(b)
    ids = [e["event_id"] for e in a]
    assert len(ids) == len(set(ids))
    for e in a:
        validate(e)


def test_a_withdrawal_before_the_gun_applies_from_the_start():
    gun = T0 + 60 * S
    race = M.race("R1", [M.comp("A", 300), M.comp("B", 300)])
    ra, _ = M.skate("A", 300, gun, 500)
    feed = [M.venue(), race, M.decision("R1", "WDR", gun - 30 * S, competitor_id="B"), M.start("R1", gun)] + \
        M.by_time(ra + M.heartbeats(gun, gun + 60 * S))
    events = M.run(feed)
    res = last(events, "result")
    assert res["status"] == "unofficial"      # A finished, B withdrew: everyone is accounted for
    assert [(r["competitor_id"], r["rank"], r["irm"]) for r in res["ranking"]] == [("A", 1, None), ("B", None, "WDR")]


# -- regressions found in review ------------------------------------------------------


def test_a_start_list_with_two_skaters_for_an_individual_competitor_is_rejected():
    race = M.race("R1", [M.comp("A", 300, [M.skater("A1"), M.skater("A2")])])
    out = M.run([M.venue(), race])
    assert [e["kind"] for e in out] == ["deadletter"] and "one skater" in out[0]["error"]


def test_start_list_republished_without_a_withdrawn_competitor_or_places():
    gun = T0 + 60 * S
    r1 = M.race("R1", [M.comp("A", 300), M.comp("B", 300)], places=[1, 2])
    r1b = M.race("R1", [M.comp("A", 300)])          # B gone, no places any more
    ra, _ = M.skate("A", 300, gun, 500)
    feed = [M.venue(), r1, M.decision("R1", "WDR", gun - 20 * S, competitor_id="B"), r1b,
            M.start("R1", gun)] + M.by_time(ra + M.heartbeats(gun, gun + 50 * S)) + \
        [M.decision("R1", "OFFICIAL", gun + 51 * S)]
    events = M.run(feed)
    assert not kinds(events, "deadletter") and not kinds(events, "classification")
    assert [(r["competitor_id"], r["rank"]) for r in last(events, "result")["ranking"]] == [("A", 1)]


def test_a_photo_gives_the_finish_the_loops_missed():
    gun = T0 + 60 * S
    feed, ta, tb = pair_feed(gun=gun, a=dict(miss={500}))
    ph = M.photo("R1", "NED-A", ta[500] + 1_000, gun + 70 * S)
    events = M.run(feed + [ph, M.decision("R1", "OFFICIAL", gun + 80 * S)])
    fa = [e for e in kinds(events, "finish") if e["competitor_id"] == "NED-A"]
    assert [(f["source"], f["time_ms"]) for f in fa] == [("photo", (ta[500] + 1_000 - gun) // 1000)]
    assert [r["irm"] for r in last(events, "result")["ranking"]] == [None, None]
    early = M.run(feed + [M.photo("R1", "NED-A", gun - 5, gun + 70 * S)])
    assert "not after the gun" in kinds(early, "deadletter")[0]["error"]


def test_a_dq_withdraws_a_record_and_the_older_reference_is_back_in_force():
    g1, g2 = T0 + 60 * S, T0 + 400 * S
    r1 = M.race("R1", [M.comp("A", 300)])
    r2 = M.race("R2", [M.comp("C", 300)], t=g1 + 100 * S)
    ra, ta = M.skate("A", 300, g1, 500, per100_s=6.0)     # ~33.5: a WR
    rc, tc = M.skate("C", 300, g2, 500, per100_s=6.2)     # slower than A, faster than 40.00
    feed = [M.venue(), M.record_ref("WR", "40.00", "OLD"), r1, M.start("R1", g1)] + \
        M.by_time(ra + M.heartbeats(g1, g1 + 50 * S)) + \
        [M.decision("R1", "DQ", g1 + 55 * S, competitor_id="A"), r2, M.start("R2", g2)] + \
        M.by_time(rc + M.heartbeats(g2, g2 + 50 * S))
    events = M.run(feed)
    recs = [(r["race_id"], r["competitor_id"], r["withdrawn"], r["previous_time"]) for r in kinds(events, "record")]
    assert recs == [("R1", "A", False, "40.00"), ("R1", "A", True, "40.00"), ("R2", "C", False, "40.00")]


def test_a_restart_withdraws_the_records_of_the_first_attempt():
    g1, g2 = T0 + 60 * S, T0 + 120 * S
    race = M.race("R1", [M.comp("A", 300)])
    r1, _ = M.skate("A", 300, g1, 500, per100_s=6.0)
    r2, _ = M.skate("A", 300, g2, 500, per100_s=6.3)
    feed = [M.venue(), M.record_ref("WR", "40.00", "OLD"), race, M.start("R1", g1)] + \
        M.by_time(r1 + M.heartbeats(g1, g2 - S)) + [M.start("R1", g2, attempt=2)] + \
        M.by_time(r2 + M.heartbeats(g2, g2 + 50 * S))
    recs = [(r["attempt"], r["withdrawn"], r["previous_time"]) for r in kinds(M.run(feed), "record")]
    assert recs == [(1, False, "40.00"), (1, True, "40.00"), (2, False, "40.00")]


def test_fall_confirmed_before_any_suspicion_and_a_resent_decision():
    gun = T0 + 60 * S
    fall = M.decision("R1", "FALL", gun + 75 * S, competitor_id="NED-A", skater_id="NED-A")
    feed, _, _ = pair_feed(gun=gun, distance=1500, a=dict(lose=(1000, 14.0)), end_s=160)
    # the referee is quicker than the timing: confirmed at 75 s, before the deadline
    events = M.run(feed[:3] + M.by_time(feed[3:] + [fall, dict(fall)]))
    inc = [(i["status"]) for i in kinds(events, "incident")]
    assert inc == ["confirmed"]


def test_classification_places_a_dq_finalist_last_and_ties_share_a_place():
    gun = T0 + 60 * S
    fa = M.race("FA", [M.comp("A", 300), M.comp("B", 300)], places=[1, 2])
    ra, _ = M.skate("A", 300, gun, 500)
    rb, _ = M.skate("B", 300, gun, 500, per100_s=7.2)
    feed = [M.venue(), fa, M.start("FA", gun)] + M.by_time(ra + rb + M.heartbeats(gun, gun + 50 * S)) + \
        [M.decision("FA", "DQ", gun + 55 * S, competitor_id="A"), M.decision("FA", "OFFICIAL", gun + 56 * S)]
    cls = last(M.run(feed), "classification")
    assert [(r["place"], r["competitor_id"]) for r in cls["ranking"]] == [(1, "B"), (2, "A")]
    assert cls["complete"] is True
    # a dead heat in thousandths shares the place
    g = gun
    fb = M.race("FB", [M.comp("C", 300), M.comp("D", 300)], places=[3, 4])
    body = M.heartbeats(g, g + 40 * S)
    for d, secs in ((100, 9.5), (200, 15.7), (300, 21.9), (400, 28.1), (500, 34.3)):
        body += [M.read("C-T1", (300 + d) % 400, g + int(secs * S)),
                 M.read("D-T1", (300 + d) % 400, g + int(secs * S) + 400)]
    cls = last(M.run([M.venue(), fb, M.start("FB", g)] + M.by_time(body)), "classification")
    assert [(r["place"], r["competitor_id"]) for r in cls["ranking"]] == [(3, "C"), (3, "D")]


def test_team_pursuit_caught_with_a_reserve_on_the_start_list():
    gun = T0 + 60 * S
    feed, _ = tp_feed(gun, {"CAN": 6.0, "JPN": 9.5})
    race = feed[1]
    race["competitors"][1]["skaters"].append(M.skater("JPN-R", "JPN"))   # the reserve never skates
    caught = [e for e in kinds(M.run(feed), "incident") if e["type"] == "caught"]
    assert [(e["competitor_id"], e["status"]) for e in caught] == [("JPN", "confirmed")]


def test_a_decoder_clock_leaping_ahead_mid_race_is_dead_lettered():
    gun = T0 + 60 * S
    feed, _, _ = pair_feed(gun=gun)
    bad = M.hb(gun + 20 * S + 3600 * S)
    i = next(k for k, m in enumerate(feed) if m["t_us"] > gun + 20 * S)
    events = M.run(feed[:i] + [bad] + feed[i:])
    assert len(kinds(events, "deadletter")) == 1 and "ahead" in kinds(events, "deadletter")[0]["error"]
    assert len(kinds(events, "finish")) == 2


def test_a_decoder_that_restarts_its_numbering_later_is_not_a_resend():
    gun = T0 + 60 * S
    feed, _, _ = pair_feed(gun=gun)
    g2 = gun + 600 * S
    race2 = M.race("R2", [M.comp("X", 300)], t=g2 - 60 * S)
    r2, _ = M.skate("X", 300, g2, 500)
    for m in r2:
        m["seq"] = m["seq"] % 7 + 1   # numbers the first race already used
    events = M.run(feed + M.heartbeats(gun + 80 * S, g2 - S) + [race2, M.start("R2", g2)] +
                   M.by_time(r2 + M.heartbeats(g2, g2 + 50 * S)))
    assert [e["competitor_id"] for e in kinds(events, "finish")][-1] == "X"


def test_a_record_set_at_another_venue_is_the_reference_here_until_withdrawn():
    gun = T0 + 60 * S
    feed, ta, _ = pair_feed(gun=gun, b=dict(per100_s=7.3))
    mine = (ta[500] - gun) // 10_000                       # A's time in hundredths
    from agents.core.timefmt import fmt_hundredths
    elsewhere = {**M.record_ref("WR", fmt_hundredths(mine - 5), "FAR-1"), "origin": "lapstream",
                 "race_id": "FAR-R1", "venue": "FAR"}
    base = [M.venue(), M.record_ref("WR", "40.00", "OLD")]
    held = M.run(base + [elsewhere] + feed[1:])
    assert kinds(held, "record") == []                     # FAR's faster record stands
    back = M.run(base + [elsewhere, {**elsewhere, "withdrawn": True}] + feed[1:])
    assert [(r["competitor_id"], r["previous_holder"]) for r in kinds(back, "record")] == [("NED-A", "OLD")]
    # at its own venue a published reference is ignored: the core derives it itself
    own = {**elsewhere, "venue": "OVL"}
    assert [r["competitor_id"] for r in kinds(M.run(base + [own] + feed[1:]), "record")] == ["NED-A"]


def test_mass_start_final_points_follow_the_photo_finish():
    gun = T0 + 60 * S
    comps = [M.comp(n, 0) for n in ("A", "B", "C")]
    race = M.race("MS", comps, fmt="mass_start", distance=6400, laps=16)
    reads = []
    for lap in range(1, 17):
        for i, n in enumerate(("A", "B", "C")):
            reads.append(M.read(f"{n}-T1", 0, gun + lap * 30 * S + i * 5_000))   # a blanket finish
    feed = [M.venue(), race, M.start("MS", gun)] + M.by_time(reads + M.heartbeats(gun, gun + 500 * S))
    base = last(M.run(feed), "result")
    assert [(r["competitor_id"], r["points"]) for r in base["ranking"]][:3] == [("A", 75), ("B", 49), ("C", 23)]
    # the camera: B was first across the line
    t_fin = gun + 16 * 30 * S
    photos = [M.photo("MS", "B", t_fin - 1_000, gun + 501 * S), M.photo("MS", "A", t_fin + 2_000, gun + 502 * S)]
    res = last(M.run(feed + photos), "result")
    assert [(r["competitor_id"], r["points"]) for r in res["ranking"]] == [("B", 69), ("A", 55), ("C", 23)]


def test_a_record_taken_back_passes_to_who_was_under_it_in_time_order():
    g1, g2 = T0 + 60 * S, T0 + 400 * S
    r1 = M.race("R1", [M.comp("A", 300), M.comp("B", 300)], group="G")
    r2 = M.race("R2", [M.comp("C", 300)], group="G", t=g1 + 100 * S)
    ra, _ = M.skate("A", 300, g1, 500, per100_s=6.0)     # the record, later disqualified
    rb, _ = M.skate("B", 300, g1, 500, per100_s=6.4)     # under 40.00, but not under A
    rc, _ = M.skate("C", 300, g2, 500, per100_s=6.2)     # under B, not under A
    feed = [M.venue(), M.record_ref("WR", "40.00", "OLD"), r1, M.start("R1", g1)] + \
        M.by_time(ra + rb + M.heartbeats(g1, g1 + 50 * S)) + [r2, M.start("R2", g2)] + \
        M.by_time(rc + M.heartbeats(g2, g2 + 50 * S)) + \
        [M.decision("R1", "DQ", g2 + 60 * S, competitor_id="A")]
    events = M.run(feed)
    recs = [(r["competitor_id"], r["withdrawn"], r["previous_holder"]) for r in kinds(events, "record")]
    assert recs == [("A", False, "OLD"), ("A", True, "OLD"), ("B", False, "OLD"), ("C", False, "B")]
    r2_res = [e for e in kinds(events, "result") if e["race_id"] == "R2"][-1]
    assert r2_res["ranking"][0]["records"] == ["WR"]
    r1_res = [e for e in kinds(events, "result") if e["race_id"] == "R1"][-1]
    assert [(e["competitor_id"], e["records"]) for e in r1_res["ranking"]] == [("B", ["WR"]), ("A", [])]


# -- provisional first, final after the window ------------------------------------


def _versions(events, kind, **match):
    return [e for e in events if e["kind"] == kind and all(e.get(k) == v for k, v in match.items())]


def test_a_split_is_published_at_its_first_read_and_revised_by_an_earlier_one():
    gun = T0 + 60 * S
    race = M.race("R1", [M.comp("NED-A", 300), M.comp("NOR-B", 300)], distance=500)
    t_a, t_b = gun + 10_000_000, gun + 10_030_000
    feed = [M.venue(), race, M.start("R1", gun)] + M.heartbeats(gun - 2 * S, gun + 9 * S) + [
        M.read("NED-A-T2", 100, t_a + 40_000, "A"),   # A's other ankle first: 10.04
        M.read("NOR-B-T1", 100, t_b, "A"),            # B: 10.03, ahead of A for now
    ]
    first = M.run(feed, flush=False)
    sa = _versions(first, "split", competitor_id="NED-A")
    sb = _versions(first, "split", competitor_id="NOR-B")
    # A first (rank 1); B's read, earlier, moves A to 2: a new revision
    assert [(e["time_ms"], e["rank"], e["revision"], e["final"]) for e in sa] == [
        (10_040, 1, 0, False), (10_040, 2, 1, False)]
    assert [(e["time_ms"], e["rank"], e["behind_ms"], e["revision"], e["final"]) for e in sb] == [
        (10_030, 1, 0, 0, False)]
    # the backup decoder's read of A (10.00) arrives late: A's split is revised,
    # and B's rank and behind follow
    late = M.read("NED-A-T1", 100, t_a, "B")
    out = M.run(feed + [late] + M.heartbeats(gun + 10 * S, gun + 16 * S), flush=False)
    sa = _versions(out, "split", competitor_id="NED-A")
    sb = _versions(out, "split", competitor_id="NOR-B")
    assert [(e["time_ms"], e["rank"], e["revision"], e["final"]) for e in sa] == [
        (10_040, 1, 0, False), (10_040, 2, 1, False), (10_000, 1, 2, False), (10_000, 1, 3, True)]
    assert [(e["rank"], e["behind_ms"], e["final"]) for e in sb] == [
        (1, 0, False), (2, 30, False), (2, 30, True)]
    assert len({e["event_id"] for e in sa + sb}) == len(sa + sb)
    # the final versions are what the core gives when every read is on time
    ontime = M.run([M.venue(), race, M.start("R1", gun)] + M.by_time(
        M.heartbeats(gun - 2 * S, gun + 16 * S) + [late, feed[-1], feed[-2]]), flush=False)
    assert facts(out) == facts(ontime)


def test_a_finish_its_rank_its_record_and_the_live_result_come_at_the_first_read():
    from agents.core.engine import record_ref_of

    with open(EXAMPLE, "rb") as f:
        events = list(process_lines(f))
    gao = _versions(events, "finish", competitor_id="CHN-GAO-T")
    assert gao[0]["final"] is False and gao[-1]["final"] is True
    assert gao[0]["time"] == gao[-1]["time"] == "34.32" and gao[0]["rank"] == 1
    rec = _versions(events, "record", competitor_id="CHN-GAO-T")
    assert [(r["record"], r["final"], r["withdrawn"]) for r in rec] == [("OR", False, False), ("OR", True, False)]
    # provisional first: before the final finish; never a reference for other venues
    assert events.index(rec[0]) < events.index(gao[-1])
    assert record_ref_of(rec[0]) is None and record_ref_of(rec[1]) is not None
    live = [e for e in events if e["kind"] == "result" and e["final"] is False]
    assert live and live[0]["status"] == "live" and events.index(live[0]) < events.index(gao[-1])
    assert live[0]["ranking"][0]["competitor_id"] == "CHN-GAO-T" and live[0]["ranking"][0]["records"] == ["OR"]
    # KOR-CHA-M is under the old record but not under GAO's: no record, not even provisionally
    assert _versions(events, "record", competitor_id="KOR-CHA-M") == []
