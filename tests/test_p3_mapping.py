"""P3 records -> v1 messages: the map, seq, time, gaps, restarts, clock steps,
heartbeats; the offline capture -> feed path and its CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import orjson
import pytest
from hypothesis import given, settings, strategies as st, target

from streams.p3 import codec as C
from streams.p3.mapping import EPOCH, Converter, DecoderMap, MapError
from streams.p3.offline import capture_to_feed
from streams.p3.records import Passing, Status, Version
from streams.p3.simdecoder import plan, with_bad_crc
from streams.process import process_lines
from tests import schemacheck
from tests.paths import DATA

MAP = DATA / "p3-map.json"
CAPTURE = DATA / "p3-m500.bin"
FEED = DATA / "m500-pair.jsonl"


def sample_capture() -> bytes:
    """The sample capture: every decoder's frames for the worked example
    (m500-pair.jsonl) in arrival order as one byte stream, with a VERSION
    frame of each decoder first, a burst of garbage and a frame with a bad CRC."""
    dmap = DecoderMap.load(MAP)
    out = bytearray()
    for tg in dmap.targets:
        out += Version("ProChip Smart Decoder (simulated)", "4.6", tg.decoder_id).encode()
    for i, s in enumerate(plan(FEED.read_bytes().splitlines(), dmap)):
        if s.target is None:
            continue
        frame = s.record.encode()
        if i == 40:
            out += b"\x00\x13garbage\x8f\x8d\x8e\x02\x01"      # a burst of garbage with a stray SOR
        if i == 60:
            out += with_bad_crc(frame)
        out += frame
    return bytes(out)


def convert_capture(data: bytes):
    import io

    buf = io.BytesIO()
    n, stats, conv = capture_to_feed(io.BytesIO(data), DecoderMap.load(MAP), buf)
    return [orjson.loads(x) for x in buf.getvalue().splitlines()], stats, conv


def test_the_sample_capture_is_what_the_generator_makes():
    assert CAPTURE.read_bytes() == sample_capture()


def test_capture_to_feed_gives_the_feed_back():
    msgs, stats, conv = convert_capture(CAPTURE.read_bytes())
    assert stats["bad_crc"] == 1 and stats["broken"] == 1 and stats["garbage_bytes"] > 0
    for m in msgs:
        schemacheck.validate(m)
    feed = [orjson.loads(x) for x in FEED.read_bytes().splitlines()]
    want = [m for m in feed if m["kind"] in ("passing", "heartbeat")]
    strip = lambda m: {k: v for k, v in m.items() if k != "seq"}   # noqa: E731
    assert [strip(m) for m in msgs] == [strip(m) for m in want]
    # (source, seq) identifies a read: the same pairs are the same reads
    pairs = {}
    for got, w in zip(msgs, want):
        if got["kind"] == "passing":
            assert pairs.setdefault((got["source"], got["seq"]), (w["source"], w["seq"])) == (w["source"], w["seq"])
    assert len(set(pairs.values())) == len(pairs)


def test_the_converted_feed_gives_the_same_facts():
    msgs, _, _ = convert_capture(CAPTURE.read_bytes())
    feed = FEED.read_bytes().splitlines()
    it = iter(msgs)
    lines = [orjson.dumps(next(it)) if b'"passing"' in ln or b'"heartbeat"' in ln else ln for ln in feed]
    want = list(process_lines(feed))
    got = list(process_lines(lines))
    assert got == want
    assert any(e["kind"] == "finish" for e in got) and not any(e["kind"] == "deadletter" for e in got)


def test_cli_offline_and_dump(tmp_path):
    out = tmp_path / "feed.jsonl"
    r = subprocess.run([sys.executable, "-m", "streams.cli", "ingest", "p3", "--file", str(CAPTURE),
                        "--map", str(MAP), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    msgs, _, _ = convert_capture(CAPTURE.read_bytes())
    assert [orjson.loads(x) for x in out.read_bytes().splitlines()] == msgs
    r = subprocess.run([sys.executable, "-m", "streams.cli", "ingest", "p3", "--file", str(CAPTURE), "--dump"],
                       capture_output=True, timeout=120)
    assert r.returncode == 0
    frames = [json.loads(x) for x in r.stdout.splitlines()]
    assert frames[0]["type"] == "VERSION" and frames[0]["decoder_id"] == 1001
    assert {f["type"] for f in frames} == {"VERSION", "PASSING", "STATUS"}
    assert b"bad_crc=1" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"decoders": [{"decoder_id": 1, "venue": "V"}]}')
    r = subprocess.run([sys.executable, "-m", "streams.cli", "ingest", "p3", "--file", str(CAPTURE),
                        "--map", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "source" in r.stderr


# -- the converter, rule by rule ------------------------------------------------------

def conv(**kw) -> Converter:
    return Converter(DecoderMap.load(MAP), **kw)


def passing(pn, t=1_700_000_000_000_000, did=1001, **kw):
    return C.decode_all(Passing(passing_number=pn, transponder=410011, rtc_us=t, decoder_id=did, **kw).encode())[0][0]


def status(t=None, did=1001):
    return C.decode_all(Status(noise=40, gps=1, decoder_id=did, utc_us=t).encode())[0][0]


def test_passing_fields_and_seq():
    c = conv()
    m = c.convert(passing(7, strength=99, hits=12, utc_us=1_700_000_000_000_123), "a:1").messages[0]
    assert m == {"kind": "passing", "v": 1, "t_us": 1_700_000_000_000_123, "venue": "NSO", "source": "X2-A",
                 "seq": 700, "loop": "L000", "transponder": "410011", "strength": 99, "hits": 12}
    schemacheck.validate(m)
    # the RTC when there is no UTC time; the second decoder of the source has slot 1
    m = c.convert(passing(7, did=1002), "a:2").messages[0]
    assert (m["t_us"], m["seq"], m["loop"]) == (1_700_000_000_000_000, 701, "L100")
    # a hex decoder id in the map; the transponder string when there is no number
    f = C.decode_all(Passing(passing_number=3, transponder_code="FL-94890", rtc_us=5, decoder_id=2004).encode())[0][0]
    m = c.convert(f).messages[0]
    assert (m["source"], m["loop"], m["transponder"], m["seq"]) == ("X2-B", "L300", "FL-94890", 303)


def test_unusable_and_unmapped_records_are_counted_not_sent():
    c = conv()
    no_time = C.decode_all(Passing(passing_number=1, transponder=5, decoder_id=1001).encode())[0][0]
    assert c.convert(no_time, "a:1").messages == []
    assert c.convert(passing(1, did=9999), "a:1").messages == []
    assert c.convert(C.Frame(0x0042, ((1, b"x"),)), "a:1").messages == []
    assert c.stats[("a:1", "unusable")] == 1 and c.stats[("a:1", "unmapped")] == 1
    assert c.stats[("a:1", "unknown_record")] == 1


def test_gap_asks_for_a_resend_and_the_resent_ones_pass():
    c = conv()
    c.convert(passing(10))
    r = c.convert(passing(14))
    assert r.resend == [(11, 13)] and len(r.messages) == 1
    assert c.stats[("1001", "gaps")] == 1 and c.stats[("1001", "missed_passings")] == 3
    r = c.convert(passing(12))
    assert r.messages[0]["seq"] == 1200 and c.stats[("1001", "resent")] == 1
    # a duplicate goes on as it is (same seq): the core drops it
    r = c.convert(passing(14))
    assert r.messages[0]["seq"] == 1400 and c.stats[("1001", "duplicates")] == 1


def test_restart_starts_a_new_seq_epoch():
    c = conv()
    for pn in range(500, 505):
        c.convert(passing(pn))
    r = c.convert(passing(1))
    assert r.messages[0]["seq"] == EPOCH + 100 and c.stats[("1001", "restarts")] == 1
    assert c.convert(passing(2)).messages[0]["seq"] == EPOCH + 200


def test_clock_steps_forward_and_back():
    c = conv(clock_step_us=2_000_000)
    wall = 1_700_000_000_000_000
    c.convert(status(wall + 10), "a:1", wall)
    c.convert(status(wall + 1_000_010), "a:1", wall + 1_000_000)
    assert c.stats[("a:1", "clock_steps")] == 0
    c.convert(status(wall + 5_000_000), "a:1", wall + 1_100_000)       # +3.9 s
    assert c.stats[("a:1", "clock_steps")] == 1
    c.convert(status(wall - 10_000_000), "a:1", wall + 1_200_000)      # back
    assert c.stats[("a:1", "clock_steps")] == 2
    # a late passing (a resend) is no backward step
    c.convert(passing(1, t=wall - 60_000_000), "a:1", wall + 1_300_000)
    assert c.stats[("a:1", "clock_steps")] == 2


def test_heartbeats_once_per_source_and_estimated_without_a_status_time():
    c = conv()
    t = 1_700_000_000_000_000
    hb = [m for d in (1001, 1002, 1003, 1004) for m in c.convert(status(t, did=d), None, t).messages]
    assert hb == [{"kind": "heartbeat", "v": 1, "t_us": t, "venue": "NSO", "source": "X2-A"}]
    assert len(c.convert(status(t + 1_000_000, did=1002), None, t).messages) == 1
    # a STATUS without time: nothing before the first passing, then wall + the passings' offset
    c = conv()
    wall = 1_800_000_000_000_000
    assert c.convert(status(None, 2001), "b:1", wall).messages == []
    c.convert(passing(1, t=wall - 80_000, did=2001), "b:1", wall)        # arrived 80 ms after it happened
    m = c.convert(status(None, 2001), "b:1", wall + 1_000_000).messages[0]
    assert m["t_us"] == wall + 1_000_000 - 80_000 and m["source"] == "X2-B"
    schemacheck.validate(m)


@settings(max_examples=150)
@given(st.lists(st.tuples(st.sampled_from([1001, 1002, 2001]), st.integers(0, 2**32 - 1)), max_size=40))
def test_seq_identifies_a_read(reads):
    """Whatever the numbers, (source, seq) is the same exactly when (decoder, number, restarts) is."""
    c = conv()
    seen = {}
    for did, pn in reads:
        r = c.convert(passing(pn, did=did))
        tg = c.map.by_id[did]
        key = (did, pn, c.state[tg].restarts)
        m = r.messages[0]
        assert seen.setdefault((m["source"], m["seq"]), key) == key


def test_map_forms_and_errors(tmp_path):
    m = DecoderMap.from_obj({"decoders": {"7": {"venue": "V", "source": "A", "loop": "L0"}}})
    assert m.resolve(7, None).loop == "L0" and m.resolve(None, None).loop == "L0"   # the only one
    m = DecoderMap.from_obj({"decoders": [
        {"address": "10.0.0.5:5403", "venue": "V", "source": "A", "loop": "L0", "slot": 3},
        {"decoder_id": 9, "venue": "V", "source": "A", "loop": "L1"}]})
    assert m.resolve(None, "10.0.0.5:5403").slot == 3 and m.resolve(9, "x").slot == 0
    assert m.resolve(None, "elsewhere:1") is None
    for bad in ({}, {"decoders": []}, {"decoders": [{"venue": "V", "source": "A"}]},
                {"decoders": [{"decoder_id": True, "venue": "V", "source": "A", "loop": "L"}]},
                {"decoders": [{"decoder_id": 1, "venue": "V", "source": "A", "loop": "L"},
                              {"decoder_id": 1, "venue": "V", "source": "B", "loop": "L"}]},
                {"decoders": [{"decoder_id": 1, "venue": "V", "source": "A", "loop": "L", "slot": 100}]}):
        with pytest.raises(MapError):
            DecoderMap.from_obj(bad)
    import yaml   # tests already need PyYAML (test_deploy)
    p = tmp_path / "map.yaml"
    p.write_text(yaml.safe_dump({"decoders": [{"decoder_id": 5, "venue": "V", "source": "A", "loop": "L"}]}))
    assert DecoderMap.load(p).resolve(5, None).venue == "V"


field_values = st.binary(max_size=10) | st.integers(0, 2**64 - 1).map(lambda v: v.to_bytes(8, "little"))
any_fields = st.lists(st.tuples(st.sampled_from([0x01, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x0A, 0x10, 0x81, 0x42]),
                                field_values), max_size=10)
known_id = st.sampled_from([1001, 1002, 2001, 9999]).map(lambda d: (0x81, d.to_bytes(4, "little")))
any_frames = st.builds(lambda tor, fs, did: C.Frame(tor, tuple(fs) + ((did,) if did else ())),
                       st.sampled_from([1, 1, 1, 2, 2, 3, 4, 9]), any_fields, st.none() | known_id)


def check_converter(items) -> int:
    c = conv()
    sent = 0
    for frame, addr, wall in items:
        r = c.convert(frame, addr, wall)
        for m in r.messages:
            schemacheck.validate(m)
            orjson.dumps(m)          # serialisable: no integer beyond 64 bits
        for first, last in r.resend:
            assert 0 <= first <= last <= 0xFFFFFFFF
        sent += len(r.messages)
    return sent


@settings(max_examples=200)
@given(st.lists(st.tuples(any_frames, st.sampled_from([None, "a:1"]),
                          st.none() | st.integers(0, 2**62)), max_size=25))
def test_no_record_breaks_the_converter_and_every_message_is_in_contract(items):
    target(float(check_converter(items)))    # steer towards records that become messages


def test_the_converter_check_reaches_messages():
    f = C.Frame(1, ((0x01, b"\x05\x00\x00\x00"), (0x03, b"\x07\x00\x00\x00"), (0x04, b"\x01" * 8),
                    (0x81, (1001).to_bytes(4, "little"))))
    assert check_converter([(f, None, None)]) == 1


def test_the_sim_decoder_command_speaks_p3():
    """``lapstream sim-decoder``: one TCP server per decoder of the map; what the decoders
    say, read back through ingest's offline path, is the feed's passings and heartbeats."""
    import socket
    import threading

    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "sim-decoder", str(FEED), "--map", str(MAP),
                             "--speed", "max", "--wait-clients", "--exit-when-done"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        addrs = [proc.stdout.readline().decode().split()[1] for _ in DecoderMap.load(MAP).targets]
        got: dict = {}

        def read(a):
            host, port = a.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=60) as s:
                buf = bytearray()
                while chunk := s.recv(65536):
                    buf += chunk
            got[a] = bytes(buf)

        threads = [threading.Thread(target=read, args=(a,)) for a in addrs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    msgs = []
    conv_ = Converter(DecoderMap.load(MAP))
    for a in addrs:
        frames, stats = C.decode_all(got[a])
        assert stats["bad_crc"] == 0 and stats["garbage_bytes"] == 0
        for f in frames:
            msgs += conv_.convert(f, a).messages
    feed = [orjson.loads(x) for x in FEED.read_bytes().splitlines()]
    key = lambda m: (m["kind"], m["t_us"], m["source"], m.get("loop", ""), m.get("transponder", ""))  # noqa: E731
    assert sorted(map(key, msgs)) == sorted(key(m) for m in feed if m["kind"] in ("passing", "heartbeat"))


def test_heartbeats_are_filled_while_a_source_talks_without_status():
    c = conv()
    wall = 1_800_000_000_000_000
    c.convert(status(wall - 30_000, 1001), "a:1", wall)          # decoder clock 30 ms behind the host
    c.convert(status(wall - 30_000 + 1, 1002), "a:2", wall)
    assert c.fill(wall + 500_000) == []                          # not a second yet
    got = c.fill(wall + 1_000_000)
    assert got == [{"kind": "heartbeat", "v": 1, "t_us": wall + 970_000, "venue": "NSO", "source": "X2-A"}]
    assert c.fill(wall + 1_100_000) == []
    # still heard (a VERSION record) -> one more a second later; silent for 2 s -> none
    c.convert(C.decode_all(Version("d", "1", 1001).encode())[0][0], "a:1", wall + 1_900_000)
    assert [m["t_us"] for m in c.fill(wall + 2_000_000)] == [wall + 1_970_000]
    assert c.fill(wall + 4_500_000) == []
    assert c.stats[("a:1", "heartbeats_filled")] == 2


def test_after_a_reconnect_a_lower_number_is_a_restart_whatever_it_is():
    c = conv()
    for pn in range(500, 505):
        c.convert(passing(pn), "a:1")
    c.convert(passing(300), "a:1")                         # not after a reconnect: a duplicate of an old one
    assert c.stats[("a:1", "restarts")] == 0 and c.stats[("a:1", "duplicates")] == 1
    c.reconnected("a:1")
    r = c.convert(passing(37), "a:1")                       # the decoder counted 36 passings while we were away
    assert c.stats[("a:1", "restarts")] == 1 and r.messages[0]["seq"] == EPOCH + 3700
    c.reconnected("a:1")
    c.convert(passing(38), "a:1")                           # the next number after a reconnect: no restart
    c.convert(passing(30), "a:1")
    assert c.stats[("a:1", "restarts")] == 1


def test_a_capture_without_decoder_ids_is_mapped_by_its_address():
    import io

    dmap = DecoderMap.from_obj({"decoders": [
        {"address": "10.0.0.11:5403", "venue": "V", "source": "A", "loop": "L0"},
        {"address": "10.0.0.12:5403", "venue": "V", "source": "A", "loop": "L1"}]})
    # (the STATUS on the passing's time base, RTC: a UTC-only one would be held, test_p3_timebase.py)
    data = Passing(passing_number=9, transponder=77, rtc_us=1_000_000).encode() + Status(rtc_us=2_000_000).encode()
    for addr, loop in (("10.0.0.12:5403", "L1"), ("10.0.0.11:5403", "L0")):
        out = io.BytesIO()
        n, _, _ = capture_to_feed(io.BytesIO(data), dmap, out, address=addr)
        msgs = [orjson.loads(x) for x in out.getvalue().splitlines()]
        assert n == 2 and msgs[0]["loop"] == loop and msgs[0]["seq"] == 900 + int(loop[1])
        assert msgs[1] == {"kind": "heartbeat", "v": 1, "t_us": 2_000_000, "venue": "V", "source": "A"}
    out = io.BytesIO()
    assert capture_to_feed(io.BytesIO(data), dmap, out)[0] == 0      # no id, no address: unmapped, nothing sent
