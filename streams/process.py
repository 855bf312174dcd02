"""Offline processing: a recorded feed through the very same core.

``process_lines`` is what ``lapstream process`` runs; the live Faust agents
call the same ``Processor.handle`` per Kafka record, so offline, replayed and
live output are identical.

``Processor.handle`` is total: whatever the bytes, it returns the derived
events or a rejection (the caller dead-letters the message); an exception
anywhere in the decoder, the clock guard or the core becomes a rejection of
class ``internal`` for that message. It is the one place where that is done.
"""
from __future__ import annotations

import gzip
import io
from base64 import b64encode
from typing import Iterable, Iterator

from agents.core import CoreConfig, Engine
from agents.core.clockguard import ClockConfig, ClockGuard
from agents.core.fastpath import beat
from schemas.decode import RAW_KINDS, Rejected, decode


def internal(exc: BaseException) -> Rejected:
    return Rejected("internal", f"internal error on this message: {type(exc).__name__}: {exc}")


class Processor:
    """Decode + clock guard + core, for one stream of raw messages (one venue
    partition or a file).

    After ``handle``, ``kind`` and ``outcome`` say what the message was and
    what became of it (for metrics); ``kind`` is ``"unknown"`` for a message
    whose kind could not be read; ``outcome`` is ``"held"`` for a message the
    clock guard holds (see ``agents.core.clockguard``). ``late`` lists
    ``(tag, raw, rejection)`` of messages handled earlier (held by the guard)
    that this call refused: the caller dead-letters them as it does the
    current one.
    """

    __slots__ = ("engine", "guard", "msg", "late", "_kind", "_outcome")

    def __init__(self, engine: Engine | None = None, config: CoreConfig | None = None,
                 clock: ClockConfig | None = None) -> None:
        self.engine = engine if engine is not None else Engine(config)
        self.guard = ClockGuard(clock)
        self.msg = None          # the message just applied (None: refused or held)
        self._kind = "unknown"   # kind and outcome when msg is None
        self._outcome = "applied"
        self.late: list = []

    @property
    def kind(self) -> str:
        msg = self.msg
        return msg["kind"] if msg is not None else self._kind

    @property
    def outcome(self) -> str:
        return self.engine.outcome if self.msg is not None else self._outcome

    def handle(self, raw: bytes, tag=None) -> tuple[list[dict], Rejected | None]:
        """One raw message: (derived events, None) or (events, the rejection).
        Events come with a rejection only when held messages were released."""
        if self.late:
            self.late = []
        msg = None
        try:
            msg = decode(raw)
            kind = msg["kind"]
            engine = self.engine
            if kind == "heartbeat":   # the commonest: guard and core in one step
                events = beat(self.guard, engine, msg)
                if events is not None:
                    self.msg = msg
                    return events, None
            acts = self.guard.offer(msg, engine, raw, tag)
            if acts is None:
                self.msg = msg
                return engine.apply(msg), None
        except Rejected as rej:
            self.rejected(raw, msg)
            return [], rej
        except Exception as exc:  # a bug must not stop the pipeline
            self.rejected(raw, msg)
            return [], internal(exc)
        self.msg = None
        self._kind = kind
        return self._act(acts, raw)

    def handle_msg(self, msg: dict) -> tuple[list[dict], Rejected | None]:
        """A message the adapter built, not decoded from bytes (the withdrawal
        of a tombstone on ``timing.records.ref``: ``streams.tombstones``):
        applied as ``handle`` applies a decoded ``record_ref`` (which the clock
        guard never holds)."""
        if self.late:
            self.late = []
        try:
            events = self.engine.apply(msg)
        except Rejected as rej:
            self.rejected(b"", msg)
            return [], rej
        except Exception as exc:  # a bug must not stop the pipeline
            self.rejected(b"", msg)
            return [], internal(exc)
        self.msg = msg
        return events, None

    def _act(self, acts: list, raw: bytes) -> tuple[list[dict], Rejected | None]:
        """Apply or refuse what the clock guard released, in order."""
        events: list[dict] = []
        mine = None
        self._outcome = "held"
        engine = self.engine
        for (msg, r, tag), rej in acts:
            current = r is raw
            if rej is None:
                try:
                    events.extend(engine.apply(msg))
                    if current:
                        self._outcome = engine.outcome
                    continue
                except Rejected as exc:
                    rej = exc
                except Exception as exc:
                    rej = internal(exc)
            engine.count_rejected(msg["kind"])
            if current:
                mine = rej
                self._outcome = "deadlettered"
            else:
                self.late.append((tag, r, rej))
        return events, mine

    def flush(self) -> list[dict]:
        """End of a recorded feed: held messages decided (``late`` lists the
        refused ones), then every crossing closed."""
        self.late = []
        events: list[dict] = []
        for (msg, r, tag), rej in self.guard.drain(self.engine):
            if rej is None:
                try:
                    events.extend(self.engine.apply(msg))
                    continue
                except Rejected as exc:
                    rej = exc
                except Exception as exc:
                    rej = internal(exc)
            self.engine.count_rejected(msg["kind"])
            self.late.append((tag, r, rej))
        events.extend(self.engine.flush())
        return events

    def rejected(self, raw: bytes, msg=None) -> None:
        """Book a rejected message: its kind if readable, outcome dead-lettered."""
        self.msg = None
        kind = "unknown"
        if type(msg) is not dict:
            msg = _loads_or_none(raw)
        if type(msg) is dict:
            k = msg.get("kind")
            if type(k) is str and k in RAW_KINDS:
                kind = k
        self._kind = kind
        self._outcome = "deadlettered"
        self.engine.count_rejected(kind)


def _loads_or_none(raw):
    import orjson

    try:
        return orjson.loads(raw)
    except Exception:
        return None


def _tombstone(line: bytes):
    """A recorded tombstone of ``timing.records.ref`` (``lapstream record``
    writes one for a record taken back): the withdrawal the live adapter gives
    the core for it, or ([], the rejection) of a key that is not ours; None
    for any other line."""
    from streams.tombstones import tombstone_of_bytes, withdrawal_of_tombstone

    tomb = tombstone_of_bytes(line)
    if tomb is None:
        return None
    try:
        return withdrawal_of_tombstone(tomb[1])
    except Rejected as rej:
        return [], rej


def deadletter_line(line_no: int, error: str, raw: bytes) -> dict:
    """An offline dead letter: ``raw`` the line for reading (invalid UTF-8 as
    ``\\xNN``), ``raw_b64`` its bytes exactly (without the line's ending)."""
    return {"kind": "deadletter", "v": 1, "line": line_no, "error": error,
            "raw": raw.decode("utf-8", errors="backslashreplace"),
            "raw_b64": b64encode(raw).decode("ascii")}


def process_lines(lines: Iterable[bytes], processor: Processor | None = None,
                  flush: bool = True) -> Iterator[dict]:
    """Every derived event (and dead-letter line) of a recorded feed, in emission order."""
    proc = processor or Processor()
    handle = proc.handle
    for n, line in enumerate(lines, 1):
        if line[-1:] == b"\n":
            line = line.rstrip(b"\r\n")
        if not line or (line[0] != 123 and line.isspace()):   # 123: "{"
            continue
        events, rej = handle(line, n)
        if rej is not None and rej.reason == "unknown_kind" and (tomb := _tombstone(line)) is not None:
            # a recorded tombstone of timing.records.ref: not a raw kind, so looked
            # for among the refused only (the hot path pays nothing for it)
            if isinstance(tomb, tuple):   # a key that is not ours: a dead letter saying so
                events, rej = tomb
            else:                         # a withdrawal: not a dead letter after all
                proc.engine.count_rejected("unknown", -1)
                events, rej = proc.handle_msg(tomb)
        if proc.late:
            for tag, raw, why in proc.late:
                yield deadletter_line(tag, str(why), raw)
        if rej is not None:
            yield deadletter_line(n, str(rej), line)
        if events:
            yield from events
    if flush:
        events = proc.flush()
        for tag, raw, why in proc.late:
            yield deadletter_line(tag, str(why), raw)
        yield from events


def open_feed(path: str) -> io.BufferedIOBase:
    """A recorded feed opened for reading bytes; a gzip-compressed one (by its
    magic bytes, whatever its name) is decompressed on the fly."""
    f = open(path, "rb")
    if f.peek(2)[:2] == b"\x1f\x8b":
        f.close()
        return gzip.open(path, "rb")
    return f


def process_file(path: str, out, flush: bool = True) -> Processor:
    import orjson

    proc = Processor()
    dumps = orjson.dumps
    write = out.write
    with open_feed(path) as f:
        for ev in process_lines(f, proc, flush=flush):
            write(dumps(ev))
            write(b"\n")
    return proc
