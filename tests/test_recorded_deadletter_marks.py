"""`lapstream record` keeps what a worker's dead-letter headers say of the bad
record: a value the worker cut (``truncated`` / ``original-size``), a key it cut
(``original-key-size``) and a value that was null (``null-value``) are fields
of the recorded line, so a cut or an empty value is never passed off as the
original bytes (docs/contract.md, "Dead letters"). Before the fix the line had
none of them: a 1.2 MB value was written as 999,333 bytes of ``raw_b64`` and
nothing else, and ``null-value: true`` was lost."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from streams import deadletter as D

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "schemas" / "json" / "deadletter.schema.json").read_text())
SOURCE = [("error", b"not valid JSON"), ("source-topic", b"timing.raw"), ("source-partition", b"3"),
          ("source-offset", b"7")]


def check_line(line: dict, key, value, limit: int) -> None:
    """The recorded line of the dead letter the worker makes of (key, value)."""
    Draft202012Validator(SCHEMA).validate(json.loads(orjson.dumps(line)))
    got = base64.b64decode(line["raw_b64"])
    original = value or b""
    assert line.get("null_value", False) is (value is None)
    if line.get("truncated"):
        assert got != original and original.startswith(got)      # the first bytes, said so
        assert line["original_size"] == len(original)
    else:
        assert got == original and "original_size" not in line   # the original bytes exactly
    if key is not None and len(key) > D.DEADLETTER_KEY_MAX:
        assert line["original_key_size"] == len(key)
    else:
        assert "original_key_size" not in line


@settings(max_examples=300, deadline=None)
@given(key=st.one_of(st.none(), st.binary(max_size=2500)), value=st.one_of(st.none(), st.binary(max_size=6000)),
       limit=st.integers(min_value=2000, max_value=8000))
def test_the_recorded_line_says_what_the_worker_cut_or_found_null(key, value, limit):
    k, v, h = D.deadletter_record(key, value, list(SOURCE), limit=limit)
    check_line(D.recorded_deadletter(v, h, k), key, value, limit)


flags = st.sampled_from([b"true", b"TRUE", b" true ", b"false", b"", b"yes", b"\xff"])
sizes = st.one_of(st.integers(min_value=0, max_value=10**9).map(lambda n: str(n).encode()),
                  st.sampled_from([b"", b"-1", b"x", b"1.5", b"\xff"]))


@settings(max_examples=400, deadline=None)
@given(value=st.one_of(st.none(), st.binary(max_size=200)),
       marks=st.lists(st.one_of(st.tuples(st.sampled_from(["null-value", "truncated"]), flags),
                                st.tuples(st.sampled_from(["original-size", "original-key-size"]), sizes),
                                st.tuples(st.sampled_from(["x", "error"]),
                                          st.binary(max_size=20))),
                      max_size=8))
def test_any_header_combination_gives_a_valid_line_that_keeps_the_marks(value, marks):
    headers = list(SOURCE) + marks
    line = D.recorded_deadletter(value, headers, b"NSO")
    Draft202012Validator(SCHEMA).validate(json.loads(orjson.dumps(line)))
    last = {}
    for name, v in headers:          # the last header of a name counts, as for the others
        last[name] = v
    def says_true(name):
        return name in last and last[name].strip().lower() == b"true"
    assert line.get("null_value", False) is (value is None or says_true("null-value"))
    # the dead letter's bytes as they are, whatever the headers claim (a worker's
    # null-value dead letter has an empty value: then raw and raw_b64 are empty)
    assert base64.b64decode(line["raw_b64"]) == (value or b"")
    if value is None:
        assert line["raw"] == "" and line["raw_b64"] == ""
    assert line.get("truncated", False) is says_true("truncated")
    for header, field in (("original-size", "original_size"), ("original-key-size", "original_key_size")):
        text = last.get(header, b"")
        if text.strip().isdigit() and text.strip().isascii():
            assert line[field] == int(text)
        else:
            assert field not in line


@pytest.mark.live
@pytest.mark.timeout(300)
def test_lapstream_record_writes_the_marks(tmp_path):
    """The command itself (a subprocess), on dead letters as a worker produces them."""
    from aiokafka import AIOKafkaProducer

    from streams import broker as B
    from streams import topics as T

    big = b"A" * 3000
    made = [D.deadletter_record(b"NSO", None, list(SOURCE)),
            D.deadletter_record(b"K" * 2000, big, list(SOURCE), limit=2500),
            D.deadletter_record(b"NSO", b"{bad", list(SOURCE))]
    with B.EmbeddedBroker("tansu", log_path=tmp_path / "broker.log") as b:
        asyncio.run(B.ensure_topics(b.bootstrap))

        async def produce():
            p = AIOKafkaProducer(bootstrap_servers=b.bootstrap, acks="all")
            await p.start()
            try:
                for k, v, h in made:
                    await p.send_and_wait(T.DEADLETTER.name, value=v, key=k, headers=h, partition=0)
            finally:
                await p.stop()

        asyncio.run(produce())
        out = tmp_path / "rec.jsonl"
        r = subprocess.run([sys.executable, "-m", "streams.cli", "record", "--out", str(out), "--broker", b.url,
                            "--idle-exit", "3", "--topics", T.DEADLETTER.name],
                           env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                           cwd=REPO, timeout=120)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert len(lines) == 3
    check_line(lines[0], b"NSO", None, D.MAX_RECORD_BYTES)
    check_line(lines[1], b"K" * 2000, big, 2500)
    check_line(lines[2], b"NSO", b"{bad", D.MAX_RECORD_BYTES)
    assert lines[0]["null_value"] is True and lines[1]["truncated"] is True
    assert lines[1]["original_size"] == 3000 and lines[1]["original_key_size"] == 2000
