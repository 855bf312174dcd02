"""A withdrawn record repeats the claim it takes back.

A record event with ``"withdrawn": true`` says which record is taken back:
its ``time``, ``equalled``, ``previous_time`` and ``previous_holder`` are
those of the last version of the same fact (race, competitor, record) that
held, not a judgement against whatever reference is in force by then
(reviewer: C's equalled 1:08.50 against X, taken back when D broke it
provisionally, read "not equalled, previous 1:08.49 D").
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.process import process_lines
from streams.sim import RaceSpec, RecordRef, SimOptions, VenueSpec, individual, simulate

T0 = 1_700_000_000_000_000
CLAIM = ("time", "equalled", "previous_time", "previous_holder")


def feed(targets: list[int], seed: int, dq: bool) -> list[bytes]:
    v = VenueSpec("NSO", "Oval", t_us=T0)
    races = []
    for i in range(0, len(targets), 2):
        gun = T0 + 100_000_000 + i * 150_000_000
        comps = tuple(individual(f"S{i + j}", f"Sk{i + j}", "NED", [f"{i + j}01", f"{i + j}02"], target_us=tg)
                      for j, tg in enumerate(targets[i:i + 2]))
        races.append(RaceSpec(f"R{i // 2 + 1}", "C1", "WC", "individual", "M", 1000, gun, competitors=comps))
    ref = RecordRef("TR", "individual", "M", 1000, "NSO", "1:08.50", "X", "2020-01-01", "NSO")
    lines = [ln.encode() for ln in simulate(v, races, records=[ref], seed=seed, options=SimOptions.realistic()).lines]
    if dq:   # the first race's first skater disqualified after both races
        t = T0 + 100_000_000 + len(targets) * 150_000_000
        lines.append(b'{"kind":"decision","v":1,"t_us":%d,"race_id":"R1","code":"DQ","competitor_id":"S0"}' % t)
    return lines


def check(events: list[dict]) -> int:
    held: dict[tuple, dict] = {}
    withdrawn = 0
    for e in events:
        if e["kind"] != "record":
            continue
        key = (e["race_id"], e["competitor_id"], e["record"])
        if e["withdrawn"]:
            withdrawn += 1
            assert key in held, key
            assert {k: e[k] for k in CLAIM} == {k: held[key][k] for k in CLAIM}, (e, held[key])
        else:
            held[key] = e
    return withdrawn


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(targets=st.lists(st.integers(min_value=68_480_000, max_value=68_530_000), min_size=2, max_size=4),
       seed=st.integers(min_value=0, max_value=1000), dq=st.booleans())
def test_a_withdrawal_repeats_the_claim(targets, seed, dq):
    check(list(process_lines(feed(targets, seed, dq))))


def test_the_reviewers_equalled_record():
    events = list(process_lines(feed([68_509_999, 68_600_000, 68_500_000, 68_499_999], 1, False)))
    assert check(events) >= 1
    c = [e for e in events if e["kind"] == "record" and e["competitor_id"] == "S2"]
    assert c[-1]["withdrawn"] and c[-1]["equalled"] and c[-1]["previous_holder"] == "X"
