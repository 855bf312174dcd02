"""The one catalogue of lapstream's Prometheus metrics.

Every metric a worker exposes is declared here, once: name, type, help,
labels and (for histograms) buckets. Dashboards, alert rules and tests read
this catalogue; nothing else creates a metric. Naming follows Prometheus
conventions: base units (seconds, bytes), ``_total`` for counters, no
athlete or race ids in labels (venue and decoder source are bounded).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

try:  # no *_created series: they double the scrape for nothing ops uses
    from prometheus_client import disable_created_metrics

    disable_created_metrics()
except ImportError:  # pragma: no cover - older prometheus_client
    pass


@dataclass(frozen=True)
class MetricSpec:
    name: str
    type: str  # counter | gauge | histogram | info
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = field(default=())


LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CORE_BUCKETS = (0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005)

# Outcomes of one raw message (label ``outcome`` of RAW_MESSAGES).
OUTCOMES = (
    "applied",
    "duplicate",
    "ignored_unknown_transponder",
    "ignored_after_finish",
    "ignored_before_start",
    "ignored_late",
    "ignored_noise",
    "deadlettered",
    "held",          # held by the clock guard until the venue's next messages decide
)

# Reason classes of a dead letter (label ``reason`` of DEADLETTERS).
DEADLETTER_REASONS = (
    "oversized",
    "not_json",
    "not_object",
    "unknown_kind",
    "bad_version",
    "missing_field",
    "wrong_type",
    "bad_value",
    "unknown_reference",
    "internal",
    "clock_leap",    # far ahead of the venue's clock and not confirmed (agents/core/clockguard.py)
    "stale_feed",    # far behind the venue's clock: an older feed replayed onto a live pipeline
    # bounded state (agents/core/retention.py): a photo, decision, restart or
    # start list for a race whose state was released (official/void + 1 h)
    "race_released",
)
# Label values outside these tuples are counted as "other" (labels never come
# from input without a bound).
_RAW_KINDS_LABELS = ("venue", "race", "start", "passing", "heartbeat", "photo", "decision",
                     "record_ref", "unknown")

CATALOGUE: tuple[MetricSpec, ...] = (
    MetricSpec("lapstream_raw_messages_total", "counter",
               "Raw timing messages consumed, by kind and outcome.", ("kind", "outcome")),
    MetricSpec("lapstream_deadletters_total", "counter",
               "Messages sent to the dead-letter topic, by reason class.", ("reason",)),
    MetricSpec("lapstream_derived_events_total", "counter",
               "Derived events emitted, by kind.", ("kind",)),
    MetricSpec("lapstream_records_total", "counter",
               "Records detected, by record type and whether equalled.", ("record", "equalled")),
    MetricSpec("lapstream_incidents_total", "counter",
               "Incident events emitted (falls, caught, anomalies), by type and status.", ("type", "status")),
    MetricSpec("lapstream_processing_latency_seconds", "histogram",
               "Time from a raw message being consumed to its derived events being sent.", (),
               LATENCY_BUCKETS),
    MetricSpec("lapstream_core_duration_seconds", "histogram",
               "Time the pure timing core spends on one raw message.", (), CORE_BUCKETS),
    MetricSpec("lapstream_event_time_lag_seconds", "gauge",
               "Wall clock minus the newest event time (t_us) seen for the venue.", ("venue",)),
    MetricSpec("lapstream_consumer_lag_messages", "gauge",
               "Messages not yet consumed on an assigned partition (high watermark minus position).",
               ("topic", "partition")),
    MetricSpec("lapstream_active_races", "gauge",
               "Races started and not yet official or void, on this worker."),
    MetricSpec("lapstream_active_venues", "gauge",
               "Venues whose state this worker holds."),
    MetricSpec("lapstream_state_size_bytes", "gauge",
               "Size of the serialised timing state held by this worker (an estimate from counts, "
               "agents/core/statesize.py)."),
    MetricSpec("lapstream_decoder_heartbeat_age_seconds", "gauge",
               "Wall clock minus the event time of the last heartbeat of a decoder source.",
               ("venue", "source")),
    MetricSpec("lapstream_decoder_silence_seconds", "gauge",
               "Seconds (worker clock) since this worker last consumed a heartbeat of a decoder "
               "source; unlike the heartbeat age it does not depend on the feed's own clock, so "
               "it is the one to alert on (replays of old feeds included).",
               ("venue", "source")),
    MetricSpec("lapstream_worker_ready", "gauge",
               "1 when the worker has joined its group, has partitions assigned and state recovered."),
    MetricSpec("lapstream_build", "info", "lapstream version of this worker."),
    # -- P3 decoder ingest (lapstream ingest p3; streams/p3/) -------------------------
    # label ``decoder``: the HOST:PORT of a decoder connection (a venue has a few)
    MetricSpec("lapstream_p3_frames_total", "counter",
               "P3 frames decoded from a decoder connection (CRC and framing good).", ("decoder",)),
    MetricSpec("lapstream_p3_frames_rejected_total", "counter",
               "P3 frames skipped, by reason (bad_crc, bad_escape, bad_length, oversized, broken, "
               "truncated: the body was cut short but the frame was kept).", ("decoder", "reason")),
    MetricSpec("lapstream_p3_garbage_bytes_total", "counter",
               "Bytes between P3 frames that belonged to no frame.", ("decoder",)),
    MetricSpec("lapstream_p3_records_total", "counter",
               "P3 records by what ingest did with them (passing, heartbeat, status, duplicate, resent, "
               "unmapped, unusable, unknown_record, version...).", ("decoder", "outcome")),
    MetricSpec("lapstream_p3_messages_produced_total", "counter",
               "Contract messages ingest produced to timing.raw (acknowledged), by kind.", ("kind",)),
    MetricSpec("lapstream_p3_produce_errors_total", "counter",
               "Contract messages the broker did not acknowledge.", ()),
    MetricSpec("lapstream_p3_passing_gaps_total", "counter",
               "Gaps in a decoder's passing numbers.", ("decoder",)),
    MetricSpec("lapstream_p3_missed_passings_total", "counter",
               "Passing numbers missing in those gaps.", ("decoder",)),
    MetricSpec("lapstream_p3_resend_requests_total", "counter",
               "RESEND requests sent to a decoder (after a gap or a reconnect).", ("decoder",)),
    MetricSpec("lapstream_p3_decoder_restarts_total", "counter",
               "Decoder restarts seen (its passing numbers started again).", ("decoder",)),
    MetricSpec("lapstream_p3_clock_steps_total", "counter",
               "Steps of a decoder's clock against the ingest host's clock.", ("decoder",)),
    MetricSpec("lapstream_p3_connects_total", "counter",
               "TCP connections established to a decoder (the first and every reconnect).", ("decoder",)),
    MetricSpec("lapstream_p3_connected", "gauge",
               "1 while ingest holds a TCP connection to the decoder, else 0.", ("decoder",)),
    MetricSpec("lapstream_p3_last_message_age_seconds", "gauge",
               "Seconds (ingest clock) since the last good frame from a decoder.", ("decoder",)),
    # -- robustness (issue 7): data loss, broker reachability ----------------------
    MetricSpec("lapstream_log_truncations_total", "counter",
               "Times a timing.raw partition's offsets were found reused with other records (the "
               "broker lost acknowledged records) or its log ended before the committed offset."),
    MetricSpec("lapstream_broker_unreachable_seconds", "gauge",
               "Seconds the broker has not answered this worker's metadata probe (0: reachable)."),
    # -- partition snapshots (issue 7: a rebuild without re-reading the season; agents/live.py) --
    MetricSpec("lapstream_snapshots_written_total", "counter",
               "Snapshots of a partition's core state written to timing.snapshots."),
    MetricSpec("lapstream_snapshot_loads_total", "counter",
               "Snapshots at a rebuild of a partition: loaded (the rebuild started from it), "
               "rejected (unusable: corrupt, another version or configuration, beyond the log or not "
               "what the log holds; the next older is tried), none (a rebuild without a usable "
               "snapshot: the whole log is read).",
               ("result",)),
    MetricSpec("lapstream_snapshot_bytes", "gauge",
               "Size of the last snapshot this worker wrote (compressed)."),
    MetricSpec("lapstream_snapshot_duration_seconds", "histogram",
               "Time to serialise one partition's state into a snapshot (in a forked child by "
               "default, LAPSTREAM_SNAPSHOT_FORK=0: on the event loop, records waiting).", (),
               (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)),
)

# -- ops: Kafka brokers as the worker sees them (deploy/, alert LapstreamKafkaBrokerMissing) --
# The brokers themselves are not scraped; the worker's metadata probe
# (streams/app.py, broker_probe) counts the brokers of each Metadata answer.
# Under KRaft that list holds registered, unfenced brokers only, so a broker
# that is down drops out of it within the broker session timeout.
OPS_KAFKA_CATALOGUE: tuple[MetricSpec, ...] = (
    MetricSpec("lapstream_kafka_brokers", "gauge",
               "Kafka brokers listed in the cluster metadata of this worker's last metadata probe "
               "(KRaft lists registered, unfenced brokers only); 0 while the probe gets no answer."),
)
CATALOGUE = CATALOGUE + OPS_KAFKA_CATALOGUE

# -- gateway (``lapstream serve``, streams/gateway.py): its own process, so its
# own block; a gateway instantiates ``Metrics(specs=GATEWAY_CATALOGUE)``.
# fine around the 50 ms target: the benchmark interpolates quantiles within a bucket
FANOUT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
                  0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
GATEWAY_CATALOGUE: tuple[MetricSpec, ...] = (
    MetricSpec("lapstream_gateway_clients", "gauge",
               "Stream clients connected to the gateway, by transport (sse, ws).", ("transport",)),
    MetricSpec("lapstream_gateway_events_fanned_out_total", "counter",
               "Derived events written to stream clients (one per client and event), by transport.",
               ("transport",)),
    MetricSpec("lapstream_gateway_slow_clients_dropped_total", "counter",
               "Stream clients closed because their bounded queue was full, by transport.",
               ("transport",)),
    MetricSpec("lapstream_gateway_fanout_latency_seconds", "histogram",
               "Time from a derived event's arrival at the gateway to its write to a client.", (),
               FANOUT_BUCKETS),
    MetricSpec("lapstream_gateway_fanout_cpu_seconds", "histogram",
               "CPU time the gateway spends handing one batch of events to every client (its "
               "own cost; the latency histogram adds waiting for the CPU on a busy host).", (),
               FANOUT_BUCKETS),
    MetricSpec("lapstream_gateway_events_consumed_total", "counter",
               "Records the gateway read from the derived topics, by topic.", ("topic",)),
    MetricSpec("lapstream_gateway_ready", "gauge",
               "1 when the gateway has read every derived topic up to its end at start "
               "(0 again while its reader tries a lost broker again, until caught up)."),
)

BY_NAME = {m.name: m for m in CATALOGUE + GATEWAY_CATALOGUE}

# -- ops: which process registers what ------------------------------------------
# The P3 block of CATALOGUE belongs to ``lapstream ingest p3`` only (its own
# process, ``Metrics(specs=P3_CATALOGUE)``, scraped as job lapstream-ingest); a
# worker (``Metrics()``) registers WORKER_CATALOGUE, so it no longer shows P3
# series that are always 0 (a misleading lapstream_p3_produce_errors_total 0).
P3_CATALOGUE: tuple[MetricSpec, ...] = tuple(m for m in CATALOGUE if m.name.startswith("lapstream_p3_"))
WORKER_CATALOGUE: tuple[MetricSpec, ...] = tuple(m for m in CATALOGUE if m not in P3_CATALOGUE)

# Labelled counters whose children are created (at 0) when the registry is
# made, for every label value the code can produce: a child made at the first
# event appears already at N, and ``increase(x[5m]) > 0`` / ``rate`` see no
# increase from a series that has no earlier sample (so LapstreamStaleFeedRefused
# missed a first burst). Names not in a process's specs are skipped.
PRECREATED: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = (
    ("lapstream_deadletters_total", tuple((r,) for r in DEADLETTER_REASONS + ("other",))),
    ("lapstream_raw_messages_total",
     tuple((k, "deadlettered") for k in _RAW_KINDS_LABELS + ("other",))),
    ("lapstream_snapshot_loads_total", (("loaded",), ("rejected",), ("none",))),
    # the dashboard's "Falls" annotation: increase(...{type="fall"}[30s]) > 0
    ("lapstream_incidents_total", (("fall", "suspected"),)),
)


def exposed_names(spec: MetricSpec) -> list[str]:
    """Sample names Prometheus will see for one catalogue entry."""
    if spec.type == "counter":
        return [spec.name]
    if spec.type == "histogram":
        return [spec.name + s for s in ("_bucket", "_sum", "_count")]
    if spec.type == "info":
        return [spec.name + "_info"]
    return [spec.name]


def all_exposed_names(catalogue: Iterable[MetricSpec] = CATALOGUE) -> set[str]:
    out: set[str] = set()
    for spec in catalogue:
        out.update(exposed_names(spec))
    return out


class Metrics:
    """The catalogue instantiated in one registry (one per worker process)."""

    def __init__(self, registry: CollectorRegistry | None = None,
                 specs: Iterable[MetricSpec] | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._m: dict[str, object] = {}
        for spec in (WORKER_CATALOGUE if specs is None else specs):
            kw = dict(name=spec.name, documentation=spec.help, labelnames=spec.labels,
                      registry=self.registry)
            if spec.type == "counter":
                # prometheus_client appends _total itself.
                kw["name"] = spec.name[: -len("_total")]
                obj = Counter(**kw)
            elif spec.type == "gauge":
                obj = Gauge(**kw)
            elif spec.type == "histogram":
                obj = Histogram(buckets=spec.buckets, **kw)
            elif spec.type == "info":
                kw.pop("labelnames")
                obj = Info(**kw)
            else:  # pragma: no cover - catalogue is static
                raise ValueError(spec.type)
            self._m[spec.name] = obj
        for name, label_sets in PRECREATED:   # ops: series at 0 from the start (see PRECREATED)
            if name in self._m:
                for values in label_sets:
                    self._m[name].labels(*values)

    def __getitem__(self, name: str):
        return self._m[name]

    # -- bounded labels (robustness) -------------------------------------------

    def raw_messages(self, kind: str, outcome: str):
        """The raw-messages counter child, labels bounded by the catalogue."""
        return self.raw.labels(kind if kind in _RAW_KINDS_LABELS else "other",
                               outcome if outcome in OUTCOMES else "other")

    def deadletter(self, reason: str) -> None:
        self.deadletters.labels(reason if reason in DEADLETTER_REASONS else "other").inc()

    raw = property(lambda s: s._m["lapstream_raw_messages_total"])
    deadletters = property(lambda s: s._m["lapstream_deadletters_total"])
    derived = property(lambda s: s._m["lapstream_derived_events_total"])
    records = property(lambda s: s._m["lapstream_records_total"])
    incidents = property(lambda s: s._m["lapstream_incidents_total"])
    latency = property(lambda s: s._m["lapstream_processing_latency_seconds"])
    core_duration = property(lambda s: s._m["lapstream_core_duration_seconds"])
    event_lag = property(lambda s: s._m["lapstream_event_time_lag_seconds"])
    consumer_lag = property(lambda s: s._m["lapstream_consumer_lag_messages"])
    active_races = property(lambda s: s._m["lapstream_active_races"])
    active_venues = property(lambda s: s._m["lapstream_active_venues"])
    state_size = property(lambda s: s._m["lapstream_state_size_bytes"])
    heartbeat_age = property(lambda s: s._m["lapstream_decoder_heartbeat_age_seconds"])
    silence = property(lambda s: s._m["lapstream_decoder_silence_seconds"])
    ready = property(lambda s: s._m["lapstream_worker_ready"])
    build = property(lambda s: s._m["lapstream_build"])
    log_truncations = property(lambda s: s._m["lapstream_log_truncations_total"])
    broker_unreachable = property(lambda s: s._m["lapstream_broker_unreachable_seconds"])
    kafka_brokers = property(lambda s: s._m["lapstream_kafka_brokers"])   # ops: brokers in the metadata
    snapshots_written = property(lambda s: s._m["lapstream_snapshots_written_total"])
    snapshot_loads = property(lambda s: s._m["lapstream_snapshot_loads_total"])
    snapshot_bytes = property(lambda s: s._m["lapstream_snapshot_bytes"])
    snapshot_duration = property(lambda s: s._m["lapstream_snapshot_duration_seconds"])
