"""Falls found from lost time, on feeds from the simulator.

A skater who falls and gets up within about two loop intervals is never
overdue: only the time lost on the segment shows it. Several loop geometries
(four loops a lap: 100 m apart; six; three, 130-140 m apart: 3-10 s between loops), losses of 3-8 s,
realistic feeds (two decoders, two transponders, missed reads, resends): the
fall must be suspected (provisionally at the first read of the crossing that
reveals it, finally when that crossing closes) before the skater's finish,
with ``at_m`` the last loop passed before the fall, and confirmed by the
referee. Without a fall, missed reads, a whole loop dead for the race
(a dead spot) and both decoders dark for several seconds while the skaters
keep skating must stay silent.
"""
from __future__ import annotations

import orjson
import pytest

from streams.process import process_lines
from streams.sim import S, Decision, Fall, RaceSpec, SimOptions, VenueSpec, individual, simulate

T0 = 1_700_000_000_000_000
GEOMETRIES = {
    "four": (("L000", 0), ("L100", 100), ("L200", 200), ("L300", 300)),
    "six": (("L000", 0), ("L050", 50), ("L100", 100), ("L200", 200), ("L250", 250), ("L300", 300)),
    "three": (("L000", 0), ("L130", 130), ("L270", 270)),
}


def is_final(e) -> bool:
    return e.get("final", True) and not (e["kind"] in ("split", "finish", "incident") and e.get("withdrawn"))


def feed(geometry: str, distance: int = 1500, lost_s: float | None = None, fall_at: int = 900,
         seed: int = 0, confirm: bool = True):
    venue = VenueSpec("OVL", "Test Oval", loops=GEOMETRIES[geometry])
    gun = T0 + 120 * S
    falls = (Fall("NOR-B", fall_at, int(lost_s * S)),) if lost_s else ()
    decisions = (Decision("FALL", competitor_id="NOR-B", skater_id="NOR-B"),) if lost_s and confirm else ()
    target_a = {500: 35_100_000, 1500: 106_300_000, 5000: 383_000_000}[distance]
    race = RaceSpec("R1", "TEST", "WC", "individual", "M", distance, gun, (
        individual("NED-A", "A", "NED", ("a1", "a2"), target_us=target_a),
        individual("NOR-B", "B", "NOR", ("b1", "b2"),
                   target_us=target_a + 1_400_000 + (int(lost_s * S) if lost_s else 0), falls=falls),
    ), decisions=decisions)
    sim = simulate(venue, [race], seed=seed, options=SimOptions.realistic())
    return [ln.encode() for ln in sim.lines], sim.truth


def run(lines) -> list[dict]:
    return list(process_lines(lines))


def last_loop_before(at_m: int, loops, start_m: int, lap: int = 400) -> int:
    """Race distance of the last loop a skater passes at or before ``at_m``."""
    best = 0
    for _name, pos in loops:
        off = (pos - start_m) % lap
        d = off
        while d <= at_m:
            if d > best and d > 0:
                best = d
            d += lap
    return best


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("lost_s", [3.0, 5.0, 8.0])
def test_a_fall_that_costs_a_few_seconds_is_suspected_before_the_finish(geometry, lost_s):
    lines, truth = feed(geometry, lost_s=lost_s, seed=int(lost_s))
    events = run(lines)
    inc = [e for e in events if e["kind"] == "incident"]
    final = [e for e in inc if is_final(e)]
    assert [(e["skater_id"], e["status"]) for e in final] == [("NOR-B", "suspected"), ("NOR-B", "confirmed")]
    sus = final[0]
    comp = truth.races["R1"].competitors["NOR-B"]
    assert sus["at_m"] == last_loop_before(900, GEOMETRIES[geometry], comp.start_m)
    fin = [e for e in events if e["kind"] == "finish" and e["competitor_id"] == "NOR-B"]
    assert sus["t_us"] < fin[0]["t_us"]
    # emitted before the first version of the finish, and the first version of
    # the suspicion before the split of the crossing that revealed it
    assert events.index(inc[0]) < events.index(fin[0])
    revealing = [e for e in events if e["kind"] == "split" and e["skater_id"] == "NOR-B"
                 and e["distance_m"] > sus["at_m"]][0]
    assert events.index(inc[0]) < events.index(revealing)
    # nobody else
    assert not [e for e in inc if e["skater_id"] != "NOR-B"]


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_an_unconfirmed_suspicion_is_cleared_at_official(geometry):
    lines, _ = feed(geometry, lost_s=4.0, confirm=False, seed=11)
    final = [e for e in run(lines) if e["kind"] == "incident" and is_final(e)]
    assert [e["status"] for e in final] == ["suspected", "cleared"]
    assert final[1]["note"] == "not confirmed by the referee"


def _outage(lines, start_us: int, length_us: int, heartbeats: bool = False):
    """Both decoders dark for a while: their reads in the window are lost, and
    their heartbeats too unless ``heartbeats`` (loops dead, decoders alive)."""
    out = []
    for ln in lines:
        m = orjson.loads(ln)
        if m["kind"] in ("passing", "heartbeat") and start_us <= m["t_us"] < start_us + length_us \
                and (m["kind"] == "passing" or not heartbeats):
            continue
        out.append(ln)
    return out


def _dead_loop(lines, loop: str):
    return [ln for ln in lines if not (b'"passing"' in ln and orjson.loads(ln)["loop"] == loop)]


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_missed_reads_dead_spots_and_decoder_outages_stay_silent(geometry, seed):
    distance = 1500
    lines, truth = feed(geometry, distance=distance, seed=seed)
    gun = T0 + 120 * S
    variants = {"as simulated": lines}
    loops = [name for name, _ in GEOMETRIES[geometry]]
    for name in loops[1:]:
        variants[f"dead {name}"] = _dead_loop(lines, name)
    for start_s, length_s in ((20, 4), (41, 6), (63, 8)):
        variants[f"outage {start_s}+{length_s}s"] = _outage(lines, gun + start_s * S, length_s * S)
    variants["loops dark 4s, decoders alive"] = _outage(lines, gun + 30 * S, 4 * S, heartbeats=True)
    variants["dead + outage"] = _outage(_dead_loop(lines, loops[-1]), gun + 50 * S, 6 * S)
    base_fins = [e for e in run(lines) if e["kind"] == "finish" and is_final(e)]
    bad = {}
    for name, ls in variants.items():
        events = run(ls)
        inc = [(e["skater_id"], e["status"], e["at_m"]) for e in events if e["kind"] == "incident"]
        if inc:
            bad[name] = inc
        fins = [e for e in events if e["kind"] == "finish" and is_final(e)]
        assert [(e["competitor_id"], e["time_ms"]) for e in fins] == \
            [(e["competitor_id"], e["time_ms"]) for e in base_fins], name
    assert bad == {}, (geometry, seed)


def test_a_restart_clears_the_suspicions_and_withdraws_the_splits_of_the_recalled_attempt():
    from tests import msgs as M

    gun = T0 + 60 * S
    race = M.race("R1", [M.comp("NED-A", 100), M.comp("NOR-B", 100)], distance=1500)
    ra, _ = M.skate("NED-A", 100, gun, 1500, stop_at=300)
    rb, _ = M.skate("NOR-B", 100, gun, 1500, lose=(100, 5.0), stop_at=300)
    gun2 = gun + 40 * S
    body = M.by_time(ra + rb + M.heartbeats(gun - 5 * S, gun2 + 5 * S))
    events = M.run([M.venue(), race, M.start("R1", gun)] + body + [M.start("R1", gun2, attempt=2)],
                   flush=False)
    old = [e for e in events if e.get("attempt") == 1]
    inc = [e for e in old if e["kind"] == "incident" and is_final(e)]
    # B lost 5 s after 100 m: suspected from lost time; both stopped at the recall (overdue)
    assert ("NOR-B", "suspected", 100) in [(e["skater_id"], e["status"], e["at_m"]) for e in inc]
    opened = {e["skater_id"] for e in inc if e["status"] == "suspected"}
    cleared = [e for e in inc if e["status"] == "cleared"]
    assert {e["skater_id"] for e in cleared} == opened
    assert all(e["note"] == "attempt discarded by a restart" for e in cleared)
    # every split of attempt 1 ends withdrawn
    last: dict = {}
    for e in old:
        if e["kind"] == "split":
            last[(e["competitor_id"], e["skater_id"], e["distance_m"])] = e
    assert last and all(e["withdrawn"] and e["final"] for e in last.values())


def _source_dark(lines, source: str):
    """One decoder dark for the whole race (reads and heartbeats): the other carries on."""
    return [ln for ln in lines if not (b'"passing"' in ln or b'"heartbeat"' in ln)
            or orjson.loads(ln).get("source") != source]


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("lost_s", [3.0, 6.0])
def test_a_fall_is_still_suspected_with_decoder_outages_elsewhere_in_the_race(geometry, lost_s):
    # the fall at 900 m of 1,500 (about 64 s after the gun); outages before it,
    # and one decoder dark all along: the lost time still shows, before the finish
    lines, truth = feed(geometry, lost_s=lost_s, seed=int(lost_s) + 20)
    gun = T0 + 120 * S
    comp = truth.races["R1"].competitors["NOR-B"]
    variants = {
        "outage 20+4s": _outage(lines, gun + 20 * S, 4 * S),
        "loops dark 35+5s, decoders alive": _outage(lines, gun + 35 * S, 5 * S, heartbeats=True),
        "primary decoder dark": _source_dark(lines, "X2-A"),
        "backup decoder dark": _source_dark(lines, "X2-B"),
    }
    for name, ls in variants.items():
        events = run(ls)
        inc = [e for e in events if e["kind"] == "incident"]
        final = [(e["skater_id"], e["status"]) for e in inc if is_final(e)]
        assert final == [("NOR-B", "suspected"), ("NOR-B", "confirmed")], (name, final)
        sus = next(e for e in inc if is_final(e))
        assert sus["at_m"] == last_loop_before(900, GEOMETRIES[geometry], comp.start_m), name
        fin = [e for e in events if e["kind"] == "finish" and e["competitor_id"] == "NOR-B"]
        assert events.index(inc[0]) < events.index(fin[0]), name
