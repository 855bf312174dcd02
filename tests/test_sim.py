"""Tests of the feed simulator (streams/sim.py) and the Beijing 2022 feeds (streams/beijing.py)."""
from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import beijing
from streams.sim import (S, CompetitorSpec, Decision, Fall, Photo, RaceSpec, RecordRef, Restart,
                         SimFeed, SimOptions, SkaterSpec, VenueSpec, format_time, individual,
                         simulate)

try:  # the project's JSON Schemas, when their helper is importable
    from schemacheck import validate as schema_validate
except Exception:  # pragma: no cover
    schema_validate = None

VENUE = VenueSpec("NSO", "National Speed Skating Oval, Beijing")
T0 = 1_644_900_000_000_000  # 2022-02-15 04:40 UTC
REFS = (RecordRef("WR", "individual", "M", 500, None, "33.61", "KULIZHNIKOV", "2019-03-09", "SLC"),)


def team(nat: str, no: int, target_us: int | None, falls=(), skaters=3) -> CompetitorSpec:
    sks = tuple(SkaterSpec(f"{nat}-S{i}", f"{nat} skater {i}", nat, (f"{no}{i}1", f"{no}{i}2"))
                for i in range(1, skaters + 1))
    return CompetitorSpec(nat, nat, nat, sks, target_us=target_us, falls=tuple(falls))


def mass_start_crossings(order_by_lap: dict[int, list[str]], lap_us: int = 30 * S) -> dict[str, dict[int, int]]:
    """Lap-end crossings (every 400 m) for the listed skaters, in the given order per lap."""
    out: dict[str, dict[int, int]] = defaultdict(dict)
    for lap in range(1, 17):
        order = order_by_lap.get(lap) or order_by_lap[max(k for k in order_by_lap if k <= lap)]
        for pos, sid in enumerate(order):
            out[sid][lap * 400] = lap * lap_us + 9 * S + pos * 150_000
    return out


MS_ORDER = {1: ["A", "B", "C", "D"], 4: ["C", "A", "B", "D"], 5: ["A", "B", "C", "D"],
            8: ["B", "D", "A", "C"], 9: ["A", "B", "C", "D"], 12: ["D", "C", "B", "A"],
            13: ["A", "B", "C", "D"], 16: ["B", "A", "D", "C"]}


def scenario() -> list[RaceSpec]:
    ms = mass_start_crossings(MS_ORDER)
    return [
        RaceSpec("T-M500", "TEST", "OWG", "individual", "M", 500, T0,
                 (individual("CHN-GAO-T", "Gao Tingyu", "CHN", ("51411", "51412"), target_us=34_329_999),
                  individual("KOR-CHA-M", "Cha Min-kyu", "KOR", ("51421", "51422"), target_us=34_390_000)),
                 group="T-M500", photos=(Photo("KOR-CHA-M", delta_us=-3_000),),
                 drop_exact=(("CHN-GAO-T", 100),)),
        RaceSpec("T-TPW", "TEST", "OWG", "team_pursuit", "W", 2400, T0 + 8 * 60 * S,
                 (team("CAN", 41, 173_445_287),
                  team("JPN", 42, 184_471_906, falls=[Fall("JPN-S3", 2370, 11_000_000)])),
                 places=(1, 2),
                 decisions=(Decision("FALL", competitor_id="JPN", skater_id="JPN-S3", note="last inner curve"),)),
        RaceSpec("T-TPM", "TEST", "OWG", "team_pursuit", "M", 3200, T0 + 16 * 60 * S,
                 (team("NOR", 51, 218_083_826),
                  team("ROC", 52, 220_000_000, falls=[Fall("ROC-S2", 1450, 0, gets_up=False)])),
                 decisions=(Decision("DNF", competitor_id="ROC"),)),
        RaceSpec("T-MS", "TEST", "WC", "mass_start", "W", 6400, T0 + 25 * 60 * S,
                 tuple(individual(f"MS-{x}", f"Skater {x}", "NED", (f"6{i}1", f"6{i}2"), crossings_us=ms[x])
                       for i, x in enumerate("ABCD", 1)),
                 laps=16, missed=(("MS-D", 2000),)),
        RaceSpec("T-W1000", "TEST", "OWG", "individual", "W", 1000, T0 + 40 * 60 * S,
                 (individual("NED-KOK", "Femke Kok", "NED", ("71011", "71012"), target_us=74_112_000),
                  individual("JPN-KODAIRA", "Nao Kodaira", "JPN", ("71021",), target_us=75_005_500),
                  individual("USA-BOWE", "Brittany Bowe", "USA", ("71031", "71032"), target_us=73_000_000,
                             dns=True)),
                 restart=Restart(recall_after_us=15 * S, new_gun_after_us=150 * S),
                 decisions=(Decision("DNS", after_us=-60 * S, competitor_id="USA-BOWE"),)),
    ]


TARGETS = {"T-M500": {"CHN-GAO-T": 34_329_999, "KOR-CHA-M": 34_390_000},
           "T-TPW": {"CAN": 173_445_287, "JPN": 184_471_906},
           "T-TPM": {"NOR": 218_083_826, "ROC": None},
           "T-W1000": {"NED-KOK": 74_112_000, "JPN-KODAIRA": 75_005_500, "USA-BOWE": None}}

NOISY = SimOptions(miss_rate=0.05, resend_rate=0.02, warmup_transponders=2, cooldown=True)


@pytest.fixture(scope="module")
def feed() -> SimFeed:
    return simulate(VENUE, scenario(), REFS, seed=7, options=NOISY)


# ---------------------------------------------------------------------------
# a consistency check shared by the fixed scenario and the property test
# ---------------------------------------------------------------------------

REQUIRED = {
    "venue": {"t_us": int, "venue": str, "name": str, "lap_m": int, "loops": list},
    "record_ref": {"t_us": int, "record": str, "format": str, "gender": str, "distance_m": int,
                   "time": str, "holder": str, "set_on": str, "venue": str},
    "race": {"t_us": int, "race_id": str, "venue": str, "competition": str, "level": str,
             "format": str, "gender": str, "distance_m": int, "competitors": list},
    "start": {"t_us": int, "venue": str, "race_id": str, "attempt": int},
    "passing": {"t_us": int, "venue": str, "source": str, "seq": int, "loop": str,
                "transponder": str, "strength": int, "hits": int},
    "heartbeat": {"t_us": int, "venue": str, "source": str},
    "photo": {"t_us": int, "race_id": str, "skater_id": str, "finish_us": int},
    "decision": {"t_us": int, "race_id": str, "code": str},
}


def check_contract(lines: list[str], schema: bool = False) -> list[dict]:
    msgs = []
    loops = set()
    for line in lines:
        assert line == line.strip() and "\n" not in line
        m = json.loads(line)
        assert isinstance(m, dict)
        assert m["v"] == 1 and type(m["v"]) is int
        kind = m["kind"]
        assert kind in REQUIRED, kind
        for f, typ in REQUIRED[kind].items():
            assert type(m[f]) is typ, (kind, f, m)
        if kind == "venue":
            loops = {lp["loop"] for lp in m["loops"]}
        if kind == "passing":
            assert m["loop"] in loops
        if kind == "record_ref":
            assert "scope" in m
        if kind == "decision" and m["code"] in ("DQ", "DNF", "DNS", "WDR", "FALL"):
            assert isinstance(m["competitor_id"], str)
        if kind == "race":
            for c in m["competitors"]:
                assert {"competitor_id", "name", "nation", "start_m", "skaters"} <= set(c)
                for s in c["skaters"]:
                    assert all(isinstance(t, str) for t in s["transponders"])
        if schema and schema_validate is not None:
            schema_validate(m)
        msgs.append(m)
    assert msgs[0]["kind"] == "venue"
    return msgs


def check_against_truth(feed: SimFeed, lag_us: int) -> None:
    truth = feed.truth
    msgs = [json.loads(line) for line in feed.lines]

    # arrival disorder never exceeds the configured maximum (and never 3 s)
    assert 0 < truth.max_lag_us <= 3 * S and truth.max_lag_us == lag_us
    newest = 0
    for m in msgs:
        assert m["t_us"] >= newest - lag_us
        newest = max(newest, m["t_us"])

    # every crossing of every known skater (race, cool-down, aborted attempt)
    cands: dict[tuple[str, str], list[tuple[int, object]]] = defaultdict(list)
    for rid, rt in truth.races.items():
        for ct in rt.competitors.values():
            for sid, sk in ct.skaters.items():
                for d, t in sk.physical.items():
                    cands[(sid, sk.loops[d])].append((t, (rid, sid, d)))
                for loop, t in sk.cooldown + sk.aborted:
                    cands[(sid, loop)].append((t, None))
    earliest: dict[tuple, int] = {}
    seen_seq: dict[tuple[str, int], str] = {}
    for m, line in zip(msgs, feed.lines):
        if m["kind"] != "passing":
            continue
        key = (m["source"], m["seq"])
        assert seen_seq.setdefault(key, line) == line, "a (source, seq) pair with two contents"
        tr = m["transponder"]
        if tr in truth.unknown_transponders:
            continue
        sid = truth.transponders[tr]
        hits = [ref for t, ref in cands[(sid, m["loop"])] if 0 <= m["t_us"] - t <= 41_000]
        assert len(hits) == 1, (m, hits)
        if hits[0] is not None:
            earliest[hits[0]] = min(earliest.get(hits[0], m["t_us"]), m["t_us"])
    for rid, rt in truth.races.items():
        for ct in rt.competitors.values():
            for sid, sk in ct.skaters.items():
                for d in sk.physical:
                    got = earliest.get((rid, sid, d))
                    if d in sk.missed:
                        assert got is None and d not in sk.crossings
                    else:
                        assert got == sk.crossings[d], (rid, sid, d)
                        assert got >= sk.physical[d]

    # seq increases per source with the read time
    by_src = defaultdict(dict)
    for m in msgs:
        if m["kind"] == "passing":
            by_src[m["source"]][m["seq"]] = m["t_us"]
    for seqs in by_src.values():
        ts = [seqs[k] for k in sorted(seqs)]
        assert ts == sorted(ts)


# ---------------------------------------------------------------------------
# the fixed scenario
# ---------------------------------------------------------------------------


def test_contract_fields_and_schema(feed):
    msgs = check_contract(feed.lines, schema=True)
    kinds = [m["kind"] for m in msgs]
    assert kinds[1] == "record_ref"
    assert {"venue", "record_ref", "race", "start", "passing", "heartbeat", "photo", "decision"} == set(kinds)


def test_earliest_reads_equal_truth(feed):
    check_against_truth(feed, NOISY.max_delay_us)


def test_finishes_are_exactly_the_targets(feed):
    msgs = [json.loads(line) for line in feed.lines]
    for rid, exp in TARGETS.items():
        rt = feed.truth.races[rid]
        for cid, target in exp.items():
            assert rt.competitors[cid].finish_elapsed_us == target, (rid, cid)
        # the finish read is in the file, exact to the microsecond
        for cid, target in exp.items():
            if target is None:
                continue
            ct = rt.competitors[cid]
            fin = [s.finish_us for s in ct.skaters.values() if s.finish_us is not None]
            assert rt.gun_us + target in fin
            assert any(m["kind"] == "passing" and m["t_us"] == rt.gun_us + target for m in msgs)
    assert feed.truth.races["T-M500"].competitors["CHN-GAO-T"].time == "34.32"
    assert feed.truth.races["T-TPW"].competitors["CAN"].time == "2:53.44"
    assert format_time(184_471_906) == "3:04.47" and format_time(59_999_999) == "59.99"
    assert format_time(60_000_000) == "1:00.00"


def test_team_pursuit_line_and_falls(feed):
    rt = feed.truth.races["T-TPW"]
    can = sorted(s.finish_elapsed_us for s in rt.competitors["CAN"].skaters.values())
    assert can[2] == 173_445_287 and 50_000 <= can[2] - can[0] <= 600_000 and can[2] - can[1] >= 50_000
    jpn = rt.competitors["JPN"].skaters
    assert jpn["JPN-S3"].finish_elapsed_us == 184_471_906
    # the fall: the last crossing before 2370 m and the finish are ~11 s + one segment apart
    gap = jpn["JPN-S3"].physical[2400] - jpn["JPN-S3"].physical[2300]
    assert 11 * S + 6 * S < gap < 11 * S + 9 * S
    # standing start, then near-even pace
    g = rt.gun_us
    for sk in rt.competitors["CAN"].skaters.values():
        assert 9 * S <= sk.physical[100] - g <= 10.4 * S
        laps = [sk.physical[d + 100] - sk.physical[d] for d in range(100, 2300, 100)]
        assert all(6.5 * S < x < 8 * S for x in laps)
    # ROC-S2 fell at 1450 m and did not get up: no crossing after, team without a time
    roc = feed.truth.races["T-TPM"].competitors["ROC"]
    assert max(roc.skaters["ROC-S2"].physical) == 1400
    assert roc.finish_elapsed_us is None and roc.skaters["ROC-S2"].finish_us is None
    assert not roc.skaters["ROC-S2"].cooldown


def test_mass_start_explicit_crossings_and_missed_crossing(feed):
    rt = feed.truth.races["T-MS"]
    for lap in (4, 8, 12, 16):
        d = lap * 400
        firsts = sorted(rt.competitors, key=lambda c: rt.competitors[c].skaters[c].crossings[d])
        assert [c[-1] for c in firsts] == MS_ORDER[lap]
    d = rt.competitors["MS-D"].skaters["MS-D"]
    assert d.missed == {2000} and 2000 in d.physical and 2000 not in d.crossings
    # interpolated in between the given lap-end points
    assert d.physical[100] - rt.gun_us == round((30 * S + 9 * S + 3 * 150_000) / 4)
    race = next(json.loads(line) for line in feed.lines if '"race_id":"T-MS"' in line and '"kind":"race"' in line)
    assert race["laps"] == 16


def test_drop_exact_photo_restart_dns(feed):
    gao = feed.truth.races["T-M500"].competitors["CHN-GAO-T"].skaters["CHN-GAO-T"]
    assert gao.crossings[100] > gao.physical[100]  # exact read dropped: the earliest is later
    msgs = [json.loads(line) for line in feed.lines]
    photo = next(m for m in msgs if m["kind"] == "photo")
    cha = feed.truth.races["T-M500"].competitors["KOR-CHA-M"].skaters["KOR-CHA-M"]
    assert photo["finish_us"] == cha.finish_us - 3_000
    assert 20 * S <= photo["t_us"] - cha.finish_us <= 60 * S
    # restart: two starts, attempt-1 reads only before the recall, the race from the new gun
    rt = feed.truth.races["T-W1000"]
    starts = [m for m in msgs if m["kind"] == "start" and m["race_id"] == "T-W1000"]
    assert [s["attempt"] for s in starts] == [1, 2] and [s["t_us"] for s in starts] == rt.guns
    kok = rt.competitors["NED-KOK"].skaters["NED-KOK"]
    assert kok.aborted and all(rt.guns[0] < t < rt.guns[0] + 15 * S for _, t in kok.aborted)
    assert min(kok.physical.values()) > rt.guns[1]
    # DNS: no reads at all
    bowe = {"71031", "71032"}
    assert not any(m["kind"] == "passing" and m["transponder"] in bowe for m in msgs)
    assert rt.competitors["USA-BOWE"].finish_elapsed_us is None
    # Kodaira has a single transponder
    assert set(feed.truth.races["T-W1000"].competitors["JPN-KODAIRA"].skaters["JPN-KODAIRA"].transponders) == {"71021"}


def test_decisions_and_official(feed):
    msgs = [json.loads(line) for line in feed.lines]
    for rid, rt in feed.truth.races.items():
        decs = [m for m in msgs if m["kind"] == "decision" and m["race_id"] == rid]
        assert decs[-1]["code"] == "OFFICIAL" and "competitor_id" not in decs[-1]
        assert 30 * S <= decs[-1]["t_us"] - rt.last_finish_us <= 120 * S
        setup = next(m for m in msgs if m["kind"] == "race" and m["race_id"] == rid)
        assert setup["t_us"] == rt.guns[0] - 60 * S
    fall = next(m for m in msgs if m["kind"] == "decision" and m["code"] == "FALL")
    assert (fall["competitor_id"], fall["skater_id"], fall["note"]) == ("JPN", "JPN-S3", "last inner curve")


def test_noise_present(feed):
    msgs = [json.loads(line) for line in feed.lines]
    passings = [m for m in msgs if m["kind"] == "passing"]
    keys = [(m["source"], m["seq"]) for m in passings]
    assert len(keys) > len(set(keys))  # resends
    assert any(m["transponder"] in feed.truth.unknown_transponders for m in passings)
    assert {m["source"] for m in passings} == {"X2-A", "X2-B"}
    ts = [m["t_us"] for m in msgs]
    assert ts != sorted(ts)  # arrival order is not t_us order
    # heartbeats: every whole second per source while a session runs
    hb = [m["t_us"] for m in msgs if m["kind"] == "heartbeat" and m["source"] == "X2-B"]
    assert all(t % S == 0 for t in hb) and all(b - a == S for a, b in zip(hb, hb[1:]))
    last_decision = max(m["t_us"] for m in msgs if m["kind"] == "decision")
    assert hb[0] < feed.truth.races["T-M500"].setup_us and hb[-1] > last_decision


def test_deterministic():
    a = simulate(VENUE, scenario(), REFS, seed=7, options=NOISY)
    b = simulate(VENUE, scenario(), REFS, seed=7, options=NOISY)
    c = simulate(VENUE, scenario(), REFS, seed=8, options=NOISY)
    assert a.lines == b.lines and a.lines != c.lines


def test_rejects_bad_input():
    r = scenario()[0]
    with pytest.raises(ValueError):
        simulate(VENUE, [r], options=SimOptions(max_delay_us=4 * S))
    with pytest.raises(ValueError):
        simulate(VENUE, [r, r])
    bad_loops = VenueSpec("X", "X", loops=(("L000", 0), ("L100", 100)))
    with pytest.raises(ValueError):  # the team starting at 200 finishes where there is no loop
        simulate(bad_loops, [scenario()[1]])
    with pytest.raises(ValueError):  # missing a crossing that does not exist
        simulate(VENUE, [dataclasses.replace(r, missed=(("CHN-GAO-T", 150),))])


def test_write(tmp_path: Path, feed):
    p = feed.write(tmp_path / "f.jsonl")
    assert p.read_text(encoding="utf-8").splitlines() == feed.lines


# ---------------------------------------------------------------------------
# property over seeds and noise levels
# ---------------------------------------------------------------------------


def small_races(with_fall: bool) -> list[RaceSpec]:
    falls = [Fall("JPN-S2", 650, 4 * S)] if with_fall else []
    return [
        RaceSpec("P-500", "TEST", "NAT", "individual", "M", 500, T0,
                 (individual("A", "A", "NED", ("11", "12"), target_us=35_123_456),
                  individual("B", "B", "NED", ("21", "22"), target_us=34_999_999))),
        RaceSpec("P-TP", "TEST", "NAT", "team_pursuit", "W", 800, T0 + 5 * 60 * S,
                 (team("CAN", 3, 62_345_678), team("JPN", 4, 65_000_001, falls=falls))),
    ]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), miss=st.floats(0, 0.4), resend=st.floats(0, 0.3),
       delay=st.integers(0, 3 * S), warm=st.integers(0, 3), fall=st.booleans(), cool=st.booleans())
def test_property_truth_and_disorder(seed, miss, resend, delay, warm, fall, cool):
    opts = SimOptions(miss_rate=miss, resend_rate=resend, max_delay_us=delay,
                      warmup_transponders=warm, cooldown=cool)
    feed = simulate(VENUE, small_races(fall), seed=seed, options=opts)
    check_contract(feed.lines)
    check_against_truth(feed, max(delay, opts.primary_delay_us))
    r = feed.truth.races
    assert r["P-500"].competitors["A"].finish_elapsed_us == 35_123_456
    assert r["P-500"].competitors["B"].finish_elapsed_us == 34_999_999
    assert r["P-TP"].competitors["CAN"].finish_elapsed_us == 62_345_678
    assert r["P-TP"].competitors["JPN"].finish_elapsed_us == 65_000_001
    assert simulate(VENUE, small_races(fall), seed=seed, options=opts).lines == feed.lines


# ---------------------------------------------------------------------------
# the Beijing feeds
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def beijing_feeds() -> dict[str, SimFeed]:
    return beijing.build()


def test_beijing_files_up_to_date(beijing_feeds):
    for name, feed in beijing_feeds.items():
        p = beijing.FEEDS_DIR / name
        assert p.exists(), f"missing {p}: run python -m streams.beijing"
        assert p.read_bytes() == feed.data(), f"{p} is stale: run python -m streams.beijing"
        assert p.stat().st_size < 3_200_000


def test_beijing_check_cli(tmp_path):
    assert beijing.main(["--check"]) == 0
    assert beijing.main(["--check", "--out", str(tmp_path)]) == 1


def finishes_from_file(lines: list[str]) -> dict[str, dict[str, str]]:
    """Independent of the truth: each team's time from the reads of its finish loop."""
    msgs = [json.loads(line) for line in lines]
    venue = msgs[0]
    lap = venue["lap_m"]
    loop_at = {lp["at_m"]: lp["loop"] for lp in venue["loops"]}
    races = [m for m in msgs if m["kind"] == "race"]
    guns = {m["race_id"]: m["t_us"] for m in msgs if m["kind"] == "start"}
    reads = defaultdict(list)  # (transponder, loop) -> t_us
    for m in msgs:
        if m["kind"] == "passing":
            reads[(m["transponder"], m["loop"])].append(m["t_us"])
    out = {}
    for i, race in enumerate(races):
        gun = guns[race["race_id"]]
        end = races[i + 1]["t_us"] if i + 1 < len(races) else float("inf")
        D = race["distance_m"]
        res = {}
        for c in race["competitors"]:
            loop = loop_at[(c["start_m"] + D) % lap]
            nth = D // lap + (1 if D % lap else 0)
            fins = []
            for s in c["skaters"]:
                ts = sorted(t for tr in s["transponders"] for t in reads[(tr, loop)] if gun < t < end)
                clusters = []
                for t in ts:
                    if clusters and t - clusters[-1][-1] < 2 * S:
                        clusters[-1].append(t)
                    else:
                        clusters.append([t])
                if len(clusters) >= nth:
                    fins.append(clusters[nth - 1][0] - gun)
            fins.sort()
            res[c["competitor_id"]] = format_time(fins[2])
        out[race["race_id"]] = res
    return out


def test_beijing_results_from_the_files(beijing_feeds):
    exp = beijing.expected_results()
    women = beijing_feeds[beijing.WOMEN_FILE]
    men = beijing_feeds[beijing.MEN_FILE]
    got = {**finishes_from_file(women.lines), **finishes_from_file(men.lines)}
    assert got == exp
    assert finishes_from_file(beijing_feeds[beijing.FINAL_A_FILE].lines) == {
        "OWG2022-TPW-FA": {"CAN": "2:53.44", "JPN": "3:04.47"}}
    # every team of a round has its own thousandths digit; targets truncate to the official time
    for feed in (women, men):
        for rid, rt in feed.truth.races.items():
            for cid, ct in rt.competitors.items():
                assert ct.time == exp[rid][cid]
    for gender, heats in (("W", beijing.WOMEN), ("M", beijing.MEN)):
        for rnd in ("QF", "SF", "F"):
            digits = [t % 10_000 // 1000 for h in heats if h.race_id.split("-")[2].startswith(rnd)
                      for _, _, t in h.teams]
            assert len(digits) == len(set(digits)), (gender, rnd)
    assert beijing.expected_classification("W") == ["CAN", "JPN", "NED", "ROC", "CHN", "NOR", "BLR", "POL"]
    assert beijing.expected_classification("M") == ["NOR", "ROC", "USA", "NED", "CAN", "KOR", "ITA", "CHN"]


def test_beijing_feeds_contract(beijing_feeds):
    for name, feed in beijing_feeds.items():
        msgs = check_contract(feed.lines)
        check_against_truth(feed, beijing.OPTIONS.max_delay_us)
        refs = [m for m in msgs if m["kind"] == "record_ref"]
        assert [m["kind"] for m in msgs[:3]] == ["venue", "record_ref", "record_ref"]
        assert len(refs) == 2
        for rt in feed.truth.races.values():
            for ct in rt.competitors.values():
                for sk in ct.skaters.values():
                    assert not sk.missed and sk.finish_us is not None
        decs = [m for m in msgs if m["kind"] == "decision"]
        assert sum(d["code"] == "OFFICIAL" for d in decs) == len(feed.truth.races)
    fa = {m["record"]: m for m in map(json.loads, beijing_feeds[beijing.FINAL_A_FILE].lines)
          if m["kind"] == "record_ref"}
    assert (fa["OR"]["time"], fa["OR"]["set_on"], fa["OR"]["venue"]) == ("2:53.61", "2022-02-12", "NSO")
    assert fa["WR"]["time"] == "2:50.76"


def test_beijing_final_a_story(beijing_feeds):
    feed = beijing_feeds[beijing.FINAL_A_FILE]
    rt = feed.truth.races["OWG2022-TPW-FA"]
    jpn, can = rt.competitors["JPN"], rt.competitors["CAN"]
    assert jpn.start_m == 200 and can.start_m == 0
    takagi = jpn.skaters["JPN-TAKAGI-N"]
    assert takagi.fall.at_m == 2370 and 10 * S <= takagi.fall.lost_us <= 11.5 * S
    others = sorted(s.finish_elapsed_us for sid, s in jpn.skaters.items() if sid != "JPN-TAKAGI-N")
    assert 173_200_000 <= others[0] < others[1] < 173_500_000
    for d in range(100, 2400, 100):  # Japan (third skater) ahead of Canada until the fall
        assert sorted(s.crossings[d] for s in jpn.skaters.values())[2] < \
            sorted(s.crossings[d] for s in can.skaters.values())[2]
    msgs = [json.loads(line) for line in feed.lines]
    decs = [(m["code"], m.get("competitor_id"), m.get("skater_id"), m.get("note"))
            for m in msgs if m["kind"] == "decision"]
    assert decs == [("FALL", "JPN", "JPN-TAKAGI-N", "last inner curve"), ("OFFICIAL", None, None, None)]
    # the race is the same in the whole women's feed (same reads; seq numbers differ)
    whole = beijing_feeds[beijing.WOMEN_FILE].truth.races["OWG2022-TPW-FA"]
    assert {c: {s: k.crossings for s, k in ct.skaters.items()} for c, ct in whole.competitors.items()} == \
        {c: {s: k.crossings for s, k in ct.skaters.items()} for c, ct in rt.competitors.items()}
