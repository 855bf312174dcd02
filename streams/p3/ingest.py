"""``lapstream ingest p3``: P3 decoders over TCP -> contract messages -> ``timing.raw``.

One asyncio task per decoder connection (``--decoder HOST:PORT``, repeatable):
connect, read whatever the socket gives, feed the frame decoder, convert
records (``mapping.Converter``), produce each message to ``timing.raw``
keyed by venue with acks=all, and reconnect with exponential backoff (with
jitter) when the decoder drops the connection or cannot be reached, or
stays silent for ``idle_timeout_s`` (an unplugged cable sends no FIN; TCP
keepalive is on too).

After a reconnect ingest asks the decoder, with a RESEND request, for every
passing after the last one it saw (an open range, last = 0xFFFFFFFF: an
ASSUMPTION about RESEND, see ``records.py``; ``resend=False`` turns RESEND
off for decoders that do not support it). A gap seen later is asked for
too. Duplicates go on as they are; the core drops them by (source, seq).

Nothing acknowledged is lost (acks=all), and nothing unacknowledged is
dropped: aiokafka fails a send after a broker outage (measured: the future
fails with NodeNotReadyError), so a message whose delivery failed is sent
again, with a backoff up to ``retry_max_s``, until the broker takes it (a
late passing is still applied if it is within the core's window; a late
duplicate is dropped by the core). While the broker is unreachable the
producer's buffer fills and reading from the decoders pauses (TCP pushes
back to them).

Heartbeats come from STATUS records; when a source's decoders talk but
send STATUS less than once a second, one is filled in a second at the
estimated decoder clock (``heartbeat_fill_s``; ``mapping.Converter.fill``).

The producer is built by ``make_producer`` and nowhere else, so that
transport security (TLS, SASL) can be wired into that one function.
Idempotence: ``auto`` tries an idempotent producer and falls back to a
plain acks=all one when the broker refuses InitProducerId (the embedded
tansu broker does); ``on`` insists, ``off`` never asks.

HTTP (loopback by default): ``/metrics``, ``/healthz`` (the process runs),
``/readyz`` (200 when the producer is up and every decoder is connected
and has sent a good frame within ``stale_s``; the body says per decoder).
"""
from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import orjson

from streams import topics as T
from streams.metrics import P3_CATALOGUE, Metrics

from .codec import COUNTERS, FrameDecoder
from .mapping import Converter, DecoderMap
from .records import Resend

log = logging.getLogger("lapstream.p3")

REJECT_REASONS = ("bad_crc", "bad_escape", "bad_length", "oversized", "broken", "truncated")
OPEN_END = 0xFFFFFFFF


def make_producer(bootstrap: str, *, idempotent: bool, security=None, **overrides):
    """The one place a Kafka producer for ingest is built (acks=all: nothing
    acknowledged is lost; TLS/SASL from a ``streams.kafka_security.KafkaSecurity``)."""
    from aiokafka import AIOKafkaProducer

    kw = dict(bootstrap_servers=bootstrap, acks="all", enable_idempotence=idempotent,
              linger_ms=0, request_timeout_ms=30000, retry_backoff_ms=100)
    if security is not None:
        kw.update(security.aiokafka_kwargs())
    kw.update(overrides)
    return AIOKafkaProducer(**kw)


async def start_producer(bootstrap: str, idempotence: str = "auto", probe_timeout_s: float = 5.0,
                         security=None):
    """A started producer; (producer, idempotent?)."""
    if idempotence not in ("auto", "on", "off"):
        raise ValueError(f"idempotence {idempotence!r}: auto, on or off")
    if idempotence != "off":
        p = make_producer(bootstrap, idempotent=True, security=security)
        try:
            # an idempotent aiokafka producer asks for a producer id when it
            # starts, and asks again forever if the broker cannot answer
            await asyncio.wait_for(p.start(), probe_timeout_s)
            return p, True
        except Exception as exc:  # the broker has no InitProducerId (tansu), or refuses it
            try:
                await p.stop()
            except Exception:
                pass
            if idempotence == "on":
                raise
            log.warning("idempotent producer not available (%s: %s); acks=all without idempotence",
                        type(exc).__name__, exc)
    p = make_producer(bootstrap, idempotent=False, security=security)
    await p.start()
    return p, False


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"decoder {text!r}: HOST:PORT expected")
    return host.strip("[]"), int(port)


@dataclass
class IngestSettings:
    decoders: list[str]                      # HOST:PORT
    bootstrap: str = "127.0.0.1:9092"
    topic: str = T.RAW.name
    idempotence: str = "auto"
    resend: bool = True
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 5.0
    connect_timeout_s: float = 3.0
    stale_s: float = 5.0
    http_host: str = "127.0.0.1"
    http_port: Optional[int] = None          # None: no HTTP server
    clock_step_us: int = 2_000_000
    idle_timeout_s: float = 15.0             # no byte for this long: the link is dead, reconnect (0: never)
    retry_max_s: float = 5.0                 # an unacknowledged message is sent again, backing off to this
    heartbeat_fill_s: float = 1.0            # a heartbeat per source at least this often while heard (0: off)
    security: Any = None                     # streams.kafka_security.KafkaSecurity (TLS/SASL), None: plaintext


@dataclass
class Link:
    """What ingest knows of one decoder connection."""
    address: str
    connected: bool = False
    connects: int = 0
    frames: int = 0                     # good frames handled (converted and sent)
    last_frame: Optional[float] = None  # monotonic
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    seen: dict = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    writer: Optional[asyncio.StreamWriter] = None


class P3Ingest:
    def __init__(self, settings: IngestSettings, dmap: DecoderMap, metrics: Optional[Metrics] = None,
                 wall_us: Optional[Callable[[], int]] = None, producer=None) -> None:
        self.s = settings
        self.conv = Converter(dmap, clock_step_us=settings.clock_step_us)
        # its own catalogue: a worker's series (lapstream_worker_ready 0...) have no place here
        self.metrics = metrics or Metrics(specs=P3_CATALOGUE)
        self.wall_us = wall_us or (lambda: time.time_ns() // 1000)
        self.producer = producer
        self.own_producer = producer is None
        self.idempotent = False
        self.links = {a: Link(a) for a in settings.decoders}
        self._tasks: list[asyncio.Task] = []
        self._stop = asyncio.Event()
        self._pending: set = set()
        self._runner = None
        self.produced = 0
        self.errors = 0

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        for a in self.links:
            parse_address(a)
            self.metrics["lapstream_p3_connected"].labels(a).set(0)
            for name in ("lapstream_p3_connects_total", "lapstream_p3_frames_total"):
                self.metrics[name].labels(a)      # at 0 before the first connection (rate/increase)
        if self.producer is None:
            self.producer, self.idempotent = await start_producer(self.s.bootstrap, self.s.idempotence,
                                                                   security=self.s.security)
        if self.s.http_port is not None:
            await self._start_http()
        for a in self.links:
            self._tasks.append(asyncio.create_task(self._run(a), name=f"p3 {a}"))
        self._tasks.append(asyncio.create_task(self._ages(), name="p3 ages"))
        if self.s.heartbeat_fill_s:
            self._tasks.append(asyncio.create_task(self._fill(), name="p3 heartbeats"))

    async def stop(self) -> None:
        self._stop.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.flush()
        if self.own_producer and self.producer is not None:
            await self.producer.stop()
        if self._runner is not None:
            await self._runner.cleanup()

    async def flush(self) -> None:
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
            await asyncio.sleep(0)
        if self.producer is not None:
            await self.producer.flush()

    async def run_forever(self) -> None:
        await self.start()
        try:
            await self._stop.wait()
        finally:
            await self.stop()

    # -- producing -------------------------------------------------------------
    async def send(self, value: bytes, key: Optional[bytes], topic: Optional[str] = None, kind: str = "other") -> None:
        """Hand one record to the producer (in call order per partition). A record
        the broker does not acknowledge (after the producer's own retries) is sent
        again until it is, with a backoff: a late duplicate is harmless (the core
        drops it by source and seq), a lost passing is not."""
        fut = await self._hand_over(value, key, topic, kind)
        self._pending.add(fut)
        fut.add_done_callback(lambda f: self._acked(f, value, key, topic, kind, 0))

    async def _hand_over(self, value, key, topic, kind):
        """producer.send, with a refusal (no metadata in time, a closed producer...)
        turned into a failed delivery, so that it is sent again like one."""
        try:
            return await self.producer.send(topic or self.s.topic, value=value, key=key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(exc)
            return fut

    def _acked(self, fut, value, key, topic, kind: str, attempt: int) -> None:
        self._pending.discard(fut)
        if fut.cancelled() or fut.exception() is not None:
            self.errors += 1
            self.metrics["lapstream_p3_produce_errors_total"].inc()
            log.error("%s: a %s was not acknowledged (%s); sending it again", topic or self.s.topic, kind,
                      "cancelled" if fut.cancelled() else fut.exception())
            if not self._stop.is_set():
                t = asyncio.get_running_loop().create_task(self._again(value, key, topic, kind, attempt + 1))
                self._pending.add(t)
                t.add_done_callback(self._pending.discard)
        else:
            self.produced += 1
            self.metrics["lapstream_p3_messages_produced_total"].labels(kind).inc()

    async def _again(self, value, key, topic, kind: str, attempt: int) -> None:
        await self._sleep(min(self.s.retry_max_s, 0.1 * 2 ** attempt))
        fut = await self._hand_over(value, key, topic, kind)
        self._pending.add(fut)
        fut.add_done_callback(lambda f: self._acked(f, value, key, topic, kind, attempt))

    # -- one decoder -----------------------------------------------------------
    async def _run(self, address: str) -> None:
        host, port = parse_address(address)
        link = self.links[address]
        backoff = self.s.backoff_initial_s
        m = self.metrics
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                        self.s.connect_timeout_s)
            except (OSError, asyncio.TimeoutError) as exc:
                log.info("decoder %s: cannot connect (%s); again in %.2f s", address, exc, backoff)
                await self._sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self.s.backoff_max_s)
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:   # a decoder unplugged without a FIN is noticed by keepalive too
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                except OSError:
                    pass
            link.connected, link.writer = True, writer
            link.connects += 1
            m["lapstream_p3_connected"].labels(address).set(1)
            m["lapstream_p3_connects_total"].labels(address).inc()
            log.info("decoder %s: connected (%d)", address, link.connects)
            link.decoder.reset()
            self._sync_counters(link)
            try:
                if link.connects > 1:
                    self.conv.reconnected(address)
                    self._after_reconnect(link)
                idle = self.s.idle_timeout_s or None
                while True:
                    try:
                        data = await asyncio.wait_for(reader.read(65536), idle)
                    except asyncio.TimeoutError:
                        log.warning("decoder %s: silent for %.1f s; reconnecting", address, idle)
                        m["lapstream_p3_records_total"].labels(address, "idle_timeout").inc()
                        break
                    if not data:
                        break
                    backoff = self.s.backoff_initial_s
                    await self._handle(link, data)
            except (OSError, ConnectionError) as exc:
                log.info("decoder %s: connection lost (%s)", address, exc)
            except asyncio.CancelledError:
                raise
            except Exception:   # nothing a decoder sends may stop ingest: log, reconnect
                log.exception("decoder %s: unexpected error; reconnecting", address)
            finally:
                link.connected, link.writer = False, None
                m["lapstream_p3_connected"].labels(address).set(0)
                writer.close()
                link.decoder.reset()      # a frame cut by the drop is dropped
                self._sync_counters(link)
            if not self._stop.is_set():
                log.info("decoder %s: disconnected; reconnecting in %.2f s", address, backoff)
                await self._sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self.s.backoff_max_s)

    async def _sleep(self, s: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), s)
        except asyncio.TimeoutError:
            pass

    def _after_reconnect(self, link: Link) -> None:
        """Ask each decoder seen on this connection for what came after its last passing."""
        if not self.s.resend:
            return
        for tg, st in self.conv.state.items():
            if st.last_pn is not None and st.address == link.address:
                self._resend(link, tg.decoder_id, st.last_pn + 1, OPEN_END)

    def _resend(self, link: Link, decoder_id, first: int, last: int) -> None:
        if not self.s.resend or link.writer is None:
            return
        try:
            link.writer.write(Resend(first, last, decoder_id).encode())
        except (OSError, RuntimeError) as exc:
            log.info("decoder %s: RESEND not sent (%s)", link.address, exc)
            return
        self.metrics["lapstream_p3_resend_requests_total"].labels(link.address).inc()
        log.info("decoder %s: RESEND %d..%s asked", link.address, first, "" if last == OPEN_END else last)

    async def _handle(self, link: Link, data: bytes) -> None:
        frames = link.decoder.feed(data)
        self._sync_counters(link)
        if not frames:
            return
        m = self.metrics
        addr = link.address
        wall = self.wall_us()
        for f in frames:
            try:
                conv = self.conv.convert(f, addr, wall)
            except Exception:   # pragma: no cover - the converter checks what it reads
                log.exception("decoder %s: a %s frame could not be converted", addr, f.type_name)
                self.metrics["lapstream_p3_records_total"].labels(addr, "internal").inc()
                continue
            for msg in conv.messages:
                await self.send(orjson.dumps(msg), msg["venue"].encode(), kind=msg["kind"])
            for what, detail in conv.notes:
                log.warning("decoder %s: %s: %s", addr, what, detail)
            for first, last in conv.resend:
                did = f.get(0x81)
                self._resend(link, int.from_bytes(did, "little") if did else None, first, last)
        self._sync_records(addr)
        link.frames += len(frames)
        link.last_frame = time.monotonic()
        m["lapstream_p3_last_message_age_seconds"].labels(addr).set(0)

    # -- metrics ---------------------------------------------------------------
    def _sync_counters(self, link: Link) -> None:
        st, seen, m, a = link.decoder.stats, link.seen, self.metrics, link.address
        for k in COUNTERS:
            d = st[k] - seen[k]
            if d <= 0:
                continue
            seen[k] = st[k]
            if k == "frames":
                m["lapstream_p3_frames_total"].labels(a).inc(d)
            elif k == "garbage_bytes":
                m["lapstream_p3_garbage_bytes_total"].labels(a).inc(d)
            elif k in REJECT_REASONS:
                m["lapstream_p3_frames_rejected_total"].labels(a, k).inc(d)

    def _sync_records(self, addr: str) -> None:
        seen = self.__dict__.setdefault("_seen_records", {})
        m = self.metrics
        special = {"gaps": "lapstream_p3_passing_gaps_total", "missed_passings": "lapstream_p3_missed_passings_total",
                   "restarts": "lapstream_p3_decoder_restarts_total", "clock_steps": "lapstream_p3_clock_steps_total"}
        for (who, what), n in list(self.conv.stats.items()):
            if who != addr:
                continue
            d = n - seen.get((who, what), 0)
            if d <= 0:
                continue
            seen[(who, what)] = n
            name = special.get(what)
            if name:
                m[name].labels(addr).inc(d)
            else:
                m["lapstream_p3_records_total"].labels(addr, what).inc(d)

    async def _ages(self) -> None:
        g = self.metrics["lapstream_p3_last_message_age_seconds"]
        while True:
            now = time.monotonic()
            for a, link in self.links.items():
                if link.last_frame is not None:
                    g.labels(a).set(round(now - link.last_frame, 3))
            await asyncio.sleep(0.5)

    async def _fill(self) -> None:
        every = int(self.s.heartbeat_fill_s * 1e6)
        while True:
            await asyncio.sleep(min(0.25, self.s.heartbeat_fill_s / 4))
            for msg in self.conv.fill(self.wall_us(), every_us=every, alive_us=max(2 * every, 2_000_000)):
                await self.send(orjson.dumps(msg), msg["venue"].encode(), kind="heartbeat")

    # -- health ----------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict]:
        now = time.monotonic()
        decs = {}
        ok = self.producer is not None
        for a, link in self.links.items():
            age = None if link.last_frame is None else round(now - link.last_frame, 3)
            fresh = link.connected and age is not None and age <= self.s.stale_s
            ok = ok and fresh
            decs[a] = {"connected": link.connected, "connects": link.connects, "frames": link.frames,
                       "last_frame_age_s": age, "ready": fresh}
        return ok, {"ready": ok, "idempotent": self.idempotent, "produced": self.produced,
                    "produce_errors": self.errors, "decoders": decs}

    async def _start_http(self) -> None:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        async def metrics(_):
            return web.Response(body=generate_latest(self.metrics.registry),
                                content_type=CONTENT_TYPE_LATEST.split(";")[0])

        async def healthz(_):
            return web.json_response({"status": "ok"})

        async def readyz(_):
            ok, body = self.readiness()
            return web.json_response(body, status=200 if ok else 503)

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.s.http_host, self.s.http_port)
        await site.start()
