"""MYLAPS / AMB P3 frame codec: pure, no I/O.

What is publicly known about P3 framing (and what this module implements):

    SOR 0x8E | version 0x02 | length u16 LE | CRC u16 LE | flags u16 LE |
    record type u16 LE | body: TLV fields (tag u8, length u8, value LE) | EOR 0x8F

- ``length`` is the length of the whole frame, SOR to EOR, unescaped.
- The CRC is CRC-16-CCITT (poly 0x1021, init 0xFFFF, no reflection, no
  final xor; ``binascii.crc_hqx(data, 0xFFFF)``) over the unescaped frame
  with the CRC field set to zero.
- Between SOR and EOR the bytes 0x8A..0x8F are escaped as 0x8D followed by
  the byte + 0x20, so a raw 0x8E / 0x8F on the wire is always a frame
  boundary.

Record types: 0x0001 PASSING, 0x0002 STATUS, 0x0003 VERSION, 0x0004 RESEND.
This module knows nothing of their fields (see ``records.py``): a frame is
its header and its list of (tag, value bytes).

Decoding is liberal: ``FrameDecoder.feed`` takes arbitrary chunks of a byte
stream (a frame split across reads, several frames in one read, garbage
between frames), resynchronises on the next SOR, counts and skips frames
that are broken (bad CRC, bad escape, wrong length, oversized, truncated
TLV body), and never raises. Encoding is strict: ``encode_frame`` writes
exactly the layout above with version 2.

Choices of this implementation (not facts about decoders):
- a frame whose ``length`` field disagrees with the bytes between SOR and
  EOR is rejected (``bad_length``) even when its CRC is right;
- a frame of another version than 2 is decoded all the same (counted in
  ``other_version``): the layout is the only thing we can check;
- a TLV body cut short (a field whose length runs past the end) keeps the
  fields before it and is flagged ``truncated`` (counted), since the CRC
  says the bytes are what the decoder sent;
- an escape 0x8D followed by anything but 0xAA..0xAF drops the frame
  (``bad_escape``);
- a frame longer than ``max_frame`` bytes on the wire without its EOR is
  dropped (``oversized``), as the u16 length field can never exceed 65535.
"""
from __future__ import annotations

import binascii
import struct
from typing import Iterable, NamedTuple, Sequence

SOR = 0x8E
EOR = 0x8F
ESC = 0x8D
VERSION = 0x02
ESCAPED = bytes(range(0x8A, 0x90))     # 0x8A..0x8F: escaped inside a frame
HEADER_LEN = 10                        # SOR ver len(2) crc(2) flags(2) tor(2)
MIN_FRAME = HEADER_LEN + 1             # + EOR

PASSING = 0x0001
STATUS = 0x0002
VERSION_TOR = 0x0003
RESEND = 0x0004
TOR_NAMES = {PASSING: "PASSING", STATUS: "STATUS", VERSION_TOR: "VERSION", RESEND: "RESEND"}

_HDR = struct.Struct("<BHHHH")         # version, length, crc, flags, tor (after SOR)
_SOR_B = bytes([SOR])
_EOR_B = bytes([EOR])
_ESC_B = bytes([ESC])
# escape 0x8D first, so the 0x8D of later escapes is not escaped again
_ESC_ORDER = (0x8D, 0x8A, 0x8B, 0x8C, 0x8E, 0x8F)
# unescape 0x8D last, so an unescaped 0x8D never pairs with the byte after it
_UNESC_ORDER = (0x8A, 0x8B, 0x8C, 0x8E, 0x8F, 0x8D)
_PAIRS = {b: bytes([ESC, b + 0x20]) for b in ESCAPED}


_crc = binascii.crc_hqx
_CRC_SOR = _crc(_SOR_B, 0xFFFF)


def crc16(data: bytes) -> int:
    """CRC-16-CCITT, poly 0x1021, init 0xFFFF, not reflected, no final xor."""
    return binascii.crc_hqx(data, 0xFFFF)


def escape(data: bytes) -> bytes:
    for b in _ESC_ORDER:
        if b in data:
            data = data.replace(bytes([b]), _PAIRS[b])
    return data


def unescape(data: bytes) -> bytes | None:
    """Undo ``escape``; None when an escape byte is not followed by 0xAA..0xAF."""
    n_esc = data.count(_ESC_B)
    if not n_esc:
        return data
    pairs = 0
    for b in _UNESC_ORDER:
        p = _PAIRS[b]
        c = data.count(p)
        if c:
            pairs += c
            data = data.replace(p, bytes([b]))
    return data if pairs == n_esc else None


class Frame(NamedTuple):
    """One decoded P3 frame: its header and its TLV fields in wire order."""
    tor: int
    fields: tuple[tuple[int, bytes], ...] = ()
    flags: int = 0
    version: int = VERSION
    truncated: bool = False

    def get(self, tag: int) -> bytes | None:
        for t, v in self.fields:
            if t == tag:
                return v
        return None

    @property
    def type_name(self) -> str:
        return TOR_NAMES.get(self.tor, f"0x{self.tor:04x}")


def encode_body(fields: Iterable[tuple[int, bytes]]) -> bytes:
    out = bytearray()
    for tag, value in fields:
        if not 0 <= tag <= 0xFF:
            raise ValueError(f"P3 tag {tag} out of range")
        if len(value) > 0xFF:
            raise ValueError(f"P3 field 0x{tag:02x}: {len(value)} bytes (at most 255)")
        out.append(tag)
        out.append(len(value))
        out += value
    return bytes(out)


def encode_frame(tor: int, fields: Sequence[tuple[int, bytes]] = (), flags: int = 0) -> bytes:
    """The wire bytes of one frame (version 2, CRC filled in, escaped)."""
    body = encode_body(fields)
    length = MIN_FRAME + len(body)
    if length > 0xFFFF:
        raise ValueError(f"P3 frame of {length} bytes (at most 65535)")
    plain = bytearray(_SOR_B + _HDR.pack(VERSION, length, 0, flags, tor) + body + _EOR_B)
    struct.pack_into("<H", plain, 4, crc16(bytes(plain)))
    return _SOR_B + escape(bytes(plain[1:-1])) + _EOR_B


def parse_body(body: bytes) -> tuple[tuple[tuple[int, bytes], ...], bool]:
    """TLV fields of a body; (fields, truncated)."""
    out = []
    add = out.append
    i, n = 0, len(body)
    try:
        while i < n:
            j = i + 2 + body[i + 1]
            if j > n:
                return tuple(out), True
            add((body[i], body[i + 2:j]))
            i = j
    except IndexError:   # a tag without its length byte
        return tuple(out), True
    return tuple(out), False


COUNTERS = ("frames", "bad_crc", "bad_escape", "bad_length", "oversized", "broken",
            "garbage_bytes", "truncated", "other_version")


def parse_frame(inner: bytes, stats: dict | None = None) -> Frame | None:
    """One frame from the escaped bytes between its SOR and EOR; None if broken."""
    st = stats if stats is not None else dict.fromkeys(COUNTERS, 0)
    plain = unescape(inner)
    if plain is None:
        st["bad_escape"] += 1
        return None
    if len(plain) + 2 < MIN_FRAME:
        st["bad_length"] += 1
        return None
    version, length, crc, flags, tor = _HDR.unpack_from(plain, 0)
    if length != len(plain) + 2:
        st["bad_length"] += 1
        return None
    # the CRC of SOR + header with the CRC field zeroed + body + EOR, in pieces
    if _crc(_EOR_B, _crc(plain[5:], _crc(b"\x00\x00", _crc(plain[:3], _CRC_SOR)))) != crc:
        st["bad_crc"] += 1
        return None
    fields, truncated = parse_body(plain[HEADER_LEN - 1:])
    if truncated:
        st["truncated"] += 1
    if version != VERSION:
        st["other_version"] += 1
    st["frames"] += 1
    return Frame(tor, fields, flags, version, truncated)


class FrameDecoder:
    """Incremental decoder of a P3 byte stream. ``feed`` never raises.

    ``stats`` counts frames decoded and everything skipped: ``bad_crc``,
    ``bad_escape``, ``bad_length``, ``oversized`` (no EOR within
    ``max_frame`` bytes), ``broken`` (a new SOR before the EOR: the frame
    was cut, e.g. by a reconnect), ``garbage_bytes`` (bytes outside any
    frame), ``truncated`` (TLV body cut short; the frame is still returned),
    ``other_version``.
    """

    def __init__(self, max_frame: int = 2 * 0xFFFF + 2) -> None:
        self.buf = bytearray()
        self.max_frame = max_frame
        self.stats = dict.fromkeys(COUNTERS, 0)

    def reset(self) -> None:
        """Forget a partial frame (a new connection starts clean)."""
        if self.buf:
            if self.buf[0] == SOR:
                self.stats["broken"] += 1
            else:
                self.stats["garbage_bytes"] += len(self.buf)
        self.buf.clear()

    @property
    def pending(self) -> int:
        return len(self.buf)

    def feed(self, data: bytes) -> list[Frame]:
        try:
            return self._feed(data)
        except Exception:  # pragma: no cover - defensive: a decoder never stops ingest
            self.stats["broken"] += 1
            self.buf.clear()
            return []

    def _feed(self, data: bytes) -> list[Frame]:
        buf = self.buf
        buf += data
        out: list[Frame] = []
        st = self.stats
        pos = 0
        n = len(buf)
        while pos < n:
            sor = buf.find(SOR, pos)
            if sor < 0:
                st["garbage_bytes"] += n - pos
                pos = n
                break
            if sor > pos:
                st["garbage_bytes"] += sor - pos
            eor = buf.find(EOR, sor + 1)
            nxt = buf.find(SOR, sor + 1, eor if eor >= 0 else n)
            if nxt >= 0:             # a new frame starts before this one ended
                st["broken"] += 1
                pos = nxt
                continue
            if eor < 0:              # incomplete: keep it for the next read
                if n - sor > self.max_frame:
                    st["oversized"] += 1
                    pos = n
                    break
                pos = sor
                break
            if eor - sor + 1 > self.max_frame:
                st["oversized"] += 1
            else:
                f = parse_frame(bytes(buf[sor + 1:eor]), st)
                if f is not None:
                    out.append(f)
            pos = eor + 1
        if pos:
            del buf[:pos]
        return out


def decode_all(data: bytes) -> tuple[list[Frame], dict]:
    """Every frame of a complete capture, and the decoder's counters."""
    d = FrameDecoder()
    frames = d.feed(data)
    d.reset()
    return frames, d.stats
