"""A restart does not start a fact's revisions again.

The contract keys a fact without its attempt (a split per race, competitor,
skater and distance; a finish per race and competitor; a record per race,
competitor and record; a result per race), and a subscriber keeps the
highest revision per key (``examples/kafka_consumer.py``). So after a recall
the new attempt's facts continue the revisions of the recalled attempt's
(which were withdrawn at the restart): per key, revisions are 0, 1, 2, ...
in emission order, whatever the attempt, and the highest is the new
attempt's value wherever the new attempt published one.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.process import process_lines
from streams.sim import RaceSpec, RecordRef, Restart, SimOptions, VenueSpec, individual, simulate

GUN = 1_700_000_100_000_000


def fact_key(e: dict) -> tuple | None:
    k = e["kind"]
    if k == "split":
        return k, e["race_id"], e["competitor_id"], e["skater_id"], e["distance_m"]
    if k == "finish":
        return k, e["race_id"], e["competitor_id"]
    if k == "record":
        return k, e["race_id"], e["competitor_id"], e["record"]
    if k == "result":
        return k, e["race_id"]
    return None


def feed(recall_s: int, new_gun_s: int, seed: int) -> list[bytes]:
    v = VenueSpec("NSO", "Oval", t_us=GUN - 100_000_000)
    race = RaceSpec("R1", "C1", "WC", "individual", "M", 1000, GUN,
                    competitors=(individual("A", "Alpha", "NED", ["1001", "1002"], target_us=68_500_000),
                                 individual("B", "Beta", "CAN", ["2001", "2002"], target_us=69_100_000)),
                    restart=Restart(recall_after_us=recall_s * 1_000_000, new_gun_after_us=new_gun_s * 1_000_000))
    ref = RecordRef("TR", "individual", "M", 1000, "NSO", "1:09.00", "X", "2020-01-01", "NSO")
    return [ln.encode() for ln in simulate(v, [race], records=[ref], seed=seed,
                                           options=SimOptions.realistic()).lines]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recall_s=st.integers(min_value=8, max_value=75), gap_s=st.integers(min_value=30, max_value=200),
       seed=st.integers(min_value=0, max_value=10_000))
def test_revisions_go_on_across_attempts(recall_s, gap_s, seed):
    events = list(process_lines(feed(recall_s, recall_s + gap_s, seed)))
    assert not [e for e in events if e["kind"] == "deadletter"]
    seen: dict[tuple, list[dict]] = {}
    for e in events:
        k = fact_key(e)
        if k is not None:
            seen.setdefault(k, []).append(e)
    assert 2 in {e["attempt"] for e in events if "attempt" in e}
    for k, evs in seen.items():
        assert [e["revision"] for e in evs] == list(range(len(evs))), k
        last = evs[-1]
        if any(e["attempt"] == 2 and not e.get("withdrawn") for e in evs):
            # a subscriber keeping the highest revision keeps the new attempt's value
            assert last["attempt"] == 2, k
    # every split and finish of the second attempt is the latest of its key,
    # and the recalled attempt's values are all superseded
    latest = {k: evs[-1] for k, evs in seen.items()}
    for k, e in latest.items():
        if k[0] in ("split", "finish") and e["attempt"] == 1:
            assert e.get("withdrawn") is True, k
    assert len({e["event_id"] for e in events}) == len(events)


def test_the_reviewers_recall_at_40_s():
    """Recalled at 40 s, the second gun 2 min after the first: A's 200 m split
    went 0, 1, 2, 3 (withdrawn) then 0, 1, 2 in the second attempt; now 4, 5, 6."""
    events = list(process_lines(feed(40, 120, 1)))
    a200 = [(e["attempt"], e["revision"], bool(e.get("withdrawn"))) for e in events
            if e["kind"] == "split" and e["competitor_id"] == "A" and e["distance_m"] == 200]
    assert [r for _, r, _ in a200] == list(range(len(a200)))
    assert a200[-1][0] == 2 and not a200[-1][2]
    assert any(a == 1 and w for a, _, w in a200)
