"""Offline P3: a raw byte capture of a decoder's TCP stream -> v1 feed lines,
or -> decoded frames as JSON (``--dump``, for a technician)."""
from __future__ import annotations

from typing import IO, Iterator

import orjson

from .codec import FrameDecoder
from .mapping import Converter, DecoderMap
from .records import frame_json

CHUNK = 1 << 16


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    while True:
        b = f.read(CHUNK)
        if not b:
            return
        yield b


def capture_to_feed(f: IO[bytes], dmap: DecoderMap, out: IO[bytes], address: str | None = None) -> tuple[int, dict, Converter]:
    """Write the contract messages of a capture as JSON Lines. Returns
    (messages written, frame decoder counters, the converter with its stats).
    Without a wall clock there are no clock-step checks and no heartbeat
    from a STATUS that carries no time (see ``mapping.py``)."""
    dec = FrameDecoder()
    conv = Converter(dmap)
    n = 0
    for chunk in _chunks(f):
        for fr in dec.feed(chunk):
            for m in conv.convert(fr, address).messages:
                out.write(orjson.dumps(m) + b"\n")
                n += 1
    dec.reset()
    return n, dec.stats, conv


def dump(f: IO[bytes], out: IO[bytes]) -> dict:
    """Every decoded frame as one JSON object per line; returns the counters."""
    dec = FrameDecoder()
    for chunk in _chunks(f):
        for fr in dec.feed(chunk):
            out.write(orjson.dumps(frame_json(fr)) + b"\n")
    dec.reset()
    return dec.stats
