"""The first mile, end to end: simulated P3 decoders (TCP, loopback) ->
ingest p3 -> embedded broker -> worker -> derived topics. The derived events
equal ``lapstream process`` of the v1 feed the decoders were driven by.

The decoders are driven in lock step: each record is written to its
decoder's socket and the next one waits until ingest has handled it (and
handed its message to the producer), and the feed's other lines (venue,
race, gun, referee) go through ingest's own producer. So the order on
``timing.raw`` is the feed's arrival order whatever the machine's load, and
the comparison with the offline run is exact. Faults (a connection cut in
the middle of a frame, garbage, bad CRCs, a decoder restart, a clock step)
happen in the middle of the stream.
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
import urllib.request

import orjson
import pytest

from streams import beijing
from streams import topics as T
from streams.broker import free_port
from streams.p3.ingest import IngestSettings, P3Ingest
from streams.p3.mapping import DecoderMap
from streams.p3.simdecoder import DecoderServer, plan, wait_until
from streams.replay import route
from tests import livekit as L
from tests.paths import DATA

pytestmark = [pytest.mark.live, pytest.mark.timeout(600)]

MAP = DATA / "p3-map.json"


@pytest.fixture
def stack():
    with L.live_stack() as (broker, worker, _):
        yield broker, worker


def feed_lines():
    return (beijing.FEEDS_DIR / beijing.FINAL_A_FILE).read_bytes().splitlines()


async def drive(bootstrap: str, lines, faults=None) -> dict:
    """Run the decoders and ingest over ``lines``; ``faults``: step index -> name."""
    faults = faults or {}
    dmap = DecoderMap.load(MAP)
    servers = {tg: await DecoderServer(tg).start() for tg in dmap.targets}
    wall = {"us": 0}
    # heartbeats only from STATUS here: the decoders send one a second of feed time, and
    # the wall clock is the feed's (filling is tested on its own)
    ing = P3Ingest(IngestSettings(decoders=[s.address for s in servers.values()], bootstrap=bootstrap,
                                  http_port=free_port(), heartbeat_fill_s=0),
                   dmap, wall_us=lambda: wall["us"])
    await ing.start()
    out = {"faults": []}
    try:
        await wait_until(lambda: all(l.connected for l in ing.links.values()), 30)
        race_venue: dict = {}
        last_venue = None
        for i, st in enumerate(plan(lines, dmap)):
            wall["us"] = max(wall["us"], st.t_us)
            if st.target is None:
                topic, key, _ = route(st.line, race_venue, last_venue)
                if topic == T.RAW.name and key is not None:
                    last_venue = key.decode()
                await ing.send(st.line, key, topic)
                continue
            srv = servers[st.target]
            link = ing.links[srv.address]
            fault = faults.get(i)
            if fault:
                out["faults"].append((i, fault, srv.target.decoder_id, type(st.record).__name__))
            if fault == "cut":
                c0, r0 = link.connects, srv.resend_requests
                await srv.cut_mid_frame(st.record, arrived=lambda: link.decoder.pending > 0)
                # ingest reconnects and asks for what followed the last passing it saw
                await wait_until(lambda: link.connects > c0 and srv.resend_requests > r0, 30)
            elif fault == "restart":
                c0, r0 = link.connects, srv.resend_requests
                await srv.restart()
                await wait_until(lambda: link.connects > c0 and srv.resend_requests > r0, 30)
                await srv.emit(st.record)
            elif fault == "garbage":
                await srv.garbage(300, seed=i)
                await srv.emit(st.record)
            elif fault == "bad_crc":
                await srv.bad_crc(st.record)
                await srv.emit(st.record)
            elif fault == "clock_step":
                srv.step_clock(5_000_000)
                await srv.emit(st.record)
            else:
                await srv.emit(st.record)
            await wait_until(lambda: link.frames >= srv.sent_good, 30)
        await ing.flush()
        out["metrics"] = (await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{ing.s.http_port}/metrics", timeout=5).read())).decode()
        out["ready"] = ing.readiness()
        out["errors"] = ing.errors
    finally:
        await ing.stop()
        for s in servers.values():
            await s.stop()
    return out


def metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for m in re.finditer(rf"^{name}(?:\{{([^}}]*)\}})? (\S+)$", text, re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def test_simulated_decoders_to_derived_events_equal_offline(stack):
    broker, worker = stack
    w = worker()
    w.wait_ready()
    lines = feed_lines()
    want = L.offline(lines)
    res = asyncio.run(drive(broker.bootstrap, lines))
    assert res["errors"] == 0 and res["ready"][0]
    got = L.record_all(broker.bootstrap, expect=len(want))
    assert sorted(e["event_id"] for e in got) == sorted(e["event_id"] for e in want)
    assert L.per_key_sequences(got) == L.per_key_sequences(want)
    # timing.raw holds the feed: every passing and heartbeat, in the feed's order (seq renumbered)
    raw = L.record_all(broker.bootstrap, topics=[T.RAW.name], idle_s=2.0)
    strip = lambda m: {k: v for k, v in m.items() if k != "seq"}   # noqa: E731
    feed = [orjson.loads(x) for x in lines if b'"record_ref"' not in x]
    assert [strip(m) for m in raw] == [strip(m) for m in feed]
    n_pass = sum(1 for m in feed if m["kind"] == "passing")
    assert metric(res["metrics"], "lapstream_p3_messages_produced_total", kind="passing") == n_pass
    assert metric(res["metrics"], "lapstream_p3_frames_rejected_total") == 0


def test_faults_on_the_wire_change_no_fact(stack):
    broker, worker = stack
    w = worker()
    w.wait_ready()
    lines = feed_lines()
    want = L.offline(lines)
    dmap = DecoderMap.load(MAP)
    steps = plan(lines, dmap)
    # pick the moments: passings of decoder 2003 (X2-B, L200) and 1002 (X2-A, L100) mid-race,
    # a STATUS of 2004 after the last passing of the feed
    p2003 = [i for i, s in enumerate(steps) if s.target and s.target.decoder_id == 2003 and s.record.__class__.__name__ == "Passing"]
    p1002 = [i for i, s in enumerate(steps) if s.target and s.target.decoder_id == 1002 and s.record.__class__.__name__ == "Passing"]
    last_passing = max(i for i, s in enumerate(steps) if s.target and s.record.__class__.__name__ == "Passing")
    s2004 = [i for i, s in enumerate(steps) if s.target and s.target.decoder_id == 2004 and i > last_passing + 40]
    faults = {p2003[len(p2003) // 3]: "cut", p2003[len(p2003) // 2]: "garbage",
              p1002[len(p1002) // 4]: "bad_crc", p1002[len(p1002) // 2]: "bad_crc",
              p1002[2 * len(p1002) // 3]: "restart", s2004[0]: "clock_step"}
    res = asyncio.run(drive(broker.bootstrap, lines, faults))
    assert len(res["faults"]) == 6 and res["errors"] == 0
    got = L.record_all(broker.bootstrap, expect=len(want))
    assert sorted(e["event_id"] for e in got) == sorted(e["event_id"] for e in want)
    assert L.per_key_sequences(got) == L.per_key_sequences(want)
    text = res["metrics"]
    # two reconnects (the cut, the restart), one restart, one clock step, two bad CRCs
    assert metric(text, "lapstream_p3_connects_total") == len(dmap.targets) + 2
    assert metric(text, "lapstream_p3_frames_rejected_total", reason="bad_crc") >= 2
    assert metric(text, "lapstream_p3_frames_rejected_total", reason="broken") >= 1   # the cut frame
    assert metric(text, "lapstream_p3_garbage_bytes_total") > 0
    assert metric(text, "lapstream_p3_decoder_restarts_total") == 1
    assert metric(text, "lapstream_p3_clock_steps_total") == 1
    assert metric(text, "lapstream_p3_resend_requests_total") >= 2
    # the passing cut in half came back (RESEND after the reconnect): every passing reached timing.raw
    n_pass = sum(1 for ln in lines if b'"passing"' in ln)
    assert metric(text, "lapstream_p3_messages_produced_total", kind="passing") == n_pass
    assert metric(text, "lapstream_p3_connected") == len(dmap.targets)


def test_the_ingest_command(stack, tmp_path):
    """``lapstream ingest p3`` as a process: health, readiness, metrics, a passing on timing.raw,
    a decoder that goes away and comes back, SIGTERM."""
    broker, _ = stack
    dmap = DecoderMap.load(MAP)
    tg = dmap.by_id[1001]
    port = free_port()

    async def go():
        srv = await DecoderServer(tg).start()
        log = open(tmp_path / "ingest.log", "wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streams.cli", "ingest", "p3", "--decoder", srv.address, "--map", str(MAP),
            "--broker", f"kafka://{broker.bootstrap}", "--http-port", str(port),
            stdout=log, stderr=asyncio.subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(L.REPO)})

        def get(path):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()
            except OSError:
                return None, ""

        async def http(path):
            return await asyncio.to_thread(get, path)

        try:
            await wait_until(lambda: srv.clients, 60, poll=0.05)
            async def status_is(path, code):
                for _ in range(600):
                    if (await http(path))[0] == code:
                        return True
                    await asyncio.sleep(0.1)
                return False
            assert await status_is("/healthz", 200)
            assert await status_is("/readyz", 503)          # connected, but nothing heard yet
            t = 1_700_000_000_000_000
            from streams.p3.records import Passing, Status
            await srv.emit(Status(noise=30, gps=1, decoder_id=1001, utc_us=t))
            await srv.emit(Passing(passing_number=41, transponder=410011, utc_us=t + 5, rtc_us=t + 5,
                                   strength=90, hits=20, decoder_id=1001))
            assert await status_is("/readyz", 200)
            body = orjson.loads((await http("/readyz"))[1])
            assert body["decoders"][srv.address]["connected"] and body["idempotent"] is False
            # the decoder keeps talking but sends no STATUS: ingest fills a heartbeat a second
            from streams.p3.records import Version

            async def chatter():
                while True:
                    await srv.emit(Version("sim", "1", 1001))
                    await asyncio.sleep(0.3)

            chat = asyncio.create_task(chatter())
            for _ in range(300):
                if metric((await http("/metrics"))[1], "lapstream_p3_records_total", outcome="heartbeats_filled") >= 2:
                    break
                await asyncio.sleep(0.1)
            chat.cancel()
            assert metric((await http("/metrics"))[1], "lapstream_p3_records_total", outcome="heartbeats_filled") >= 2
            # the decoder goes away: not ready; it comes back: ingest reconnects and asks for passings after 41
            await srv.restart()
            srv.pn_base = 0
            assert await status_is("/readyz", 503)
            await wait_until(lambda: srv.resend_requests >= 1, 60, poll=0.05)
            await srv.emit(Status(noise=30, gps=1, decoder_id=1001, utc_us=t + 1_000_000))
            assert await status_is("/readyz", 200)
            _, text = await http("/metrics")
            assert metric(text, "lapstream_p3_frames_total") >= 3
            assert metric(text, "lapstream_p3_connects_total") == 2
            assert metric(text, "lapstream_p3_resend_requests_total") == 1
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await srv.stop()

    asyncio.run(go())
    raw = L.record_all(broker.bootstrap, topics=[T.RAW.name], idle_s=1.0)
    passings = [m for m in raw if m["kind"] == "passing"]
    beats = [m["t_us"] for m in raw if m["kind"] == "heartbeat"]
    assert raw[0]["kind"] == "heartbeat" and raw[0]["t_us"] == 1_700_000_000_000_000
    assert len(beats) >= 3 and beats == sorted(set(beats))     # the filled ones move on
    assert all(b - a >= 500_000 for a, b in zip(beats, beats[1:]))
    assert passings == [{"kind": "passing", "v": 1, "t_us": 1_700_000_000_000_005, "venue": "NSO", "source": "X2-A",
                      "seq": 4100, "loop": "L000", "transponder": "410011", "strength": 90, "hits": 20}]


def test_a_silent_decoder_is_reconnected_and_a_broker_outage_loses_no_passing(tmp_path):
    """A decoder link that stays silent (unplugged, no FIN) is dropped and dialled again;
    passings produced while the broker is down are sent again until acknowledged."""
    from streams.broker import EmbeddedBroker, ensure_topics
    from streams.p3.ingest import make_producer
    from streams.p3.records import Passing, Status

    # noida keeps its data directory, so topics (and what was acknowledged) survive the restart,
    # as on a real cluster; the in-memory tansu would come back empty
    port = free_port()
    broker = EmbeddedBroker("noida", port=port, data_dir=tmp_path / "data", log_path=tmp_path / "b1.log")
    broker.start()
    asyncio.run(ensure_topics(broker.bootstrap))
    boot = broker.bootstrap
    dmap = DecoderMap.load(MAP)

    async def go():
        srv = await DecoderServer(dmap.by_id[1001]).start()
        quiet = await DecoderServer(dmap.by_id[1002]).start()
        producer = make_producer(boot, idempotent=False, request_timeout_ms=1500, retry_backoff_ms=100,
                                 metadata_max_age_ms=1000)
        await producer.start()
        ing = P3Ingest(IngestSettings(decoders=[srv.address, quiet.address], bootstrap=boot,
                                      idle_timeout_s=0.5, retry_max_s=0.5), dmap, producer=producer)
        await ing.start()
        try:
            # the quiet decoder never says a word: its link is dropped and dialled again
            await wait_until(lambda: ing.links[quiet.address].connects >= 3, 60)
            async def alive():      # the other decoder says STATUS every 0.2 s
                while True:
                    await srv.emit(Status(decoder_id=1001, utc_us=time.time_ns() // 1000))
                    await asyncio.sleep(0.2)

            beat = asyncio.create_task(alive())
            await wait_until(lambda: ing.produced >= 1, 60)
            # the broker goes away; a passing arrives meanwhile
            broker.stop()
            await srv.emit(Passing(passing_number=7, transponder=410011, utc_us=time.time_ns() // 1000,
                                   decoder_id=1001))
            await wait_until(lambda: ing.conv.stats[(srv.address, "passings")] == 1, 30)
            await asyncio.sleep(2.0)
            produced = ing.metrics["lapstream_p3_messages_produced_total"].labels("passing")
            assert produced._value.get() == 0
            # it comes back (same port, same data directory): the passing gets through
            broker.start()     # in this thread: the broker ends with the thread that started it
            await wait_until(lambda: produced._value.get() == 1, 120, poll=0.05)
            assert ing.errors >= 1                            # aiokafka gave up on it; ingest did not
            beat.cancel()
        finally:
            await ing.stop()
            await producer.stop()
            await srv.stop()
            await quiet.stop()

    try:
        asyncio.run(go())
        raw = L.record_all(boot, topics=[T.RAW.name], idle_s=1.0)
        assert [m["kind"] for m in raw].count("passing") == 1
        assert [m for m in raw if m["kind"] == "passing"][0]["seq"] == 700
    finally:
        broker.stop()
