"""The gateway's view of set-ups (``venue``, ``race``, ``start`` read from
timing.raw) follows the worker's decisions: a set-up the worker refuses
(``stale_feed``, ``race_released``, ``unknown_reference``), repeats or ignores
changes nothing the subscribers see (streams/gateway_state.py ``ingest_raw``).

The oracle is the worker's own state: a ``Processor`` fed the same records
(references from ``timing.records.ref`` first, as a worker has them), whose
engine says which attempt of each race runs, its gun and its start list."""
from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st

from streams import beijing
from streams import topics as T
from streams.gateway_state import GatewayState
from streams.process import Processor, process_lines

RID = "OWG2022-TPW-FA"
S = 1_000_000
_LINES: list = []


def final_a():
    if not _LINES:
        _LINES.extend((beijing.FEEDS_DIR / beijing.FINAL_A_FILE).read_bytes().splitlines())
    return _LINES


def split_feed(lines):
    """(references, timing.raw records) of a recorded feed, as replay routes them."""
    refs = [ln for ln in lines if orjson.loads(ln).get("kind") == "record_ref"]
    return refs, [ln for ln in lines if orjson.loads(ln).get("kind") != "record_ref"]


def worker(refs, raw):
    proc = Processor()
    for ln in refs:
        proc.handle(ln)
    events = []
    for off, ln in enumerate(raw):
        ev, _ = proc.handle(ln, off)
        events += ev
    return proc.engine, events


def gateway(raw, events):
    """A gateway fed timing.raw and then the worker's derived events (at their topics' offsets)."""
    s = GatewayState()
    for off, ln in enumerate(raw):
        s.ingest_raw(ln, 0, off)
    offs: dict = {}
    for e in events:
        t = T.TOPIC_OF_KIND[e["kind"]]
        o = offs.get(t, 0)
        offs[t] = o + 1
        s.ingest(t, 0, o, orjson.dumps(e))
    return s


def assert_follows(s: GatewayState, eng) -> None:
    for rid, race in eng.races.items():
        if rid in eng.kept.released:
            continue
        r = s.races[rid]
        assert r.attempt == race.attempt, (rid, r.attempt, race.attempt)
        assert r.started_t_us == race.gun, (rid, r.started_t_us, race.gun)
    for rid, summary in eng.kept.released.items():
        assert s.races[rid].attempt == summary.attempt, (rid, s.races[rid].attempt, summary.attempt)
    for rid, d in eng.race_defs.items():
        assert [c["competitor_id"] for c in s.races[rid].meta["competitors"]] == \
            [c["competitor_id"] for c in d.competitors], rid
    assert set(s.venues) == set(eng.venues)
    for rid in s.races:      # a race the worker never set up is not shown as one
        assert rid in eng.race_defs or rid in eng.kept.released or not s.races[rid].meta, rid


def race_msg(lines):
    return next(orjson.loads(ln) for ln in lines if b'"kind":"race"' in ln)


injection = st.tuples(
    st.floats(0.0, 1.0),                                   # where in the feed (fraction)
    st.sampled_from(["start", "race", "start_other_venue", "race_unknown_venue"]),
    st.integers(1, 4),                                     # attempt
    st.integers(-2 * 3600, 2 * 3600),                      # t_us relative to the neighbour (s)
    st.sampled_from(["same", "XXX", "swap"]),              # start list
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(injection, min_size=1, max_size=4),
       st.integers(0, 3 * 3600))                           # venue time added after the race (s)
def test_the_gateway_shows_only_the_set_ups_the_worker_applied(injections, tail_s):
    refs, raw = split_feed(final_a())
    last_t = orjson.loads(raw[-1])["t_us"]
    # the venue's decoders beat on after the race (every 10 s): a long tail
    # passes the race's release (1 h after OFFICIAL)
    raw = raw + [orjson.dumps({"kind": "heartbeat", "v": 1, "t_us": last_t + k * S, "venue": "NSO",
                               "source": src})
                 for k in range(10, tail_s + 1, 10) for src in ("X2-A", "X2-B")]
    race = race_msg(raw)
    for frac, kind, attempt, dt_s, comps in sorted(injections, key=lambda i: -i[0]):
        at = int(frac * len(raw))
        t = orjson.loads(raw[max(0, at - 1)])["t_us"] + dt_s * S
        t = max(0, t)
        if kind.startswith("start"):
            msg = {"kind": "start", "v": 1, "t_us": t, "race_id": RID, "attempt": attempt,
                   "venue": "NSO" if kind == "start" else "ELSEWHERE"}
        else:
            cs = [dict(c) for c in race["competitors"]]
            if comps == "XXX":
                cs[0]["competitor_id"] = "XXX"
            elif comps == "swap":
                cs.reverse()
            msg = {**race, "t_us": t, "competitors": cs,
                   **({"venue": "NOWHERE"} if kind == "race_unknown_venue" else {})}
        raw.insert(at, orjson.dumps(msg))
    eng, events = worker(refs, raw)
    assert_follows(gateway(raw, events), eng)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(11 * 60, 6 * 3600), st.integers(2, 5))
def test_a_stale_restart_leaves_the_race_as_subscribers_saw_it(behind_s, attempt):
    """The reviewer's case, any staleness beyond the bound: the gateway keeps
    the attempt, splits, finishes, incidents and records the worker kept."""
    refs, raw = split_feed(final_a())
    last_t = orjson.loads(raw[-1])["t_us"]
    eng0, events = worker(refs, raw)
    before = gateway(raw, events).race_detail(gateway(raw, events).races[RID])
    bad = orjson.dumps({"kind": "start", "v": 1, "t_us": last_t - behind_s * S, "venue": "NSO",
                        "race_id": RID, "attempt": attempt})
    out = list(process_lines(refs + raw + [bad], flush=False))
    assert [e["error"].split(":")[0] for e in out if e["kind"] == "deadletter"] == ["start"]
    eng, events2 = worker(refs, raw + [bad])
    s = gateway(raw + [bad], events2)
    after = s.race_detail(s.races[RID])
    for k in ("attempt", "status", "started_t_us", "latest_splits", "finishes", "incidents", "records"):
        assert after[k] == before[k], k
    assert after["records"] and after["finishes"]
    assert_follows(s, eng)


def test_a_set_up_read_again_at_the_same_offset_is_judged_once():
    refs, raw = split_feed(final_a())
    s = GatewayState()
    for off, ln in enumerate(raw):
        s.ingest_raw(ln, 0, off)
    n = len(s.log)
    for off, ln in enumerate(raw[:50]):
        assert s.ingest_raw(ln, 0, off) is None
    assert len(s.log) == n


# -- the gateway process, on a broker, with a worker -----------------------------------------------
def test_the_gateway_process_keeps_the_race_the_worker_kept_also_after_a_restart():
    """The final A replayed onto broker + worker + gateway, then a restart
    (attempt 2) whose gun is an hour behind the venue's clock (the worker:
    ``stale_feed``), then the venue set-up again as a marker: the gateway
    (and a gateway started afterwards, re-reading timing.raw) still shows
    attempt 1 with its finishes and the Olympic record."""
    from streams.gateway_state import RAW_INDEX, decode_position
    from tests import gatewaykit as G
    from tests import livekit as L

    lines = list(final_a())
    last_t = orjson.loads(lines[-1])["t_us"]
    bad = orjson.dumps({"kind": "start", "v": 1, "t_us": last_t - 3600 * S, "venue": "NSO",
                        "race_id": RID, "attempt": 2})
    marker = next(ln for ln in lines if b'"kind":"venue"' in ln)
    feed = lines + [bad, marker]
    n_raw = L.raw_count(feed)
    stack = G.Stack()
    try:
        L.replay_lines(stack.broker.bootstrap, feed)

        def settled(g):
            def ok():
                snap = g.json("/api/v1/snapshot")
                pos = decode_position(snap["position"])
                raw_end = max((o for (t, _), o in pos.items() if t == RAW_INDEX), default=0)
                race = next((r for r in snap["races"] if r["race_id"] == RID), None)
                if raw_end >= n_raw and race is not None and race["status"] == "official":
                    return race
                return None
            return L.wait_for(ok, "the gateway read the feed, the stale start and the marker", timeout=180)

        for g in (stack.gateway, stack.new_gateway().wait_ready()):
            race = settled(g)
            assert race["attempt"] == 1
            assert len(race["finishes"]) == 2 and race["records"] and race["latest_splits"]
            assert race["started_t_us"] != last_t - 3600 * S
    finally:
        stack.close()
