"""Mass start: the final sprint's points in the effective finishing order.

The final points (60, 40, 20) go to the competitors without an IRM in the
order they crossed the line: the photo-finish time, else the transponder
crossing, to the microsecond (two skaters in the same thousandth are still
one before the other). A DQ'd competitor has no finishing place: its final
points go to the next across the line (as if it had been disqualified before
the line, when it is no longer tracked). So the final facts do not depend on
the order in which a photo and a DQ arrive, and equal those of the feed in
which the corrections were known from the start.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from streams.process import process_lines
from streams.sim import S, Decision, Photo, RaceSpec, SimOptions, VenueSpec, individual, simulate
from tests import msgs as M

T0 = M.T0
GUN = T0 + 60 * S
LAP_S = 30
FINAL = (60, 40, 20)
SPRINT = (5, 3, 1)
SPRINT_LAPS = (4, 8, 12)
FINISH = GUN + 16 * LAP_S * S          # around here everyone crosses the line
AFTER = FINISH + 10 * S                # corrections after every finish is final
OFFICIAL = FINISH + 60 * S


def is_final(e) -> bool:
    return e.get("final", True) and not (e["kind"] in ("split", "finish", "incident") and e.get("withdrawn"))


def last(events, kind):
    found = [e for e in events if e["kind"] == kind and is_final(e)]
    assert found, f"no {kind} event"
    return found[-1]


def check_revisions(events) -> None:
    """No dead letter; results and classifications count up by one; every event id is new."""
    assert not [e for e in events if e["kind"] == "deadletter"]
    revs: dict[tuple, int] = {}
    for e in events:
        if e["kind"] in ("result", "classification"):
            k = (e["kind"], e.get("race_id"), e.get("event"))
            assert e["revision"] == revs.get(k, -1) + 1, e
            revs[k] = e["revision"]
    ids = [e["event_id"] for e in events if "event_id" in e]
    assert len(ids) == len(set(ids))


def check_provisional_points(events) -> None:
    """A finish published provisionally (at its first read) carries the points
    its final version carries: the provisional sprint is judged as the final one."""
    prov: dict[str, int] = {}
    for e in events:
        if e["kind"] != "finish" or e.get("withdrawn"):
            continue
        if not e["final"]:
            prov[e["competitor_id"]] = e["points"]
        elif e["revision"] == 0 or e["competitor_id"] in prov:
            assert prov.pop(e["competitor_id"], e["points"]) == e["points"], e


def cid(i: int) -> str:
    return f"M{i}"


def feed(n: int, sprint_orders: dict[int, list[int]], finish_us: dict[int, int], *, dq: int | None = None,
         dq_mid_race: bool = False, photo: tuple[int, int] | None = None, photo_first: bool = True,
         dq_at: int | None = None, places: bool = True) -> list[dict]:
    """A 16-lap mass start of ``n`` competitors, read at the line every lap
    (30 s laps); ``sprint_orders``: the crossing order at laps 4, 8, 12;
    ``finish_us``: each one's finish crossing, absolute us. Corrections: ``photo``
    (competitor, finish_us) and a DQ of ``dq`` after every finish (the photo
    first or not), or (``dq_mid_race``) during lap 14; ``dq_at`` gives its time."""
    comps = [M.comp(cid(i), 0) for i in range(n)]
    extra = {"laps": 16}
    if places:
        extra["places"] = list(range(1, n + 1))
    race = M.race("MS", comps, fmt="mass_start", distance=6400, **extra)
    body = M.heartbeats(GUN, OFFICIAL - S)
    for lap in range(1, 17):
        if lap == 16:
            for i in range(n):
                body.append(M.read(f"{cid(i)}-T1", 0, finish_us[i]))
            continue
        order = sprint_orders.get(lap, list(range(n)))
        for p, i in enumerate(order):
            body.append(M.read(f"{cid(i)}-T1", 0, GUN + lap * LAP_S * S + p * 200_000))
    late: list[dict] = []
    if dq is not None:
        if dq_mid_race:
            body.append(M.decision("MS", "DQ", GUN + 13 * LAP_S * S + 10 * S, competitor_id=cid(dq)))
        elif dq_at is not None:
            body.append(M.decision("MS", "DQ", dq_at, competitor_id=cid(dq)))
        else:
            late.append(M.decision("MS", "DQ", AFTER, competitor_id=cid(dq)))
    if photo is not None:
        late.insert(0 if photo_first else len(late), M.photo("MS", cid(photo[0]), photo[1], AFTER))
    for k, m in enumerate(late):   # after every finish, in list order, a second apart
        m["t_us"] = AFTER + k * S
    body += late
    return [M.venue(), race, M.start("MS", GUN)] + M.by_time(body) + [M.decision("MS", "OFFICIAL", OFFICIAL)]


def expected_points(n: int, sprint_orders: dict[int, list[int]], finish_us: dict[int, int],
                    dq: int | None) -> dict[str, int]:
    """The rule stated independently: sprints to the first three at laps 4, 8
    and 12; the final points to those without a DQ in crossing order
    (microseconds, then the start list)."""
    pts = {i: 0 for i in range(n)}
    for lap in SPRINT_LAPS:
        for p, i in enumerate(sprint_orders.get(lap, list(range(n)))[:3]):
            pts[i] += SPRINT[p]
    line = sorted((i for i in range(n) if i != dq), key=lambda i: (finish_us[i], i))
    for p, i in enumerate(line[:3]):
        pts[i] += FINAL[p]
    return {cid(i): p for i, p in pts.items()}


def entries(res) -> list[tuple]:
    return [(r["rank"], r["competitor_id"], r["time_ms"], r["points"], r["irm"]) for r in res["ranking"]]


def places(cls) -> list[tuple]:
    return [(r["place"], r["competitor_id"]) for r in cls["ranking"]]


# -- the reviewer's cases ---------------------------------------------------------------

def _sim_feed(comps, photos=(), decisions=()) -> list[bytes]:
    r = RaceSpec("MS", "TEST", "WC", "mass_start", "M", 6400, T0 + 200 * S, comps, laps=16,
                 photos=photos, decisions=decisions)
    return [line.encode() for line in simulate(VenueSpec("OVL", "Oval"), [r], seed=1, options=SimOptions()).lines]


def test_a_photo_of_another_skater_keeps_the_order_within_a_thousandth():
    """M1 crosses 0.5 ms before M0 (same thousandth): M1 wins the sprint, and a
    photo of an unrelated M3 changes nothing (it swapped them: 67/47 -> 47/67)."""
    def comps():
        return (individual("M0", "M0", "NED", ("m0a", "m0b"), target_us=490_000_700),
                individual("M1", "M1", "NED", ("m1a", "m1b"), target_us=490_000_200),
                individual("M2", "M2", "NED", ("m2a", "m2b"), target_us=490_400_000),
                individual("M3", "M3", "NED", ("m3a", "m3b"), target_us=490_800_000))
    base = list(process_lines(_sim_feed(comps())))
    photo = list(process_lines(_sim_feed(comps(), photos=(Photo("M3", delta_us=0, delay_us=30 * S),))))
    check_revisions(photo)
    want = [(1, "M1", 490000, 67, None), (2, "M0", 490000, 47, None), (3, "M2", 490400, 33, None),
            (4, "M3", 490800, 0, None)]
    assert entries(last(base, "result")) == want
    assert entries(last(photo, "result")) == want
    assert last(photo, "finish")["source"] == "photo"


def test_a_dq_winner_gives_up_the_final_points_whether_the_photo_came_before_or_after():
    def run(photo_delay):
        comps = tuple(individual(f"M{i}", f"M{i}", "NED", (f"m{i}a", f"m{i}b"), target_us=490_000_000 + i * 400_000)
                      for i in range(4))
        return list(process_lines(_sim_feed(comps, photos=(Photo("M3", delta_us=0, delay_us=photo_delay),),
                                            decisions=(Decision("DQ", after_us=20 * S, competitor_id="M0"),))))
    before, after = run(10 * S), run(30 * S)
    check_revisions(before)
    check_revisions(after)
    assert entries(last(before, "result")) == entries(last(after, "result"))
    res = {r["competitor_id"]: r for r in last(after, "result")["ranking"]}
    # M0 keeps its sprint points only; the final 60/40/20 go to M1, M2, M3 (awarded once)
    assert (res["M0"]["irm"], res["M0"]["rank"]) == ("DQ", None)
    assert [res[c]["points"] for c in ("M1", "M2", "M3")] == [65, 51, 20]
    assert res["M0"]["points"] == 71 - 60


# -- hand-built cases -------------------------------------------------------------------

ORDERS = {4: [3, 2, 1, 0], 8: [2, 3, 0, 1], 12: [1, 0, 3, 2]}   # sprints: M3 9, M2 8, M1 6, M0 4


def test_a_photo_that_swaps_two_skaters_in_one_thousandth_swaps_their_points():
    fin = {0: FINISH + 100, 1: FINISH + 600, 2: FINISH + 900_000, 3: FINISH + 1_800_000}
    base = last(M.run(feed(4, ORDERS, fin)), "result")
    assert {r["competitor_id"]: r["points"] for r in base["ranking"]} == expected_points(4, ORDERS, fin, None)
    # the camera: M1 was 0.1 ms ahead of M0 (all still in the same thousandth)
    res = last(M.run(feed(4, ORDERS, fin, photo=(1, FINISH))), "result")
    pts = {r["competitor_id"]: r["points"] for r in res["ranking"]}
    assert pts == expected_points(4, ORDERS, {**fin, 1: FINISH}, None) == {"M0": 44, "M1": 66, "M2": 28, "M3": 9}


def test_a_dq_between_two_crossings_leaves_the_provisional_points_of_the_next_unchanged():
    """M0 crosses first and is DQ'd before M1 crosses: M1's points, provisional
    and final, are the winner's."""
    fin = {0: FINISH, 1: FINISH + 5 * S, 2: FINISH + 10 * S, 3: FINISH + 15 * S}
    events = M.run(feed(4, ORDERS, fin, dq=0, dq_at=FINISH + 4 * S))
    check_revisions(events)
    m1 = [e for e in events if e["kind"] == "finish" and e["competitor_id"] == "M1" and not e.get("withdrawn")]
    assert [e["final"] for e in m1] == [False, True]
    assert [e["points"] for e in m1] == [66, 66]
    pts = {r["competitor_id"]: r["points"] for r in last(events, "result")["ranking"]}
    assert pts == expected_points(4, ORDERS, fin, 0) == {"M0": 4, "M1": 66, "M2": 48, "M3": 29}


def test_a_photo_gives_the_final_points_to_a_finish_the_loops_missed():
    """The photo is M1's only finish (its last read missed) and it was first
    across the line: the sprint is re-awarded with it."""
    fin = {0: FINISH + 500_000, 1: FINISH, 2: FINISH + 1_000_000, 3: FINISH + 1_500_000}
    msgs = [m for m in feed(4, ORDERS, fin, photo=(1, FINISH))
            if not (m["kind"] == "passing" and m["transponder"] == "M1-T1" and m["t_us"] == FINISH)]
    res = last(M.run(msgs), "result")
    pts = {r["competitor_id"]: r["points"] for r in res["ranking"]}
    assert pts == expected_points(4, ORDERS, fin, None)
    assert [r["competitor_id"] for r in res["ranking"]][:1] == ["M1"]


# -- the property -----------------------------------------------------------------------

@st.composite
def scenarios(draw):
    n = draw(st.integers(4, 6))
    orders = {lap: draw(st.permutations(range(n))) for lap in SPRINT_LAPS}
    # near-ties: crossings within 3 ms of each other, many in the same thousandth
    fin = {i: FINISH + draw(st.integers(0, 3_000)) for i in range(n)}
    who = draw(st.integers(0, n - 1))
    photo = (who, fin[who] + draw(st.integers(-2_500, 2_500)))
    dq = draw(st.one_of(st.none(), st.integers(0, n - 1)))
    return n, orders, fin, photo, dq


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_final_points_and_places_do_not_depend_on_the_order_of_photo_and_dq(case):
    n, orders, fin, photo, dq = case
    runs = {}
    for photo_first in (True, False):
        ev = M.run(feed(n, orders, fin, dq=dq, photo=photo, photo_first=photo_first))
        check_revisions(ev)
        check_provisional_points(ev)
        runs[photo_first] = (entries(last(ev, "result")), places(last(ev, "classification")))
    assert runs[True] == runs[False]
    # the same race with the corrections known from the start: the photo's time
    # is the transponder's, the DQ comes during lap 14 (the skater is no longer tracked)
    known = M.run(feed(n, orders, {**fin, photo[0]: photo[1]}, dq=dq, dq_mid_race=True))
    got = (entries(last(known, "result")), places(last(known, "classification")))
    assert got == runs[True]
    # and the rule itself
    res, cls = runs[True]
    want = expected_points(n, orders, {**fin, photo[0]: photo[1]}, dq)
    assert {c: p for _, c, _, p, _ in res} == want
    ranked = [(r, c, ms, p) for r, c, ms, p, irm in res if irm is None]
    assert [c for _, c, _, _ in ranked] == [c for c in sorted(
        (c for c in want if c != (None if dq is None else cid(dq))),
        key=lambda c: (-want[c], next(ms for _, c2, ms, _ in ranked if c2 == c), int(c[1:])))]
    assert sum(p for _, c, _, p, _ in res) == sum(want.values())
    # places: the ranked ones by rank, the DQ'd competitor last
    assert [c for _, c in cls] == [c for _, c, _, _ in ranked] + ([] if dq is None else [cid(dq)])
    assert [p for p, _ in cls] == [r for r, _, _, _ in ranked] + ([] if dq is None else [n])

