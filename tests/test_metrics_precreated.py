"""Series the alert rules need exist at 0 from the start, and each process
registers only its own block of the catalogue (streams/metrics.py, ops).

A labelled counter child made at the first event appears already at N; an
``increase(x[5m]) > 0`` or ``rate(...)`` rule sees no increase in a series
with no earlier sample, so a first burst of dead letters never paged
(LapstreamStaleFeedRefused). These tests read the exposition of freshly made
registries, not the code that makes them.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streams import metrics
from streams.metrics import (CATALOGUE, DEADLETTER_REASONS, GATEWAY_CATALOGUE, P3_CATALOGUE,
                             WORKER_CATALOGUE, Metrics, exposed_names)

ALERTS = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "alerts.yml"


def samples(registry) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} parsed from the text exposition."""
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def fresh_gateway_registry():
    from streams.gateway import Gateway, GatewaySettings

    return Gateway(GatewaySettings(bootstrap="127.0.0.1:1")).metrics.registry


def test_a_fresh_worker_registry_has_every_dead_letter_reason_at_zero():
    got = samples(Metrics().registry)
    for reason in DEADLETTER_REASONS + ("other",):
        assert got.get(("lapstream_deadletters_total", frozenset({("reason", reason)}))) == 0.0, reason
    # the clock guard's two reasons, which page at the first refusal
    assert {"stale_feed", "clock_leap"} <= set(DEADLETTER_REASONS)
    for result in ("loaded", "rejected", "none"):
        assert got[("lapstream_snapshot_loads_total", frozenset({("result", result)}))] == 0.0
    fall = frozenset({("type", "fall"), ("status", "suspected")})
    assert got[("lapstream_incidents_total", fall)] == 0.0
    dead = {dict(k[1])["kind"] for k in got if k[0] == "lapstream_raw_messages_total"}
    assert {"passing", "unknown", "other"} <= dead


def test_a_reason_counted_later_moves_the_precreated_series():
    m = Metrics()
    m.deadletter("stale_feed")
    m.deadletter("no such reason")          # bounded: counted as other
    got = samples(m.registry)
    assert got[("lapstream_deadletters_total", frozenset({("reason", "stale_feed")}))] == 1.0
    assert got[("lapstream_deadletters_total", frozenset({("reason", "other")}))] == 1.0
    assert got[("lapstream_deadletters_total", frozenset({("reason", "clock_leap")}))] == 0.0


_RANGE_FN = re.compile(r"\b(increase|rate|irate|delta)\(\s*(lapstream_\w+)\s*(\{[^}]*\})?\s*\[")


def test_every_counter_an_alert_takes_increase_or_rate_of_exists_at_zero_in_a_fresh_process():
    """Each (counter, label matchers) under increase()/rate() in alerts.yml is
    exposed at 0 by a freshly started process that owns it (worker or gateway),
    for every label value it can have there."""
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    registries = {"worker": samples(Metrics().registry), "gateway": samples(fresh_gateway_registry()),
                  "ingest": samples(Metrics(specs=P3_CATALOGUE).registry)}   # ops: P3 ingest's alerts too
    owner = {s.name: "worker" for s in WORKER_CATALOGUE}
    owner.update({s.name: "gateway" for s in GATEWAY_CATALOGUE})
    owner.update({s.name: "ingest" for s in P3_CATALOGUE})
    checked = 0
    for rule in rules:
        for _fn, name, matchers in _RANGE_FN.findall(rule["expr"]):
            spec = next((s for s in CATALOGUE + GATEWAY_CATALOGUE if name in exposed_names(s)), None)
            assert spec is not None, name
            assert spec.name in owner, f"{rule['alert']}: {name} belongs to no process checked here"
            want = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', matchers or ""))
            got = registries[owner[spec.name]]
            found = [v for (n, labels), v in got.items() if n == name and want.items() <= dict(labels).items()]
            assert found, f"{rule['alert']}: no {name}{matchers} series in a fresh {owner[spec.name]}"
            assert all(v == 0.0 for v in found), (rule["alert"], name)
            if spec.labels and spec.type == "counter":
                checked += 1
    assert checked >= 4   # dead letters (3 rules), the gateway's slow-client drops


def test_each_process_registers_its_own_block_only():
    worker = {n for n, _ in samples(Metrics().registry)}
    assert not any(n.startswith("lapstream_p3_") for n in worker), "a worker shows P3 series"
    assert "lapstream_worker_ready" in worker and "lapstream_deadletters_total" in worker
    assert set(CATALOGUE) == set(WORKER_CATALOGUE) | set(P3_CATALOGUE)
    assert P3_CATALOGUE and not set(WORKER_CATALOGUE) & set(P3_CATALOGUE)
    assert {s.name for s in P3_CATALOGUE} >= {"lapstream_p3_connected", "lapstream_p3_produce_errors_total"}
    ingest = {n for n, _ in samples(Metrics(specs=P3_CATALOGUE).registry)}
    assert "lapstream_p3_produce_errors_total" in ingest
    # no worker gauge (lapstream_worker_ready 0 would trip LapstreamWorkerNotReady)
    assert not ingest & {n for s in WORKER_CATALOGUE for n in exposed_names(s)}
    assert metrics.BY_NAME["lapstream_p3_connected"].labels == ("decoder",)


def test_ingest_registers_the_p3_block_with_its_decoders_at_zero():
    """lapstream ingest p3 (streams/p3/ingest.py): its own catalogue, and every
    decoder's connected gauge and connection counter at 0 before it connects."""
    import asyncio

    from streams.p3.ingest import IngestSettings, P3Ingest
    from streams.p3.mapping import DecoderMap

    class Producer:
        async def send(self, *a, **k):  # pragma: no cover - nothing is sent here
            raise AssertionError("nothing is sent")

        async def flush(self):
            pass

    dmap = DecoderMap.load(Path(__file__).resolve().parent / "data" / "p3-map.json")
    # a closed port: the decoder task only tries to connect, with backoff
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    addr = f"127.0.0.1:{s.getsockname()[1]}"
    s.close()

    async def run():
        ing = P3Ingest(IngestSettings(decoders=[addr], heartbeat_fill_s=0), dmap, producer=Producer())
        await ing.start()
        try:
            return samples(ing.metrics.registry)
        finally:
            await ing.stop()

    got = asyncio.run(run())
    names = {n for n, _ in got}
    assert not names & {n for sp in WORKER_CATALOGUE for n in exposed_names(sp)}
    dec = frozenset({("decoder", addr)})
    assert got[("lapstream_p3_connected", dec)] == 0.0
    assert got[("lapstream_p3_connects_total", dec)] == 0.0
    assert got[("lapstream_p3_frames_total", dec)] == 0.0


def test_a_fresh_gateway_registry_has_its_transports_and_topics_at_zero():
    from streams.gateway_state import TOPIC_NAMES

    got = samples(fresh_gateway_registry())
    for tr in ("sse", "ws"):
        assert got[("lapstream_gateway_slow_clients_dropped_total", frozenset({("transport", tr)}))] == 0.0
    for name in TOPIC_NAMES:
        assert got[("lapstream_gateway_events_consumed_total", frozenset({("topic", name)}))] == 0.0
