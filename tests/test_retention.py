"""Bounded state (agents/core/retention.py) and standings kept incrementally
(agents/core/standings.py): a finished race's state is released once it can no
longer change (official or void + ``release_us`` of venue time), what later
races need is kept compact, a later message about a released race is a
duplicate or a dead letter (``race_released``), never a crash and never a
change to another race's facts; standings are published when they change."""
from __future__ import annotations

from functools import lru_cache

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st

from agents.core import CoreConfig, Engine
from agents.core.model_kept import GroupState
from bench.feeds import tiled_feed
from schemas.decode import Rejected, decode
from streams import beijing
from streams.process import Processor, process_lines
from tests import msgs as M

S = M.S
T0 = M.T0
GRACE = 120 * S          # a short release time keeps the feeds small
CFG = CoreConfig(release_us=GRACE)
NEVER = CoreConfig(release_us=10**15, abandon_us=10**15)


def _pair(rid, gun, a="NED-A", b="NOR-B", group="G", a_pace=7.0, b_pace=7.1):
    """A 500 m pair: set-up, gun, reads of both skaters (the skaters' ids
    are per race so that transponders do not carry over)."""
    race = M.race(rid, [M.comp(f"{rid}-{a}", 100), M.comp(f"{rid}-{b}", 100)], group=group, t=gun - 30 * S)
    ra, _ = M.skate(f"{rid}-{a}", 100, gun, 500, per100_s=a_pace)
    rb, _ = M.skate(f"{rid}-{b}", 100, gun, 500, per100_s=b_pace)
    return [race, M.start(rid, gun)], ra + rb


def two_races():
    """R1 run and made official at +80 s, heartbeats until well past its
    release; then R2 in the same group. Returns (messages, index of the first
    message after R1's release, R1's OFFICIAL time)."""
    g1 = T0 + 60 * S
    head1, reads1 = _pair("R1", g1)
    off1 = g1 + 80 * S
    body1 = M.by_time(reads1 + M.heartbeats(g1 - 5 * S, off1 + GRACE + 10 * S) + [M.decision("R1", "OFFICIAL", off1)])
    g2 = off1 + GRACE + 20 * S
    head2, reads2 = _pair("R2", g2, a_pace=6.9, b_pace=7.2)
    body2 = M.by_time(reads2 + M.heartbeats(g2 - 5 * S, g2 + 120 * S) + [M.decision("R2", "OFFICIAL", g2 + 80 * S)])
    msgs = [M.venue()] + head1 + body1
    cut = len(msgs)
    return msgs + head2 + body2, cut, off1


def run_engine(msgs, config=CFG):
    proc = Processor(config=config)
    events = list(process_lines(M.lines(msgs), proc))
    return proc.engine, events


# -- what is released ------------------------------------------------------------


def test_an_official_race_is_released_after_the_grace_and_keeps_what_standings_need():
    msgs, cut, off1 = two_races()
    g1 = T0 + 60 * S
    # just before the grace ends: everything is still there
    early = [m for m in msgs[:cut] if m["t_us"] < off1 + GRACE]
    eng, _ = run_engine(early)
    assert "R1" in eng.races and not eng.kept.released
    # after it: the attempt, its start list, its transponders, its finishes are gone
    eng, events = run_engine(msgs[:cut])
    assert eng.races == {} and eng.race_defs == {} and eng.finish_log == [] and eng.result_revs == {}
    assert eng.pre_irm == {} and eng.dirty == {}
    v = eng.venues["OVL"]
    assert v.pending == {} and v.races == [] and v.transponders == {}
    s = eng.kept.released["R1"]
    assert (s.status, s.attempt, s.group) == ("official", 1, "G")
    assert s.released_t >= off1 + GRACE
    # what is left queued is the race's 24 h bound (a tuple), skipped when its time comes
    assert [(rid, due) for heap in eng.kept.releases.values() for due, rid, _ in heap] == [("R1", T0 + 60 * S + 86_400 * S)]
    # the group's standings live on, compact (every race of it is released)
    gs = eng.kept.gstate["G"]
    assert isinstance(gs, GroupState) and len(gs.rows) == 2 and all(type(e) is tuple for _, e in gs.rows)
    assert g1 < off1


def test_releasing_changes_no_event_of_the_pair_feeds():
    msgs, _, _ = two_races()
    _, kept = run_engine(msgs, NEVER)
    _, released = run_engine(msgs, CFG)
    assert released == kept
    # and R2's standings rank it with R1, which was released before R2 started
    st = [e for e in released if e["kind"] == "standings"][-1]
    assert [(e["race_id"], e["rank"]) for e in st["ranking"]] == [("R2", 1), ("R1", 2), ("R1", 3), ("R2", 4)]
    assert st["complete"] is True


@lru_cache(maxsize=None)
def _tiled(n):
    return tuple(tiled_feed(n))


def test_a_tiled_season_keeps_only_the_last_races_and_publishes_the_same_events():
    lines = list(_tiled(20))   # the Beijing women's tournament twice, a day apart
    p_kept, p_rel = Processor(config=NEVER), Processor()
    kept = list(process_lines(lines, p_kept))
    rel = list(process_lines(lines, p_rel))
    assert rel == kept
    eng = p_rel.engine
    assert len(p_kept.engine.races) == 20
    # the finals of the last copy ran within the feed's last hour (they are ~15 min apart)
    assert len(eng.races) <= 4 and len(eng.kept.released) >= 16 and len(eng.kept.released) + len(eng.races) == 20
    assert len(eng.finish_log) <= 8 and len(eng.race_defs) == len(eng.races)


def test_a_race_never_made_official_is_released_a_day_after_its_gun():
    gun = T0 + 60 * S
    head, reads = _pair("R1", gun)
    cfg = CoreConfig(abandon_us=600 * S, release_us=GRACE)
    msgs = [M.venue()] + head + M.by_time(reads + M.heartbeats(gun - 5 * S, gun + 700 * S, step=5 * S))
    eng, events = run_engine(msgs, cfg)
    assert eng.races == {} and eng.kept.released["R1"].status == "unofficial"
    # OFFICIAL then comes too late: a dead letter that says why
    eng2, ev2 = run_engine(msgs + [M.decision("R1", "OFFICIAL", gun + 701 * S)], cfg)
    dl = [e for e in ev2 if e["kind"] == "deadletter"]
    assert len(dl) == 1 and "released" in dl[0]["error"] and ev2[:-1] == events[:len(ev2) - 1]


# -- later messages about a released race -------------------------------------------


def test_later_messages_about_a_released_race_have_a_defined_outcome():
    msgs, cut, off1 = two_races()
    t = off1 + GRACE + 15 * S
    cid = "R1-NED-A"
    late = [M.decision("R1", "OFFICIAL", t), M.start("R1", t, attempt=1), M.decision("R1", "DQ", t, cid),
            M.photo("R1", cid, off1 - 30 * S, t), M.start("R1", t, attempt=2), M.decision("R1", "VOID", t),
            M.decision("R1", "FALL", t, cid, cid), M.race("R1", [M.comp("X", 100)], t=t),
            M.read(f"{cid}-T1", 0, t)]
    proc = Processor(config=CFG)
    events = list(process_lines(M.lines(msgs[:cut] + late), proc))
    dl = [e for e in events if e["kind"] == "deadletter"]
    assert [orjson.loads(e["raw"])["kind"] for e in dl] == ["decision", "photo", "start", "decision", "decision",
                                                           "race"]
    assert all("was released" in e["error"] and "\n" not in e["error"] for e in dl)
    stats = proc.engine.stats
    assert stats[("decision", "duplicate")] == 1 and stats[("start", "duplicate")] == 1
    assert stats[("passing", "ignored_unknown_transponder")] >= 1
    assert ("decision", "deadlettered") in stats and ("photo", "deadlettered") in stats
    # nothing was derived from them
    n = len(list(process_lines(M.lines(msgs[:cut]), Processor(config=CFG))))
    assert len(events) - len(dl) == n


KINDS = st.sampled_from(["start", "photo", "decision", "race"])
CODES = st.sampled_from(["OFFICIAL", "VOID", "DQ", "DNF", "DNS", "WDR", "FALL", "XX"])
CIDS = st.sampled_from(["R1-NED-A", "R1-NOR-B", "nobody", None])


@st.composite
def late_message(draw):
    kind = draw(KINDS)
    dt = draw(st.integers(-10**9, 10**9))
    if kind == "start":
        return {"kind": "start", "v": 1, "t_us": T0 + dt, "venue": "OVL", "race_id": "R1",
                "attempt": draw(st.integers(1, 4))}
    if kind == "photo":
        return M.photo("R1", draw(CIDS) or "R1-NED-A", T0 + draw(st.integers(-10**9, 10**9)), T0 + dt)
    if kind == "decision":
        cid = draw(CIDS)
        return M.decision("R1", draw(CODES), T0 + dt, cid, cid if draw(st.booleans()) else None)
    return M.race("R1", [M.comp(draw(CIDS) or "Z", 100)], group=draw(st.sampled_from(["G", "H"])), t=T0 + dt)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(late=st.lists(st.tuples(st.integers(0, 10**6), late_message()), min_size=1, max_size=8))
def test_arbitrary_late_messages_for_a_released_race_never_crash_nor_change_other_races(late):
    msgs, cut, _ = two_races()
    base = list(process_lines(M.lines(msgs), Processor(config=CFG)))
    fed = list(msgs)
    for where, m in sorted(late, key=lambda x: -x[0]):
        i = cut + where % (len(msgs) - cut + 1)
        fed.insert(i, m)
    events = list(process_lines(M.lines(fed), Processor(config=CFG)))
    assert not [e for e in events if e["kind"] == "deadletter" and "internal" in e["error"]]
    for e in events:
        if e["kind"] == "deadletter":   # refused as released, or out of contract on its own
            # refused as released, by the clock guard (a gun far behind the venue's
            # clock, a leap), or out of contract on its own
            assert "was released" in e["error"] or "'s clock" in e["error"] \
                or "leaps ahead of venue" in e["error"] or _bad_alone(e["raw"]), e
    assert [e for e in events if e["kind"] != "deadletter"] == base


def _bad_alone(raw: str) -> bool:
    try:
        decode(raw.encode())
    except Rejected:
        return True
    return False


# -- standings ----------------------------------------------------------------------------


def _reference_standings(results_by_race, members, statuses):
    """Standings from scratch (the rule before they were kept incrementally)."""
    entries, irms = [], []
    complete = True
    for rid in members:
        if statuses.get(rid) not in ("official", "unofficial"):
            complete = False
        for e in results_by_race.get(rid, []):
            e = dict(e, race_id=rid)
            (entries if e["irm"] is None else irms).append(e)
    mass = any("points" in e for e in entries)
    entries.sort(key=(lambda e: (-e["points"], e["time_ms"])) if mass else (lambda e: e["time_ms"]))
    prev, rank = None, 0
    for i, e in enumerate(entries):
        k = (e.get("points"), e["time_ms"])
        if k != prev:
            rank, prev = i + 1, k
        e["rank"] = rank
        e["behind_ms"] = e["time_ms"] - entries[0]["time_ms"]
    return entries + irms, complete


def _check_standings(lines):
    """Every standings event equals the from-scratch ranking of the group's
    latest final results, and differs from the group's previous one."""
    members: dict[str, list[str]] = {}
    results: dict[str, list] = {}
    statuses: dict[str, str] = {}
    last: dict[str, tuple] = {}
    n = 0
    proc = Processor()

    def events():
        for line in lines:
            m = orjson.loads(line)
            if m.get("kind") == "race":   # the group's members so far, in set-up order
                g = m.get("group") or m["race_id"]
                if m["race_id"] not in members.setdefault(g, []):
                    members[g].append(m["race_id"])
            yield from process_lines([line], proc, flush=False)
        yield from proc.flush()

    for e in events():
        if e["kind"] == "result" and e.get("final", True):
            results[e["race_id"]] = e["ranking"]
            statuses[e["race_id"]] = e["status"]
        elif e["kind"] == "standings":
            n += 1
            want = _reference_standings(results, members[e["group"]], statuses)
            assert (e["ranking"], e["complete"]) == want
            assert last.get(e["group"], (None, None))[:2] != want
            assert e["revision"] == (last[e["group"]][2] + 1 if e["group"] in last else 0)
            last[e["group"]] = want + (e["revision"],)
    return n


def test_beijing_standings_are_the_from_scratch_ranking_and_published_only_on_change():
    # (women 14, men 12: a result is not final while another finish in it is
    # provisional, so no standings of a group with a team left out for an instant)
    for name, n in ((beijing.WOMEN_FILE, 14), (beijing.MEN_FILE, 12)):
        lines = (beijing.FEEDS_DIR / name).read_bytes().splitlines()
        assert _check_standings(lines) == n


def test_a_big_group_ranks_like_from_scratch():
    """40 pairs in one group, in random-ish order of speed, some with an IRM."""
    msgs = [M.venue()]
    gun = T0 + 60 * S
    for i in range(40):
        head, reads = _pair(f"P{i}", gun, a_pace=6.8 + (i * 7 % 13) / 50, b_pace=6.8 + (i * 5 % 11) / 40)
        body = reads + M.heartbeats(gun - 5 * S, gun + 60 * S)
        if i % 7 == 3:
            body.append(M.decision(f"P{i}", "DQ", gun + 50 * S, f"P{i}-NOR-B"))
        body.append(M.decision(f"P{i}", "OFFICIAL", gun + 55 * S))
        msgs += head + M.by_time(body)
        gun += 70 * S
    # at least one change per pair (two when the pair's finishes are not
    # within one reorder window of each other: the first is then final alone)
    assert _check_standings(M.lines(msgs)) >= 40


def test_engine_without_races_has_empty_retention_state():
    eng = Engine()
    assert eng.kept.released == {} and eng.kept.gstate == {} and eng.kept.release_at == float("inf")
