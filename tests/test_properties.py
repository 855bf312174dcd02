"""Property tests: the facts do not depend on how the reads arrive.

Feeds come from the project's simulator (individual pairs, team pursuit,
mass start, with falls). A feed is then perturbed the ways the contract
allows: reads shuffled within the 3 s window, resent, thinned by up to 10%
(never the read that is a finish crossing's time), processed twice. The
facts (finishes, results, records, incidents, classification) must not
change; with no thinning, every final event must be identical (ids and
revision numbers aside: how many provisional versions came first depends on
the order the reads arrive in). Resent reads and a second run change nothing
at all, provisional versions included. Whatever the arrival order, every
split, finish and suspicion ends on a final version and revisions count up
from 0 per natural key.
"""
from __future__ import annotations

import random
from functools import lru_cache

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st

from streams.process import process_lines
from tests.msgs import canon
from streams.sim import (S, CompetitorSpec, Decision, Fall, RaceSpec, SimOptions, VenueSpec, individual,
                         simulate)

T0 = 1_700_000_000_000_000
VENUE = VenueSpec("OVL", "Test Oval")


def _team(cid, target, nation=None):
    from streams.sim import SkaterSpec

    skaters = tuple(SkaterSpec(f"{cid}-{i}", f"{cid} {i}", cid, (f"{cid}{i}1", f"{cid}{i}2")) for i in range(3))
    return CompetitorSpec(cid, cid, nation or cid, skaters, target_us=target)


@lru_cache(maxsize=None)
def base_feed(kind: str, seed: int) -> tuple:
    gun = T0 + 120 * S
    if kind == "pair":
        races = [RaceSpec("P1", "TEST", "WC", "individual", "M", 1500, gun, (
            individual("NED-A", "A", "NED", ("a1", "a2"), target_us=104_123_000),
            individual("NOR-B", "B", "NOR", ("b1", "b2"), target_us=105_456_000,
                       falls=(Fall("NOR-B", 900, 11 * S),)),
        ), decisions=(Decision("FALL", competitor_id="NOR-B", skater_id="NOR-B"),))]
    elif kind == "team":
        races = [RaceSpec("TP1", "TEST", "OWG", "team_pursuit", "W", 2400, gun, (
            _team("CAN", 173_440_000), _team("JPN", 174_470_000)), places=[1, 2])]
    else:
        comps = tuple(individual(f"S{i}", f"S{i}", "NED", (f"m{i}1", f"m{i}2"),
                                 target_us=490_000_000 + i * 370_000) for i in range(6))
        races = [RaceSpec("MS1", "TEST", "WC", "mass_start", "M", 6400, gun, comps, laps=16)]
    feed = simulate(VENUE, races, seed=seed, options=SimOptions(cooldown=True, warmup_transponders=1))
    return tuple(line.encode() for line in feed.lines), feed.truth


def run(lines) -> list[dict]:
    return list(process_lines(list(lines)))


def is_final(e) -> bool:
    """The final view: provisional versions and withdrawn provisional splits/finishes left out."""
    return e.get("final", True) and not (e["kind"] in ("split", "finish", "incident") and e.get("withdrawn"))


def final_view(events) -> list[bytes]:
    """The final events, in order, without ids and revision numbers."""
    out = []
    for e in events:
        if is_final(e):
            e = {k: v for k, v in e.items() if k not in ("event_id", "revision")}
            out.append(orjson.dumps(e, option=orjson.OPT_SORT_KEYS))
    return out


def check_versions(events) -> None:
    """Per natural key: revisions 0, 1, 2... in order, the last one final; ids unique."""
    versions: dict[tuple, list[dict]] = {}
    for e in events:
        k = e["kind"]
        if k == "split":
            key = (k, e["race_id"], e["attempt"], e["competitor_id"], e["skater_id"], e["distance_m"])
        elif k == "finish":
            key = (k, e["race_id"], e["attempt"], e["competitor_id"])
        elif k == "incident" and e["status"] == "suspected":
            key = (k, e["race_id"], e["attempt"], e["competitor_id"], e["skater_id"], e["at_m"])
        else:
            continue
        versions.setdefault(key, []).append(e)
    for key, vs in versions.items():
        if key[0] != "incident":
            assert [v["revision"] for v in vs] == list(range(vs[0]["revision"], vs[0]["revision"] + len(vs)))
        assert vs[-1]["final"] is True, (key, vs[-1])
    ids = [e["event_id"] for e in events if "event_id" in e]
    assert len(ids) == len(set(ids))


def facts(events) -> list:
    """What a subscriber acts on: finishes, results, records, incidents, standings (final)."""
    keep = []
    for e in events:
        k = e["kind"]
        if k == "split" or not is_final(e):
            continue
        e = dict(e)
        e.pop("t_us", None)
        e.pop("event_id", None)
        e.pop("revision", None)
        if k in ("result", "standings", "classification", "finish", "record"):
            keep.append(orjson.dumps(e, option=orjson.OPT_SORT_KEYS))
        elif k == "incident":
            keep.append((e["competitor_id"], e["skater_id"], e["type"], e["status"]))
    return keep


def _reshuffle(lines, rng: random.Random, jitter_us: int):
    """Arrival = t_us + U(0, jitter) for reads, t_us for the rest (keeps lateness < 3 s)."""
    keyed = []
    for i, line in enumerate(lines):
        m = orjson.loads(line)
        t = m.get("t_us", 0)
        if m["kind"] == "passing":
            t += rng.randint(0, jitter_us)
        keyed.append((t, i, line))
    keyed.sort(key=lambda x: (x[0], x[1]))
    return [line for _, _, line in keyed]


FEEDS = st.sampled_from(["pair", "team", "mass"])
SEEDS = st.integers(min_value=0, max_value=3)
PROFILE = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROFILE
@given(kind=FEEDS, seed=SEEDS, shuffle_seed=st.integers(0, 2**32 - 1))
def test_shuffling_reads_within_three_seconds_changes_nothing(kind, seed, shuffle_seed):
    lines, _ = base_feed(kind, seed)
    base = run(lines)
    shuffled = _reshuffle(lines, random.Random(shuffle_seed), 2_900_000)
    out = run(shuffled)
    assert final_view(out) == final_view(base)
    check_versions(out)


@PROFILE
@given(kind=FEEDS, seed=SEEDS, dup_seed=st.integers(0, 2**32 - 1), rate=st.floats(0.0, 0.5))
def test_resent_reads_change_nothing(kind, seed, dup_seed, rate):
    lines, _ = base_feed(kind, seed)
    base = run(lines)
    rng = random.Random(dup_seed)
    out = []
    delayed = []
    for line in lines:
        out.append(line)
        if b'"passing"' in line and rng.random() < rate:
            delayed.append((rng.randint(1, 40), line))
        # resends arrive a few lines later (well within the 3 s window)
        delayed = [(n - 1, ln) for n, ln in delayed]
        out.extend(ln for n, ln in delayed if n <= 0)
        delayed = [(n, ln) for n, ln in delayed if n > 0]
    out.extend(ln for _, ln in delayed)
    assert canon(run(out)) == canon(base)


@PROFILE
@given(kind=FEEDS, seed=SEEDS, thin_seed=st.integers(0, 2**32 - 1), rate=st.floats(0.0, 0.10))
def test_thinning_up_to_ten_percent_of_reads_keeps_the_facts(kind, seed, thin_seed, rate):
    lines, truth = base_feed(kind, seed)
    base = run(lines)
    protected = set()
    for race in truth.races.values():
        for comp in race.competitors.values():
            for sk in comp.skaters.values():
                if sk.finish_us is not None:
                    protected.add(sk.finish_us)
    rng = random.Random(thin_seed)
    thinned = []
    for line in lines:
        if b'"passing"' in line and rng.random() < rate:
            m = orjson.loads(line)
            if m["t_us"] not in protected:
                continue
        thinned.append(line)
    out = run(thinned)
    assert facts(out) == facts(base)
    check_versions(out)


@PROFILE
@given(kind=FEEDS, seed=SEEDS)
def test_the_same_feed_twice_gives_the_same_events_and_ids(kind, seed):
    lines, _ = base_feed(kind, seed)
    a = run(lines)
    b = run(lines)
    assert [orjson.dumps(e) for e in a] == [orjson.dumps(e) for e in b]
    assert len({e["event_id"] for e in a if "event_id" in e}) == len([e for e in a if "event_id" in e])


def test_the_simulated_feeds_give_their_truth():
    """The simulator's truth and the core agree (times, falls, mass start points)."""
    for kind in ("pair", "team", "mass"):
        lines, truth = base_feed(kind, 0)
        events = run(lines)
        for rid, race in truth.races.items():
            fins = {e["competitor_id"]: e for e in events
                    if e["kind"] == "finish" and e["race_id"] == rid and is_final(e)}
            for cid, comp in race.competitors.items():
                if comp.time_ms is not None:
                    assert fins[cid]["time_ms"] == comp.time_ms, (rid, cid)
        inc = [(e["skater_id"], e["status"]) for e in events if e["kind"] == "incident" and is_final(e)]
        if kind == "pair":
            assert inc == [("NOR-B", "suspected"), ("NOR-B", "confirmed")]
        else:
            assert inc == []
        if kind == "mass":
            res = [e for e in events if e["kind"] == "result" and is_final(e)][-1]
            assert sum(e["points"] for e in res["ranking"]) == 60 + 40 + 20 + 3 * (5 + 3 + 1)
