"""An incident's revisions go on, whatever the referee's timing.

The referee's FALL may come while the suspicion is only provisional (its
crossing still in the reorder window): the confirmation is then that
incident's next revision and the provisional suspicion is not withdrawn after
it (a subscriber keeping the latest revision would lose the confirmed fall).
A suspicion withdrawn and raised again goes on with the next revision (the
same revision again would reuse an ``event_id``). A restart withdraws a
provisional suspicion of the recalled attempt.
"""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams import beijing
from streams.process import process_lines

LINES = (beijing.FEEDS_DIR / beijing.FINAL_A_FILE).read_bytes().splitlines()
FALL = next(i for i, ln in enumerate(LINES) if b'"FALL"' in ln)
OFFICIAL = next(i for i, ln in enumerate(LINES) if b'"OFFICIAL"' in ln)
FIRST_SUSPICION_LINE = 1100   # (Takagi's provisional suspicion comes from lines ~1140-1150)


def with_fall_at(pos: int) -> list[bytes]:
    lines = LINES[:FALL] + LINES[FALL + 1:]
    return lines[:pos] + [LINES[FALL]] + lines[pos:]


def takagi(events: list[dict]) -> list[dict]:
    return [e for e in events if e["kind"] == "incident" and e["skater_id"] == "JPN-TAKAGI-N"]


@settings(max_examples=60, deadline=None)
@given(pos=st.integers(min_value=FIRST_SUSPICION_LINE, max_value=OFFICIAL - 1))
def test_the_confirmation_is_the_fall_s_last_revision_wherever_it_arrives(pos):
    events = list(process_lines(with_fall_at(pos)))
    assert len({e["event_id"] for e in events}) == len(events)
    inc = takagi(events)
    assert inc and inc[-1]["status"] == "confirmed", [(e["status"], e["revision"]) for e in inc]
    # one incident: revisions 0, 1, ... in arrival order, nothing after the confirmation
    assert [e["revision"] for e in inc] == list(range(len(inc)))


def test_the_docs_reproduction_fall_right_after_the_provisional_suspicion():
    events = list(process_lines(with_fall_at(1145)))
    inc = [(e["status"], e["revision"], bool(e.get("withdrawn")), e["final"]) for e in takagi(events)]
    assert inc == [("suspected", 0, False, False), ("confirmed", 1, False, True)]


def test_the_shipped_order_is_unchanged():
    inc = [(e["status"], e["revision"], e["final"]) for e in takagi(list(process_lines(LINES)))]
    assert inc == [("suspected", 0, False), ("suspected", 1, True), ("confirmed", 2, True)]


def _race_with_one_skater():
    from agents.core import Engine
    from tests import msgs as M

    eng = Engine()
    for m in (M.venue(), M.race("R1", [M.comp("A", 300)]), M.start("R1", M.T0 + 60 * M.S)):
        eng.apply(m)
    race = eng.races["R1"]
    return race, race.by_skater["A"]


def test_a_suspicion_withdrawn_then_raised_again_goes_on_with_new_ids():
    from agents.core import falls
    from tests import msgs as M

    race, run = _race_with_one_skater()
    out: list[dict] = []
    t = M.T0 + 80 * M.S
    falls.publish_provisional(race, run, (100, t), out)
    falls.publish_provisional(race, run, None, out)              # the read that raised it moved
    falls.publish_provisional(race, run, (200, t + 5 * M.S), out)  # raised again, same incident
    assert [(e["revision"], bool(e.get("withdrawn"))) for e in out] == [(0, False), (1, True), (2, False)]
    assert len({e["event_id"] for e in out}) == 3


def test_a_restart_withdraws_an_open_provisional_suspicion():
    from agents.core import falls, provisional
    from tests import msgs as M

    race, run = _race_with_one_skater()
    out: list[dict] = []
    falls.publish_provisional(race, run, (100, M.T0 + 80 * M.S), out)
    provisional.withdraw_attempt(race, out)
    assert out[-1]["withdrawn"] is True and out[-1]["revision"] == 1 and run.prov_sus is None


def test_the_gateway_and_the_example_consumer_keep_the_confirmed_fall():
    """What a subscriber keeps, following the documented rule (the latest
    incident in arrival order per race, competitor, skater and type)."""
    import importlib.util
    from pathlib import Path

    import orjson

    from streams.gateway_state import GatewayState
    from streams.topics import TOPIC_OF_KIND

    spec = importlib.util.spec_from_file_location(
        "kafka_consumer", Path(__file__).resolve().parents[1] / "examples" / "kafka_consumer.py")
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    for pos in (1145, FALL, OFFICIAL - 1):
        events = list(process_lines(with_fall_at(pos)))
        cur = ex.Current()
        gw = GatewayState()
        for off, e in enumerate(events):
            cur.apply(e)
            if e["kind"] in TOPIC_OF_KIND:
                gw.ingest(TOPIC_OF_KIND[e["kind"]], 0, off, orjson.dumps(e))
        key = ("incident", "OWG2022-TPW-FA", "JPN", "JPN-TAKAGI-N", "fall")
        assert cur.facts[key]["status"] == "confirmed", pos
        r = gw.race("OWG2022-TPW-FA")
        assert r.incidents[("JPN", "JPN-TAKAGI-N", "fall")]["status"] == "confirmed", pos
