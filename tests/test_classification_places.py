"""Classification places: the ranked competitors take places by rank, then a
DNF or DQ takes the places left, in ranking order; a DNS or WDR gets no place
and takes none (docs/contract.md, ``classification``). Whatever the order of
the referee's decisions, the same places."""
from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings, strategies as st

from streams.process import process_lines
from streams.sim import S, Fall, RaceSpec, SimOptions, VenueSpec, individual, simulate
from tests import msgs as M

T0 = M.T0
LAP_S = 30
EVENT = "TEST-mass_start-M-6400"
# how a competitor's race goes
FATES = ("finish", "dns_before_gun", "wdr_before_gun", "never_seen", "stops", "stops_dnf_decision",
         "dq_after_finish", "dq_mid_race")


def is_final(e) -> bool:
    return e.get("final", True) and not (e["kind"] in ("split", "finish", "incident") and e.get("withdrawn"))


def last(events, kind, **match):
    found = [e for e in events if e["kind"] == kind and is_final(e)
             and all(e.get(k) == v for k, v in match.items())]
    assert found, f"no {kind} event"
    return found[-1]


def race_msgs(rid: str, prefix: str, gun: int, fates: list[str], first_place: int,
              rng: random.Random, rng_decisions: random.Random) -> tuple[list[dict], list[dict], list[dict]]:
    """A 16-lap mass start awarding places first_place..: (set-up and gun,
    timed messages, decisions after the race: their order from ``rng_decisions``)."""
    n = len(fates)
    ids = [f"{prefix}{i}" for i in range(n)]
    race = M.race(rid, [M.comp(c, 0) for c in ids], fmt="mass_start", distance=6400, laps=16,
                  places=list(range(first_place, first_place + n)), t=gun - 30 * S)
    setup = [race]
    for c, fate in zip(ids, fates):
        if fate in ("dns_before_gun", "wdr_before_gun"):
            setup.append(M.decision(rid, fate[:3].upper(), gun - 10 * S, competitor_id=c))
    setup.append(M.start(rid, gun))
    body: list[dict] = []
    late: list[dict] = []
    order = list(range(n))
    for lap in range(1, 17):
        rng.shuffle(order)   # the pack reshuffles every lap: sprint points vary
        for p, i in enumerate(order):
            fate = fates[i]
            if fate in ("dns_before_gun", "wdr_before_gun", "never_seen"):
                continue
            if fate.startswith("stops") and lap > 6:
                continue
            body.append(M.read(f"{ids[i]}-T1", 0, gun + lap * LAP_S * S + p * 200_000))
    end = gun + 17 * LAP_S * S
    for c, fate in zip(ids, fates):
        if fate == "dq_mid_race":
            body.append(M.decision(rid, "DQ", gun + 10 * LAP_S * S + 10 * S, competitor_id=c))
        elif fate == "dq_after_finish":
            late.append(M.decision(rid, "DQ", end, competitor_id=c))
        elif fate == "stops_dnf_decision":
            late.append(M.decision(rid, "DNF", end, competitor_id=c))
    rng_decisions.shuffle(late)
    for k, m in enumerate(late):
        m["t_us"] = end + k * S
    late.append(M.decision(rid, "OFFICIAL", end + 30 * S))
    return setup, body, late


def feed(races: list[tuple[str, str, list[str]]], seed: int, order_seed: int = 0) -> list[dict]:
    """Mass starts of one event, one after the other at one venue, awarding places 1.. in turn
    (``seed``: the pack's order every lap; ``order_seed``: the order of the decisions after a race)."""
    rng = random.Random(seed)
    rng_decisions = random.Random(order_seed)
    out = [M.venue()]
    gun = T0 + 60 * S
    first = 1
    for rid, prefix, fates in races:
        setup, body, late = race_msgs(rid, prefix, gun, fates, first, rng, rng_decisions)
        end = gun + 17 * LAP_S * S
        out += setup + M.by_time(body + M.heartbeats(gun, end + 40 * S)) + late
        first += len(fates)
        gun = end + 120 * S
    return out


def expected_places(result: dict, first_place: int) -> dict[str, int | None]:
    """The contract, stated on the race's result: rank r -> place r; then each
    DNF or DQ, in the result's order, the next place left; DNS and WDR none."""
    out: dict[str, int | None] = {}
    left = sum(1 for e in result["ranking"] if e["rank"] is not None)
    for e in result["ranking"]:
        if e["rank"] is not None:
            out[e["competitor_id"]] = first_place + e["rank"] - 1
        elif e["irm"] in ("DNF", "DQ"):
            out[e["competitor_id"]] = first_place + left
            left += 1
        else:
            out[e["competitor_id"]] = None
    return out


def check(events, races) -> list[tuple]:
    assert not [e for e in events if e["kind"] == "deadletter"]
    cls = last(events, "classification", event=EVENT)
    assert cls["complete"] is True
    got = {r["competitor_id"]: r["place"] for r in cls["ranking"]}
    want: dict[str, int | None] = {}
    first = 1
    for rid, _, fates in races:
        res = last(events, "result", race_id=rid)
        assert res["status"] == "official"
        want.update(expected_places(res, first))
        n_placed = sum(1 for f in fates if f not in ("dns_before_gun", "wdr_before_gun", "never_seen"))
        # no gap: the race's places run first.. without a hole, DNS/WDR excepted
        mine = sorted(p for c, p in got.items() if p is not None and c in {e["competitor_id"] for e in res["ranking"]})
        assert mine == list(range(first, first + n_placed)), (rid, mine)
        first += len(fates)
    assert got == want
    # in place order, the unplaced last
    places = [r["place"] for r in cls["ranking"]]
    assert places == sorted(places, key=lambda p: (p is None, p or 0))
    return [(r["place"], r["competitor_id"], r["race_id"]) for r in cls["ranking"]]


# -- the reviewer's case ----------------------------------------------------------------

def test_a_dns_listed_first_leaves_the_dnf_the_place_after_the_finishers():
    """Places 1-5: M0 (first on the list) does not start, M4 falls out: M4 takes 4, M0 none."""
    comps = tuple(individual(f"M{i}", f"M{i}", "NED", (f"m{i}a", f"m{i}b"), target_us=490_000_000 + i * 400_000,
                             dns=(i == 0), falls=((Fall(f"M{i}", 3000, 5 * S, gets_up=False),) if i == 4 else ()))
                  for i in range(5))
    r = RaceSpec("MSF", "TEST", "WC", "mass_start", "M", 6400, T0 + 200 * S, comps, laps=16, places=(1, 2, 3, 4, 5))
    lines = [line.encode() for line in simulate(VenueSpec("OVL", "Oval"), [r], seed=2, options=SimOptions()).lines]
    events = list(process_lines(lines))
    res = last(events, "result")
    assert [(e["competitor_id"], e["irm"]) for e in res["ranking"]][3:] == [("M0", "DNS"), ("M4", "DNF")]
    cls = last(events, "classification")
    assert [(e["place"], e["competitor_id"]) for e in cls["ranking"]] == [
        (1, "M1"), (2, "M2"), (3, "M3"), (4, "M4"), (None, "M0")]
    assert cls["complete"] is True


def test_dnf_and_dq_take_the_places_left_in_ranking_order_a_wdr_takes_none():
    races = [("FA", "A", ["wdr_before_gun", "dq_after_finish", "finish", "never_seen", "stops", "finish"]),
             ("FB", "B", ["dns_before_gun", "finish", "dq_mid_race", "finish"])]
    events = M.run(feed(races, seed=1))
    rows = check(events, races)
    # final A awards 1-6: two finishers (1, 2), then A1 (DQ) 3 and A4 (DNF) 4 in the result's order;
    # A0 (WDR) and A3 (DNS) none, places 5 and 6 go to nobody; final B awards 7-10
    placed = {c: p for p, c, _ in rows}
    assert (placed["A1"], placed["A4"], placed["A0"], placed["A3"]) == (3, 4, None, None)
    assert sorted(p for p in placed.values() if p is not None) == [1, 2, 3, 4, 7, 8, 9]
    assert (placed["B2"], placed["B0"]) == (9, None)


# -- the property -----------------------------------------------------------------------

@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fa=st.lists(st.sampled_from(FATES), min_size=2, max_size=6),
       fb=st.lists(st.sampled_from(FATES), min_size=1, max_size=4),
       seed=st.integers(0, 2**16), order_seeds=st.tuples(st.integers(0, 2**16), st.integers(0, 2**16)))
def test_places_run_without_gaps_whatever_the_irms_and_the_order_of_decisions(fa, fb, seed, order_seeds):
    races = [("FA", "A", fa), ("FB", "B", fb)]
    rows = check(M.run(feed(races, seed, order_seeds[0])), races)
    # the same races with the referee's decisions after the race in another order: the same places
    assert check(M.run(feed(races, seed, order_seeds[1])), races) == rows
