"""Offline processing: a recorded feed through the very same core.

``process_lines`` is what ``lapstream process`` runs; the live Faust agents
call the same ``Processor.handle`` per Kafka record, so offline, replayed and
live output are identical.
"""
from __future__ import annotations

import gzip
import io
from typing import Iterable, Iterator

import orjson

from agents.core import CoreConfig, Engine
from schemas.decode import Rejected, decode


RAW_KINDS = frozenset(("venue", "race", "start", "passing", "heartbeat", "photo", "decision", "record_ref"))


class Processor:
    """Decode + core, for one stream of raw messages (one venue partition or a file).

    After ``handle``, ``kind`` and ``outcome`` say what the message was and
    what became of it (for metrics); ``kind`` is ``"unknown"`` for a message
    whose kind could not be read.
    """

    __slots__ = ("engine", "kind", "outcome", "msg")

    def __init__(self, engine: Engine | None = None, config: CoreConfig | None = None) -> None:
        self.engine = engine if engine is not None else Engine(config)
        self.kind = "unknown"
        self.outcome = "applied"
        self.msg = None

    def handle(self, raw: bytes) -> tuple[list[dict], Rejected | None]:
        """One raw message: (derived events, None) or ([], the rejection)."""
        try:
            self.msg = msg = decode(raw)
            self.kind = msg["kind"]
            events = self.engine.apply(msg)
            self.outcome = self.engine.outcome
            return events, None
        except Rejected as rej:
            self.rejected(raw)
            return [], rej
        except Exception as exc:  # a bug in the core must not stop the pipeline
            rej = Rejected("internal", f"internal error on this message: {type(exc).__name__}: {exc}")
            self.rejected(raw)
            return [], rej

    def rejected(self, raw: bytes) -> None:
        """Book a rejected message: its kind if readable, outcome dead-lettered."""
        self.msg = None
        kind = "unknown"
        try:
            obj = orjson.loads(raw)
            if isinstance(obj, dict) and obj.get("kind") in RAW_KINDS:
                kind = obj["kind"]
        except orjson.JSONDecodeError:
            pass
        self.kind = kind
        self.outcome = "deadlettered"
        self.engine.count_rejected(kind)


def deadletter_line(line_no: int, error: str, raw: bytes) -> dict:
    return {"kind": "deadletter", "v": 1, "line": line_no, "error": error,
            "raw": raw.decode("utf-8", errors="backslashreplace")}


def process_lines(lines: Iterable[bytes], processor: Processor | None = None,
                  flush: bool = True) -> Iterator[dict]:
    """Every derived event (and dead-letter line) of a recorded feed, in emission order."""
    proc = processor or Processor()
    apply = proc.engine.apply
    for n, line in enumerate(lines, 1):
        if line[-1:] == b"\n":
            line = line.rstrip(b"\r\n")
        if not line or (line[0] != 123 and line.isspace()):   # 123: "{"
            continue
        try:
            # the same decode + core as Processor.handle, minus its bookkeeping
            events = apply(decode(line))
        except Rejected as rej:
            proc.rejected(line)
            yield deadletter_line(n, str(rej), line)
            continue
        except Exception as exc:  # a bug in the core must not stop the pipeline
            proc.rejected(line)
            yield deadletter_line(n, f"internal error on this message: {type(exc).__name__}: {exc}", line)
            continue
        if events:
            yield from events
    if flush:
        yield from proc.engine.flush()


def open_feed(path: str) -> io.BufferedIOBase:
    """A recorded feed opened for reading bytes; a gzip-compressed one (by its
    magic bytes, whatever its name) is decompressed on the fly."""
    f = open(path, "rb")
    if f.peek(2)[:2] == b"\x1f\x8b":
        f.close()
        return gzip.open(path, "rb")
    return f


def process_file(path: str, out, flush: bool = True) -> Processor:
    proc = Processor()
    dumps = orjson.dumps
    write = out.write
    with open_feed(path) as f:
        for ev in process_lines(f, proc, flush=flush):
            write(dumps(ev))
            write(b"\n")
    return proc
