"""Operations, end to end, on real parts: an embedded Kafka-protocol broker, a
``lapstream worker`` subprocess and a real Prometheus server (the Debian
``prometheus`` package, ``/usr/bin/prometheus``) scraping the worker's
``/metrics`` every second and evaluating ``deploy/prometheus/alerts.yml``.

What is checked is what an operator sees: the numbers in Prometheus (through
its HTTP API), not the worker's internals. The expected figures come from the
feed itself and from ``lapstream process`` (``streams.process.process_lines``)
on the same feed. Everything listens on 127.0.0.1 and is stopped by the
fixture. Prometheus is required, not skipped: CI installs it with apt
(``make deps``).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from streams.procs import stop_process
from streams import beijing
from streams import topics as T
from streams.replay import route
from tests import livekit as L

pytestmark = [pytest.mark.timeout(600), pytest.mark.live]

REPO = Path(__file__).resolve().parents[1]
ALERTS_FILE = REPO / "deploy" / "prometheus" / "alerts.yml"
JOB = "lapstream"  # the job name the alert rules select


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str, str]:
    """(status, content type, body); HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


class Prometheus:
    """A real Prometheus server on loopback, scraping one worker every second."""

    def __init__(self, tmp: Path, target_port: int) -> None:
        self.exe = shutil.which("prometheus") or "/usr/bin/prometheus"
        if not os.access(self.exe, os.X_OK):
            pytest.fail("the prometheus server binary was not found: install it (Debian/Ubuntu: "
                        "apt-get install -y prometheus)")
        self.port = free_loopback_port()
        self.dir = tmp / f"prometheus-{self.port}"
        self.dir.mkdir()
        self.config = self.dir / "prometheus.yml"
        self.log = self.dir / "prometheus.log"
        self.target = f"127.0.0.1:{target_port}"
        # JSON is YAML: no templating of a YAML file by hand.
        self.config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS_FILE)],
            "scrape_configs": [{"job_name": JOB, "metrics_path": "/metrics",
                                "static_configs": [{"targets": [self.target]}]}],
        }, indent=2))
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Prometheus":
        cmd = [self.exe, f"--config.file={self.config}", f"--storage.tsdb.path={self.dir / 'data'}",
               f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=self.dir)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited: {self.log.read_text()[-3000:]}"
            try:
                if http_get(self.url("/-/ready"), timeout=1)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"prometheus not ready in 30s: {self.log.read_text()[-3000:]}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=20)

    # -- HTTP API --------------------------------------------------------------

    def api(self, path: str, **params) -> object:
        status, _, body = http_get(self.url(path + "?" + urllib.parse.urlencode(params)))
        doc = json.loads(body)
        assert status == 200 and doc["status"] == "success", (path, params, body)
        return doc["data"]

    def query(self, expr: str) -> list[tuple[dict, float]]:
        """Instant query: [(labels, value)]."""
        data = self.api("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def value(self, expr: str) -> float | None:
        """The single value of an aggregating query, None when it selects nothing."""
        result = self.query(expr)
        assert len(result) <= 1, (expr, result)
        return result[0][1] if result else None

    def by(self, expr: str, label: str) -> dict[str, float]:
        return {m.get(label, ""): v for m, v in self.query(expr)}

    def wait(self, cond, what: str, timeout: float = 30.0, every: float = 0.25):
        deadline = time.monotonic() + timeout
        while True:
            got = cond()
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus: {what} not seen in {timeout}s "
                                     f"(log: {self.log.read_text()[-1500:]})")
            time.sleep(every)

    def wait_scrape_after(self, wall: float, timeout: float = 15.0) -> float:
        """Until Prometheus holds a successful scrape of the worker taken after ``wall``
        (Unix seconds); returns that scrape's timestamp."""
        def fresh():
            # timestamp() of a plain selector is the sample's (scrape) time; of any
            # other expression, e.g. ``up == 1``, it is the evaluation time
            r = self.query(f'timestamp(up{{job="{JOB}"}})')
            if r and r[0][1] > wall:
                assert self.value(f'up{{job="{JOB}"}}') == 1, "the worker's scrape failed"
                return r[0][1]
            return None
        return self.wait(fresh, f"a scrape of {self.target} after {wall:.3f}", timeout)

    def wait_settled(self, wall: float, timeout: float = 30.0) -> None:
        """Until two scrapes after ``wall`` show the same raw counter and no consumer
        lag on timing.raw (the worker has consumed and counted everything)."""
        deadline = time.monotonic() + timeout
        ts = self.wait_scrape_after(wall)
        before = self.value("sum(lapstream_raw_messages_total)")
        while True:
            ts = self.wait_scrape_after(ts)
            now = self.value("sum(lapstream_raw_messages_total)")
            lag = self.value(f'sum(lapstream_consumer_lag_messages{{topic="{T.RAW.name}"}})')
            if now == before and lag == 0:
                return
            assert time.monotonic() < deadline, f"not settled in {timeout}s: raw {before} -> {now}, lag {lag}"
            before = now

    def firing(self, alertname: str) -> list[dict]:
        return [m for m, _ in self.query(f'ALERTS{{alertname="{alertname}", alertstate="firing"}}')]

    def alerts(self, alertname: str) -> list[dict]:
        """Pending or firing."""
        return [m for m, _ in self.query(f'ALERTS{{alertname="{alertname}"}}')]


@dataclass
class Ops:
    broker: object
    worker: L.Worker
    prom: Prometheus
    tmp: Path


@pytest.fixture
def ops():
    tmp = L.tmpdir()
    broker = worker = prom = None
    try:
        broker = L.start_broker(tmp)
        worker = L.Worker(broker.bootstrap, tmp).start()
        prom = Prometheus(tmp, worker.port).start()
        yield Ops(broker, worker, prom, tmp)
    finally:
        for part in (prom, worker, broker):
            if part is not None:
                part.stop()
        if prom is not None:
            shutil.rmtree(prom.dir / "data", ignore_errors=True)


def feed_lines(name: str) -> list[bytes]:
    return (beijing.FEEDS_DIR / name).read_bytes().splitlines()


def raw_line_count(lines) -> int:
    """Lines the replay sends to timing.raw (all but the record references)."""
    race_venue: dict = {}
    last = None
    n = 0
    for line in lines:
        topic, key, _ = route(line, race_venue, last)
        if topic == T.RAW.name:
            n += 1
            last = key.decode() if key is not None else last
    return n


def heartbeat_sources(lines) -> set[tuple[str, str]]:
    out = set()
    for line in lines:
        if b'"heartbeat"' in line:
            m = orjson.loads(line)
            out.add((m["venue"], m["source"]))
    return out


# ------------------------------------------------------------ (a) health probes
def test_healthz_and_readyz(ops):
    w = ops.worker
    before_ready = []  # /readyz answers seen before the worker was ready
    deadline = time.monotonic() + 90
    while True:
        assert w.proc.poll() is None, f"worker exited: {w.log.read_text()[-3000:]}"
        try:
            status, ctype, body = http_get(w.url("/readyz"), timeout=1)
        except OSError:  # HTTP server not up yet
            status = None
        if status == 200:
            break
        if status is not None:
            before_ready.append((status, body))
        assert time.monotonic() < deadline, f"not ready in 90s: {w.log.read_text()[-3000:]}"
        time.sleep(0.1)
    ready = json.loads(body)
    assert ctype.startswith("application/json"), ctype
    assert ready["ready"] is True
    assert ready["assigned"] is True and ready["refs_loaded"] is True and ready["rebuilding"] == 0
    assert isinstance(ready["partitions"], list)
    # not ready is an answer too: 503 with the same JSON, never anything else
    for status, text in before_ready:
        assert status == 503, (status, text)
        assert json.loads(text)["ready"] is False
    status, ctype, body = http_get(w.url("/healthz"))
    assert status == 200 and ctype.startswith("application/json")
    assert json.loads(body)["status"] == "ok"
    # and Prometheus sees the same through the metrics
    ops.prom.wait(lambda: ops.prom.value(f'sum(lapstream_worker_ready{{job="{JOB}"}})') == 1,
                  "lapstream_worker_ready == 1")
    assert ops.prom.value(f'up{{job="{JOB}"}}') == 1
    build = ops.prom.query("lapstream_build_info")
    assert len(build) == 1 and build[0][0]["worker"] == "w1"


# ------------------------------------------------- (b) the counters, in Prometheus
BAD = [
    (40, b"{not json at all"),
    (250, b'{"kind":"teleport","v":1,"t_us":1644917260000000,"venue":"NSO"}'),
    (700, b'{"kind":"passing","v":1,'),  # truncated: not JSON either
]


def test_prometheus_sees_what_the_worker_did_with_a_replayed_final(ops):
    broker, w, prom = ops.broker, ops.worker, ops.prom
    w.wait_ready()
    clean = feed_lines(beijing.FINAL_A_FILE)
    want = L.offline(clean)
    assert not [e for e in want if e["kind"] == "deadletter"], "the shipped feed is clean"
    mixed = list(clean)
    for pos, bad in sorted(BAD, reverse=True):
        mixed.insert(pos, bad)
    raw_lines = raw_line_count(mixed)
    assert raw_lines == sum(1 for ln in mixed if b'"record_ref"' not in ln)

    t0 = time.time()
    counts = L.replay_lines(broker.bootstrap, mixed, speed=None)
    assert counts[T.RAW.name] == raw_lines
    got = L.record_all(broker.bootstrap, expect=len(want) + len(BAD))
    assert len(got) == len(want) + len(BAD), "the worker's output is incomplete"
    # the trailing heartbeats make no derived event: wait for the worker to settle
    # (nothing left to consume, the raw counter the same in two fresh scrapes)
    prom.wait_settled(time.time())

    q = prom.value
    raw_total = q("sum(lapstream_raw_messages_total)")
    dead_total = q("sum(lapstream_deadletters_total)")
    latency_count = q("sum(lapstream_processing_latency_seconds_count)")
    derived = prom.by("sum by (kind) (lapstream_derived_events_total)", "kind")
    want_kinds = Counter(e["kind"] for e in want)
    want_or = sum(1 for e in want if e["kind"] == "record" and e["record"] == "OR"
                  and not e.get("withdrawn"))
    want_falls = sum(1 for e in want if e["kind"] == "incident" and e["type"] == "fall"
                     and e["status"] == "suspected")
    figures = {
        "raw": (raw_total, raw_lines),
        "deadletters": (dead_total, len(BAD)),
        "latency_count": (latency_count, raw_lines),
        "finish": (derived.get("finish"), want_kinds["finish"]),
        "OR": (q('sum(lapstream_records_total{record="OR"})'), want_or),
        "fall_suspected": (q('sum(lapstream_incidents_total{type="fall",status="suspected"})'),
                           want_falls),
    }
    print("\nPrometheus vs expected:", {k: v for k, v in figures.items()})
    print("derived by kind:", derived, "offline:", dict(want_kinds))
    final_or = sum(1 for e in want if e["kind"] == "record" and e["record"] == "OR"
                   and not e.get("withdrawn") and e.get("final", True))
    final_falls = sum(1 for e in want if e["kind"] == "incident" and e["type"] == "fall"
                      and e["status"] == "suspected" and e.get("final", True))
    # (the counters count every version published: a provisional one, then the final)
    assert (final_or, final_falls) == (1, 1), "the final A has one Olympic record and one suspected fall"
    assert raw_total == raw_lines, f"sum(lapstream_raw_messages_total) {raw_total} != {raw_lines} raw lines"
    assert dead_total == len(BAD)
    # every reason is there from the start at 0 (streams/metrics.py PRECREATED): the non-zero ones
    assert prom.by("sum by (reason) (lapstream_deadletters_total) > 0", "reason") == \
        {"not_json": 2.0, "unknown_kind": 1.0}
    assert prom.by('sum by (outcome) (lapstream_raw_messages_total{outcome="deadlettered"})',
                   "outcome") == {"deadlettered": float(len(BAD))}
    assert derived.get("finish") == want_kinds["finish"]
    assert sum(1 for e in want if e["kind"] == "finish" and e.get("final", True)) == 2
    assert derived == {k: float(v) for k, v in want_kinds.items()}
    assert figures["OR"][0] == want_or   # the provisional record and the final one
    assert figures["fall_suspected"][0] == want_falls
    assert latency_count == raw_lines
    assert q("sum(lapstream_core_duration_seconds_count)") == raw_lines

    # consumer lag: a series per assigned partition of timing.raw, all consumed now
    lag = prom.query(f'lapstream_consumer_lag_messages{{topic="{T.RAW.name}"}}')
    assert lag, "no consumer-lag series for timing.raw"
    assert len(lag) == T.RAW.partitions, [m["partition"] for m, _ in lag]
    print("consumer lag on timing.raw:", sorted((int(m["partition"]), v) for m, v in lag))
    assert sum(v for _, v in lag) == 0

    # decoder silence: one series per source, counted on the worker's clock; the
    # event-time heartbeat age of this 2022 feed is years by construction
    silence = {(m["venue"], m["source"]): v for m, v in prom.query("lapstream_decoder_silence_seconds")}
    age = {(m["venue"], m["source"]): v for m, v in prom.query("lapstream_decoder_heartbeat_age_seconds")}
    print("decoder silence:", silence, "heartbeat age:", age)
    assert set(silence) == heartbeat_sources(clean) == {("NSO", "X2-A"), ("NSO", "X2-B")}
    assert all(0 <= v <= time.time() - t0 + 2 for v in silence.values()), silence
    assert set(age) == set(silence) and all(v > 365 * 86400 for v in age.values()), age
    # the race is official: nothing active, so no silent-decoder page after the feed ends
    assert q("sum(lapstream_active_races)") == 0
    assert not prom.alerts("LapstreamDecoderSilent")


# --------------------------------------------- (b) while a race runs, and after it
def test_counters_move_during_a_race_and_a_silent_decoder_pages(ops):
    broker, w, prom = ops.broker, ops.worker, ops.prom
    w.wait_ready()
    lines = feed_lines(beijing.FINAL_A_FILE)
    # up to the last lap of the final (before the first finish): at speed 10 the
    # race runs ~17 s of wall time, and it is still running when the feed stops
    cut = 1080
    part = lines[:cut]
    t_first = orjson.loads(part[0])["t_us"]
    t_start = next(orjson.loads(ln)["t_us"] for ln in part if b'"start"' in ln)
    assert t_start < orjson.loads(part[-1])["t_us"]
    speed = 10.0
    replay = threading.Thread(target=L.replay_lines, args=(broker.bootstrap, part, speed), daemon=True)
    replay.start()
    try:
        # the race has started on the worker, as Prometheus sees it
        prom.wait(lambda: (prom.value("sum(lapstream_active_races)") or 0) > 0, "an active race",
                  timeout=(t_start - t_first) / 1e6 / speed + 20)
        first_ts = prom.wait_scrape_after(time.time())
        raw1 = prom.value("sum(lapstream_raw_messages_total)")
        lat1 = prom.value("sum(lapstream_processing_latency_seconds_count)")
        splits1 = prom.value('sum(lapstream_derived_events_total{kind="split"})') or 0
        time.sleep(3)
        second_ts = prom.wait_scrape_after(time.time())
        raw2 = prom.value("sum(lapstream_raw_messages_total)")
        lat2 = prom.value("sum(lapstream_processing_latency_seconds_count)")
        splits2 = prom.value('sum(lapstream_derived_events_total{kind="split"})') or 0
        silence_max = prom.value("max(lapstream_decoder_silence_seconds)")
        pending_during_race = prom.alerts("LapstreamDecoderSilent")
        print(f"\nduring the race (scrapes {second_ts - first_ts:.1f}s apart): raw {raw1} -> {raw2}, "
              f"latency count {lat1} -> {lat2}, splits {splits1} -> {splits2}, "
              f"max silence {silence_max:.2f}s")
        assert replay.is_alive(), "the feed ended before the second scrape: not 'during the race'"
        assert raw2 > raw1 and lat2 > lat1 and splits2 > splits1
        # heartbeats arrive every 1/speed s: silent by the worker's clock is < 5 s, and the
        # old feed's event-time age (years) does not page (it did with the old rule)
        assert silence_max < 5
        assert not pending_during_race
    finally:
        replay.join(120)
    assert not replay.is_alive()
    t_end = time.time()
    assert prom.value("sum(lapstream_active_races)") == 1

    # the feed stops mid-race: both decoders are silent while a race is active.
    # LapstreamDecoderSilent: silence > 5 s, for 10 s -> fires ~15 s after the last line
    # The two decoders' last heartbeats may straddle a rule evaluation, so one source can
    # fire one evaluation (1 s) after the other: wait until every source fires, and check
    # that none fires that should not.
    sources = heartbeat_sources(part)
    seen: set = set()

    def all_firing():
        got = prom.firing("LapstreamDecoderSilent")
        seen.update((a["venue"], a["source"]) for a in got)
        return got if {(a["venue"], a["source"]) for a in got} >= sources else None

    firing = prom.wait(all_firing, f"LapstreamDecoderSilent firing for {sorted(sources)}",
                       timeout=60, every=0.5)
    fired_after = time.time() - t_end
    print(f"LapstreamDecoderSilent firing {fired_after:.1f}s after the feed stopped:",
          sorted((a["venue"], a["source"]) for a in firing))
    assert {(a["venue"], a["source"]) for a in firing} == sources
    assert seen == sources, f"an unexpected source fired: {sorted(seen - sources)}"
    assert all(a["instance"] == prom.target and a["job"] == JOB and a["severity"] == "critical"
               for a in firing)
    assert 13 <= fired_after <= 30, fired_after
    # the source is heard by this worker: the takeover rule stays quiet
    assert not prom.alerts("LapstreamDecoderUnheardSinceTakeover")
