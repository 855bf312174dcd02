"""streams/deadletter.py: one module for the two shapes of a dead letter
(the record the worker produces, the line `lapstream record` writes), so
that there are no longer two functions named ``deadletter_record`` with
different meanings (agents/live.py and streams/replay.py)."""
from __future__ import annotations

import base64

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

import streams.replay
from streams import deadletter as D

keys = st.one_of(st.none(), st.binary(max_size=3000))
values = st.one_of(st.none(), st.binary(max_size=5000))
header_lists = st.lists(st.tuples(st.sampled_from(["error", "source-topic", "source-partition", "source-offset",
                                                   "x"]), st.binary(max_size=40)), max_size=5)
limits = st.integers(min_value=1200, max_value=6000)


def test_the_worker_makes_its_dead_letters_with_the_shared_module():
    """One definition: the worker (agents/live.py), replay and record use streams/deadletter.py."""
    from agents import live

    assert live.deadletter_record is D.deadletter_record and live.record_size is D.record_size
    assert (live.MAX_RECORD_BYTES, live.DEADLETTER_KEY_MAX) == (D.MAX_RECORD_BYTES, D.DEADLETTER_KEY_MAX)


@settings(max_examples=300, deadline=None)
@given(key=keys, value=values, headers=header_lists, limit=limits)
def test_a_dead_letter_fits_and_says_what_was_cut(key, value, headers, limit):
    k, v, h = D.deadletter_record(key, value, headers, limit=limit)
    names = dict(h)
    assert D.record_size(k, v, h) <= limit
    assert v is not None and (value or b"").startswith(v)
    assert (v != (value or b"")) == (names.get("truncated") == b"true")
    if v != (value or b""):
        assert int(names["original-size"]) == len(value)
    if key is not None and len(key) > D.DEADLETTER_KEY_MAX:
        assert k == key[:D.DEADLETTER_KEY_MAX] and int(names["original-key-size"]) == len(key)
    else:
        assert k == key
    assert (value is None) == (names.get("null-value") == b"true")
    assert h[:len(headers)] == list(headers)        # the caller's headers come first, unchanged


@settings(max_examples=200, deadline=None)
@given(key=st.one_of(st.none(), st.binary(max_size=50)), value=st.binary(max_size=3000),
       reason=st.text(min_size=1, max_size=60).filter(str.strip))
def test_what_the_worker_produces_is_recorded_with_its_bytes(key, value, reason):
    headers = [("error", reason.encode()), ("source-topic", b"timing.raw"), ("source-partition", b"3"),
               ("source-offset", b"17")]
    k, v, h = D.deadletter_record(key, value, headers, limit=2000)
    line = D.recorded_deadletter(v, h, k)
    orjson.dumps(line)
    assert base64.b64decode(line["raw_b64"]) == v
    assert line["error"] == " ".join(reason.split())
    assert (line["source_topic"], line["source_partition"], line["source_offset"]) == ("timing.raw", 3, 17)


def test_one_name_one_meaning():
    assert not hasattr(streams.replay, "deadletter_record")
    assert streams.replay.recorded_deadletter is D.recorded_deadletter
