"""A venue's clock against what other systems and outages do to it.

- A `venue` set-up message comes from another system (never refused or held
  for its `t_us`): one stamped hours ahead of the decoders (a set-up system
  on local time) must not make the decoders' messages "stale".
- A venue outage during a race (decoders or network down, nothing resent)
  must not end the race's timing, nor raise falls for the time nobody could
  see the skaters.
"""
from __future__ import annotations

from functools import lru_cache

import orjson
from hypothesis import given, settings, strategies as st

from streams import beijing
from streams.process import process_lines

FEED = beijing.FEEDS_DIR / "beijing2022-tpw-final-a.jsonl"
S = 1_000_000


@lru_cache(maxsize=None)
def _lines() -> tuple[bytes, ...]:
    return tuple(FEED.read_bytes().splitlines())


def _gun() -> int:
    return next(orjson.loads(ln)["t_us"] for ln in _lines() if b'"kind":"start"' in ln)


def _facts(events):
    """Finishes, the last result and the fall incidents: what the outage must not change."""
    dead = [e for e in events if e["kind"] == "deadletter"]
    finishes = {e["competitor_id"]: e["time_ms"] for e in events if e["kind"] == "finish" and e["final"]}
    result = [e for e in events if e["kind"] == "result"][-1]
    ranking = [(r["competitor_id"], r["time_ms"], r["irm"]) for r in result["ranking"]]
    suspected = {e["skater_id"] for e in events if e["kind"] == "incident" and e["status"] == "suspected"}
    return dead, finishes, (result["status"], ranking), suspected


@lru_cache(maxsize=None)
def _baseline():
    return _facts(list(process_lines(list(_lines()))))


@settings(max_examples=25, deadline=None)
@given(ahead_s=st.integers(-86_400, 86_400))
def test_a_venue_set_up_stamped_far_from_the_decoders_changes_nothing(ahead_s):
    """The set-up's t_us up to a day ahead of (or behind) the decoders' clock:
    the same facts, no dead letter (it used to make every heartbeat `stale_feed`
    and the race DNS)."""
    lines = list(_lines())
    assert b'"kind":"venue"' in lines[0]
    v = orjson.loads(lines[0])
    v["t_us"] += ahead_s * S
    events = list(process_lines([orjson.dumps(v)] + lines[1:]))
    assert _facts(events) == _baseline()


@settings(max_examples=30, deadline=None)
@given(start_s=st.integers(15, 140), dark_s=st.integers(4, 120))
def test_a_venue_outage_during_the_race_keeps_its_timing_and_raises_no_fall(start_s, dark_s):
    """Every passing and heartbeat between gun+start_s and gun+start_s+dark_s is
    lost (the finishes, at ~173 s and ~184 s, are read): no dead letter, the
    same finishes and result, and no skater suspected that the full feed does
    not suspect (a minute's outage used to dead-letter the rest of the race as
    a clock leap, and every skater was suspected when the venue came back)."""
    gun = _gun()
    lo, hi = gun + start_s * S, gun + min(start_s + dark_s, 165) * S
    kept = [ln for ln in _lines()
            if not (b'"passing"' in ln or b'"heartbeat"' in ln) or not lo <= orjson.loads(ln)["t_us"] < hi]
    dead, finishes, result, suspected = _facts(list(process_lines(kept)))
    base_dead, base_finishes, base_result, base_suspected = _baseline()
    assert dead == base_dead == []
    assert finishes == base_finishes
    assert result == base_result
    assert suspected <= base_suspected, suspected - base_suspected
