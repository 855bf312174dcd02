"""The bootstrap: settings -> Faust app, topics, the agent, health and metrics.

This is the one place where the live dependencies are wired. The agent is
thin: it hands each ``timing.raw`` record to ``agents.live.LiveAdapter`` and
sends what comes back.
"""
from __future__ import annotations

import asyncio
import collections.abc
import json
import logging
import os
from dataclasses import dataclass, field
from time import monotonic

import faust
from faust.sensors import Monitor
from faust.worker import Worker
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agents.live import LiveAdapter
from streams import defaults as D
from streams import topics as T
from streams.kafka_security import KafkaSecurity, checked_faust_extra
from streams.health import BrokerWatch, install_rate_limit
from streams.metrics import Metrics

log = logging.getLogger("lapstream")


@dataclass
class Settings:
    bootstrap: str = D.BOOTSTRAP          # host:port[,host:port]
    http_host: str = D.HTTP_HOST
    http_port: int = D.HTTP_PORT
    worker_id: str = D.WORKER_ID
    app_id: str = "lapstream"
    data_dir: str = ""
    session_timeout_s: float = 6.0
    heartbeat_s: float = 1.0
    commit_interval_s: float = 1.0
    fetch_max_wait_ms: int = 5
    batch_max: int = 1             # >1: the agent takes up to this many records at once ...
    batch_wait_s: float = 0.002    # ... or what arrived within this time
    broker_down_s: float = 15.0    # /readyz fails once the broker is unreachable this long
    snapshot_every: int = 100_000  # raw records of a partition between snapshots (0: no snapshots)
    snapshot_every_s: float = 600.0   # ... or this much of its event time ...
    snapshot_min: int = 2_000      # ... after at least this many records
    snapshot_fork: bool = True     # serialise in a forked child (False: on the event loop)
    snapshot_min_wall_s: float = 60.0   # not more often than this per partition (catching up)
    extra: dict = field(default_factory=dict)
    security: object = None       # streams.kafka_security.KafkaSecurity (None: from LAPSTREAM_KAFKA_*)

    @classmethod
    def from_env(cls, **over) -> "Settings":
        s = cls(
            http_host=os.environ.get("LAPSTREAM_HTTP_HOST", D.HTTP_HOST),
            http_port=int(os.environ.get("LAPSTREAM_HTTP_PORT", str(D.HTTP_PORT))),
            fetch_max_wait_ms=int(os.environ.get("LAPSTREAM_FETCH_MAX_WAIT_MS", "5")),
            batch_max=int(os.environ.get("LAPSTREAM_BATCH_MAX", "1")),
            commit_interval_s=float(os.environ.get("LAPSTREAM_COMMIT_INTERVAL_S", "1.0")),
            batch_wait_s=float(os.environ.get("LAPSTREAM_BATCH_WAIT_MS", "2")) / 1000,
            worker_id=os.environ.get("LAPSTREAM_WORKER_ID", D.WORKER_ID),
            broker_down_s=float(os.environ.get("LAPSTREAM_BROKER_DOWN_S", "15")),
            snapshot_every=int(os.environ.get("LAPSTREAM_SNAPSHOT_EVERY", "100000")),
            snapshot_every_s=float(os.environ.get("LAPSTREAM_SNAPSHOT_EVERY_S", "600")),
            snapshot_min=int(os.environ.get("LAPSTREAM_SNAPSHOT_MIN", "2000")),
            snapshot_fork=os.environ.get("LAPSTREAM_SNAPSHOT_FORK", "1") not in ("0", "false", "no"),
            snapshot_min_wall_s=float(os.environ.get("LAPSTREAM_SNAPSHOT_MIN_WALL_S", "60")),
        )
        extra = os.environ.get("LAPSTREAM_FAUST_SETTINGS")
        if extra:   # expert tuning: a JSON object of Faust settings
            s.extra = checked_faust_extra(json.loads(extra))   # no credentials: LAPSTREAM_KAFKA_*
        for k, v in over.items():
            if v is not None:
                setattr(s, k, v)
        return s


class QuietMonitor(Monitor):
    """Faust's Monitor keeps per-event statistics (and millisecond-named
    metrics) that nothing here reads: lapstream's catalogue (streams.metrics)
    is what ops watch. The per-event hooks do nothing; the rest is Faust's."""

    def on_message_in(self, tp, offset, message) -> None:
        pass

    def on_stream_event_in(self, tp, offset, stream, event):
        # Faust's stall check (aiokafka driver, verify_event_path, every
        # commit interval) reads ``stream_inbound_time``: left unset, every
        # partition with records looked as if its stream had never started
        # ("Stream has not started processing TP(...)", a false ERROR after
        # stream_processing_timeout). One dict store per event keeps it true.
        self.stream_inbound_time[tp] = monotonic()
        return None

    def on_stream_event_out(self, tp, offset, stream, event, state=None) -> None:
        pass

    def on_message_out(self, tp, offset, message) -> None:
        pass

    def on_send_initiated(self, producer, topic, message, keysize, valsize):
        return None

    def on_send_completed(self, producer, state, metadata) -> None:
        pass


_HANDED = object()


class _Continue(collections.abc.Coroutine):
    """A coroutine already started by ``send(None)``, which then yielded
    ``first`` (what it waits on), seen as a fresh coroutine: a Task (or an
    ``await``) drives it from its second step on. Whatever the Task throws
    in (a cancellation, even before its first step) reaches the inner
    coroutine where it waits, so it is never left suspended."""

    __slots__ = ("coro", "first")

    def __init__(self, coro, first) -> None:
        self.coro = coro
        self.first = first

    def send(self, value):
        if self.first is not _HANDED:
            out, self.first = self.first, _HANDED
            return out                 # the Task's first step: hand over what it waits on
        return self.coro.send(value)

    def throw(self, typ, val=None, tb=None):
        self.first = _HANDED
        if val is None and tb is None:
            return self.coro.throw(typ)
        return self.coro.throw(typ, val, tb)

    def close(self) -> None:
        self.first = _HANDED
        self.coro.close()

    # awaited directly (``await rest``): ``yield from`` drives the same
    # send/throw/close protocol
    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        return self.send(None)


def _close(coros) -> None:
    for c in coros:
        if asyncio.iscoroutine(c):
            c.close()          # never started: no "never awaited" warning


def start_eagerly(coro, others=()) -> tuple[bool, object]:
    """Run the first step of ``coro`` now, in the caller's task.

    Returns ``(True, result)`` if it finished in that step (``others``, the
    coroutines it was to race against, are closed unstarted), else ``(False,
    rest)`` where ``rest`` is a coroutine that finishes it. An exception of
    the first step propagates, as awaiting ``coro`` would raise it."""
    try:
        waits_on = coro.send(None)
    except StopIteration as stop:
        _close(others)
        return True, stop.value
    except BaseException:
        _close(others)
        raise
    return False, _Continue(coro, waits_on)


def _tuned_consumer(app: faust.App, fetch_max_wait_ms: int) -> None:
    """Three changes to Faust's aiokafka consumer, the first two measured on
    the Kafka benchmark (bench/bench_kafka.py).

    1. Fetch wait. Faust's driver hard-codes a 1.5 s fetch wait. Kafka answers
       a waiting fetch as soon as data arrives, but tansu answers at the end of
       the wait, so on tansu every quiet moment became up to 1.5 s of latency
       (measured: 381 ms per message at 1500 ms, 2-5 ms at 10 ms). The worker's
       consumer gets ``fetch_max_wait_ms`` from the settings instead.
    2. Eager hand-over. For every record Faust runs ``wait_first(callback(msg),
       suspend_flow.wait())``, which makes four tasks and an ``asyncio.wait``:
       a fifth of the worker's time in a profile. Handing a record to the
       stream almost never waits, so the callback is started in place; only
       if it does wait (a full stream buffer), or the flow is being
       suspended, does it continue under Faust's own ``wait_first`` (in a
       task, as before). Differences: the first step runs in the fetcher's
       task rather than in a task of its own on the next loop turn, so it
       must not use anything tied to the current task (``asyncio.timeout``;
       ``wait_for`` on Python 3.12+). On this path (conductor.on_message,
       the flow-control locks and queue puts) nothing is; the one
       ``wait_for`` (Faust's producer buffer, ``flush_atmost``) is only
       reached by ``send_soon``, which lapstream does not use. And the
       fetcher gives way to other tasks every 100 records (Faust's own
       ``sleep(0)``) rather than at every record.
    3. No commit past a lost event. Faust flushes the producer before it
       commits offsets; if a derived event failed to be delivered
       (``SendGuard``), the commit is refused and the worker crashes, so the
       records behind it are handled again (at-least-once, same event ids).
    """
    from faust.transport.drivers import aiokafka as drv
    from mode.services import WaitResults

    class ConsumerThread(drv.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport):
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_max_wait_ms
            return consumer

    class Consumer(drv.Consumer):
        def _new_consumer_thread(self):
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

        async def _commit(self, offsets):
            # Faust flushed the producer just before this: the delivery
            # callbacks of that flush have run (aiokafka resolves the message
            # futures before the batch's); one more loop turn costs nothing
            await asyncio.sleep(0)
            guard = getattr(self.app, "lapstream_sends", None)
            if guard is not None and guard.failed is not None:
                await self.crash(guard.failed)
                return False
            ok = await super()._commit(offsets)
            if ok:   # what the group has really committed (snapshots wait for it)
                done = getattr(self.app, "lapstream_committed", None)
                if done is not None:
                    for tp, off in offsets.items():
                        if tp.topic == T.RAW.name:
                            done[tp.partition] = off
            return ok

        async def wait_first(self, *coros, timeout=None):
            first = coros[0] if coros else None
            if (asyncio.iscoroutine(first) and not self.suspend_flow.is_set()
                    and not self._stopped.is_set() and not self._crashed.is_set()):
                done, value = start_eagerly(first, coros[1:])
                if done:
                    return WaitResults([first], [value], False)
                coros = (value,) + coros[1:]
            return await super().wait_first(*coros, timeout=timeout)

    app.transport.Consumer = Consumer


class RawSchema(faust.Schema):
    """``timing.raw`` records reach the agent as they are: key and value bytes,
    no codec (the decoder of ``schemas`` does the parsing). Faust's generic
    decode looks up serializers and settings for every record."""

    def compile(self, app, **kwargs):
        Event = app.conf.Event

        async def decode(message, *, propagate: bool = False):
            return Event(app, message.key, message.value, message.headers, message)

        return decode


class SendGuard:
    """Delivery results of the derived events. Faust only logs a failed send;
    here a failed delivery, a send that raises, or a record cut off half-way
    stops the next offset commit (``_tuned_consumer``) and crashes the
    worker, so the records behind a lost event are handled again by the
    next owner (same event ids) instead of being committed past."""

    def __init__(self) -> None:
        self.failed: BaseException | None = None
        self.sent = 0

    def on_done(self, fut) -> None:
        if fut.cancelled():
            exc = asyncio.CancelledError("send cancelled")
        else:
            exc = fut.exception()
        if exc is None:
            self.sent += 1
        else:
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        if self.failed is None:
            self.failed = exc
            log.error("a derived event may be lost (%r): no further offset commit", exc)


class KafkaSnapshots:
    """``timing.snapshots`` as the adapter's snapshot store (agents.live.SnapshotStore).

    Partition p of the topic holds the snapshots of timing.raw partition p. A
    snapshot is written as chunks (key ``p:slot:i``, at most ``CHUNK`` bytes:
    a producer refuses records over ~1 MB) and then a manifest (key ``p``, JSON:
    the raw offset, the chunks' offsets and sizes, the whole's size and
    blake2b). Two slots alternate, so that a snapshot being written never
    overwrites (under compaction) the chunks of the one in force. A reader
    looks for manifests from the end of the partition backwards, newest
    first, and reads the chunks a manifest names by their offsets."""

    CHUNK = 900_000
    MAX_SCAN = 4096           # records looked at, from the end, for manifests

    def __init__(self, bootstrap: str, kafka_kw: dict) -> None:
        self.bootstrap = bootstrap
        self.kafka_kw = kafka_kw
        self.producer: AIOKafkaProducer | None = None
        self.slot: dict[int, int] = {}

    async def save(self, partition: int, offset: int, data: bytes) -> None:
        import hashlib

        import orjson

        if self.producer is None:
            prod = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=0,
                                    max_request_size=2 * self.CHUNK, **self.kafka_kw)
            await prod.start()
            self.producer = prod
        prod = self.producer
        slot = 1 - self.slot.get(partition, 1)
        chunks = []
        for i, at in enumerate(range(0, max(1, len(data)), self.CHUNK)):
            piece = data[at:at + self.CHUNK]
            md = await prod.send_and_wait(T.SNAPSHOTS.name, value=piece, partition=partition,
                                          key=f"{partition}:{slot}:{i}".encode())
            chunks.append([md.offset, len(piece)])
        manifest = {"snapshot": 1, "partition": partition, "offset": offset, "slot": slot, "chunks": chunks,
                    "size": len(data), "sum": hashlib.blake2b(data, digest_size=16).hexdigest()}
        await prod.send_and_wait(T.SNAPSHOTS.name, value=orjson.dumps(manifest), partition=partition,
                                 key=str(partition).encode())
        self.slot[partition] = slot

    async def close(self) -> None:
        if self.producer is not None:
            prod, self.producer = self.producer, None
            await prod.stop()

    @staticmethod
    async def _read(consumer, tp, lo: int, hi: int):
        """Records lo <= offset < hi of ``tp`` (those the log still has)."""
        if hi <= lo:
            return
        consumer.seek(tp, lo)
        empty = 0
        while True:
            batch = await consumer.getmany(tp, timeout_ms=500, max_records=64)
            recs = batch.get(tp, ())
            for rec in recs:
                if rec.offset >= hi:
                    return
                if rec.offset >= lo:
                    yield rec
            if recs:
                empty = 0
                if recs[-1].offset >= hi - 1:
                    return
                continue
            if await consumer.position(tp) >= hi:
                return
            empty += 1
            if empty >= 3:
                return

    async def _assemble(self, consumer, tp, m: dict) -> bytes | None:
        """The bytes of a manifest's snapshot, or None if a chunk is gone or damaged."""
        import hashlib

        parts = []
        try:
            for c_off, size in m["chunks"]:
                got = None
                async for rec in self._read(consumer, tp, c_off, c_off + 1):
                    got = rec
                if got is None or got.offset != c_off or got.value is None or len(got.value) != size:
                    raise ValueError(f"chunk at {c_off} gone")
                parts.append(got.value)
        except (ValueError, TypeError) as exc:
            log.warning("%s[%s]: snapshot at offset %s incomplete (%s)", tp.topic, tp.partition, m["offset"], exc)
            return None
        data = b"".join(parts)
        if len(data) != m.get("size") or hashlib.blake2b(data, digest_size=16).hexdigest() != m.get("sum"):
            log.warning("%s[%s]: snapshot at offset %s damaged", tp.topic, tp.partition, m["offset"])
            return None
        return data

    async def candidates(self, partition: int, upto: int):
        import orjson

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None,
                                    auto_offset_reset="earliest", max_partition_fetch_bytes=4 * self.CHUNK,
                                    **self.kafka_kw)
        await consumer.start()
        try:
            tp = TopicPartition(T.SNAPSHOTS.name, partition)
            consumer.assign([tp])
            begin = (await consumer.beginning_offsets([tp])).get(tp, 0)
            end = (await consumer.end_offsets([tp])).get(tp, 0)
            hi, window = end, 4
            seen: set = set()
            # backwards from the end, a window at a time (a reader stops at
            # the first snapshot it can use: usually the last record)
            while hi > begin and end - hi < self.MAX_SCAN:
                lo = max(begin, hi - window)
                manifests: list[dict] = []
                async for rec in self._read(consumer, tp, lo, hi):
                    if rec.key is not None and b":" not in rec.key and rec.value:
                        try:
                            m = orjson.loads(rec.value)
                        except orjson.JSONDecodeError:
                            continue
                        if type(m) is dict and m.get("partition") == partition \
                                and type(m.get("offset")) is int and type(m.get("chunks")) is list:
                            manifests.append(m)
                hi, window = lo, window * 4
                manifests.sort(key=lambda m: -m["offset"])
                for m in manifests:
                    if m["offset"] > upto or m["offset"] in seen:
                        continue
                    seen.add(m["offset"])
                    data = await self._assemble(consumer, tp, m)
                    if data is not None:
                        self.slot.setdefault(partition, m.get("slot") if m.get("slot") in (0, 1) else 1)
                        yield data
        finally:
            await consumer.stop()


class Health:
    def __init__(self, broker_down_s: float = 15.0) -> None:
        self.assigned = False
        self.refs_loaded = False
        self.refs_next: dict[int, int] = {}   # timing.records.ref partition -> next offset to apply
        self.started = False
        self.refs_event = asyncio.Event()
        self.broker = BrokerWatch(broker_down_s)

    def ready(self, adapter: LiveAdapter) -> bool:
        return (self.started and self.assigned and self.refs_loaded and adapter.rebuilding == 0
                and self.broker.reachable()
                and all(t.done() and not t.cancelled() and t.exception() is None
                        for t in adapter.pending.values()))


def create_app(settings: Settings) -> faust.App:
    data_dir = settings.data_dir or os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                 f"lapstream-{settings.worker_id}")
    security = settings.security or KafkaSecurity.from_env()
    kafka_kw = security.aiokafka_kwargs()   # TLS / SASL for the worker's own consumers
    app = faust.App(
        settings.app_id,
        monitor=QuietMonitor(),
        broker=[f"kafka://{hp}" for hp in settings.bootstrap.split(",")],
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        datadir=data_dir,
        web_enabled=True,
        web_host=settings.http_host,
        web_port=settings.http_port,
        web_bind=settings.http_host,
        topic_allow_declare=False,         # topics are created explicitly (partition counts matter)
        topic_disable_leader=True,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_s,
        broker_commit_interval=settings.commit_interval_s,
        # stream_buffer_maxsize: when a stream's buffer is 80% full Faust pauses
        # its partitions, and a fetcher with no active partition sleeps a fixed
        # 1 s; with the default 4096 a worker catching up (a restart, a replay
        # at max speed) drained the buffer in 0.15 s and then idled: 5,000
        # msg/s instead of 14,000. At 65536 the buffer resumes at 26k records,
        # more than a second of work, so the sleep never starves the agent.
        **{**dict(producer_acks=-1, producer_linger_ms=0, stream_wait_empty=False,
                  table_standby_replicas=0, stream_buffer_maxsize=65536), **settings.extra,
           **security.faust_settings()},
    )
    _tuned_consumer(app, settings.fetch_max_wait_ms)
    metrics = Metrics()
    metrics.build.info({"version": _version(), "worker": settings.worker_id})
    health = Health(settings.broker_down_s)
    raw_topic = app.topic(T.RAW.name, partitions=T.RAW.partitions, schema=RawSchema(), internal=False)
    sends = SendGuard()
    app.lapstream_sends = sends
    producer = app.producer

    async def send(topic: str, key, value: bytes | None, headers) -> None:
        # straight to Faust's producer (the one it flushes before every commit):
        # Faust's Topic.send adds a codec pass and a FutureMessage per event
        fut = await producer.send(topic, key, value, None, None, headers)
        fut.add_done_callback(sends.on_done)

    bootstrap = settings.bootstrap

    async def rebuild_source(partition: int, start: int, end: int):
        """(offset, key, value) of records [start, end) of a timing.raw partition
        (a plain consumer, no group). Records gone to retention are skipped."""
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    group_id=None, auto_offset_reset="earliest", **kafka_kw)
        await consumer.start()
        try:
            tp = TopicPartition(T.RAW.name, partition)
            consumer.assign([tp])
            first = (await consumer.beginning_offsets([tp])).get(tp, 0)
            consumer.seek(tp, max(start, first))
            done = max(start, first) >= end
            empty = 0
            while not done:
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=2000)
                recs = batch.get(tp, ())
                for rec in recs:
                    if rec.offset >= end:
                        done = True
                        break
                    yield rec.offset, rec.key, rec.value
                    if rec.offset == end - 1:
                        done = True
                        break
                if recs:
                    empty = 0
                    continue
                pos = await consumer.position(tp)
                if pos >= end:
                    done = True   # nothing left before ``end`` (compacted or expired)
                else:
                    empty += 1
                    if empty >= 3 and pos >= (await consumer.end_offsets([tp]))[tp]:
                        # the log ends before ``end`` (the broker lost its tail):
                        # what it has is all there is (the adapter notices)
                        done = True
        finally:
            await consumer.stop()

    async def committed(partition: int) -> int:
        """Where this group resumes a timing.raw partition (0 if it never committed).
        Waits for the record references first: a rebuild must judge records
        against the same references as the original run."""
        await health.refs_event.wait()
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    group_id=settings.app_id, **kafka_kw)
        await consumer.start()
        try:
            off = await consumer.committed(TopicPartition(T.RAW.name, partition))
            return off or 0
        finally:
            await consumer.stop()

    committed_now: dict[int, int] = {}    # timing.raw partition -> offset this worker committed
    app.lapstream_committed = committed_now
    snapshots = KafkaSnapshots(bootstrap, kafka_kw) if settings.snapshot_every > 0 else None
    adapter = LiveAdapter(send, rebuild_source, metrics,
                          max_record_bytes=int(app.conf.producer_max_request_size),
                          snapshots=snapshots, committed_now=committed_now.get,
                          snapshot_every=max(1, settings.snapshot_every),
                          snapshot_every_us=int(settings.snapshot_every_s * 1e6),
                          snapshot_min=max(1, min(settings.snapshot_min, settings.snapshot_every or 1)),
                          snapshot_fork=settings.snapshot_fork,
                          snapshot_min_wall_s=settings.snapshot_min_wall_s)
    app.lapstream = adapter          # for tests and the demo
    app.lapstream_metrics = metrics
    app.lapstream_health = health

    @app.agent(raw_topic, name="timing")
    async def timing(stream):
        # record references first: a race is judged against the records in force
        await health.refs_event.wait()
        async def handle(event) -> None:
            msg = event.message
            try:
                await adapter.on_raw(msg.partition, msg.offset, event.key, event.value)
            except BaseException as exc:
                # the record may be half sent (a send that raised, a cancellation):
                # no offset may be committed past it (see _tuned_consumer)
                sends.fail(RuntimeError(f"{T.RAW.name}:{msg.partition}:{msg.offset} "
                                        f"not fully handled: {exc!r}"))
                raise

        if settings.batch_max <= 1:
            # one record at a time: nothing waits for company (the default; the
            # lowest latency at a live load)
            async for event in stream.events():
                await handle(event)
        else:
            # batches: more records a second when catching up, but every batch
            # waits up to batch_wait_s for more (Faust's take_events)
            async for batch in stream.take_events(settings.batch_max, within=settings.batch_wait_s):
                for event in batch:
                    await handle(event)

    @app.on_partitions_revoked.connect
    async def on_revoked(app_, revoked, **kwargs) -> None:
        # the eager protocol revokes everything at each rebalance: state is kept
        # until the new assignment says which partitions stay (on_assigned)
        health.assigned = False

    @app.on_partitions_assigned.connect
    async def on_assigned(app_, assigned, **kwargs) -> None:
        adapter.assign([tp.partition for tp in assigned if tp.topic == T.RAW.name], committed)
        health.assigned = True

    @app.task
    async def record_refs() -> None:
        """Every worker reads all of ``timing.records.ref`` (no group)."""
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    group_id=None, auto_offset_reset="earliest", **kafka_kw)
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(T.RECORDS_REF.name) or {0}
            tps = [TopicPartition(T.RECORDS_REF.name, p) for p in sorted(parts)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            while True:
                batch = await consumer.getmany(*tps, timeout_ms=200)
                for tp, recs in batch.items():
                    for rec in recs:
                        # a bad reference is dead-lettered, never raised; a tombstone
                        # (null value) takes back a record lapstream set
                        await adapter.on_ref_record(tp.partition, rec.offset, rec.key, rec.value)
                        health.refs_next[tp.partition] = rec.offset + 1
                # loaded = at the end offsets AND a fetch came back empty (an end
                # offset can be low on a broker with tansu's ListOffsets answer)
                if not health.refs_loaded and not batch:
                    caught_up = True
                    for tp in tps:
                        if await consumer.position(tp) < ends[tp]:
                            caught_up = False
                    if caught_up:
                        health.refs_loaded = True
                        health.refs_event.set()
        finally:
            await consumer.stop()

    @app.timer(interval=1.0)
    async def gauges() -> None:
        health.started = True
        adapter.update_gauges()
        metrics.ready.set(1 if health.ready(adapter) else 0)
        try:
            for tp in app.consumer.assignment():
                hw = app.consumer.highwater(tp)
                pos = await app.consumer.position(tp)
                if hw is not None and pos is not None:
                    metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, hw - pos))
        except Exception:  # the consumer may be rebalancing; lag is best effort
            pass

    @app.task
    async def broker_probe() -> None:
        """Is the broker there? A metadata request every 2 s (3 s timeout), on a
        client of its own: Faust's and aiokafka's own clients retry forever
        and say so only in their logs."""
        from aiokafka.client import AIOKafkaClient

        client = None
        while True:
            try:
                if client is None:
                    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3000,
                                            metadata_max_age_ms=2000, **kafka_kw)   # TLS / SASL too
                    await asyncio.wait_for(client.bootstrap(), 5)
                cluster = await asyncio.wait_for(client.fetch_all_metadata(), 5)
                # ops: how many brokers the cluster metadata lists (KRaft: the
                # registered, unfenced ones): one broker down shows here
                # (alert LapstreamKafkaBrokerMissing) long before writes stop
                metrics.kafka_brokers.set(len(cluster.brokers()))
                if health.broker.failing_since is not None:
                    log.warning("broker reachable again after %.0f s", health.broker.unreachable_s())
                health.broker.ok()
            except asyncio.CancelledError:
                if client is not None:
                    await client.close()
                raise
            except Exception as exc:
                if health.broker.failing_since is None:
                    log.error("broker unreachable (%s): /readyz fails after %.0f s", exc,
                              health.broker.limit_s)
                health.broker.failed(exc)
                metrics.kafka_brokers.set(0)
                if client is not None:
                    try:
                        await client.close()
                    except Exception:
                        pass
                    client = None
            metrics.broker_unreachable.set(health.broker.unreachable_s())
            await asyncio.sleep(2.0)

    @app.task
    async def snapshot_producer() -> None:
        """Closes the snapshot store's producer when the worker stops."""
        if snapshots is None:
            return
        try:
            await asyncio.Event().wait()
        finally:
            await snapshots.close()

    @app.timer(interval=2.0)
    async def save_snapshots() -> None:
        """Snapshots taken on the record path are written here, once the group
        has committed their offset (never after a lost send: no commit then)."""
        if snapshots is not None and sends.failed is None:
            await adapter.save_snapshots()

    @app.timer(interval=5.0)
    async def state_size() -> None:
        metrics.state_size.set(adapter.state_size())

    @app.page("/metrics")
    async def metrics_page(web, request):
        return web.bytes(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/healthz")
    async def healthz(web, request):
        return web.json({"status": "ok", "worker": settings.worker_id})

    @app.page("/readyz")
    async def readyz(web, request):
        ok = health.ready(adapter)
        body = {"ready": ok, "assigned": health.assigned, "refs_loaded": health.refs_loaded,
                # the references applied: timing.records.ref partition -> next offset
                "refs_next_offset": {str(p): o for p, o in sorted(health.refs_next.items())},
                "rebuilding": adapter.rebuilding + sum(1 for t in adapter.pending.values() if not t.done()),
                "partitions": sorted(set(adapter.procs) | set(adapter.pending)),
                "broker_unreachable_s": round(health.broker.unreachable_s(), 1),
                "rebuilt_messages": adapter.rebuilt_messages,
                "snapshots": {"loaded": adapter.snapshot_loads["loaded"],
                              "rejected": adapter.snapshot_loads["rejected"],
                              "none": adapter.snapshot_loads["none"],
                              "taken": adapter.snapshots_taken, "saved": adapter.snapshots_saved,
                              "unsaved": len(adapter.unsaved),
                              "in_child": adapter.forking is not None and not adapter.forking.done()}}
        return web.json(body, status=200 if ok else 503)

    return app


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("lapstream")
    except Exception:
        return "0+unknown"


class QuietWorker(Worker):
    def on_setup_root_logger(self, logger, level: int) -> None:
        # Faust's terminal spinner sets the root logger to DEBUG so that it
        # spins on every record: every debug call of aiokafka and Faust
        # then builds a LogRecord (3% of the worker's time in a profile).
        # No spinner: the root logger keeps ``loglevel``.
        self.spinner = None
        super().on_setup_root_logger(logger, level)
        # a broker outage makes aiokafka and Faust repeat the same lines ~100
        # times a second: each line passes 5 times per 10 s, then a count
        install_rate_limit(logging.getLogger())


def run_worker(settings: Settings, loglevel: str = "warning") -> None:
    """Run a Faust worker in this process until it is stopped (SIGINT/SIGTERM)."""
    app = create_app(settings)
    worker = QuietWorker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
