"""Simulated P3 decoders: TCP servers speaking P3, driven by a v1 feed.

``plan(lines, dmap)`` turns a v1 feed (e.g. one ``streams.sim`` builds, with
its truth) into steps in arrival order: each ``passing`` becomes a PASSING
record of the decoder the map gives its (venue, source, loop), numbered per
decoder from 1 (a resend of the same source and seq is the same passing
number again); each ``heartbeat`` becomes a STATUS of every decoder of its
(venue, source); any other line stays a line (it is not the decoders'
business: the race set-up, the gun, the referee).

ENCODER CHOICES of the simulated decoders (not facts about real ones): the
decoder has a GPS fix, so PASSING carries UTC time (0x10) = the feed's
``t_us`` and an RTC time (0x04) equal to it; STATUS carries the same two
times (see ``records.py``: whether real STATUS records carry a time is not
known), noise 40, GPS 1, temperature 21.5 C; transponders are numeric.

``DecoderServer`` is one decoder: it accepts clients on loopback, writes
each record it is given to every connected client (records emitted while
nobody is connected are lost on the wire but kept for RESEND, as a decoder's
memory would), answers RESEND requests, and can misbehave on request: cut the
connection in the middle of a frame, write garbage, write a frame with a bad
CRC, restart (its passing numbers start again at 1, connections drop), step
its clock.
"""
from __future__ import annotations

import asyncio
import dataclasses
import random
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import orjson

from .codec import RESEND, FrameDecoder, escape, unescape
from .mapping import DecoderMap, Target
from .records import Passing, Resend, Status


@dataclass
class Step:
    t_us: int
    line: bytes
    target: Optional[Target] = None      # None: not a decoder's line
    record: object = None                # Passing or Status


def _transponder(tp: str) -> dict:
    if tp.isdigit() and int(tp) < 2**32 and str(int(tp)) == tp:
        return {"transponder": int(tp)}
    return {"transponder_code": tp}


def plan(lines: Iterable[bytes | str], dmap: DecoderMap) -> list[Step]:
    by_loop: dict[tuple[str, str, str], Target] = {}
    by_source: dict[tuple[str, str], list[Target]] = {}
    for t in dmap.targets:
        by_loop.setdefault((t.venue, t.source, t.loop), t)
        by_source.setdefault((t.venue, t.source), []).append(t)
    numbers: dict[Target, int] = {}
    seen: dict[tuple[str, str, int], int] = {}
    steps: list[Step] = []
    for raw in lines:
        line = raw.encode() if isinstance(raw, str) else raw
        line = line.rstrip(b"\r\n")
        if not line:
            continue
        m = orjson.loads(line)
        kind = m.get("kind")
        if kind == "passing":
            tg = by_loop.get((m["venue"], m["source"], m["loop"]))
            if tg is None:
                raise ValueError(f"no decoder in the map for {m['venue']}/{m['source']}/{m['loop']}")
            key = (m["venue"], m["source"], m["seq"])
            pn = seen.get(key)
            if pn is None:
                pn = seen[key] = numbers[tg] = numbers.get(tg, 0) + 1
            rec = Passing(passing_number=pn, rtc_us=m["t_us"], utc_us=m["t_us"], strength=m.get("strength"),
                          hits=m.get("hits"), decoder_id=tg.decoder_id, **_transponder(m["transponder"]))
            steps.append(Step(m["t_us"], line, tg, rec))
        elif kind == "heartbeat" and (m["venue"], m["source"]) in by_source:
            for tg in by_source[(m["venue"], m["source"])]:
                rec = Status(noise=40, gps=1, temperature=215, decoder_id=tg.decoder_id,
                             rtc_us=m["t_us"], utc_us=m["t_us"])
                steps.append(Step(m["t_us"], line, tg, rec))
        else:
            steps.append(Step(m.get("t_us") if type(m.get("t_us")) is int else 0, line))
    return steps


class DecoderServer:
    def __init__(self, target: Target, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = target
        self.host, self.port = host, port
        self.server: Optional[asyncio.AbstractServer] = None
        self.clients: list[asyncio.StreamWriter] = []
        self.store: dict[int, bytes] = {}       # passing number -> frame
        self.pn_base = 0                         # numbers start again after a restart
        self.clock_offset_us = 0
        self.sent_good = 0                       # whole frames written to a client
        self.resend_requests = 0
        self.connections = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> "DecoderServer":
        self.server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Close the connections (what was written is delivered first) and stop listening."""
        for w in list(self.clients):
            w.close()
            try:
                await asyncio.wait_for(w.wait_closed(), 5)
            except (OSError, ConnectionError, asyncio.TimeoutError):
                w.transport.abort()
        self.clients.clear()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients.append(writer)
        self.connections += 1
        dec = FrameDecoder()
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                for f in dec.feed(data):
                    if f.tor == RESEND:
                        self._resend(Resend.from_frame(f), writer)
        except (OSError, ConnectionError):
            pass
        finally:
            if writer in self.clients:
                self.clients.remove(writer)
            writer.close()

    def _resend(self, r: Resend, writer) -> None:
        first = r.first or 1
        last = r.last if r.last is not None else first
        for pn in sorted(self.store):
            if first <= pn <= last:
                writer.write(self.store[pn])
                self.sent_good += 1
        self.resend_requests += 1

    def encode(self, rec) -> bytes:
        if isinstance(rec, Passing):
            rec = dataclasses.replace(rec, passing_number=rec.passing_number - self.pn_base,
                                      rtc_us=_shift(rec.rtc_us, self.clock_offset_us),
                                      utc_us=_shift(rec.utc_us, self.clock_offset_us))
            frame = rec.encode()
            self.store[rec.passing_number] = frame
            return frame
        if isinstance(rec, Status):
            rec = dataclasses.replace(rec, rtc_us=_shift(rec.rtc_us, self.clock_offset_us),
                                      utc_us=_shift(rec.utc_us, self.clock_offset_us))
        return rec.encode()

    async def emit(self, rec) -> None:
        frame = self.encode(rec)
        for w in list(self.clients):
            w.write(frame)
            self.sent_good += 1
        for w in list(self.clients):
            try:
                await w.drain()
            except (OSError, ConnectionError):
                pass

    # -- faults ------------------------------------------------------------------
    async def cut_mid_frame(self, rec, arrived: Callable[[], bool] = lambda: True, timeout: float = 10.0) -> None:
        """Write the first half of ``rec``'s frame, wait until ``arrived()``
        (the peer holds the half), then reset the connection."""
        frame = self.encode(rec)
        for w in list(self.clients):
            w.write(frame[: len(frame) // 2])
            await w.drain()
        await wait_until(arrived, timeout)
        for w in list(self.clients):
            w.transport.abort()

    async def garbage(self, n: int, seed: int = 0) -> None:
        rng = random.Random(seed)
        junk = bytes(rng.randrange(256) for _ in range(n))
        for w in list(self.clients):
            w.write(junk)
            await w.drain()

    async def bad_crc(self, rec) -> None:
        """A frame of ``rec`` with its CRC wrong (the record itself is not kept)."""
        frame = with_bad_crc(rec.encode())
        for w in list(self.clients):
            w.write(frame)
            await w.drain()

    async def restart(self) -> None:
        """Power cycle: connections drop, passing numbers start again at 1."""
        for w in list(self.clients):
            w.transport.abort()
        self.pn_base += max(self.store) if self.store else 0
        self.store.clear()

    def step_clock(self, us: int) -> None:
        self.clock_offset_us += us


def with_bad_crc(frame: bytes) -> bytes:
    """The same frame with the low byte of its CRC flipped (escaped again)."""
    plain = bytearray(unescape(frame[1:-1]))
    plain[3] ^= 0x5A          # after SOR: version, length (2), CRC low byte
    return frame[:1] + escape(bytes(plain)) + frame[-1:]


def _shift(t: Optional[int], d: int) -> Optional[int]:
    return None if t is None else t + d


async def wait_until(cond: Callable[[], bool], timeout: float = 30.0, poll: float = 0.001) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(poll)


__all__ = ["Step", "plan", "DecoderServer", "wait_until", "with_bad_crc"]
