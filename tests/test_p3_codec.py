"""P3 frame codec: round trips, escaping, and a decoder no byte stream can break."""
from __future__ import annotations

import binascii
import struct

from hypothesis import given, settings, strategies as st

from streams.p3 import codec as C
from streams.p3 import records as R

tags = st.integers(0, 255)
values = st.binary(max_size=40)
field_lists = st.lists(st.tuples(tags, values), max_size=12)
tors = st.sampled_from([C.PASSING, C.STATUS, C.VERSION_TOR, C.RESEND]) | st.integers(0, 0xFFFF)
frames = st.builds(C.Frame, tor=tors, fields=field_lists.map(tuple), flags=st.integers(0, 0xFFFF),
                   version=st.just(C.VERSION), truncated=st.just(False))
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
u16 = st.integers(0, 2**16 - 1)
ascii_ = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20)
extra = st.lists(st.tuples(st.integers(0x40, 0x7F), values), max_size=3).map(tuple)


def opt(s):
    return st.none() | s


passings = st.builds(R.Passing, opt(u32), opt(u32), opt(u64), opt(u64), opt(u16), opt(u16), opt(u16),
                     opt(ascii_), opt(u32), extra)
statuses = st.builds(R.Status, opt(u16), opt(st.integers(0, 255)), opt(st.integers(-32768, 32767)),
                     opt(u32), opt(u64), opt(u64), extra)
versions = st.builds(R.Version, opt(ascii_), opt(ascii_), opt(u32), extra)
resends = st.builds(R.Resend, opt(u32), opt(u32), opt(u32), extra)
records = passings | statuses | versions | resends


def test_crc_is_ccitt_false():
    # the CRC-16/CCITT-FALSE check value of "123456789"
    assert C.crc16(b"123456789") == 0x29B1


def test_layout_of_an_encoded_frame():
    wire = C.encode_frame(C.PASSING, [(0x01, b"\x07\x00\x00\x00")], flags=0x0102)
    plain = bytes([wire[0]]) + C.unescape(wire[1:-1]) + bytes([wire[-1]])
    assert plain[0] == 0x8E and plain[1] == 0x02 and plain[-1] == 0x8F
    length, crc, flags, tor = struct.unpack_from("<HHHH", plain, 2)
    assert length == len(plain) == 11 + 6
    assert (flags, tor) == (0x0102, C.PASSING)
    zeroed = plain[:4] + b"\0\0" + plain[6:]
    assert crc == binascii.crc_hqx(zeroed, 0xFFFF)
    assert plain[10:-1] == b"\x01\x04\x07\x00\x00\x00"


@given(frames)
def test_frame_round_trip(frame):
    wire = C.encode_frame(frame.tor, frame.fields, frame.flags)
    got, stats = C.decode_all(wire)
    assert got == [frame]
    assert stats["frames"] == 1 and stats["garbage_bytes"] == 0


@given(records)
def test_every_record_round_trips(rec):
    frames_, _ = C.decode_all(rec.encode())
    assert len(frames_) == 1
    assert R.record_of(frames_[0]) == rec


@given(st.binary(max_size=200))
def test_escaping_leaves_no_control_byte_and_undoes(data):
    esc = C.escape(data)
    assert not any(b in C.ESCAPED and b != C.ESC for b in esc)
    assert C.unescape(esc) == data
    # every escape byte is the start of a pair
    assert esc.count(bytes([C.ESC])) == sum(data.count(bytes([b])) for b in C.ESCAPED)


@given(st.sampled_from(list(C.ESCAPED)), st.binary(max_size=8), st.binary(max_size=8))
def test_each_control_byte_is_escaped_on_the_wire(b, pre, post):
    # a control byte anywhere (header, tag, length, value) never appears raw between SOR and EOR
    wire = C.encode_frame(C.PASSING, [(b, pre + bytes([b]) + post)], flags=b | (b << 8))
    inner = wire[1:-1]
    assert C.SOR not in inner and C.EOR not in inner
    assert bytes([C.ESC, b + 0x20]) in inner
    assert C.decode_all(wire)[0][0].fields == ((b, pre + bytes([b]) + post),)


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_any_byte_stream_never_breaks_the_decoder(data):
    d = C.FrameDecoder()
    for f in d.feed(data):
        assert isinstance(f, C.Frame)
    assert d.pending <= len(data)


@settings(max_examples=200)
@given(st.lists(st.binary(min_size=0, max_size=80) | frames.map(
    lambda f: C.encode_frame(f.tor, f.fields, f.flags)), max_size=10), st.data())
def test_chunking_does_not_change_what_is_decoded(parts, data):
    stream = b"".join(parts)
    whole, _ = C.decode_all(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    d = C.FrameDecoder()
    got = []
    prev = 0
    for c in cuts + [len(stream)]:
        got += d.feed(stream[prev:c])
        prev = c
    assert got == whole


@given(st.lists(frames, min_size=1, max_size=6), st.lists(st.binary(max_size=30), min_size=7, max_size=7))
def test_garbage_between_frames_is_skipped(fs, junk):
    # garbage with no SOR in it: every frame comes through, the junk is counted
    junk = [j.replace(b"\x8e", b"") for j in junk]
    stream = junk[0] + b"".join(C.encode_frame(f.tor, f.fields, f.flags) + j for f, j in zip(fs, junk[1:]))
    got, stats = C.decode_all(stream)
    assert got == fs
    assert stats["garbage_bytes"] == sum(len(j) for j in junk[:len(fs) + 1])


@given(frames, st.data())
def test_a_corrupted_frame_is_counted_and_skipped_and_the_next_one_decoded(frame, data):
    good = C.encode_frame(frame.tor, frame.fields, frame.flags)
    i = data.draw(st.integers(1, len(good) - 2))
    flip = data.draw(st.integers(1, 255))
    bad = bytearray(good)
    bad[i] ^= flip
    got, stats = C.decode_all(bytes(bad) + good)
    # the corrupted frame never decodes to something else: CRC, escape, length or framing catches it
    assert got[-1] == frame
    assert all(f == frame for f in got)
    assert len(got) <= 2
    if len(got) == 1:
        assert sum(stats[k] for k in ("bad_crc", "bad_escape", "bad_length", "broken", "garbage_bytes")) >= 1


def test_bad_crc_counted():
    good = C.encode_frame(C.STATUS, [(1, b"\x10\x00")])
    plain = bytearray(bytes([good[0]]) + C.unescape(good[1:-1]) + bytes([good[-1]]))
    plain[4] ^= 0x01
    bad = bytes([plain[0]]) + C.escape(bytes(plain[1:-1])) + bytes([plain[-1]])
    got, stats = C.decode_all(bad + good)
    assert len(got) == 1 and stats["bad_crc"] == 1


def test_cut_frame_then_a_new_one():
    good = C.encode_frame(C.PASSING, [(1, b"\x01\x00\x00\x00")])
    d = C.FrameDecoder()
    assert d.feed(good[:7]) == []
    assert len(d.feed(good)) == 1          # the new SOR abandons the cut frame
    assert d.stats["broken"] == 1


def test_truncated_body_keeps_fields_before_the_cut():
    body = b"\x01\x04\x05\x00\x00\x00" + b"\x03\x09\x01"
    plain = bytearray(b"\x8e" + struct.pack("<BHHHH", 2, 11 + len(body), 0, 0, 1) + body + b"\x8f")
    struct.pack_into("<H", plain, 4, C.crc16(bytes(plain)))
    wire = bytes([plain[0]]) + C.escape(bytes(plain[1:-1])) + bytes([plain[-1]])
    got, stats = C.decode_all(wire)
    assert got[0].truncated and got[0].fields == ((1, b"\x05\x00\x00\x00"),)
    assert stats["truncated"] == 1


def test_unknown_tags_are_skipped_by_length():
    f = C.Frame(C.PASSING, ((0x01, b"\x02\x00\x00\x00"), (0x77, b"\xff" * 9), (0x03, b"\x2a\x00\x00\x00")))
    rec = R.record_of(C.decode_all(C.encode_frame(f.tor, f.fields))[0][0])
    assert rec.passing_number == 2 and rec.transponder == 42 and rec.extra == ((0x77, b"\xff" * 9),)
    # integers read at whatever width the decoder sends
    g = C.Frame(C.PASSING, ((0x01, b"\x02\x01"), (0x04, b"\x01\x02\x03\x04\x05\x06")))
    rec = R.Passing.from_frame(g)
    assert rec.passing_number == 0x0102 and rec.rtc_us == 0x060504030201


@given(frames)
def test_a_frame_with_a_wrong_crc_is_counted_and_dropped(frame):
    from streams.p3.simdecoder import with_bad_crc

    good = C.encode_frame(frame.tor, frame.fields, frame.flags)
    got, stats = C.decode_all(with_bad_crc(good) + good)
    assert got == [frame] and stats["bad_crc"] == 1
