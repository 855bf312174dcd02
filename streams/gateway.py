"""``lapstream serve``: the subscribers' gateway (REST, Server-Sent Events,
WebSocket, the scoreboard page) over the derived topics.

One process reads every partition of the derived topics (and the ``race`` /
``venue`` set-ups of ``timing.raw``) from the start with aiokafka and no
consumer group, so every gateway sees everything and several behind a load
balancer serve the same answers and the same stream positions. The state is
``streams.gateway_state.GatewayState`` (see there for the stream ids); this
module is the I/O around it: the Kafka reader, the fan-out to clients through
a bounded queue each, and the aiohttp application.

Served (the OpenAPI document ``/openapi.yaml`` is ``streams/web/openapi.yaml``):
``/`` the page; ``/api/v1/...`` REST (JSON, ETag); ``/api/v1/stream`` SSE;
``/api/v1/ws`` WebSocket; ``/metrics``, ``/healthz``, ``/readyz``.
"""
from __future__ import annotations

import asyncio
import bisect
import gc
import hashlib
import logging
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from importlib import resources
from typing import Optional

import orjson
from aiohttp import HttpVersion11, WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams import topics as T
from streams.kafka_security import PLAINTEXT, KafkaSecurity
from streams.gateway_state import (BadPosition, Filter, GatewayState, Item, TOPIC_NAMES,
                                   decode_position)
from streams.metrics import GATEWAY_CATALOGUE, Metrics

log = logging.getLogger("lapstream.gateway")

API = "/api/v1"
WEB = resources.files("streams") / "web"
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html",
                ".yaml": "application/yaml", ".svg": "image/svg+xml", ".png": "image/png"}


@dataclass
class GatewaySettings:
    bootstrap: str
    host: str = "127.0.0.1"
    port: int = 8000
    cors_origins: tuple = ()              # exact origins, or "*"
    queue_size: int = 1024                # events a client may be behind before it is closed
    send_buffer: int = 1 << 20            # bytes an SSE client may leave unread before it is closed
    heartbeat_s: float = 15.0             # SSE comment / WebSocket ping when idle
    max_log: int = 200_000                # derived events kept for resumes
    fetch_max_wait_ms: int = 5
    ready_timeout_s: float = 30.0         # a stream request waits this long for readiness
    slow_close_grace_s: float = 5.0       # a dropped client blocked in a write is cut after this
    # Kafka TLS / SASL (streams/kafka_security.py); None = PLAINTEXT
    security: Optional[KafkaSecurity] = field(default=None, repr=False)

    @classmethod
    def from_env(cls, bootstrap: str, **kw) -> "GatewaySettings":
        env = os.environ
        origins = tuple(o.strip() for o in env.get("LAPSTREAM_CORS_ORIGINS", "").split(",") if o.strip())
        s = cls(bootstrap=bootstrap, cors_origins=origins,
                fetch_max_wait_ms=int(env.get("LAPSTREAM_FETCH_MAX_WAIT_MS", "5")))
        for k, v in kw.items():
            if v is not None:
                setattr(s, k, v)
        return s


@dataclass(eq=False)
class Client:
    """One stream client. A WebSocket client (and an SSE client while its
    snapshot and backlog are being sent) takes events through ``queue``,
    bounded by ``limit`` events, and its own task writes them. An SSE client
    then goes ``direct``: the fan-out writes its frames straight into its
    socket's transport (no task switch per client and event), bounded by
    ``send_buffer`` bytes not yet taken by the client."""
    transport: str
    flt: Filter
    pos: dict
    limit: int
    queue: deque = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: Optional[str] = None
    direct: bool = False
    sock: Optional[asyncio.Transport] = None
    chunked: bool = True
    pos_str: str = ""
    # resumed with an id from another gateway that had read further than this
    # one: events this gateway reads up to that position are not sent again
    ahead: bool = False
    pending: Optional[list] = None    # during one fan-out: the events of a client that was ahead

    def __post_init__(self) -> None:
        self.pos_str = encode_pos_fast(self.pos)

    def push(self, item: Item) -> bool:
        if self.dropped is not None:
            return False
        if len(self.queue) >= self.limit:
            self.drop(f"slow client: {self.limit} events behind; reconnect with Last-Event-ID to resume")
            return False
        self.queue.append(item)
        self.wake.set()
        return True

    def not_seen(self, items: list, position: dict) -> list:
        """``items`` without those at or before this client's position (it has
        them from another gateway); ``ahead`` ends once this gateway is there."""
        pos = self.pos
        out = [it for it in items if it.offset >= pos.get((it.topic, it.partition), 0)]
        self.ahead = any(o > position.get(tp, 0) for tp, o in pos.items())
        return out

    def drop(self, reason: str) -> None:
        if self.dropped is None:
            self.dropped = reason
        self.queue.clear()
        self.wake.set()

    def advance(self, item: Item) -> str:
        # a new dict: the fan-out lets the clients of a cohort share one
        self.pos = {**self.pos, (item.topic, item.partition): item.offset + 1}
        self.pos_str = encode_pos_fast(self.pos)
        return self.pos_str

    def write_direct(self, data: bytes) -> None:
        if self.chunked:
            self.sock.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.sock.write(data)


def frames_after(pos: dict, items: list) -> tuple:
    """The SSE frames of ``items`` for a client at ``pos``: (its position
    after them, that position's id, the frames' bytes). ``pos`` is left as is."""
    pos = dict(pos)
    out = []
    ident = ""
    for it in items:
        pos[(it.topic, it.partition)] = it.offset + 1
        ident = encode_pos_fast(pos)
        out.append(sse_frame(it, ident))
    return pos, ident, b"".join(out)


class _Latencies:
    """Fan-out latencies of one batch, added to the histogram at once: a
    thousand clients make a thousand observations per event, and
    prometheus_client's observe (a lock each) cost more than the writes."""

    def __init__(self, hist) -> None:
        self.hist = hist
        self.bounds = list(getattr(hist, "_upper_bounds", ()))
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.values: list[float] = []
        self.bulk = bool(self.bounds) and hasattr(hist, "_buckets") and hasattr(hist, "_sum")

    def add(self, v: float) -> None:
        if self.bulk:
            self.counts[bisect.bisect_left(self.bounds, v)] += 1
            self.total += v
        else:
            self.values.append(v)

    def add_writes(self, times: list, arrivals: list) -> None:
        """One observation per (write, event): ``times`` are the writes' clocks
        in increasing order, ``arrivals`` the events' arrival clocks."""
        if not self.bulk:
            for a in arrivals:
                for t in times:
                    self.values.append(t - a)
            return
        n = len(times)
        bounds, counts = self.bounds, self.counts
        right = bisect.bisect_right
        for a in arrivals:
            lats = [t - a for t in times]      # sorted as the times are
            below = 0
            for i, b in enumerate(bounds):
                k = right(lats, b)
                counts[i] += k - below
                below = k
                if k == n:
                    break
            self.total += sum(lats)

    def flush(self) -> None:
        if self.bulk:
            for i, n in enumerate(self.counts):
                if n:
                    self.hist._buckets[i].inc(n)
            if any(self.counts):
                self.hist._sum.inc(self.total)
        else:
            for v in self.values:
                self.hist.observe(v)


def encode_pos_fast(pos: dict) -> str:
    return "_".join([f"{t}.{p}.{o}" for (t, p), o in sorted(pos.items())])


def sse_frame(item: Item, ident: str) -> bytes:
    return b"id: " + ident.encode() + b"\nevent: " + item.kind.encode() + b"\ndata: " + item.data + b"\n\n"


def _matches(flt, item, state) -> bool:
    """A client's filter on one event; an event the filter cannot judge (odd
    field types from a foreign producer) is not sent, and the reader goes on."""
    try:
        return flt.match(item, state)
    except Exception:
        return False


class ListenError(OSError):
    """The gateway cannot listen on its host and port (taken, no such address):
    ``lapstream serve`` says so in one line."""


RETRY_FIRST_S = 1.0     # the reader's first wait before it tries the broker again
RETRY_MAX_S = 30.0      # ... doubling up to this


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.s = settings
        self.state = GatewayState(max_log=settings.max_log)
        self.metrics = Metrics(specs=GATEWAY_CATALOGUE)
        self.clients: set[Client] = set()
        self.ready = asyncio.Event()
        self.reader_task: Optional[asyncio.Task] = None
        self.reader_error: Optional[str] = None   # why the reader is not connected (it retries)
        self.connected = False                      # the reader has the broker and the topics
        self.caught_up = False                      # ... and has read them up to their ends
        self._next: dict = {}                       # TopicPartition -> next offset the reader takes
        self.runner: Optional[web.AppRunner] = None
        self.port: Optional[int] = None
        self._m_clients = self.metrics["lapstream_gateway_clients"]
        self._m_fanned = self.metrics["lapstream_gateway_events_fanned_out_total"]
        self._m_dropped = self.metrics["lapstream_gateway_slow_clients_dropped_total"]
        self._m_latency = self.metrics["lapstream_gateway_fanout_latency_seconds"]
        self._m_consumed = self.metrics["lapstream_gateway_events_consumed_total"]
        self._m_ready = self.metrics["lapstream_gateway_ready"]
        self._m_fanned_sse = self._m_fanned.labels("sse")
        self._m_fanout_cpu = self.metrics["lapstream_gateway_fanout_cpu_seconds"]
        for tr in ("sse", "ws"):
            self._m_clients.labels(tr).set(0)
            self._m_fanned.labels(tr)
            self._m_dropped.labels(tr)
        for name in TOPIC_NAMES:        # at 0 from the start, like the transports (rate/increase)
            self._m_consumed.labels(name)
        self._m_ready.set(0)

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        """Listen (ListenError if it cannot), then start the Kafka reader."""
        self.runner = web.AppRunner(self.app(), handle_signals=False, access_log=None,
                                    shutdown_timeout=2.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.s.host, self.s.port, backlog=2048)
        try:
            await site.start()
        except OSError as exc:    # (socket.gaierror too: an unknown host)
            await self.runner.cleanup()
            self.runner = None
            raise ListenError(exc.errno, f"cannot listen on {self.s.host}:{self.s.port} "
                                         f"({exc.strerror or exc})") from None
        self.port = site._server.sockets[0].getsockname()[1]
        self.reader_task = asyncio.create_task(self._read(), name="gateway-reader")

    async def stop(self) -> None:
        for c in list(self.clients):
            c.drop("gateway shutting down; reconnect with Last-Event-ID to resume")
        if self.reader_task is not None:
            self.reader_task.cancel()
            await asyncio.gather(self.reader_task, return_exceptions=True)
        if self.runner is not None:
            await self.runner.cleanup()

    # -- Kafka ------------------------------------------------------------------------
    async def _read(self) -> None:
        """Read the topics for good: a broker that cannot be reached (or is lost,
        or refuses the login) is tried again after 1, 2, 4 ... up to 30 s, one
        log line each time, and /readyz says why it is not ready meanwhile. A
        reconnected reader goes on from the offsets it had reached."""
        delay = RETRY_FIRST_S
        while True:
            try:
                await self._read_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                name, text = type(exc).__name__, str(exc)
                self.reader_error = _one_line(text if text.startswith(name) else f"{name}: {text}")
                log.debug("gateway reader", exc_info=True)   # (the whole story, at debug level)
            else:   # (it returns only if the consumer stopped by itself)
                self.reader_error = "the Kafka consumer stopped"
            self.connected = self.caught_up = False
            self._m_ready.set(0)
            log.warning("gateway reader: cannot read the Kafka broker at %s (%s); trying again in %g s",
                        self.s.bootstrap, self.reader_error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def _read_once(self) -> None:
        from aiokafka import TopicPartition

        consumer = None
        names = list(TOPIC_NAMES)
        try:
            consumer = self.consumer()
            await consumer.start()
            while True:
                have = await consumer.topics()
                missing = [n for n in names if n not in have]
                if not missing:
                    break
                log.warning("topics not there yet: %s", ", ".join(missing))
                await asyncio.sleep(1.0)
            tps = [TopicPartition(n, p) for n in names for p in sorted(consumer.partitions_for_topic(n) or ())]
            consumer.assign(tps)
            fresh_tps = [tp for tp in tps if tp not in self._next]
            if fresh_tps:
                await consumer.seek_to_beginning(*fresh_tps)
            for tp in tps:               # reconnected: on from where this gateway was
                if tp in self._next:
                    consumer.seek(tp, self._next[tp])
            ends = await consumer.end_offsets(tps)
            todo = {tp: off for tp, off in ends.items() if off > self._next.get(tp, 0)}
            if self.reader_error is not None:
                log.warning("gateway reader: connected to the Kafka broker at %s", self.s.bootstrap)
            self.connected = True
            self.reader_error = None
            if not todo:
                self._set_ready()
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=5000)
                now = time.perf_counter()
                fresh = []
                for tp, recs in batch.items():
                    if tp.topic == T.RAW.name:
                        for rec in recs:
                            item = self.state.ingest_raw(rec.value, tp.partition, rec.offset, now)
                            if item is not None:
                                fresh.append(item)
                    else:
                        self._m_consumed.labels(tp.topic).inc(len(recs))
                        for rec in recs:
                            item = self.state.ingest(tp.topic, tp.partition, rec.offset, rec.value, now)
                            if item is not None:
                                fresh.append(item)
                    if recs:
                        self._next[tp] = recs[-1].offset + 1
                    if todo and tp in todo and recs[-1].offset + 1 >= todo[tp]:
                        del todo[tp]
                if fresh and self.clients:
                    self._fan_out(fresh)
                if todo and not batch and await self._caught_up(consumer, todo):
                    todo = {}
                if not todo and not self.caught_up:
                    self._set_ready()
        finally:
            if consumer is not None:
                await consumer.stop()

    def consumer(self):
        """The gateway's Kafka reader (its only Kafka client): every partition,
        no consumer group, through the settings' TLS / SASL."""
        from aiokafka import AIOKafkaConsumer

        return AIOKafkaConsumer(bootstrap_servers=self.s.bootstrap, group_id=None,
                                enable_auto_commit=False, client_id="lapstream-gateway",
                                fetch_max_wait_ms=self.s.fetch_max_wait_ms,
                                max_partition_fetch_bytes=4 * 1024 * 1024,
                                **(self.s.security or PLAINTEXT).aiokafka_kwargs())

    @staticmethod
    async def _caught_up(consumer, todo) -> bool:
        """No record came and every partition still waited for is at or past the
        end offset asked at start (a compacted or transactional end may hold no
        record to read)."""
        for tp, end in todo.items():
            if await consumer.position(tp) < end:
                return False
        return True

    def _set_ready(self) -> None:
        self.caught_up = True
        self._m_ready.set(1)
        if self.ready.is_set():      # caught up again after a reconnection
            log.info("gateway ready again")
            return
        # what was built at start stays: keep it out of the collector's full
        # passes (a pass over the whole heap is a pause for every client)
        gc.freeze()
        self.ready.set()
        log.info("gateway ready: %d races, %d events", len(self.state.races), len(self.state.log))

    def _fan_out(self, items: list) -> None:
        """Hand a batch of new events to every client whose filter takes them.

        Direct SSE clients with the same filter at the same position (most of
        them: every client that joined from a snapshot before the race) form
        a cohort: its filter is judged, its frames (ids included) encoded and
        its chunk built once, and each member gets the same bytes in one
        transport write; members then share the (never mutated) position. The
        fan-out latency of a cohort's writes is added to the histogram per
        bucket from the sorted write times (no per-client, per-event work)."""
        state = self.state
        cpu0 = time.thread_time()
        limit = self.s.send_buffer
        lat = _Latencies(self._m_latency)
        fanned = 0
        cohorts: dict = {}
        for c in self.clients:          # no await in here: the set does not change
            if c.dropped is not None:
                continue
            if c.direct and not c.ahead:
                key = (c.flt.key, c.pos_str, c.chunked)
                members = cohorts.get(key)
                if members is None:
                    cohorts[key] = [c]
                else:
                    members.append(c)
                continue
            mine = items if c.flt.empty else [it for it in items if _matches(c.flt, it, state)]
            if c.ahead:
                mine = c.not_seen(mine, state.position)
            if not mine:
                continue
            if c.direct:
                cohorts[(c,)] = [c]     # a cohort of its own, with the events it has not seen
                c.pending = mine
                continue
            for it in mine:
                if not c.push(it):
                    self._m_dropped.labels(c.transport).inc()
                    break
        perf = time.perf_counter
        matched: dict = {}              # filter key -> the batch's events it takes
        for key, members in cohorts.items():
            first = members[0]
            if len(key) == 1:
                mine, first.pending = first.pending, None
            else:
                flt = first.flt
                mine = matched.get(flt.key)
                if mine is None:
                    mine = matched[flt.key] = (items if flt.empty else
                                               [it for it in items if _matches(flt, it, state)])
                if not mine:
                    continue
            pos, pos_str, data = frames_after(first.pos, mine)
            if first.chunked:
                data = b"%x\r\n%b\r\n" % (len(data), data)
            times = []
            for c in members:
                sock = c.sock
                if sock.is_closing():
                    c.drop("connection closed")
                    continue
                if sock.get_write_buffer_size() > limit:
                    c.drop(f"slow client: more than {limit} bytes not taken; reconnect with "
                           "Last-Event-ID to resume")
                    self._m_dropped.labels(c.transport).inc()
                    continue
                sock.write(data)
                c.pos = pos
                c.pos_str = pos_str
                times.append(perf())
            if times:
                lat.add_writes(times, [it.arrived for it in mine])
                fanned += len(times) * len(mine)
        lat.flush()
        if fanned:
            self._m_fanned_sse.inc(fanned)
        self._m_fanout_cpu.observe(time.thread_time() - cpu0)

    # -- HTTP ------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        app.on_response_prepare.append(self._cors)
        r = app.router
        r.add_get("/", self.page)
        r.add_get("/static/{name}", self.static)
        r.add_get("/openapi.yaml", self.openapi)
        r.add_get(API + "/races", self.races)
        r.add_get(API + "/races/{race_id}", self.race)
        r.add_get(API + "/venues", self.venues)
        r.add_get(API + "/standings", self.standings_list)
        r.add_get(API + "/standings/{group}", self.standings)
        r.add_get(API + "/classifications", self.classifications_list)
        r.add_get(API + "/classifications/{event}", self.classification)
        r.add_get(API + "/snapshot", self.snapshot)
        r.add_get(API + "/stream", self.sse)
        r.add_get(API + "/ws", self.ws)
        r.add_route("OPTIONS", API + "/{tail:.*}", self.preflight)
        r.add_get("/metrics", self.metrics_page)
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        return app

    @web.middleware
    async def _errors(self, request, handler):
        try:
            return await handler(request)
        except (BadPosition, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)

    def _origin_allowed(self, origin: Optional[str]) -> Optional[str]:
        if not origin or not self.s.cors_origins:
            return None
        if "*" in self.s.cors_origins:
            return "*"
        return origin if origin in self.s.cors_origins else None

    async def _cors(self, request, response) -> None:
        allow = self._origin_allowed(request.headers.get("Origin"))
        if allow is not None:
            response.headers["Access-Control-Allow-Origin"] = allow
            response.headers["Access-Control-Expose-Headers"] = "ETag"
            if allow != "*":
                response.headers["Vary"] = "Origin"

    async def preflight(self, request) -> web.Response:
        allow = self._origin_allowed(request.headers.get("Origin"))
        if allow is None:
            return web.Response(status=403, text="origin not allowed")
        return web.Response(status=204, headers={
            "Access-Control-Allow-Methods": "GET, OPTIONS",
            "Access-Control-Allow-Headers": "Last-Event-ID, If-None-Match, Cache-Control",
            "Access-Control-Max-Age": "600"})

    def _json(self, request, obj, status: int = 200) -> web.Response:
        body = orjson.dumps(obj)
        etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
        inm = request.headers.get("If-None-Match", "")
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if status == 200 and inm and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, status=status, content_type="application/json", headers=headers)

    async def _wait_ready(self) -> None:
        if not self.ready.is_set():
            try:
                await asyncio.wait_for(self.ready.wait(), self.s.ready_timeout_s)
            except asyncio.TimeoutError:
                why = f": cannot read the Kafka broker ({self.reader_error}); trying again" \
                    if self.reader_error else ""
                raise web.HTTPServiceUnavailable(text=f"gateway still reading the topics{why}")

    # REST
    async def races(self, request):
        await self._wait_ready()
        flt = Filter.from_query(request.query)
        return self._json(request, {"races": self.state.race_list(flt)})

    async def race(self, request):
        await self._wait_ready()
        r = self.state.races.get(request.match_info["race_id"])
        if r is None:
            return self._json(request, {"error": "no such race"}, 404)
        return self._json(request, self.state.race_detail(r))

    async def venues(self, request):
        await self._wait_ready()
        out = []
        for vid, v in sorted(self.state.venues.items()):
            races = [r for r in self.state.races.values() if r.meta.get("venue") == vid]
            on = [r.race_id for r in races if r.status == "running"]
            out.append({**v, "races": len(races), "running": on})
        return self._json(request, {"venues": out})

    async def standings_list(self, request):
        await self._wait_ready()
        return self._json(request, {"standings": [s for _, s in sorted(self.state.standings.items())]})

    async def standings(self, request):
        await self._wait_ready()
        s = self.state.standings.get(request.match_info["group"])
        if s is None:
            return self._json(request, {"error": "no standings for this group"}, 404)
        return self._json(request, s)

    async def classifications_list(self, request):
        await self._wait_ready()
        return self._json(request, {"classifications": [c for _, c in sorted(self.state.classifications.items())]})

    async def classification(self, request):
        await self._wait_ready()
        c = self.state.classifications.get(request.match_info["event"])
        if c is None:
            return self._json(request, {"error": "no classification for this event"}, 404)
        return self._json(request, c)

    async def snapshot(self, request):
        await self._wait_ready()
        return self._json(request, self.state.snapshot(Filter.from_query(request.query)))

    # static
    async def page(self, request):
        return web.Response(body=(WEB / "index.html").read_bytes(), content_type="text/html",
                            charset="utf-8", headers={"Cache-Control": "no-cache"})

    async def static(self, request):
        name = request.match_info["name"]
        ext = os.path.splitext(name)[1]
        if "/" in name or name.startswith(".") or ext not in STATIC_TYPES:
            raise web.HTTPNotFound()
        f = WEB / name
        if not f.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=f.read_bytes(), headers={"Content-Type": STATIC_TYPES[ext],
                                                          "Cache-Control": "no-cache"})

    async def openapi(self, request):
        return web.Response(body=(WEB / "openapi.yaml").read_bytes(),
                            headers={"Content-Type": "application/yaml"})

    # ops
    async def metrics_page(self, request):
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request):
        """Liveness: the process serves and its reader runs (a reader waiting to
        try the broker again is running: /readyz says why it is not ready)."""
        if self.reader_task is None or self.reader_task.done():
            return web.Response(status=503, text=f"reader stopped: {self.reader_error}")
        return web.Response(text="ok")

    async def readyz(self, request):
        """Ready: connected to the broker and caught up with the topics' ends."""
        if self.reader_task is not None and not self.reader_task.done() and self.connected \
                and self.caught_up and self.ready.is_set():
            return web.Response(text="ready")
        if self.reader_error is not None:
            return web.Response(status=503, text=f"not ready: cannot read the Kafka broker at "
                                                 f"{self.s.bootstrap} ({self.reader_error}); trying again")
        return web.Response(status=503, text="not ready: reading the topics")

    # -- streams ----------------------------------------------------------------------
    def _subscribe(self, transport: str, flt: Filter, last: Optional[str]):
        """Register a client and take what it must be sent first, in one step
        (no await: nothing can arrive in between)."""
        pos = decode_position(last) if last else None
        snapshot = None
        backlog: list = []
        if pos is not None:
            backlog = self.state.backlog(pos, flt)
            if backlog is None:            # older than the log: start again
                pos = None
                backlog = []
                snapshot = self.state.snapshot(flt)
                snapshot["reset"] = True
        else:
            snapshot = self.state.snapshot(flt)
        if pos is None:
            pos = dict(self.state.position)
        client = Client(transport, flt, dict(pos), self.s.queue_size)
        client.ahead = any(o > self.state.position.get(tp, 0) for tp, o in pos.items())
        self.clients.add(client)
        self._m_clients.labels(transport).inc()
        return client, snapshot, backlog

    def _unsubscribe(self, client: Client) -> None:
        if client in self.clients:
            self.clients.discard(client)
            self._m_clients.labels(client.transport).dec()

    async def sse(self, request):
        flt = Filter.from_query(request.query)
        last = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
        if last:
            decode_position(last)       # a bad id is a 400 before the stream starts
        await self._wait_ready()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        client, snapshot, backlog = self._subscribe("sse", flt, last)
        watchdog = None
        try:
            head = [b"retry: 2000\n\n"]
            if snapshot is not None:
                head.append(b"id: " + client.pos_str.encode() + b"\nevent: snapshot\ndata: "
                            + orjson.dumps(snapshot) + b"\n\n")
            await resp.write(b"".join(head))
            for k in range(0, len(backlog), 256):
                await resp.write(b"".join([sse_frame(it, client.advance(it)) for it in backlog[k:k + 256]]))
            # what came meanwhile waited in the queue; then the fan-out writes
            # straight to the socket (no await between the last catch-up and that)
            while client.queue and client.dropped is None:
                items = list(client.queue)
                client.queue.clear()
                await resp.write(b"".join([sse_frame(it, client.advance(it)) for it in items]))
            if client.dropped is None:
                if request.transport is None or request.transport.is_closing():
                    client.drop("connection closed")
                else:
                    client.sock = request.transport
                    client.chunked = request.version >= HttpVersion11
                    client.direct = True
            hb = self.s.heartbeat_s
            while client.dropped is None:
                client.wake.clear()
                try:
                    await asyncio.wait_for(client.wake.wait(), hb)
                except asyncio.TimeoutError:
                    if client.sock.is_closing():
                        client.drop("connection closed")
                    elif client.sock.get_write_buffer_size() > self.s.send_buffer:
                        client.drop("slow client: not taking its heartbeats")
                        self._m_dropped.labels("sse").inc()
                    else:
                        client.write_direct(b": heartbeat\n\n")
            self._unsubscribe(client)
            if client.dropped != "connection closed":
                client.direct = False
                watchdog = asyncio.get_running_loop().call_later(self.s.slow_close_grace_s, _abort, request)
                await resp.write(b"event: close\ndata: " + orjson.dumps({"reason": client.dropped}) + b"\n\n")
                await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError, ConnectionError):
            pass
        finally:
            if watchdog is not None:
                watchdog.cancel()
            self._unsubscribe(client)
        return resp

    async def ws(self, request):
        flt = Filter.from_query(request.query)
        last = request.query.get("last_event_id")
        if last:
            decode_position(last)
        await self._wait_ready()
        ws = web.WebSocketResponse(heartbeat=self.s.heartbeat_s, max_msg_size=4096)
        await ws.prepare(request)
        client, snapshot, backlog = self._subscribe("ws", flt, last)

        async def drain_incoming():   # control frames (ping/pong/close) and nothing else
            async for msg in ws:
                if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
            client.dropped = client.dropped or "closed by the client"
            client.wake.set()

        reader = asyncio.create_task(drain_incoming())
        fanned = self._m_fanned.labels("ws")

        def frame(item: Item) -> str:
            ident = client.advance(item)
            return ('{"type":"event","id":"' + ident + '","kind":"' + item.kind + '","event":'
                    + item.data.decode() + "}")
        try:
            if snapshot is not None:
                await ws.send_str(orjson.dumps({"type": "snapshot", "id": encode_pos_fast(client.pos),
                                                "snapshot": snapshot}).decode())
            for item in backlog:
                await ws.send_str(frame(item))
            while not ws.closed:
                if not client.queue and client.dropped is None:
                    client.wake.clear()
                    await client.wake.wait()
                if client.dropped is not None:
                    self._unsubscribe(client)
                    if client.dropped.startswith("slow"):
                        await asyncio.wait_for(ws.close(code=4008, message=client.dropped[:120].encode()),
                                               self.s.slow_close_grace_s)
                    elif client.dropped.startswith("gateway shutting down"):
                        await asyncio.wait_for(ws.close(code=1001, message=client.dropped[:120].encode()),
                                               self.s.slow_close_grace_s)
                    break
                items = list(client.queue)
                client.queue.clear()
                for it in items:
                    await ws.send_str(frame(it))
                now = time.perf_counter()
                for it in items:
                    self._m_latency.observe(now - it.arrived)
                fanned.inc(len(items))
        except (ConnectionResetError, asyncio.CancelledError, ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            self._unsubscribe(client)
            reader.cancel()
            if not ws.closed:
                await ws.close()
        return ws


def _abort(request) -> None:
    tr = request.transport
    if tr is not None:
        tr.abort()


async def serve(settings: GatewaySettings, on_started=None, stop: Optional[asyncio.Event] = None) -> int:
    gw = Gateway(settings)
    await gw.start()
    if on_started is not None:
        on_started(gw)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass   # not the main thread (tests run serve in one) or no signals here: stop comes from ``stop``
    try:
        await stop.wait()
    finally:
        await gw.stop()
    return 0


def run(settings: GatewaySettings) -> int:
    def started(gw: Gateway) -> None:
        print(f"http://{settings.host}:{gw.port}/", flush=True)
        sec = (settings.security or PLAINTEXT).describe()   # no secret in it
        print(f"lapstream serve: broker {settings.bootstrap} ({sec}); page http://{settings.host}:{gw.port}/, "
              f"API {API}/races, stream {API}/stream, OpenAPI /openapi.yaml", file=sys.stderr, flush=True)

    return asyncio.run(serve(settings, started))
