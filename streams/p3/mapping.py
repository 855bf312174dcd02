"""From P3 records to v1 contract messages (``passing`` and ``heartbeat``).

The mapping file (``--map``, JSON, or YAML when PyYAML is installed) says
which decoder is which loop of which venue, and of which timing system::

    {"decoders": [
      {"decoder_id": 1001, "venue": "NSO", "source": "X2-A", "loop": "L000"},
      {"decoder_id": 1002, "venue": "NSO", "source": "X2-A", "loop": "L100"},
      {"decoder_id": 2001, "venue": "NSO", "source": "X2-B", "loop": "L000"},
      {"address": "10.0.0.12:5403", "venue": "NSO", "source": "X2-B", "loop": "L100"}]}

A decoder is found by the decoder id its records carry (0x81; an integer,
or a string "0x3e9" / "1001"), else by the connection it came from
(``address``: the HOST:PORT given to ``--decoder``), else, when the file
maps exactly one decoder, that one. Several decoders make the loops of one
oval; a primary and a backup system are two ``source`` names.

How a record becomes a message (the rules, and the choices made here):

- ``t_us``: on one time base per decoder, never a mix. A decoder's base is
  that of its first timed record: UTC (0x10, it has a GPS fix) or else its
  RTC (0x04). Each record carrying both gives the decoder's RTC-UTC offset
  (kept, updated by every such record). On a UTC base, a record with only
  an RTC time (the fix was lost) is put on UTC with that offset
  (``rtc_on_utc``); with no offset known yet it is not sent with an RTC
  time: a PASSING is held (numbered as it arrives, up to ``HELD_MAX`` per
  decoder, the oldest dropped beyond: ``time_base_dropped``) until a record
  with both times gives the offset (``time_base_released``), a STATUS is
  dropped (its heartbeat would be stale); each counts ``time_base_held``.
  On an RTC base, records are timed by their RTC (a UTC-only one put back
  on RTC with the offset, ``utc_on_rtc``, or held likewise), and the
  decoder moves to UTC (``time_base_utc``) once its RTC is seen within
  ``clock_step_us`` of UTC, so a decoder that started before its GPS had a
  fix is on UTC as soon as that makes no jump. (Mixing would put a
  decoder's heartbeats and passings on two clocks that may be hours
  apart: the core would see a clock leap, or passings far behind.) A
  PASSING without any time, without a passing number or without a
  transponder is counted (``unusable``) and skipped: the contract requires
  them. So is one whose passing number does not fit in 32 bits or whose
  time does not fit in a signed 64-bit integer (fields are read at any
  width).
- ``transponder``: the transponder number (0x03) in decimal; the
  transponder string (0x0A) when the number is absent.
- ``seq``: the contract needs ``(source, seq)`` unique within a venue, and
  a system (a ``source``) is usually several decoders, each numbering its
  own passings from 1. So ``seq = passing_number * 100 + slot``, where the
  slot (0..99) is the decoder's ``slot`` in the map, by default its index
  among the decoders of the same venue and source in file order. A source
  of one decoder still reads ``passing_number * 100``. After a detected
  decoder restart (its numbers start again) ``10**12 * restarts`` is added,
  so the new numbers never collide with the old ones. A duplicate (the same
  passing number again) gets the same ``seq`` and is passed on: the core
  drops it. (The bridge does not keep its restart count across its own
  restarts; a decoder restart followed by a bridge restart within two
  minutes could make the core drop reads as duplicates.)
- ``strength`` and ``hits`` when present.
- ``heartbeat``: from STATUS. Its time is the STATUS's own time when it
  carries one (an assumption, see ``records.py``), else the decoder's clock
  estimated as wall clock + the largest (decoder time - arrival time) of its
  recent passings (conservative: a passing arrives after it happened, so
  the estimate is behind the decoder's clock, never ahead). No estimate (no
  passing yet, or offline) means no heartbeat (``heartbeat_no_time``). At
  most one heartbeat per venue and source every ``heartbeat_gap_us``
  (0.5 s): every decoder of a system sends STATUS, the contract wants about
  one a second per source. When STATUS comes less often, ``fill`` (called
  by live ingest about four times a second) adds a heartbeat at the
  estimated clock once a second while the source's decoders are heard.
- Gaps: a passing number more than one above the last one seen is a gap
  (``gaps``, ``missed_passings``); the converter asks for a RESEND of the
  missing range (live ingest sends it when ``resend`` is on).
- Restart: a passing number lower than the last one seen, not in a range
  asked for again, and either at most ``restart_below`` (10) or the first
  passing after a reconnect (``reconnected``: ingest asked for the numbers
  after the last one, so a lower one is a new count). A decoder that
  replayed old passings on a new connection would be taken for a restart:
  its replays then get new seqs, and the core still drops them as another
  read of a crossing it has, or as too late.
- Clock step: the decoder's time minus the arrival time (wall clock) moving
  by more than ``clock_step_us`` (2 s): forward by a PASSING or a STATUS,
  backward by a STATUS that carries a time (a passing may arrive late, a
  resent one very late, so only the decoder's "now" proves a backward
  step). Counted and logged; the messages go on unchanged (the core judges
  a time too far ahead during a race). Needs a wall clock: live only.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .codec import Frame
from .records import Passing, Status, Version, record_of

SLOTS = 100
EPOCH = 10**12
MAX_PN = 0xFFFFFFFF          # passing numbers are u32 (read liberally at any width, used only in range)
MAX_T_US = 2**63 - 1         # a time (or strength, hits) beyond a signed 64-bit integer is not a time
HELD_MAX = 1000              # passings held per decoder while their time cannot be put on its time base
HELD = object()              # _time(): a time that is not on the decoder's time base (yet)


@dataclass(frozen=True)
class Target:
    venue: str
    source: str
    loop: str
    slot: int
    decoder_id: int | None = None
    address: str | None = None

    @property
    def name(self) -> str:
        """A short label of the decoder (metrics, logs)."""
        if self.address:
            return self.address
        return f"{self.decoder_id}"


def _decoder_id(v) -> int:
    if isinstance(v, bool):
        raise ValueError(f"decoder_id {v!r}")
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        return int(v, 0)
    raise ValueError(f"decoder_id {v!r}")


class MapError(ValueError):
    pass


class DecoderMap:
    def __init__(self, targets: list[Target]) -> None:
        self.targets = targets
        self.by_id = {t.decoder_id: t for t in targets if t.decoder_id is not None}
        self.by_address = {t.address: t for t in targets if t.address is not None}

    @classmethod
    def from_obj(cls, obj) -> "DecoderMap":
        entries = obj.get("decoders") if isinstance(obj, dict) else obj
        if isinstance(entries, dict):   # {"1001": {...}, ...}
            entries = [{"decoder_id": k, **v} for k, v in entries.items()]
        if not isinstance(entries, list) or not entries:
            raise MapError("the map needs a non-empty list 'decoders'")
        targets: list[Target] = []
        used: dict[tuple[str, str], set[int]] = {}
        pending = []
        for i, e in enumerate(entries):
            if not isinstance(e, dict):
                raise MapError(f"decoder {i}: not an object")
            for k in ("venue", "source", "loop"):
                if not isinstance(e.get(k), str) or not e[k]:
                    raise MapError(f"decoder {i}: '{k}' must be a non-empty string")
            did = e.get("decoder_id")
            try:
                did = _decoder_id(did) if did is not None else None
            except ValueError as exc:
                raise MapError(f"decoder {i}: {exc}") from None
            addr = e.get("address")
            if addr is not None and not isinstance(addr, str):
                raise MapError(f"decoder {i}: 'address' must be HOST:PORT")
            slot = e.get("slot")
            if slot is not None and (type(slot) is not int or not 0 <= slot < SLOTS):
                raise MapError(f"decoder {i}: 'slot' must be an integer 0..{SLOTS - 1}")
            key = (e["venue"], e["source"])
            if slot is not None:
                if slot in used.setdefault(key, set()):
                    raise MapError(f"decoder {i}: slot {slot} used twice for {key}")
                used[key].add(slot)
            pending.append((e, did, addr, slot, key))
        for e, did, addr, slot, key in pending:
            if slot is None:
                taken = used.setdefault(key, set())
                slot = next(s for s in range(SLOTS + 1) if s not in taken)
                if slot >= SLOTS:
                    raise MapError(f"more than {SLOTS} decoders for {key}")
                taken.add(slot)
            targets.append(Target(e["venue"], e["source"], e["loop"], slot, did, addr))
        ids = [t.decoder_id for t in targets if t.decoder_id is not None]
        if len(ids) != len(set(ids)):
            raise MapError("a decoder_id is mapped twice")
        return cls(targets)

    @classmethod
    def load(cls, path: str | Path) -> "DecoderMap":
        text = Path(path).read_text(encoding="utf-8")
        if str(path).endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError:  # pragma: no cover - depends on the machine
                raise MapError("a YAML map needs PyYAML (pip install pyyaml); or write it as JSON") from None
            obj = yaml.safe_load(text)
        else:
            obj = json.loads(text)
        return cls.from_obj(obj)

    def resolve(self, decoder_id: int | None, address: str | None) -> Target | None:
        if decoder_id is not None:
            t = self.by_id.get(decoder_id)
            if t is not None:
                return t
        if address is not None:
            t = self.by_address.get(address)
            if t is not None:
                return t
        if len(self.targets) == 1:
            return self.targets[0]
        return None


@dataclass
class DecoderState:
    last_pn: int | None = None
    restarts: int = 0
    asked: list = field(default_factory=list)       # [first, last] ranges asked for again
    offset_us: int | None = None                     # decoder time - wall time (estimate)
    version: str | None = None
    address: str | None = None                       # the connection it was last seen on
    seen_wall: int | None = None                     # wall time of its last record
    fresh: bool = False                              # reconnected, no passing since
    base: str | None = None                          # time base: "utc" or "rtc" (its first timed record's)
    utc_minus_rtc: int | None = None                 # from the last record that carried both
    held: list = field(default_factory=list)         # [(message without t_us, rtc_us, utc_us)] awaiting the offset


@dataclass
class Converted:
    messages: list
    resend: list          # (first, last) ranges to ask the decoder for
    notes: list           # (what, detail) for logs and metrics


class Converter:
    """Turns frames into v1 messages, per decoder, keeping what it needs to
    see gaps, restarts and clock steps. ``stats`` counts by (decoder label, what)."""

    def __init__(self, dmap: DecoderMap, *, clock_step_us: int = 2_000_000, restart_below: int = 10,
                 heartbeat_gap_us: int = 500_000) -> None:
        self.map = dmap
        self.clock_step_us = clock_step_us
        self.restart_below = restart_below
        self.heartbeat_gap_us = heartbeat_gap_us
        self.state: dict[Target, DecoderState] = {}
        self.last_hb: dict[tuple[str, str], int] = {}
        self.stats: Counter = Counter()

    def _count(self, who: str, what: str, n: int = 1) -> None:
        self.stats[(who, what)] += n

    def convert(self, frame: Frame, address: str | None = None, wall_us: int | None = None) -> Converted:
        out = Converted([], [], [])
        rec = record_of(frame)
        label = address or "-"
        if rec is None:
            self._count(label, "unknown_record")
            return out
        target = self.map.resolve(rec.decoder_id, address)
        if target is None:
            self._count(label, "unmapped")
            out.notes.append(("unmapped", f"{type(rec).__name__} of decoder id {rec.decoder_id} "
                                          f"from {address or 'the capture'}: not in the map"))
            return out
        st = self.state.get(target)
        if st is None:
            st = self.state[target] = DecoderState()
        if address is not None:
            st.address = address
        if wall_us is not None:
            st.seen_wall = wall_us
        who = address or target.name
        if isinstance(rec, Passing):
            self._passing(rec, target, st, who, wall_us, out)
        elif isinstance(rec, Status):
            self._status(rec, target, st, who, wall_us, out)
        elif isinstance(rec, Version):
            st.version = " ".join(x for x in (rec.description, rec.version) if x) or None
            self._count(who, "version")
        else:
            self._count(who, "other_record")
        return out

    def reconnected(self, address: str) -> None:
        """A new connection to ``address``: the first passing number of a decoder
        seen there that is lower than the last one (and not asked for again)
        means its numbering started again, whatever the number (the decoder
        may have counted a few passings while nobody listened)."""
        for st in self.state.values():
            if st.address == address:
                st.fresh = True

    # -- passings ------------------------------------------------------------
    # -- time base ---------------------------------------------------------------
    def _time(self, utc, rtc, st: DecoderState, who: str, out: Converted):
        """The record's time on the decoder's time base; None (no time) or HELD
        (a time on the other base, no offset known yet). Releases held passings
        when this record gives the offset."""
        if utc is not None and utc > MAX_T_US:
            utc = None
        if rtc is not None and rtc > MAX_T_US:
            rtc = None
        if utc is not None and rtc is not None:
            st.utc_minus_rtc = utc - rtc
        if st.base is None:
            if utc is None and rtc is None:
                return None
            st.base = "utc" if utc is not None else "rtc"
        if (st.base == "rtc" and st.utc_minus_rtc is not None and abs(st.utc_minus_rtc) <= self.clock_step_us
                and utc is not None):
            st.base = "utc"
            self._count(who, "time_base_utc")
            out.notes.append(("time_base", f"decoder on UTC from now on (its RTC is "
                                           f"{-st.utc_minus_rtc / 1e6:+.3f} s from UTC)"))
        if st.held and st.utc_minus_rtc is not None:
            self._release(st, who, out)
        own, other, sign = (utc, rtc, 1) if st.base == "utc" else (rtc, utc, -1)
        if own is not None:
            return own
        if other is None:
            return None
        if st.utc_minus_rtc is not None:
            self._count(who, "rtc_on_utc" if st.base == "utc" else "utc_on_rtc")
            t = other + sign * st.utc_minus_rtc
            return t if 0 <= t <= MAX_T_US else None
        self._count(who, "time_base_held")
        return HELD

    def _release(self, st: DecoderState, who: str, out: Converted) -> None:
        off = st.utc_minus_rtc
        for m, rtc, utc in st.held:
            if st.base == "utc":
                t = utc if utc is not None else rtc + off
            else:
                t = rtc if rtc is not None else utc - off
            if 0 <= t <= MAX_T_US:
                out.messages.append({**m, "t_us": t})
                self._count(who, "time_base_released")
                self._count(who, "passings")
            else:
                self._count(who, "unusable")
        out.notes.append(("time_base", f"{len(st.held)} held passing(s) sent, put on "
                                       f"{st.base.upper()} with the decoder's RTC-UTC offset"))
        st.held.clear()

    def _passing(self, p: Passing, tg: Target, st: DecoderState, who: str, wall_us, out: Converted) -> None:
        t = p.time_us
        pn = p.passing_number
        tp = str(p.transponder) if p.transponder is not None else (p.transponder_code or None)
        why = ("no time" if t is None else "no passing number" if pn is None else "no transponder" if tp is None
               else "time out of range" if t > MAX_T_US else "passing number out of range" if pn > MAX_PN
               else None)
        if why:
            self._count(who, "unusable")
            out.notes.append(("unusable", f"passing skipped: {why}"))
            return
        self._numbering(pn, st, who, out)
        t = self._time(p.utc_us, p.rtc_us, st, who, out)
        if t is None:
            self._count(who, "unusable")
            out.notes.append(("unusable", "passing skipped: time out of range"))
            return
        if wall_us is not None and t is not HELD:
            self._clock(t - wall_us, st, who, out, backward=False)
        seq = st.restarts * EPOCH + pn * SLOTS + tg.slot
        m = {"kind": "passing", "v": 1, "t_us": t, "venue": tg.venue, "source": tg.source, "seq": seq,
             "loop": tg.loop, "transponder": tp}
        if p.strength is not None and p.strength <= MAX_T_US:
            m["strength"] = p.strength
        if p.hits is not None and p.hits <= MAX_T_US:
            m["hits"] = p.hits
        if t is HELD:
            st.held.append((m, p.rtc_us, p.utc_us))
            if len(st.held) > HELD_MAX:
                del st.held[0]
                self._count(who, "time_base_dropped")
            out.notes.append(("time_base", f"passing {pn} held: its time is on the decoder's "
                                           f"{'RTC' if st.base == 'utc' else 'UTC'}, not its "
                                           f"{st.base.upper()}, and their offset is not known yet"))
            return
        out.messages.append(m)
        self._count(who, "passings")

    def _numbering(self, pn: int, st: DecoderState, who: str, out: Converted) -> None:
        last = st.last_pn
        if last is None:
            st.last_pn = pn
            return
        if pn == last + 1:
            st.last_pn = pn
            st.fresh = False
            return
        if pn > last + 1:
            first, until = last + 1, pn - 1
            self._count(who, "gaps")
            self._count(who, "missed_passings", until - first + 1)
            st.asked.append([first, until])
            del st.asked[:-16]
            out.resend.append((first, until))
            out.notes.append(("gap", f"passings {first}..{until} missing"))
            st.last_pn = pn
            st.fresh = False
            return
        # pn <= last: asked for again, a duplicate, or numbering started again
        for r in st.asked:
            if r[0] <= pn <= r[1]:
                self._count(who, "resent")
                return
        fresh, st.fresh = st.fresh, False
        if pn < last - 1 and (pn <= self.restart_below or fresh):
            st.restarts += 1
            st.last_pn = pn
            st.asked.clear()
            st.offset_us = None
            self._count(who, "restarts")
            out.notes.append(("restart", f"passing numbers start again at {pn} (last {last})"))
            return
        self._count(who, "duplicates")

    # -- clock ---------------------------------------------------------------
    def _clock(self, off: int, st: DecoderState, who: str, out: Converted, backward: bool) -> None:
        est = st.offset_us
        if est is None:
            st.offset_us = off
            return
        if off > est + self.clock_step_us or (backward and off < est - self.clock_step_us):
            self._count(who, "clock_steps")
            out.notes.append(("clock_step", f"decoder clock moved {(off - est) / 1e6:+.3f} s"))
            st.offset_us = off
            return
        if off > est:
            st.offset_us = off
        elif backward:
            # the decoder's own "now": trust it (drift, or a small step back)
            st.offset_us = off

    # -- status ----------------------------------------------------------------
    def _status(self, s: Status, tg: Target, st: DecoderState, who: str, wall_us, out: Converted) -> None:
        self._count(who, "status")
        t = s.time_us
        if t is not None and t <= MAX_T_US:
            t = self._time(s.utc_us, s.rtc_us, st, who, out)
            if t is HELD:
                return   # a heartbeat on the other time base, no offset known: none (counted)
        if t is not None:
            if wall_us is not None:
                self._clock(t - wall_us, st, who, out, backward=True)
        elif wall_us is not None and st.offset_us is not None:
            t = wall_us + st.offset_us
        if t is None or t > MAX_T_US:
            self._count(who, "heartbeat_no_time")
            return
        key = (tg.venue, tg.source)
        last = self.last_hb.get(key)
        if last is not None and t < last + self.heartbeat_gap_us:
            return
        self.last_hb[key] = t
        out.messages.append({"kind": "heartbeat", "v": 1, "t_us": t, "venue": tg.venue, "source": tg.source})
        self._count(who, "heartbeats")

    # -- heartbeats between STATUS records ------------------------------------------
    def fill(self, wall_us: int, every_us: int = 1_000_000, alive_us: int = 2_000_000) -> list:
        """Heartbeats for sources whose decoders talk but whose STATUS records come
        less than once a second: for each (venue, source) with a decoder heard
        within ``alive_us`` whose clock offset is known, a heartbeat at the
        earliest estimate of their clocks (wall + offset), if that is at least
        ``every_us`` after the source's last heartbeat. A silent source gets
        none (its silence is what the operators' alert watches)."""
        est: dict[tuple[str, str], tuple[int, str]] = {}
        for tg, st in self.state.items():
            if st.offset_us is None or st.seen_wall is None or st.seen_wall < wall_us - alive_us:
                continue
            t = wall_us + st.offset_us
            key = (tg.venue, tg.source)
            if key not in est or t < est[key][0]:
                est[key] = (t, st.address or tg.name)
        out = []
        for (venue, source), (t, who) in est.items():
            last = self.last_hb.get((venue, source))
            if last is not None and t < last + every_us or not 0 <= t <= MAX_T_US:
                continue
            self.last_hb[(venue, source)] = t
            out.append({"kind": "heartbeat", "v": 1, "t_us": t, "venue": venue, "source": source})
            self._count(who, "heartbeats_filled")
        return out
