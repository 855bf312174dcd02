"""The live adapter: Kafka records in, the core, Kafka records out.

Framework-free on purpose: the Faust agent (``streams.app``) hands each
record of ``timing.raw`` to ``LiveAdapter.on_raw`` and gives it a ``send``
coroutine; tests can drive the same adapter in memory.

State and recovery. The state of a partition is a pure function of the raw
records before the current offset (the core is deterministic). So the raw
topic is the changelog: when a worker gets a partition (first start, a
rebalance, or a restart after kill -9), the first record it is handed sits
at the committed offset ``o``; the adapter rebuilds the partition's core by
reading records ``[0, o)`` silently, then carries on. Derived events between
the last commit and a crash are emitted again with the same ``event_id``s,
which subscribers deduplicate. Faust flushes the producer before it commits
an offset, so no derived fact is lost.

Snapshots (issue 7: a season is millions of raw records; re-reading them
took 37 s at 1.7 M). Every ``snapshot_every`` records of a partition (or
``snapshot_every_us`` of its event time, after at least ``snapshot_min``
records) the adapter saves the partition's state at the offset ``o`` it has
reached: the ``Processor``'s engine and clock guard, as data
(``agents.core.snapshot``: JSON, never pickle), with ``o`` and a digest of the
record at ``o - 1``. It is handed to the store (``timing.snapshots``,
``streams.app``) only once the group has committed ``o`` or beyond, so a
snapshot never describes records whose derived events might not be out. A
new owner loads the newest snapshot at or below the committed offset ``c``,
checks that the log still holds the record the snapshot ends with (a broker
that lost its tail reuses offsets), and replays only ``[o, c)`` (plus the
2,048 records before ``o`` read into the redelivery digests, not the state).
Anything wrong with a snapshot (corrupt, truncated, another version or
configuration, beyond the log or the committed offset) is logged, counted
(``lapstream_snapshot_loads_total{result="rejected"}``) and ignored: the
partition is rebuilt from offset 0 as before.
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterable, Optional, Protocol

import orjson

from agents.core import snapshot as snap
from agents.core.engine import CoreConfig, Engine, own_ref_update
from agents.core.statesize import approx_state_bytes
from schemas.decode import Rejected, decode, parse_record_time
# the dead letter that fits the producer (cut, headers say so): one definition,
# shared with replay and record (DEADLETTER_KEY_MAX, RECORD_OVERHEAD re-exported)
from streams.deadletter import (DEADLETTER_KEY_MAX, MAX_RECORD_BYTES, RECORD_OVERHEAD,  # noqa: F401
                                deadletter_record, record_size)
from streams.process import Processor, _loads_or_none, internal
from streams.tombstones import withdrawal_of_tombstone
from streams.topics import DEADLETTER, RECORDS_REF, TOPIC_OF_KIND, key_of

Send = Callable[[str, Optional[bytes], Optional[bytes], Optional[list]], Awaitable[None]]   # value None: a tombstone
RebuildSource = Callable[[int, int, int], AsyncIterator[tuple]]   # (partition, start, end) -> (offset, key, value)

log = logging.getLogger("lapstream")

RECENT_RECORDS = 2048      # per partition: digests kept to tell a redelivery from a reused offset


class Recent:
    """Digests of the last records handled on a partition, by offset. A record
    at an offset already handled is a redelivery only if it is the same
    record: after a broker lost the tail of its log, later records reuse
    those offsets with other content."""

    __slots__ = ("by_offset", "order", "size", "last")

    def __init__(self, size: int = RECENT_RECORDS) -> None:
        self.by_offset: dict[int, int] = {}
        self.order: collections.deque = collections.deque()
        self.size = size
        self.last: tuple | None = None     # (offset, key, value) of the last record added

    def add(self, offset: int, key, value) -> None:
        self.last = (offset, key, value)
        by = self.by_offset
        if offset not in by:
            self.order.append(offset)
            if len(self.order) > self.size:
                by.pop(self.order.popleft(), None)
        by[offset] = hash((key, value))

    def differs(self, offset: int, key, value) -> bool:
        """True only if a different record was handled at ``offset`` (an
        offset older than what is remembered counts as a redelivery)."""
        d = self.by_offset.get(offset)
        return d is not None and d != hash((key, value))

    def drop_from(self, offset: int) -> None:
        if self.last is not None and self.last[0] >= offset:
            self.last = None
        for off in [o for o in self.by_offset if o >= offset]:
            del self.by_offset[off]
        self.order = collections.deque(o for o in self.order if o < offset)


class RefLog:
    """The record references seen, to be applied to every processor built
    later: not every record of the topic (that list grew forever) but one per
    key, as the compacted topic keeps them, and such that applying them gives
    the engine the same references as applying all of them did:

    - the federation's word (``book``): each distinct (identity, ``t_us``,
      time, holder) once; the history is kept (a finish is judged against
      the word in force at its time), repeats dropped (the core ignores them);
    - lapstream's own (``foreign``, key: identity, race, holder): the latest,
      placed as the core's dict places it (a new time replaces in place, the
      same time keeps the older, a set after a withdrawal goes last); a
      withdrawal (a tombstone, or an older version's ``withdrawn: true``)
      deletes the key, as compaction does: a processor built later never
      holds the claim (one loaded from a snapshot has its claims cleared and
      given again from here: ``refs_onto_snapshot``)."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: dict[tuple, tuple[bytes, int]] = {}   # key -> (raw, hundredths)

    def add(self, raw: bytes, msg: dict) -> None:
        ident = (msg["record"], msg["format"], msg["gender"], msg["distance_m"], msg.get("scope"))
        items = self.items
        if msg.get("origin") != "lapstream":
            th = parse_record_time(msg["time"])
            book: tuple = ("book", ident, msg["t_us"], th, msg["holder"])
            if book not in items:
                items[book] = (raw, th)
            return
        if msg.get("withdrawn"):
            self.forget(ident, msg.get("race_id"), msg["holder"])
            return
        th = parse_record_time(msg["time"])
        key: tuple = ("own", ident, msg.get("race_id"), msg["holder"])
        cur = items.get(key)
        if cur is not None and cur[1] == th:
            return                 # the core keeps the older: a repeat
        items[key] = (raw, th)     # in place, or new: last

    def forget(self, ident: tuple, race_id: str | None, holder: str) -> None:
        """A record lapstream set, taken back."""
        self.items.pop(("own", ident, race_id, holder), None)

    def __iter__(self):
        return (raw for raw, _ in self.items.values())

    def __len__(self) -> int:
        return len(self.items)


# -- snapshots -----------------------------------------------------------------

SNAPSHOT_EVERY = 100_000           # raw records of a partition between snapshots ...
SNAPSHOT_EVERY_US = 600_000_000    # ... or this much of its event time (10 min) ...
SNAPSHOT_MIN = 2_000               # ... with at least this many records


class SnapshotStore(Protocol):
    """Where snapshots of partitions are kept (``streams.app``: ``timing.snapshots``)."""

    def candidates(self, partition: int, upto: int) -> AsyncIterator[bytes]:
        """Snapshot bytes of the partition at an offset <= ``upto``, newest first."""

    async def save(self, partition: int, offset: int, data: bytes) -> None:
        ...


_CODE_FP: str | None = None


def code_fingerprint() -> str:
    """A digest of the code a snapshot's state depends on (the core, the
    decoder, the processor): a snapshot of other code is not loaded (the state
    of a full rebuild by this code could differ)."""
    global _CODE_FP
    if _CODE_FP is None:
        root = Path(__file__).resolve().parents[1]
        files = sorted((root / "agents" / "core").glob("*.py")) + [
            root / "streams" / "process.py", root / "schemas" / "decode.py"]
        h = hashlib.blake2b(digest_size=12)
        for f in files:
            h.update(f.name.encode() + b"\0")
            try:
                h.update(f.read_bytes())
            except OSError:
                h.update(b"?")
        _CODE_FP = h.hexdigest()
    return _CODE_FP


def processor_fingerprint(proc: Processor) -> str:
    return snap.fingerprint(proc.engine.cfg, proc.guard.cfg, code_fingerprint())


def record_digest(key: bytes | None, value: bytes | None) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(b"-" if key is None else b"k%d:" % len(key) + key)
    h.update(b"-" if value is None else b"v" + value)
    return h.hexdigest()


def snapshot_processor(proc: Processor, meta: dict) -> bytes:
    """The state of ``proc`` (engine and clock guard) as snapshot bytes."""
    return snap.pack({"engine": proc.engine, "guard": proc.guard}, processor_fingerprint(proc), meta)


def load_processor(data: bytes, config: CoreConfig | None = None) -> tuple[dict, Processor]:
    """(metadata, processor) of snapshot bytes; ``SnapshotError`` unless they
    are a snapshot of this code and configuration."""
    ref = Processor(Engine(config))
    meta, state = snap.unpack(data, processor_fingerprint(ref))
    if type(state) is not dict or not isinstance(state.get("engine"), Engine) \
            or type(state.get("guard")) is not type(ref.guard):
        raise snap.SnapshotError("not a processor's state")
    proc = Processor(state["engine"])
    proc.guard = state["guard"]
    return meta, proc


def refs_onto_snapshot(proc: Processor, refs: Iterable[bytes]) -> None:
    """Apply the references seen to a processor loaded from a snapshot, so
    that it holds what a fresh one given the same references and records
    would. The federation's words it holds are repeats (the core ignores
    them; the new ones sort in after them, as they arrived). lapstream's own
    claims from other venues are taken from the references alone: applied
    over the snapshot's, a claim changed and changed back, or withdrawn and
    set again, would keep an older time or place."""
    foreign = getattr(proc.engine, "foreign", None)
    if isinstance(foreign, dict):
        foreign.clear()
    for raw in refs:
        proc.handle(raw)


def fork_packer(make: Callable[[], bytes]) -> tuple[int, int]:
    """Run ``make`` in a forked child: a copy-on-write image of this process
    at this instant, so the state is serialised as it is now while the
    parent goes on handling records (a big state takes seconds: on the event
    loop that would stall records, health and the group's heartbeats). Returns
    (child pid, the read end of a pipe the bytes come through); ``collect``
    reads them."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:      # the child: never returns
        code = 1
        try:
            os.close(r)
            try:
                signal.set_wakeup_fd(-1)       # (the parent's event loop's, not ours)
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_DFL)
            except (ValueError, OSError):
                pass
            view = memoryview(make())
            while view:
                view = view[os.write(w, view):]
            code = 0
        except BaseException as exc:
            try:
                os.write(2, f"lapstream: snapshot child failed: {exc!r}\n".encode())
            except BaseException:
                pass
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _read_all(fd: int) -> bytes:
    parts: list[bytes] = []
    try:
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                return b"".join(parts)
            parts.append(b)
    finally:
        os.close(fd)


async def collect(pid: int, fd: int) -> bytes:
    """The bytes a ``fork_packer`` child wrote (raises if it failed)."""
    loop = asyncio.get_running_loop()
    try:
        data = await loop.run_in_executor(None, _read_all, fd)
    finally:
        _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"snapshot child {pid} exited with {code}")
    return data


_REF_MARK = b"record_ref"


def handle_raw(proc: Processor, raw: bytes, tag=None) -> tuple[list[dict], Rejected | None]:
    """One record of ``timing.raw`` through ``proc``, as the worker handles it
    (live, when rebuilding a partition, and the gateway's judge of set-ups:
    ``streams.gateway_state``): ``Processor.handle``, except that a
    ``record_ref`` is refused. The contract puts record references on
    ``timing.records.ref`` (every worker reads all of it); one on
    ``timing.raw`` would reach only its venue's partition. A recorded feed
    is not Kafka: ``lapstream process`` applies its ``record_ref`` lines and
    ``lapstream replay`` routes them to ``timing.records.ref``."""
    if isinstance(raw, (bytes, bytearray)) and _REF_MARK in raw:   # rare: only then is the kind read twice
        rej = None
        try:
            msg = decode(raw)
            ref = msg["kind"] == "record_ref"
        except Rejected as exc:   # what is wrong with it: said with the topic if it is a record_ref
            ref = type(msg := _loads_or_none(raw)) is dict and msg.get("kind") == "record_ref"
            rej = exc
        except Exception:         # (decode raises only Rejected; belt and braces)
            ref = False
        if ref:
            if proc.late:
                proc.late = []
            proc.rejected(raw)
            where = "record_ref on timing.raw: record references belong on timing.records.ref (docs/contract.md)"
            if rej is None:
                return [], Rejected("unknown_kind", f"{where}, not applied")
            return [], Rejected(rej.reason, f"{where}; and {rej}")
    return proc.handle(raw, tag)


MAX_VENUE_LABELS = 256     # venues with series of their own on one worker; beyond: "other"
MAX_SOURCE_LABELS = 8      # decoder sources per venue (a primary and a backup system); beyond: "other"


class LabelCap:
    """Metric label values taken from input, bounded: the first venues and
    sources seen keep their name, the rest share ``other`` (20,000 forged
    heartbeat sources would otherwise create 40,000 series)."""

    __slots__ = ("venues", "sources")

    def __init__(self) -> None:
        self.venues: set[str] = set()
        self.sources: dict[str, set[str]] = {}

    def venue(self, vid: str) -> str:
        vs = self.venues
        if vid in vs:
            return vid
        if len(vs) < MAX_VENUE_LABELS and vid != "other":
            vs.add(vid)
            return vid
        return "other"

    def source(self, vid: str, src: str) -> tuple[str, str]:
        lv = self.venue(vid)
        ss = self.sources.get(lv)
        if ss is None:
            ss = self.sources[lv] = set()
        if src in ss:
            return lv, src
        if len(ss) < MAX_SOURCE_LABELS and src != "other":
            ss.add(src)
            return lv, src
        return lv, "other"

    def forget(self, lv: str) -> set[str]:
        """Drop a venue's labels (its partition went elsewhere); its source labels."""
        if lv != "other":
            self.venues.discard(lv)
        return self.sources.pop(lv, set()) | {"other"}


# Which decoder sources are watched for silence (LapstreamDecoderSilent). A
# source is a tracked decoder once it has proved itself; one silent for far
# longer than any race is forgotten and its series removed.
PROVE_BEATS = 3                 # heartbeats before a source is a tracked decoder ...
PROVE_SPAN_US = 2_000_000       # ... spanning at least this much of their own t_us (decoders beat at 1 Hz)
FORGET_S = 1800.0               # tracked, silent this long by the worker's clock: forgotten (30 min)
FORGET_US = 1_800_000_000       # heartbeat age published only within this of the venue's clock (30 min)
MAX_CANDIDATES = 64             # unproven sources remembered per venue (the oldest go first)
MAX_FORGOTTEN = 256             # forgotten sources remembered per venue


class Decoders:
    """The decoder sources a worker watches, by (venue, source) as in the
    heartbeats (no I/O; the caller passes its clock).

    - A source heard for the first time is a *candidate*: it gets no series.
      It becomes *tracked* (a ``lapstream_decoder_silence_seconds`` series,
      counted from its last heartbeat by the worker's clock) once
      ``PROVE_BEATS`` of its heartbeats span ``PROVE_SPAN_US`` of their own
      ``t_us``: a decoder beats once a second, a stray message (a test
      decoder, a typo in a source name) does not.
    - A tracked source silent for ``FORGET_S`` (30 min, far longer than any
      race) by the worker's clock is *forgotten* (its series are removed, so
      an alert on it resolves); so is a candidate that did not prove itself
      in that time. A forgotten source that beats again starts over as a
      candidate.
    - At a takeover (``seed``) the sources the rebuilt state knows with a
      heartbeat within ``FORGET_US`` of the venue's clock, and not seen as
      unproven candidates in the replay, are tracked from then; when a
      partition is rebuilt at its first record instead, they are only
      *known* (a heartbeat-age series, no silence series:
      LapstreamDecoderUnheardSinceTakeover).

    A heartbeat counts when the adapter consumes it as applied, and also
    when a gauge pass finds a newer one applied in the state (the clock
    guard held it and applied it with a later message: a backup decoder
    running seconds ahead); such a one counts at the pass's time (the worker
    updates the gauges every second).

    Bounded: ``MAX_CANDIDATES`` and ``MAX_FORGOTTEN`` per venue; tracked
    sources are bounded by the time it takes to prove one (label values are
    capped separately: ``LabelCap``)."""

    __slots__ = ("tracked", "candidates", "forgotten", "known")

    def __init__(self) -> None:
        self.tracked: dict[tuple[str, str], float] = {}        # (venue, source) -> clock of its last heartbeat
        self.known: set[tuple[str, str]] = set()               # known from a rebuilt state (heartbeat age only)
        self.candidates: dict[str, dict[str, list]] = {}       # venue -> source -> [first t, beats, last t, clock]
        self.forgotten: dict[str, dict[str, float]] = {}       # venue -> source -> clock it was forgotten at

    def beat(self, venue: str, source: str, t_us: int, now: float, seen: bool = False) -> bool:
        """A heartbeat the core applied; True if the source is tracked (now).
        ``seen``: not consumed now but found applied in the state (a heartbeat
        the clock guard held, applied with a later message): counted only if
        newer than the source's last one counted."""
        key = (venue, source)
        tracked = self.tracked
        if key in tracked:
            if now > tracked[key]:
                tracked[key] = now
            return True
        cands = self.candidates.get(venue)
        if cands is None:
            cands = self.candidates[venue] = {}
        c = cands.get(source)
        if seen and c is not None and t_us <= c[2]:
            return False
        if c is None:
            if len(cands) >= MAX_CANDIDATES:
                old = min(cands, key=lambda s: cands[s][3])
                del cands[old]
                self._forget(venue, old, now)
            c = cands[source] = [t_us, 0, t_us, now]
            gone = self.forgotten.get(venue)
            if gone is not None:
                gone.pop(source, None)
        c[1] += 1
        if t_us < c[0]:
            c[0] = t_us
        if t_us > c[2]:
            c[2] = t_us
        c[3] = now
        if c[1] >= PROVE_BEATS and c[2] - c[0] >= PROVE_SPAN_US:
            del cands[source]
            tracked[key] = now
            return True
        return False

    def is_candidate(self, venue: str, source: str) -> bool:
        cands = self.candidates.get(venue)
        return cands is not None and source in cands

    def is_forgotten(self, venue: str, source: str) -> bool:
        gone = self.forgotten.get(venue)
        return gone is not None and source in gone

    def seed(self, venue: str, source: str, now: float, track: bool = True) -> None:
        """A source the state knows at a takeover: tracked from ``now`` (or,
        ``track`` false, known) unless the replay saw it only as an unproven
        candidate."""
        if not self.is_candidate(venue, source):
            if track:
                self.tracked.setdefault((venue, source), now)
            elif (venue, source) not in self.tracked:
                self.known.add((venue, source))
            gone = self.forgotten.get(venue)
            if gone is not None:
                gone.pop(source, None)

    def watched(self, venue: str, source: str) -> bool:
        """Tracked or known, not forgotten: its heartbeat age is published."""
        key = (venue, source)
        return key in self.tracked or (key in self.known and not self.is_forgotten(venue, source))

    def untrack(self, venue: str, source: str, now: float) -> None:
        self.known.discard((venue, source))
        if self.tracked.pop((venue, source), None) is not None:
            self._forget(venue, source, now)

    def _forget(self, venue: str, source: str, now: float) -> None:
        gone = self.forgotten.get(venue)
        if gone is None:
            gone = self.forgotten[venue] = {}
        gone[source] = now
        if len(gone) > MAX_FORGOTTEN:
            del gone[min(gone, key=gone.__getitem__)]

    def sweep(self, now: float) -> list[tuple[str, str]]:
        """Forget the sources silent for ``FORGET_S``; the tracked ones forgotten."""
        out = [key for key, at in self.tracked.items() if now - at >= FORGET_S]
        for venue, source in out:
            del self.tracked[(venue, source)]
            self.known.discard((venue, source))
            self._forget(venue, source, now)
        for venue, cands in list(self.candidates.items()):
            for source in [s for s, c in cands.items() if now - c[3] >= FORGET_S]:
                del cands[source]
                self._forget(venue, source, now)
            if not cands:
                del self.candidates[venue]
        return out

    def drop_venue(self, venue: str) -> None:
        """The venue went to another worker: nothing of it is watched here."""
        for key in [k for k in self.tracked if k[0] == venue]:
            del self.tracked[key]
        self.known = {k for k in self.known if k[0] != venue}
        self.candidates.pop(venue, None)
        self.forgotten.pop(venue, None)


class LiveAdapter:
    def __init__(self, send: Send, rebuild_source: RebuildSource | None = None, metrics=None,
                 config: CoreConfig | None = None, clock: Callable[[], float] = time.time,
                 perf: Callable[[], float] = time.perf_counter,
                 max_record_bytes: int = MAX_RECORD_BYTES,
                 snapshots: SnapshotStore | None = None,
                 committed_now: Callable[[int], Optional[int]] | None = None,
                 snapshot_every: int = SNAPSHOT_EVERY, snapshot_every_us: int = SNAPSHOT_EVERY_US,
                 snapshot_min: int = SNAPSHOT_MIN, snapshot_fork: bool = False,
                 snapshot_min_wall_s: float = 0.0) -> None:
        self.send = send
        self.max_record_bytes = max_record_bytes
        self.rebuild_source = rebuild_source
        self.metrics = metrics
        self.config = config
        self.procs: dict[int, Processor] = {}
        self.refs = RefLog()                 # record references seen (one per key)
        self.rebuilding = 0
        self.wall = clock
        self.perf = perf
        self.rebuilt_messages = 0
        self.next: dict[int, int] = {}                  # partition -> next offset the state lacks
        self.pending: dict[int, asyncio.Future] = {}    # partition -> state being rebuilt
        self.building: set = set()                      # processors being rebuilt
        self.assigned: set | None = None                # partitions the group gave us (None: not told)
        self.decoders = Decoders()                      # which decoder sources are watched for silence
        self._silence_keys: set = set()                 # label keys with a silence series now
        self._age_keys: set = set()                     # label keys with a heartbeat-age series now
        self._hb_seen: dict[tuple[str, str], int] = {}  # (venue, source) -> its last heartbeat t_us, at the last gauges
        self.recent: dict[int, Recent] = {}             # partition -> digests of its last records
        self.labels = LabelCap()
        self.truncations = 0                            # data losses of the broker detected
        self._raw_child: dict = {}       # labelled metric children, looked up once
        self._derived_child: dict = {}
        # snapshots: the store, and the group's committed offset per partition
        # (a snapshot at o is saved once o is committed; None: never)
        self.snapshots = snapshots
        self.committed_now = committed_now
        self.snapshot_every = snapshot_every
        self.snapshot_every_us = snapshot_every_us
        self.snapshot_min = snapshot_min
        self.snapshot_fork = snapshot_fork and hasattr(os, "fork")   # serialise in a forked child
        self.snapshot_min_wall_s = snapshot_min_wall_s     # and not more often than this (worker clock)
        self.snap_wall: dict[int, float] = {}              # partition -> worker clock of its last snapshot
        self.forking: asyncio.Future | None = None         # the child's snapshot being collected
        self.snap_at: dict[int, tuple[int, int]] = {}      # partition -> (offset, event time) of the last
        self.unsaved: dict[int, tuple[int, bytes]] = {}    # partition -> (offset, bytes) awaiting the commit
        self.snapshots_taken = 0
        self.snapshots_saved = 0
        self.snapshot_loads: collections.Counter = collections.Counter()   # loaded / rejected / none
        self.snapshot_offset: dict[int, int] = {}          # partition -> offset its state was loaded at

    # -- partitions ------------------------------------------------------------

    def _new_processor(self) -> Processor:
        proc = Processor(Engine(self.config))
        self.building.add(proc)    # references that arrive while it is built reach it too
        for raw in self.refs:
            proc.handle(raw)
        return proc

    async def _replay(self, proc: Processor, partition: int, start: int, end: int,
                      seen_from: int | None = None, check: str | None = None) -> int | None:
        """Feed records [start, end) of the partition into ``proc``, emitting
        nothing. Returns the last offset fed (``start - 1``: none). With
        ``seen_from``, records [seen_from, start) are read into the redelivery
        digests only, and ``check`` is the digest the record at ``start - 1``
        must have: if it has another (or is missing), nothing is fed and
        ``None`` is returned."""
        last = start - 1
        read_from = start if seen_from is None else seen_from
        if end <= read_from or self.rebuild_source is None:
            return last
        self.rebuilding += 1
        recent = self.recent[partition] = Recent()
        verified = check is None
        source = self.rebuild_source(partition, read_from, end)
        try:
            async for off, key, raw in source:
                if off < start:
                    recent.add(off, key, raw)
                    if off == start - 1 and not verified:
                        verified = record_digest(key, raw) == check
                        if not verified:
                            return None
                    continue
                if not verified:
                    return None      # the record the snapshot ends with is not in the log
                handle_raw(proc, raw, (off, key))   # (a message held now may be refused later, live)
                msg = proc.msg
                if msg is not None and msg["kind"] == "heartbeat":   # (proves or not a source: Decoders)
                    self.decoders.beat(msg["venue"], msg["source"], msg["t_us"], self.wall())
                recent.add(off, key, raw)
                self.rebuilt_messages += 1
                last = off
        finally:
            self.rebuilding -= 1
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()       # (stopped early: its consumer is stopped now)
        if not verified:
            return None
        return last

    def assign(self, partitions: Iterable[int], committed: Callable[[int], Awaitable[int]]) -> None:
        """The partitions this worker now has (the whole assignment): state of
        the others is dropped; new ones are rebuilt now (not at their first
        record), so a venue whose decoders are silent is still watched."""
        mine = set(partitions)
        self.revoke([p for p in list(self.procs) + list(self.pending) if p not in mine])
        self.assigned = mine
        for p in sorted(mine):
            if p not in self.procs and p not in self.pending:
                self.pending[p] = asyncio.ensure_future(self._build(p, committed))

    async def _fresh(self, partition: int, upto: int) -> tuple[Processor, int]:
        """A processor holding the state of records [0, upto) of the partition,
        and the last offset the log had of them: from the newest usable
        snapshot and the records after it, else from the whole log."""
        got = await self._from_snapshot(partition, upto)
        if got is not None:
            return got
        proc = self._new_processor()
        try:
            full = await self._replay(proc, partition, 0, upto)
            last = upto - 1 if full is None else full   # (None only when a check fails; none here)
        finally:
            self.building.discard(proc)
        self.snap_at[partition] = (0, -1)
        return proc, last

    async def _from_snapshot(self, partition: int, upto: int) -> tuple[Processor, int] | None:
        store = self.snapshots
        if store is None or upto <= 0 or self.rebuild_source is None:
            return None
        found = store.candidates(partition, upto)
        try:
            async for data in found:
                try:
                    meta, proc = load_processor(data, self.config)
                    off = meta.get("offset")
                    if meta.get("partition") != partition or type(off) is not int or not 0 < off <= upto:
                        raise snap.SnapshotError(f"made for partition {meta.get('partition')} offset {off}, "
                                                 f"not partition {partition} at or below {upto}")
                except snap.SnapshotError as exc:
                    self._count_load("rejected")
                    log.warning("timing.raw[%s]: snapshot ignored: %s", partition, exc)
                    continue
                # references that arrived since the snapshot (or while this is
                # built) reach it too
                self.building.add(proc)
                try:
                    refs_onto_snapshot(proc, self.refs)
                    last = await self._replay(proc, partition, off, upto,
                                              seen_from=max(0, off - RECENT_RECORDS), check=meta.get("last"))
                finally:
                    self.building.discard(proc)
                if last is None:
                    self._count_load("rejected")
                    log.warning("timing.raw[%s]: snapshot at offset %s ignored: the log no longer holds "
                                "the record it ends with (the broker lost or reused offsets)", partition, off)
                    continue
                log.info("timing.raw[%s]: state loaded from the snapshot at offset %s, %s records replayed",
                         partition, off, max(0, upto - off))
                self._count_load("loaded")
                self.snapshot_offset[partition] = off
                self.snap_at[partition] = (off, self._event_time(proc))
                return proc, (last if last >= off else off - 1)
        except asyncio.CancelledError:
            raise
        except Exception as exc:   # the store failed: the log is still there
            self._count_load("rejected")
            log.warning("timing.raw[%s]: snapshots unreadable (%r): rebuilding from the log", partition, exc)
        finally:
            aclose = getattr(found, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.exception("closing the snapshot reader")
        self._count_load("none")
        return None

    def _count_load(self, result: str) -> None:
        self.snapshot_loads[result] += 1
        if self.metrics is not None:
            try:
                self.metrics.snapshot_loads.labels(result).inc()
            except Exception:
                log.exception("metrics")

    @staticmethod
    def _event_time(proc: Processor) -> int:
        t = -1
        for v in proc.engine.venues.values():
            if v.clock > t:
                t = v.clock
        return t

    # -- taking snapshots ----------------------------------------------------------

    def _maybe_snapshot(self, partition: int, proc: Processor, nxt: int) -> None:
        """After the record at ``nxt - 1``: a snapshot if ``snapshot_every``
        records, or ``snapshot_every_us`` of event time after at least
        ``snapshot_min`` records, have passed since the last one, and (when
        catching up: a replay, a backlog) not within ``snapshot_min_wall_s``
        of the worker's clock of the last one. Clocks are read once every 256
        records."""
        at = self.snap_at.get(partition)
        if at is None:
            at = self.snap_at[partition] = (nxt - 1, self._event_time(proc))
        n = nxt - at[0]
        if n < self.snapshot_min:
            return
        by_count = n >= self.snapshot_every
        if n % 256 and not (by_count and self.snapshot_min_wall_s <= 0):
            return
        if self.snapshot_min_wall_s > 0:
            w = self.snap_wall.get(partition)
            if w is not None and self.wall() - w < self.snapshot_min_wall_s:
                return
        if not by_count:
            t = self._event_time(proc)
            if at[1] < 0:
                self.snap_at[partition] = (at[0], t)
                return
            if t < 0 or t - at[1] < self.snapshot_every_us:
                return
        self.take_snapshot(partition, proc, nxt)

    def take_snapshot(self, partition: int, proc: Processor, nxt: int) -> bytes | None:
        recent = self.recent.get(partition)
        rec = recent.last if recent is not None else None
        if rec is None or rec[0] != nxt - 1:
            return None          # (the record it ends with is not known: no check possible)
        last = record_digest(rec[1], rec[2])
        meta = {"partition": partition, "offset": nxt, "last": last}
        c0 = self.perf()
        if self.snapshot_fork and self.forking is not None and not self.forking.done():
            return None          # one child at a time: tried again at the next record
        self.snap_at[partition] = (nxt, self._event_time(proc))
        self.snap_wall[partition] = self.wall()
        if self.snapshot_fork:
            try:
                pid, fd = fork_packer(lambda: snapshot_processor(proc, meta))
            except OSError as exc:
                log.error("timing.raw[%s]: no snapshot at offset %s: cannot fork: %s", partition, nxt, exc)
                return None
            self.forking = asyncio.ensure_future(self._collect(partition, nxt, pid, fd, c0))
            return None
        try:
            data = snapshot_processor(proc, meta)
        except Exception as exc:   # a state this code cannot save: say so, carry on without
            log.error("timing.raw[%s]: no snapshot at offset %s: %s", partition, nxt, exc)
            return None
        self._taken(partition, nxt, data, self.perf() - c0)
        return data

    async def _collect(self, partition: int, nxt: int, pid: int, fd: int, c0: float) -> None:
        try:
            data = await collect(pid, fd)
        except Exception as exc:
            log.error("timing.raw[%s]: no snapshot at offset %s: %s (see the worker's log for the "
                      "child's error)", partition, nxt, exc)
            return
        if partition not in self.procs and partition not in self.pending:
            return               # revoked meanwhile
        have = self.unsaved.get(partition)
        if have is None or have[0] < nxt:
            self._taken(partition, nxt, data, self.perf() - c0)

    def _taken(self, partition: int, nxt: int, data: bytes, took: float) -> None:
        self.unsaved[partition] = (nxt, data)
        self.snapshots_taken += 1
        m = self.metrics
        if m is not None:
            try:
                m.snapshot_duration.observe(took)
                m.snapshot_bytes.set(len(data))
            except Exception:
                log.exception("metrics")

    async def save_snapshots(self) -> int:
        """Hand the snapshots whose offset the group has committed to the
        store (called by a timer: never from the record path). Returns how
        many were saved."""
        store = self.snapshots
        if store is None or not self.unsaved:
            return 0
        saved = 0
        for p, (off, data) in list(self.unsaved.items()):
            c = self.committed_now(p) if self.committed_now is not None else None
            if c is None or c < off:
                continue          # not yet: its records' events may not all be out
            if self.unsaved.get(p, (None,))[0] == off:
                del self.unsaved[p]
            try:
                await store.save(p, off, data)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("timing.raw[%s]: snapshot at offset %s not saved: %r", p, off, exc)
                continue
            saved += 1
            self.snapshots_saved += 1
            if self.metrics is not None:
                try:
                    self.metrics.snapshots_written.inc()
                except Exception:
                    log.exception("metrics")
        return saved

    async def _build(self, partition: int, committed: Callable[[int], Awaitable[int]]) -> None:
        upto = max(0, await committed(partition))
        proc, last = await self._fresh(partition, upto)
        if 0 <= last < upto - 1:
            # the log ends before the group's committed offset: the broker lost
            # its tail; later records will reuse those offsets and must be handled
            self._truncated(partition, last + 1, upto, "the log ends before the committed offset")
            upto = last + 1
        self.procs[partition] = proc
        self.next[partition] = upto
        # silence counts from the takeover for every decoder the state knows
        # (heard within FORGET_US of the venue's clock; not a stray the replay
        # saw unproven); one proved in the replay but long silent is let go
        now = self.wall()
        self._stale_decoders(proc, now)
        for vid, v in proc.engine.venues.items():
            for src, t in v.hb.items():
                if v.clock - t <= FORGET_US:
                    self.decoders.seed(vid, src, now)

    async def processor(self, partition: int, offset: int) -> Processor:
        task = self.pending.get(partition)
        if task is not None:
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if me is not None and me.cancelling():
                    raise          # we are being stopped ourselves
                # the build was cancelled (a revoke): fall back to the rebuild below
            except Exception:
                pass               # the build failed (e.g. the broker blinked): rebuild below
            finally:
                if self.pending.get(partition) is task:
                    del self.pending[partition]
        proc = self.procs.get(partition)
        if proc is None:
            # no (finished) assignment build: the first record sits at the
            # committed offset, everything before it is state
            proc, _ = await self._fresh(partition, offset)
            self.procs[partition] = proc
            self.next[partition] = offset
            now = self.wall()
            self._stale_decoders(proc, now)
            for vid, v in proc.engine.venues.items():
                for src, t in v.hb.items():
                    if v.clock - t <= FORGET_US:
                        self.decoders.seed(vid, src, now, track=False)
        return proc

    def _stale_decoders(self, proc: Processor, now: float) -> None:
        """After a rebuild: a source the replay proved but whose last heartbeat
        is more than FORGET_US behind its venue's clock is not watched."""
        dec = self.decoders
        for vid, v in proc.engine.venues.items():
            for src, t in v.hb.items():
                if v.clock - t > FORGET_US:
                    dec.untrack(vid, src, now)

    def revoke(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            task = self.pending.pop(p, None)
            if task is not None:
                task.cancel()
            self.next.pop(p, None)
            self.recent.pop(p, None)
            self.unsaved.pop(p, None)
            self.snap_at.pop(p, None)
            self.snap_wall.pop(p, None)
            proc = self.procs.pop(p, None)
            if proc is not None:
                # venues of a lost partition are another worker's now: drop their series
                m = self.metrics
                for vid in proc.engine.venues:
                    self.decoders.drop_venue(vid)
                    for key in [k for k in self._hb_seen if k[0] == vid]:
                        del self._hb_seen[key]
                    lv = self.labels.venue(vid)
                    if lv == "other":
                        continue     # shared with venues that stay (update_gauges drops what is gone)
                    if m is not None:
                        try:
                            m.event_lag.remove(lv)
                        except KeyError:
                            pass
                    for ls in self.labels.forget(lv):
                        self._silence_keys.discard((lv, ls))
                        self._age_keys.discard((lv, ls))
                        if m is not None:
                            for metric in (m.heartbeat_age, m.silence):
                                try:
                                    metric.remove(lv, ls)
                                except KeyError:
                                    pass

    # -- record references -----------------------------------------------------

    def on_ref(self, raw: bytes) -> Rejected | None:
        """A record reference from ``timing.records.ref`` (global: every worker reads
        all). The core judges a finish against references older than it; one
        that changes after finishes were judged has them judged again at the
        processor's next raw record, whose events carry the change (what the
        core returns for the reference itself is nothing: ``records_rejudge``).
        Returns the rejection of a reference that is not one (the caller
        dead-letters it): only ``record_ref`` messages belong on that topic, a
        raw message of another kind there would reach every worker's state
        outside the raw log."""
        try:
            msg = decode(raw)
            if msg["kind"] != "record_ref":
                raise Rejected("unknown_kind", f"a {msg['kind']} message on the record references topic "
                                               f"(only record_ref belongs there)")
        except Rejected as rej:
            return rej
        except Exception as exc:   # (decode raises only Rejected; belt and braces)
            return internal(exc)
        try:
            self.refs.add(raw, msg)
        except Exception as exc:   # (a decoded record_ref has what add reads; belt and braces)
            return internal(exc)
        return self._to_every_processor(lambda proc: proc.handle(raw))

    def on_ref_tombstone(self, key: bytes | None) -> Rejected | None:
        """A tombstone on ``timing.records.ref``: a record lapstream set, taken
        back (its key says which: ``streams.tombstones``). Every processor lets
        the claim go (the core gets a withdrawal ``record_ref`` built from the
        key) and the reference log forgets it. A key that is not one of ours
        is rejected (the caller dead-letters the key and the null value)."""
        try:
            msg = withdrawal_of_tombstone(key)
        except Rejected as rej:
            return rej
        self.refs.forget((msg["record"], msg["format"], msg["gender"], msg["distance_m"], msg["scope"]),
                         msg["race_id"], msg["holder"])
        return self._to_every_processor(lambda proc: proc.handle_msg(msg))

    def _to_every_processor(self, apply) -> Rejected | None:
        """A reference (or its withdrawal) applied by every processor, those
        rebuilding included (each judges its own venues' races against it);
        the first rejection, if any."""
        bad = None
        for proc in list(self.procs.values()) + list(self.building):
            _, why = apply(proc)
            if why is not None and bad is None:
                bad = why
        return bad

    async def on_ref_record(self, partition: int, offset: int, key: bytes | None, value: bytes | None,
                            source_topic: str = RECORDS_REF.name) -> Rejected | None:
        """``on_ref`` for a record of the topic: a bad one is dead-lettered
        (by every worker that reads it: each reads the whole topic; the
        source headers tell repeats apart)."""
        try:
            rej = self.on_ref(value) if value is not None else self.on_ref_tombstone(key)
        except Exception as exc:
            rej = internal(exc)
        if rej is not None:
            await self.deadletter(key, value, rej, source_topic, partition, offset)
        return rej

    async def deadletter(self, key, value, rej: Rejected, source_topic: str, partition: int,
                         offset: int) -> None:
        k, v, h = deadletter_record(key, value, [
            ("error", str(rej).encode()),
            ("source-topic", source_topic.encode()),
            ("source-partition", str(partition).encode()),
            ("source-offset", str(offset).encode()),
        ], self.max_record_bytes)
        await self.send(DEADLETTER.name, k, v, h)
        m = self.metrics
        if m is not None:
            try:
                m.deadletter(rej.reason)
            except Exception:
                log.exception("metrics")

    # -- raw records -----------------------------------------------------------

    async def on_raw(self, partition: int, offset: int, key: bytes | None, value: bytes,
                     source_topic: str = "timing.raw") -> list[dict]:
        t0 = self.perf()
        proc = await self.processor(partition, offset)
        nxt = self.next[partition]
        if offset < nxt:
            recent = self.recent.get(partition)
            if recent is None or not recent.differs(offset, key, value):
                return []    # redelivered (at-least-once): already in the state, its events already sent
            # another record at an offset already handled: the broker lost the
            # tail of its log and reuses those offsets. The state keeps what
            # was handled (its facts are out); this record and those after it
            # are new: handled, not skipped.
            self._truncated(partition, offset, nxt, "a different record at an offset already handled")
            nxt = offset
        if offset > nxt and self.rebuild_source is not None:
            # records between what the state holds and this one (the partition was
            # elsewhere, or a batch was abandoned): handle them now, emitting; a
            # repeat carries the same ids, a silent skip could lose facts
            self.next[partition] = offset    # (re-entrancy guard)
            async for off, k, raw in self.rebuild_source(partition, nxt, offset):
                await self._handle(proc, partition, off, k, raw, source_topic)
        self.next[partition] = offset + 1
        events = await self._handle(proc, partition, offset, key, value, source_topic, t0)
        if self.assigned is not None and partition not in self.assigned:
            # handled while the partition was being taken away: its events are out
            # (the new owner may repeat them, same ids), its state is not ours
            self.revoke([partition])
        elif self.snapshots is not None and self.procs.get(partition) is proc:
            try:
                self._maybe_snapshot(partition, proc, offset + 1)
            except Exception:
                log.exception("snapshot of timing.raw[%s]", partition)
        return events

    def _truncated(self, partition: int, offset: int, nxt: int, why: str) -> None:
        self.truncations += 1
        log.error("timing.raw[%s]: offsets from %s reused (%s; this worker had handled up to %s): "
                  "the broker lost acknowledged records; the state keeps them, new records are handled",
                  partition, offset, why, nxt - 1)
        self.next[partition] = offset
        recent = self.recent.get(partition)
        if recent is not None:
            recent.drop_from(offset)
        if self.metrics is not None:
            try:
                self.metrics.log_truncations.inc()
            except Exception:
                log.exception("metrics")

    async def _handle(self, proc: Processor, partition: int, offset: int, key, value: bytes,
                      source_topic: str, t0: float | None = None) -> list[dict]:
        """One record: total. Whatever the bytes, the record's events are sent
        or it is dead-lettered; an exception here (outside the sends, whose
        failures stop the commits: SendGuard in streams.app) dead-letters the
        record and the worker goes on."""
        if t0 is None:
            t0 = self.perf()
        c0 = self.perf()
        recent = self.recent.get(partition)
        if recent is None:
            recent = self.recent[partition] = Recent()
        recent.add(offset, key, value)
        try:
            events, rej = handle_raw(proc, value, (offset, key))
            late = proc.late
            out = self._outgoing(events, source_topic, partition, offset)
        except Exception as exc:
            events, rej, late, out = [], internal(exc), [], []
        c1 = self.perf()
        for (off, k), raw, why in late:
            # messages the clock guard held, refused now
            await self.deadletter(k, raw, why, source_topic, partition, off)
        if rej is None and len(out) and out[-1] is None:
            out.pop()
            rej = Rejected("oversized", "a derived event of this record exceeds the producer's "
                                        f"record size ({self.max_record_bytes} bytes): not sent")
        if rej is not None:
            await self.deadletter(key, value, rej, source_topic, partition, offset)
        send = self.send
        for topic, k, v, h in out:
            await send(topic, k, v, h)
        try:
            self._account(proc, events, c1 - c0, t0)
        except Exception:   # metrics must never stop the pipeline
            log.exception("metrics of %s:%s:%s", source_topic, partition, offset)
        return events

    def _outgoing(self, events: list[dict], source_topic: str, partition: int, offset: int) -> list:
        """The records to send for the events (serialised before anything is
        sent); a trailing ``None`` if an event was too large to send."""
        out: list = []
        if not events:
            return out
        dumps = orjson.dumps
        limit = self.max_record_bytes
        # provenance for audits and latency measurement (not part of the payload)
        trace = [("lapstream-source", f"{source_topic}:{partition}:{offset}".encode())]
        too_large = False
        for ev in events:
            kind = ev["kind"]
            k = key_of(ev).encode()
            v = dumps(ev)
            if record_size(k, v, trace) > limit:
                too_large = True
                continue
            out.append((TOPIC_OF_KIND[kind], k, v, trace))
            if kind == "record":
                upd = own_ref_update(ev)
                if upd is not None:   # a record in force, or a tombstone: taken back
                    rk, ref = upd
                    out.append((RECORDS_REF.name, rk.encode(), None if ref is None else dumps(ref), None))
        if too_large:
            out.append(None)
        return out

    def _account(self, proc: Processor, events: list[dict], core_s: float, t0: float) -> None:
        msg = proc.msg
        if msg is not None and msg["kind"] == "heartbeat":
            self.decoders.beat(msg["venue"], msg["source"], msg["t_us"], self.wall())
        m = self.metrics
        if m is None:
            return
        key = (proc.kind, proc.outcome)
        child = self._raw_child.get(key)
        if child is None:
            child = self._raw_child[key] = m.raw_messages(*key)
        child.inc()
        m.core_duration.observe(core_s)
        for ev in events:
            kind = ev["kind"]
            child = self._derived_child.get(kind)
            if child is None:
                child = self._derived_child[kind] = m.derived.labels(kind)
            child.inc()
            if kind == "record" and not ev.get("withdrawn"):
                m.records.labels(ev["record"], "true" if ev["equalled"] else "false").inc()
            elif kind == "incident":
                m.incidents.labels(ev["type"], ev["status"]).inc()
        m.latency.observe(self.perf() - t0)

    # -- gauges ----------------------------------------------------------------

    def update_gauges(self) -> None:
        m = self.metrics
        if m is None:
            return
        now = self.wall()
        races = 0
        venues = 0
        lags: dict[str, int] = {}
        ages: dict[tuple[str, str], int] = {}
        cap = self.labels
        dec = self.decoders
        # heartbeats applied since the last pass that were not consumed as
        # such (held by the clock guard: a decoder running seconds ahead is
        # applied at the pace of the other) count too, at this pass's time
        hb_seen = self._hb_seen
        for proc in self.procs.values():
            for vid, v in proc.engine.venues.items():
                for src, t in v.hb.items():
                    key = (vid, src)
                    last = hb_seen.get(key)
                    if last is None or t > last:
                        hb_seen[key] = t
                        if last is not None:
                            dec.beat(vid, src, t, now, seen=True)
        for key in dec.sweep(now):
            log.info("decoder source %s at %s silent for %.0f s: forgotten", key[1], key[0], FORGET_S)
        for proc in self.procs.values():
            eng = proc.engine
            races += eng.active_races()
            for vid, v in eng.venues.items():
                venues += 1
                if v.clock >= 0:
                    lv = cap.venue(vid)
                    if v.clock > lags.get(lv, -1):
                        lags[lv] = v.clock
                for src, t in v.hb.items():
                    # tracked; or known from a rebuilt state and recent by the venue's
                    # clock (LapstreamDecoderUnheardSinceTakeover)
                    if not dec.watched(vid, src) or (v.clock - t > FORGET_US and (vid, src) not in dec.tracked):
                        continue
                    key = cap.source(vid, src)
                    if t > ages.get(key, -1):     # "other": the freshest of the bucket
                        ages[key] = t
        for lv, t in lags.items():
            m.event_lag.labels(lv).set(now - t / 1e6)
        for key, t in ages.items():
            m.heartbeat_age.labels(*key).set(now - t / 1e6)
        heard: dict[tuple[str, str], float] = {}
        for (vid, src), at in dec.tracked.items():
            key = cap.source(vid, src)
            if at > heard.get(key, -1.0):         # "other": the freshest of the bucket
                heard[key] = at
        for key, at in heard.items():
            m.silence.labels(*key).set(now - at)
        # series of sources no longer watched (forgotten, gone elsewhere) are removed
        for metric, keys, have in ((m.heartbeat_age, self._age_keys, ages), (m.silence, self._silence_keys, heard)):
            for key in keys - have.keys():
                try:
                    metric.remove(*key)
                except KeyError:
                    pass
        self._age_keys = set(ages)
        self._silence_keys = set(heard)
        # label values of sources no longer watched go back to the cap (a
        # forgotten stray does not keep a real decoder's name in "other")
        used: dict[str, set] = {}
        for lv, ls in self._age_keys | self._silence_keys:
            used.setdefault(lv, set()).add(ls)
        for lv, names in cap.sources.items():
            names &= used.get(lv, set())
        m.active_races.set(races)
        m.active_venues.set(venues)

    def state_size(self) -> int:
        """Estimated bytes of the core state of every partition (for the ops
        gauge): counts weighed per item (agents/core/statesize.py), well
        under a millisecond at 240 races, where pickling the engine on the
        event loop took 60 ms and more."""
        return sum(approx_state_bytes(p.engine) for p in list(self.procs.values()))
