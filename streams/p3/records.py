"""P3 records: typed views of PASSING, STATUS, VERSION and RESEND frames.

Tags of PASSING seen on ProChip decoders (public captures and open-source
readers; facts, not code): 0x01 passing number (u32), 0x03 transponder
(u32), 0x04 RTC time (u64, microseconds since the Unix epoch), 0x05 signal
strength (u16), 0x06 hits (u16), 0x08 flags, 0x0A transponder string
(ASCII), 0x10 UTC time when the GPS has a fix (u64 us), 0x81 decoder id (u32).

Reading is liberal: integers are little-endian of whatever length the field
has (1 to 8 bytes), unknown tags are kept in ``extra`` and otherwise
ignored, a missing field is None. Writing is strict: the widths above.

ASSUMPTIONS (not confirmed by a public source; change here if a real
decoder says otherwise):
- STATUS tags: 0x01 noise (u16), 0x06 GPS status (u8: 0 no fix, 1 fix),
  0x07 temperature (i16, tenths of a degree Celsius), 0x81 decoder id (u32).
  Whether STATUS carries a time is not known; if it carries 0x04 (RTC) or
  0x10 (UTC) with the PASSING meaning, ingest uses it for the heartbeat's
  ``t_us`` (the encoder of this module writes both, an ENCODER CHOICE that
  the test decoders rely on); otherwise ingest estimates the decoder's clock
  from its passings (see ``mapping.py``).
- PASSING flags: u16 when written (an ENCODER CHOICE; read at any width).
- VERSION tags: 0x01 description (ASCII), 0x02 version (ASCII), 0x81
  decoder id (u32).
- RESEND (a request to the decoder, and nothing comes back but the
  PASSING records again): 0x01 first passing number (u32), 0x02 last
  passing number (u32), 0x81 decoder id (u32, optional).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .codec import PASSING, RESEND, STATUS, VERSION_TOR, Frame, encode_frame

# PASSING
T_PASSING_NUMBER = 0x01
T_TRANSPONDER = 0x03
T_RTC_TIME = 0x04
T_STRENGTH = 0x05
T_HITS = 0x06
T_FLAGS = 0x08
T_TRAN_CODE = 0x0A
T_UTC_TIME = 0x10
T_DECODER_ID = 0x81
# STATUS (assumed)
T_NOISE = 0x01
T_GPS = 0x06
T_TEMPERATURE = 0x07
# VERSION (assumed)
T_DESCRIPTION = 0x01
T_VERSION = 0x02
# RESEND (assumed)
T_FROM = 0x01
T_UNTIL = 0x02



def _int(v: bytes | None) -> int | None:
    if v is None or not 1 <= len(v) <= 8:
        return None
    return int.from_bytes(v, "little")


def _sint(v: bytes | None) -> int | None:
    if v is None or not 1 <= len(v) <= 8:
        return None
    return int.from_bytes(v, "little", signed=True)


def _str(v: bytes | None) -> str | None:
    if v is None:
        return None
    return v.rstrip(b"\x00").decode("ascii", "replace")


def _u(tag: int, width: int, value: int) -> tuple[int, bytes]:
    return tag, value.to_bytes(width, "little")


def _extra(frame: Frame, known: frozenset) -> tuple[tuple[int, bytes], ...]:
    return tuple((t, v) for t, v in frame.fields if t not in known)


@dataclass(frozen=True)
class Passing:
    passing_number: int | None = None
    transponder: int | None = None
    rtc_us: int | None = None
    utc_us: int | None = None
    strength: int | None = None
    hits: int | None = None
    flags: int | None = None
    transponder_code: str | None = None
    decoder_id: int | None = None
    extra: tuple[tuple[int, bytes], ...] = field(default=())

    KNOWN = frozenset({T_PASSING_NUMBER, T_TRANSPONDER, T_RTC_TIME, T_STRENGTH, T_HITS, T_FLAGS,
                       T_TRAN_CODE, T_UTC_TIME, T_DECODER_ID})

    @classmethod
    def from_frame(cls, f: Frame) -> "Passing":
        g = f.get
        return cls(_int(g(T_PASSING_NUMBER)), _int(g(T_TRANSPONDER)), _int(g(T_RTC_TIME)),
                   _int(g(T_UTC_TIME)), _int(g(T_STRENGTH)), _int(g(T_HITS)), _int(g(T_FLAGS)),
                   _str(g(T_TRAN_CODE)), _int(g(T_DECODER_ID)), _extra(f, cls.KNOWN))

    def fields(self) -> list[tuple[int, bytes]]:
        out = []
        for tag, width, v in ((T_PASSING_NUMBER, 4, self.passing_number), (T_TRANSPONDER, 4, self.transponder),
                              (T_RTC_TIME, 8, self.rtc_us), (T_STRENGTH, 2, self.strength),
                              (T_HITS, 2, self.hits), (T_FLAGS, 2, self.flags)):
            if v is not None:
                out.append(_u(tag, width, v))
        if self.transponder_code is not None:
            out.append((T_TRAN_CODE, self.transponder_code.encode("ascii")))
        if self.utc_us is not None:
            out.append(_u(T_UTC_TIME, 8, self.utc_us))
        out.extend(self.extra)
        if self.decoder_id is not None:
            out.append(_u(T_DECODER_ID, 4, self.decoder_id))
        return out

    def encode(self) -> bytes:
        return encode_frame(PASSING, self.fields())

    @property
    def time_us(self) -> int | None:
        """The passing's time: UTC (GPS) when the decoder has it, else its RTC."""
        return self.utc_us if self.utc_us is not None else self.rtc_us


@dataclass(frozen=True)
class Status:
    noise: int | None = None
    gps: int | None = None
    temperature: int | None = None      # tenths of a degree Celsius (assumed)
    decoder_id: int | None = None
    rtc_us: int | None = None           # assumed optional (see module doc)
    utc_us: int | None = None
    extra: tuple[tuple[int, bytes], ...] = field(default=())

    KNOWN = frozenset({T_NOISE, T_GPS, T_TEMPERATURE, T_DECODER_ID, T_RTC_TIME, T_UTC_TIME})

    @classmethod
    def from_frame(cls, f: Frame) -> "Status":
        g = f.get
        return cls(_int(g(T_NOISE)), _int(g(T_GPS)), _sint(g(T_TEMPERATURE)), _int(g(T_DECODER_ID)),
                   _int(g(T_RTC_TIME)), _int(g(T_UTC_TIME)), _extra(f, cls.KNOWN))

    def fields(self) -> list[tuple[int, bytes]]:
        out = []
        if self.noise is not None:
            out.append(_u(T_NOISE, 2, self.noise))
        if self.rtc_us is not None:
            out.append(_u(T_RTC_TIME, 8, self.rtc_us))
        if self.gps is not None:
            out.append(_u(T_GPS, 1, self.gps))
        if self.temperature is not None:
            out.append((T_TEMPERATURE, self.temperature.to_bytes(2, "little", signed=True)))
        if self.utc_us is not None:
            out.append(_u(T_UTC_TIME, 8, self.utc_us))
        out.extend(self.extra)
        if self.decoder_id is not None:
            out.append(_u(T_DECODER_ID, 4, self.decoder_id))
        return out

    def encode(self) -> bytes:
        return encode_frame(STATUS, self.fields())

    @property
    def time_us(self) -> int | None:
        return self.utc_us if self.utc_us is not None else self.rtc_us


@dataclass(frozen=True)
class Version:
    description: str | None = None
    version: str | None = None
    decoder_id: int | None = None
    extra: tuple[tuple[int, bytes], ...] = field(default=())

    KNOWN = frozenset({T_DESCRIPTION, T_VERSION, T_DECODER_ID})

    @classmethod
    def from_frame(cls, f: Frame) -> "Version":
        g = f.get
        return cls(_str(g(T_DESCRIPTION)), _str(g(T_VERSION)), _int(g(T_DECODER_ID)), _extra(f, cls.KNOWN))

    def fields(self) -> list[tuple[int, bytes]]:
        out = []
        if self.description is not None:
            out.append((T_DESCRIPTION, self.description.encode("ascii")))
        if self.version is not None:
            out.append((T_VERSION, self.version.encode("ascii")))
        out.extend(self.extra)
        if self.decoder_id is not None:
            out.append(_u(T_DECODER_ID, 4, self.decoder_id))
        return out

    def encode(self) -> bytes:
        return encode_frame(VERSION_TOR, self.fields())


@dataclass(frozen=True)
class Resend:
    first: int | None = None
    last: int | None = None
    decoder_id: int | None = None
    extra: tuple[tuple[int, bytes], ...] = field(default=())

    KNOWN = frozenset({T_FROM, T_UNTIL, T_DECODER_ID})

    @classmethod
    def from_frame(cls, f: Frame) -> "Resend":
        g = f.get
        return cls(_int(g(T_FROM)), _int(g(T_UNTIL)), _int(g(T_DECODER_ID)), _extra(f, cls.KNOWN))

    def fields(self) -> list[tuple[int, bytes]]:
        out = []
        if self.first is not None:
            out.append(_u(T_FROM, 4, self.first))
        if self.last is not None:
            out.append(_u(T_UNTIL, 4, self.last))
        out.extend(self.extra)
        if self.decoder_id is not None:
            out.append(_u(T_DECODER_ID, 4, self.decoder_id))
        return out

    def encode(self) -> bytes:
        return encode_frame(RESEND, self.fields())


RECORD_TYPES = {PASSING: Passing, STATUS: Status, VERSION_TOR: Version, RESEND: Resend}


def record_of(frame: Frame):
    """The typed record of a frame, or None for a record type we do not know."""
    cls = RECORD_TYPES.get(frame.tor)
    return cls.from_frame(frame) if cls is not None else None


def frame_json(frame: Frame) -> dict:
    """A frame as JSON for a technician (``ingest p3 --dump``)."""
    out: dict = {"type": frame.type_name, "tor": frame.tor, "flags": frame.flags}
    if frame.version != 2:
        out["version"] = frame.version
    if frame.truncated:
        out["truncated"] = True
    rec = record_of(frame)
    if rec is not None:
        for k, v in rec.__dict__.items():
            if k != "extra" and v is not None:
                out[k] = v
        extra = rec.extra
    else:
        extra = frame.fields
    if extra:
        out["fields"] = [{"tag": f"0x{t:02x}", "hex": v.hex()} for t, v in extra]
    return out
