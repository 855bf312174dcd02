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
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import AsyncIterator, Awaitable, Callable, Iterable, Optional

import orjson

from agents.core.engine import CoreConfig, Engine, own_record_key, record_ref_of
from agents.core.statesize import approx_state_bytes
from schemas.decode import Rejected, decode
from streams.process import Processor, internal
from streams.topics import DEADLETTER, RECORDS_REF, TOPIC_OF_KIND, key_of

Send = Callable[[str, Optional[bytes], bytes, Optional[list]], Awaitable[None]]
RebuildSource = Callable[[int, int, int], AsyncIterator[tuple]]   # (partition, start, end) -> (offset, key, value)

log = logging.getLogger("lapstream")

# A Kafka producer refuses a record larger than its max request size (Faust's
# default: 1,000,000 bytes): a dead letter that large is cut (headers say so),
# a derived event that large is not sent (its record is dead-lettered).
MAX_RECORD_BYTES = 1_000_000
DEADLETTER_KEY_MAX = 1024          # a dead letter's key is cut beyond this
RECORD_OVERHEAD = 512              # batch and record framing, generously


def record_size(key: bytes | None, value: bytes | None, headers) -> int:
    """An upper bound of a record's size as a producer counts it."""
    n = RECORD_OVERHEAD + (len(key) if key else 0) + (len(value) if value else 0)
    for h, v in headers or ():
        n += len(h) + len(v) + 10
    return n


def deadletter_record(key: bytes | None, value: bytes | None, headers: list,
                      limit: int = MAX_RECORD_BYTES) -> tuple:
    """(key, value, headers) of a dead letter that fits the producer: the
    original bytes, or their first bytes with ``truncated: true`` and
    ``original-size`` (and ``original-key-size``) headers."""
    headers = list(headers)
    if value is None:    # a record without a value: a dead letter always has one
        headers.append(("null-value", b"true"))
        value = b""
    if key is not None and len(key) > DEADLETTER_KEY_MAX:
        headers.append(("original-key-size", str(len(key)).encode()))
        key = key[:DEADLETTER_KEY_MAX]
    if value is not None and record_size(key, value, headers) > limit:
        headers.append(("truncated", b"true"))
        headers.append(("original-size", str(len(value)).encode()))
        value = value[:max(0, limit - record_size(key, b"", headers))]
    return key, value, headers


RECENT_RECORDS = 2048      # per partition: digests kept to tell a redelivery from a reused offset


class Recent:
    """Digests of the last records handled on a partition, by offset. A record
    at an offset already handled is a redelivery only if it is the same
    record: after a broker lost the tail of its log, later records reuse
    those offsets with other content."""

    __slots__ = ("by_offset", "order", "size")

    def __init__(self, size: int = RECENT_RECORDS) -> None:
        self.by_offset: dict[int, int] = {}
        self.order: collections.deque = collections.deque()
        self.size = size

    def add(self, offset: int, key, value) -> None:
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
        for off in [o for o in self.by_offset if o >= offset]:
            del self.by_offset[off]
        self.order = collections.deque(o for o in self.order if o < offset)


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


class LiveAdapter:
    def __init__(self, send: Send, rebuild_source: RebuildSource | None = None, metrics=None,
                 config: CoreConfig | None = None, clock: Callable[[], float] = time.time,
                 perf: Callable[[], float] = time.perf_counter,
                 max_record_bytes: int = MAX_RECORD_BYTES) -> None:
        self.send = send
        self.max_record_bytes = max_record_bytes
        self.rebuild_source = rebuild_source
        self.metrics = metrics
        self.config = config
        self.procs: dict[int, Processor] = {}
        self.refs: list[bytes] = []          # record references seen, in order
        self.rebuilding = 0
        self.wall = clock
        self.perf = perf
        self.rebuilt_messages = 0
        self.next: dict[int, int] = {}                  # partition -> next offset the state lacks
        self.pending: dict[int, asyncio.Future] = {}    # partition -> state being rebuilt
        self.building: set = set()                      # processors being rebuilt
        self.assigned: set | None = None                # partitions the group gave us (None: not told)
        self.heard: dict[tuple[str, str], float] = {}   # (venue, source) -> wall time of last heartbeat
        self.recent: dict[int, Recent] = {}             # partition -> digests of its last records
        self.labels = LabelCap()
        self.truncations = 0                            # data losses of the broker detected
        self._raw_child: dict = {}       # labelled metric children, looked up once
        self._derived_child: dict = {}

    # -- partitions ------------------------------------------------------------

    def _new_processor(self) -> Processor:
        proc = Processor(Engine(self.config))
        self.building.add(proc)    # references that arrive while it is built reach it too
        for raw in self.refs:
            proc.handle(raw)
        return proc

    async def _replay(self, proc: Processor, partition: int, start: int, end: int) -> int:
        """Feed records [start, end) of the partition into ``proc``, emitting
        nothing. Returns the last offset fed (``start - 1``: none)."""
        last = start - 1
        if end <= start or self.rebuild_source is None:
            return last
        self.rebuilding += 1
        recent = self.recent[partition] = Recent()
        try:
            async for off, key, raw in self.rebuild_source(partition, start, end):
                proc.handle(raw, (off, key))   # (a message held now may be refused later, live)
                recent.add(off, key, raw)
                self.rebuilt_messages += 1
                last = off
        finally:
            self.rebuilding -= 1
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
        and the last offset the log had of them."""
        proc = self._new_processor()
        try:
            last = await self._replay(proc, partition, 0, upto)
        finally:
            self.building.discard(proc)
        return proc, last

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
        now = self.wall()
        for vid, v in proc.engine.venues.items():
            for src in v.hb:
                self.heard.setdefault(self.labels.source(vid, src), now)

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
        return proc

    def revoke(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            task = self.pending.pop(p, None)
            if task is not None:
                task.cancel()
            self.next.pop(p, None)
            self.recent.pop(p, None)
            proc = self.procs.pop(p, None)
            if proc is not None:
                # venues of a lost partition are another worker's now: drop their series
                m = self.metrics
                for vid in proc.engine.venues:
                    lv = self.labels.venue(vid)
                    if lv == "other":
                        continue     # shared with venues that stay
                    if m is not None:
                        try:
                            m.event_lag.remove(lv)
                        except KeyError:
                            pass
                    for ls in self.labels.forget(lv):
                        self.heard.pop((lv, ls), None)
                        if m is not None:
                            for metric in (m.heartbeat_age, m.silence):
                                try:
                                    metric.remove(lv, ls)
                                except KeyError:
                                    pass

    # -- record references -----------------------------------------------------

    def on_ref(self, raw: bytes) -> Rejected | None:
        """A record reference from ``timing.records.ref`` (global: every worker reads
        all). The core judges a finish against references older than it, so the
        order in which references and raw records arrive does not matter.
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
        self.refs.append(raw)
        bad = None
        for proc in list(self.procs.values()) + list(self.building):
            _, why = proc.handle(raw)
            if why is not None and bad is None:
                bad = why
        return bad

    async def on_ref_record(self, partition: int, offset: int, key: bytes | None, value: bytes | None,
                            source_topic: str = RECORDS_REF.name) -> Rejected | None:
        """``on_ref`` for a record of the topic: a bad one is dead-lettered
        (by every worker that reads it: each reads the whole topic; the
        source headers tell repeats apart)."""
        try:
            rej = self.on_ref(value if value is not None else b"")   # a tombstone: not JSON
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
            events, rej = proc.handle(value, (offset, key))
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
                ref = record_ref_of(ev)
                if ref is not None:
                    out.append((RECORDS_REF.name, own_record_key(ref).encode(), dumps(ref), None))
        if too_large:
            out.append(None)
        return out

    def _account(self, proc: Processor, events: list[dict], core_s: float, t0: float) -> None:
        msg = proc.msg
        if msg is not None and msg["kind"] == "heartbeat":
            self.heard[self.labels.source(msg["venue"], msg["source"])] = self.wall()
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
                    key = cap.source(vid, src)
                    if t > ages.get(key, -1):     # "other": the freshest of the bucket
                        ages[key] = t
        for lv, t in lags.items():
            m.event_lag.labels(lv).set(now - t / 1e6)
        for key, t in ages.items():
            m.heartbeat_age.labels(*key).set(now - t / 1e6)
        for key, heard_at in self.heard.items():
            m.silence.labels(*key).set(now - heard_at)
        m.active_races.set(races)
        m.active_venues.set(venues)

    def state_size(self) -> int:
        """Estimated bytes of the core state of every partition (for the ops
        gauge): counts weighed per item (agents/core/statesize.py), well
        under a millisecond at 240 races, where pickling the engine on the
        event loop took 60 ms and more."""
        return sum(approx_state_bytes(p.engine) for p in list(self.procs.values()))
