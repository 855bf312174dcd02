"""``lapstream serve`` against a real broker and worker (loopback): REST with
ETag and CORS, the OpenAPI document, SSE resume mid-race and across a
gateway restart (ids compared with ``lapstream process``), the WebSocket
stream, a slow client closed with a reason, metrics and health."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest
import yaml

from streams import beijing
from streams import topics as T
from streams.gateway_state import DERIVED_KINDS
from tests import gatewaykit as G
from tests import livekit as L

pytestmark = [pytest.mark.live, pytest.mark.timeout(600)]
RACE = "OWG2022-TPW-FA"


@pytest.fixture(scope="module")
def live():
    stack = G.Stack()
    lines = G.feed_lines(beijing.FINAL_A_FILE)
    stack.want = L.offline(lines)
    stack.lines = lines
    yield stack
    stack.close()


def read_until(client: G.SSE, n_derived: int, sink: list, ids: list, deadline_s: float = 120.0):
    """Read events into ``sink`` (derived events) until it holds n_derived; the
    last id seen goes to ``ids``."""
    t0 = time.monotonic()
    for ident, event, data in client.events():
        if ident is not None:
            ids.append(ident)
        if event in DERIVED_KINDS:
            sink.append(orjson.loads(data))
        if len(sink) >= n_derived:
            return
        assert time.monotonic() - t0 < deadline_s, "stream too slow"
    raise AssertionError(f"stream ended after {len(sink)} events")


def same_as_offline(got: list[dict], want: list[dict]) -> None:
    ids = [e["event_id"] for e in got]
    assert len(ids) == len(set(ids)), "an event was sent twice"
    assert sorted(ids) == sorted(e["event_id"] for e in want)
    assert L.per_key_sequences(got) == L.per_key_sequences(want)


def test_sse_resume_mid_race_and_across_a_gateway_restart(live):
    """A client reads a third of the race, drops, resumes with Last-Event-ID on
    the same gateway, drops again, the gateway is replaced by a new process,
    and the client resumes there: it gets exactly the events it missed each
    time, and all together they are ``lapstream process``'s events."""
    want = live.want
    replay = G.replay_in_thread(live.broker.bootstrap, live.lines, speed=20)
    got: list[dict] = []
    ids: list[str] = []
    c1 = G.SSE(live.gateway.port)
    first = next(c1.events())
    assert first[1] == "snapshot"
    ids.append(first[0])
    read_until(c1, len(want) // 3, got, ids)
    c1.close()
    seen1 = len(got)
    # resume on the same gateway: no snapshot, the next events
    c2 = G.SSE(live.gateway.port, last_id=ids[-1])
    part2: list[dict] = []
    it = c2.events()
    ident, event, data = next(it)
    assert event != "snapshot"
    if event in DERIVED_KINDS:
        part2.append(orjson.loads(data))
    ids.append(ident)
    for ident, event, data in it:
        ids.append(ident)
        if event in DERIVED_KINDS:
            part2.append(orjson.loads(data))
        if seen1 + len(part2) >= 2 * len(want) // 3:
            break
    c2.close()
    got += part2
    # the gateway goes away; a new one (another process, another port) takes over
    live.gateway.stop()
    live.gateway = live.new_gateway()
    live.gateway.wait_ready()
    c3 = G.SSE(live.gateway.port, last_id=ids[-1])
    rest: list[dict] = []
    read_until(c3, len(want) - len(got), rest, ids)
    c3.close()
    got += rest
    replay.join(120)
    assert not isinstance(replay.result, BaseException), replay.result
    same_as_offline(got, want)
    # and the split between the three sessions was real
    assert 0 < seen1 < len(got) and part2 and rest


FINAL_RESULT_REVISION = G.final_result_revision()


def wait_official(gw: G.Gateway, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, body = gw.get(f"/api/v1/races/{RACE}")
        if status == 200:
            d = orjson.loads(body)
            if d["status"] == "official" and d["result"]["revision"] == FINAL_RESULT_REVISION:
                return d
        time.sleep(0.3)
    raise AssertionError("the race never became official on the gateway")


def test_rest_answers_with_etags_cors_and_openapi(live):
    if not any(r["race_id"] == RACE for r in live.gateway.json("/api/v1/races")["races"]):
        L.replay_lines(live.broker.bootstrap, live.lines, speed=None)
    gw = live.gateway
    race = wait_official(gw)
    last_result = [e for e in live.want if e["kind"] == "result"][-1]
    assert race["result"] == last_result
    assert [(r["competitor_id"], r["record"]) for r in race["records"]] == [("CAN", "OR")]
    assert [(i["skater_id"], i["status"]) for i in race["incidents"]] == [("JPN-TAKAGI-N", "confirmed")]
    races = gw.json("/api/v1/races")["races"]
    assert [(r["race_id"], r["status"], r["venue"]) for r in races] == [(RACE, "official", "NSO")]
    assert gw.json("/api/v1/races?venue=ELSEWHERE")["races"] == []
    assert gw.json("/api/v1/venues")["venues"][0]["venue"] == "NSO"
    standings = gw.json(f"/api/v1/standings/{RACE}")
    assert standings == [e for e in live.want if e["kind"] == "standings"][-1]
    cls = gw.json("/api/v1/classifications/OWG2022-team_pursuit-W-2400")
    assert [p["competitor_id"] for p in cls["ranking"]] == ["CAN", "JPN"]
    assert gw.get("/api/v1/races/NOPE")[0] == 404
    assert gw.get("/api/v1/standings/NOPE")[0] == 404
    # ETag -> 304
    status, headers, body = gw.get(f"/api/v1/races/{RACE}")
    etag = headers["ETag"]
    assert gw.get(f"/api/v1/races/{RACE}", {"If-None-Match": etag})[0] == 304
    assert gw.get(f"/api/v1/races/{RACE}", {"If-None-Match": '"other"'})[0] == 200
    # CORS: none by default
    status, headers, _ = gw.get("/api/v1/races", {"Origin": "http://example.test"})
    assert "Access-Control-Allow-Origin" not in headers
    # OpenAPI: served, parses, and names every route the gateway has
    status, headers, body = gw.get("/openapi.yaml")
    doc = yaml.safe_load(body)
    assert status == 200 and doc["openapi"].startswith("3.")
    from streams.gateway import Gateway, GatewaySettings

    async def routes():
        app = Gateway(GatewaySettings(bootstrap="unused")).app()
        return {r.resource.canonical for r in app.router.routes() if r.method == "GET"}

    documented = set(doc["paths"])
    assert asyncio.run(routes()) == documented
    # bad requests
    assert gw.get("/api/v1/stream?kind=nonsense")[0] == 400
    assert gw.get("/api/v1/stream", {"Last-Event-ID": "not-a-position"})[0] == 400


def test_cors_origins_are_configurable_and_idle_streams_get_heartbeats(live):
    gw = live.new_gateway(["--cors-origin", "http://board.test", "--heartbeat", "0.3"]).wait_ready()
    c = G.SSE(gw.port, "/api/v1/stream?race=NOTHING-HERE")
    assert next(c.events())[1] == "snapshot"
    deadline = time.monotonic() + 30
    while c.body.count(b": heartbeat\n\n") < 2:
        assert time.monotonic() < deadline, c.body
        c._fill()
    c.close()
    status, headers, _ = gw.get("/api/v1/races", {"Origin": "http://board.test"})
    assert status == 200
    status, headers, _ = gw.get("/api/v1/races", {"Origin": "http://board.test"})
    assert headers.get("Access-Control-Allow-Origin") == "http://board.test"
    assert "ETag" in headers.get("Access-Control-Expose-Headers", "")
    status, headers, _ = gw.get("/api/v1/races", {"Origin": "http://evil.test"})
    assert "Access-Control-Allow-Origin" not in headers
    gw.stop()


def test_websocket_streams_the_same_events_and_resumes(live):
    if not any(r["race_id"] == RACE for r in live.gateway.json("/api/v1/races")["races"]):
        L.replay_lines(live.broker.bootstrap, live.lines, speed=None)
    wait_official(live.gateway)
    want = live.want

    async def go():
        url = live.gateway.url("/api/v1/ws").replace("http", "ws", 1)
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(url + "?race=" + RACE) as ws:
                snap = orjson.loads((await ws.receive(timeout=30)).data)
            assert snap["type"] == "snapshot"
            (race,) = snap["snapshot"]["races"]
            assert race["status"] == "official"
            # from the start of every partition: every event; then resume from the middle
            got, ids = [], []
            async with s.ws_connect(url + "?race=" + RACE + "&last_event_id=0.0.0") as ws:
                while len(got) < len(want) // 2:
                    m = orjson.loads((await ws.receive(timeout=30)).data)
                    assert m["type"] == "event"
                    ids.append(m["id"])
                    if m["kind"] in DERIVED_KINDS:
                        got.append(m["event"])
            async with s.ws_connect(url + "?race=" + RACE + "&last_event_id=" + ids[-1]) as ws:
                while len(got) < len(want):
                    m = orjson.loads((await ws.receive(timeout=30)).data)
                    if m["kind"] in DERIVED_KINDS:
                        got.append(m["event"])
            return got

    same_as_offline(asyncio.run(go()), want)


def burst_of(race: str, n: int, pad: int = 0) -> list[dict]:
    return [{"kind": "split", "v": 1, "event_id": f"{race}-{i}", "race_id": race, "t_us": i,
             "attempt": 1, "competitor_id": f"C{i % 7}", "skater_id": None, "distance_m": 100 * (i + 1),
             "time_ms": 1000 * (i + 1), "time": "x", "lap_ms": None, "rank": 1, "behind_ms": 0,
             **({"pad": "x" * pad} if pad else {})}
            for i in range(n)]


def produce(bootstrap: str, events: list[dict], key: bytes) -> None:
    async def go():
        from aiokafka import AIOKafkaProducer

        p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, max_request_size=16 << 20)
        await p.start()
        try:
            for e in events:
                await p.send(T.SPLITS.name, orjson.dumps(e), key=key)
            await p.flush()
        finally:
            await p.stop()

    asyncio.run(go())


def resume_until(gw: G.Gateway, path: str, it, c, last: str, want: list[str], reasons: list[str]):
    """Read (resuming after every close) until every wanted split arrived."""
    got: list[str] = []
    deadline = time.monotonic() + 180
    while len(got) < len(want):
        assert time.monotonic() < deadline, f"only {len(got)} of {len(want)}"
        for ident, event, data in it:
            if event == "close":
                reasons.append(orjson.loads(data)["reason"])
                break
            if ident:
                last = ident
            if event == "split":
                got.append(orjson.loads(data)["event_id"])
            if len(got) == len(want):
                break
        c.close()
        if len(got) < len(want):
            c = G.SSE(gw.port, path, last_id=last)
            it = c.events()
    c.close()
    return got


def metric_value(gw: G.Gateway, series: str) -> float:
    """The value of one series on the gateway's /metrics (0 when absent)."""
    for ln in gw.get("/metrics")[2].decode().splitlines():
        if ln.startswith(series + " "):
            return float(ln.split()[-1])
    return 0.0


def test_a_slow_sse_client_is_closed_with_a_reason_and_resumes(live):
    """An SSE client that stops reading (a tiny receive window) while 1,000
    events of 8 KiB arrive: the gateway keeps at most --send-buffer bytes for
    it, then closes it with `event: close` and a reason; the drop is counted,
    and resuming with its last id gets every event exactly once."""
    gw = live.new_gateway(["--send-buffer", "65536"]).wait_ready()
    path = "/api/v1/stream?race=SLOW-SSE"
    c = G.SSE(gw.port, path, rcvbuf=4096)
    it = c.events()
    ident, event, _ = next(it)
    assert event == "snapshot"
    burst = burst_of("SLOW-SSE", 1000, pad=8192)
    consumed0 = metric_value(gw, 'lapstream_gateway_events_consumed_total{topic="timing.splits"}')
    produce(live.broker.bootstrap, burst, b"SLOW-SSE")
    # the client reads nothing until the gateway has taken in the whole burst (or
    # dropped it already): on a loaded machine the gateway may lag the producer,
    # and a client reading early would never fall behind
    deadline = time.monotonic() + 120
    while (metric_value(gw, 'lapstream_gateway_slow_clients_dropped_total{transport="sse"}') < 1
           and metric_value(gw, 'lapstream_gateway_events_consumed_total{topic="timing.splits"}')
           < consumed0 + len(burst)):
        assert time.monotonic() < deadline, "the gateway did not take in the burst"
        time.sleep(0.2)
    reasons: list[str] = []
    got = resume_until(gw, path, it, c, ident, [e["event_id"] for e in burst], reasons)
    assert reasons and reasons[0].startswith("slow client"), reasons
    assert got == [e["event_id"] for e in burst]
    metrics = gw.get("/metrics")[2].decode()
    dropped = [ln for ln in metrics.splitlines()
               if ln.startswith('lapstream_gateway_slow_clients_dropped_total{transport="sse"}')]
    assert dropped and float(dropped[0].split()[-1]) >= 1
    gw.stop()


def test_a_slow_websocket_client_is_closed_with_a_reason(live):
    """A WebSocket client may be --queue-size events behind: a burst of 600
    arriving at once closes it with code 4008 and the reason."""
    gw = live.new_gateway(["--queue-size", "4"]).wait_ready()

    async def go():
        url = gw.url("/api/v1/ws").replace("http", "ws", 1) + "?race=SLOW-WS"
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(url) as ws:
                assert orjson.loads((await ws.receive(timeout=30)).data)["type"] == "snapshot"
                await asyncio.get_running_loop().run_in_executor(
                    None, produce, live.broker.bootstrap, burst_of("SLOW-WS", 600), b"SLOW-WS")
                while True:
                    m = await ws.receive(timeout=60)
                    if m.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                        return m.data, m.extra
    code, reason = asyncio.run(go())
    assert code == 4008 and reason.startswith("slow client"), (code, reason)
    gw.stop()


def test_metrics_health_and_readiness(live):
    gw = live.gateway
    assert gw.get("/healthz")[0] == 200
    assert gw.get("/readyz")[0] == 200
    c = G.SSE(gw.port)
    next(c.events())
    text = gw.get("/metrics")[2].decode()
    c.close()
    from streams.metrics import GATEWAY_CATALOGUE, exposed_names

    for spec in GATEWAY_CATALOGUE:
        assert any(ln.startswith(tuple(exposed_names(spec))) for ln in text.splitlines()), spec.name
    assert 'lapstream_gateway_clients{transport="sse"} 1.0' in text
    assert "lapstream_gateway_ready 1.0" in text
    # only the gateway's block: no worker metric is exposed by a gateway
    assert "lapstream_raw_messages_total" not in text


def test_demo_web_prints_the_page_url_and_serves_the_final():
    import os
    import re
    import subprocess
    import sys

    from streams.procs import stop_process

    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "demo", "--web", "--plain", "--speed", "20",
                             "--http-port", str(G.free_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=G.REPO, env={**os.environ, "PYTHONPATH": str(G.REPO), "COLUMNS": "200"})
    try:
        url = None
        seen = []
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            assert line, "demo ended: " + "".join(seen)
            seen.append(line)
            m = re.search(r"scoreboard: (http://127\.0\.0\.1:\d+/)", line)
            if m:
                url = m.group(1)
        assert url, "".join(seen)
        gw = G.Gateway("unused", L.tmpdir(), port=int(url.rsplit(":", 1)[1].strip("/")))
        status, headers, body = gw.get("/")
        assert status == 200 and b"lapstream" in body and headers["Content-Type"].startswith("text/html")
        wait_official(gw)
    finally:
        stop_process(proc, timeout=30)
    # the demo took its gateway with it
    assert not _port_open(gw.port)


def _port_open(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_the_two_example_subscribers_run(live):
    """examples/kafka_consumer.py (aiokafka) and examples/sse_client.py (the
    gateway's stream, standard library only), run as a subscriber runs them."""
    import subprocess
    import sys

    if not any(r["race_id"] == RACE for r in live.gateway.json("/api/v1/races")["races"]):
        L.replay_lines(live.broker.bootstrap, live.lines, speed=None)
    wait_official(live.gateway)
    out = subprocess.run([sys.executable, "examples/kafka_consumer.py", "--bootstrap", live.broker.bootstrap,
                          "--idle-exit", "3"], cwd=G.REPO, capture_output=True, timeout=120, check=True)
    lines = out.stdout.decode().splitlines()
    shown = [ln.split(" (timing.raw:")[0] for ln in lines]
    # the results as they came: revisions only go up, live -> unofficial -> official
    # (provisional results are revisions too: lapstream process says how many)
    revs = [int(ln.split(" rev ")[1].split("]")[0]) for ln in shown]
    assert revs == sorted(set(revs)) and revs[-1] == FINAL_RESULT_REVISION, shown
    order = {"live": 0, "unofficial": 1, "official": 2}
    statuses = [ln.split("[")[1].split(" rev")[0] for ln in shown]
    assert [order[x] for x in statuses] == sorted(order[x] for x in statuses), shown
    assert shown[0].startswith("OWG2022-TPW-FA [live rev ")
    assert shown[-1] == (f"OWG2022-TPW-FA [official rev {FINAL_RESULT_REVISION}] "
                         "1. CAN 2:53.44, 2. JPN 3:04.47"), shown
    assert all("(timing.raw:" in ln for ln in lines)      # the lapstream-source header
    out = subprocess.run([sys.executable, "examples/sse_client.py", live.gateway.url(""), "--race", RACE,
                          "--until-official"], cwd=G.REPO, capture_output=True, timeout=120, check=True)
    assert (f"OWG2022-TPW-FA official rev {FINAL_RESULT_REVISION}: CAN 2:53.44, JPN 3:04.47"
            in out.stdout.decode().splitlines())


def test_the_kafka_example_drops_repeats_and_late_revisions():
    import importlib.util

    spec = importlib.util.spec_from_file_location("kafka_consumer", G.REPO / "examples" / "kafka_consumer.py")
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    cur = ex.Current()
    r1 = {"kind": "result", "event_id": "a", "race_id": "R", "revision": 1, "status": "live", "ranking": []}
    r2 = {**r1, "event_id": "b", "revision": 2, "status": "official"}
    assert cur.apply(r1) and cur.apply(r2)
    assert not cur.apply(r1)                              # a repeat
    assert not cur.apply({**r1, "event_id": "c"})         # an older revision, late
    assert cur.results()["R"]["status"] == "official"
    seen = ex.SeenIds(max_age_s=10, max_ids=3)
    assert seen.first_time("x", 0) and not seen.first_time("x", 1)
    assert seen.first_time("y", 20) and seen.first_time("x", 21)   # x was forgotten after 10 s


def test_a_gateway_shutting_down_tells_its_stream_clients(live):
    gw = live.new_gateway().wait_ready()
    c = G.SSE(gw.port, "/api/v1/stream?race=" + RACE)
    it = c.events()
    assert next(it)[1] == "snapshot"
    gw.stop()
    events = [(event, data) for _, event, data in it]
    c.close()
    assert events and events[-1][0] == "close"
    assert orjson.loads(events[-1][1])["reason"].startswith("gateway shutting down")
    assert c.closed
