"""Topic names, keys and partition counts of the v1 contract (one place)."""
from __future__ import annotations

from dataclasses import dataclass


WEEK_MS = 7 * 24 * 3600 * 1000
DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    key: str  # what the record key is, for documentation
    compacted: bool = False
    configs: tuple = ()   # further topic configs, (name, value) pairs


# timing.raw is the changelog of the workers' state (a rebuild reads it from
# the start): it must hold a competition's messages. The references must not
# be compacted away before the raw records that were judged against them.
RAW = TopicSpec("timing.raw", 12, "venue", configs=(("retention.ms", str(WEEK_MS)),))
RECORDS_REF = TopicSpec("timing.records.ref", 1, "record identity", compacted=True,
                        configs=(("min.compaction.lag.ms", str(WEEK_MS)),))
SPLITS = TopicSpec("timing.splits", 12, "race_id")
FINISHES = TopicSpec("timing.finishes", 12, "race_id")
INCIDENTS = TopicSpec("timing.incidents", 12, "race_id")
RECORDS = TopicSpec("timing.records", 12, "race_id")
# State topics (subscribers' guide, docs/subscribers.md): every result,
# standings and classification record is the whole current state of its key
# with its revision, so the latest record per key is the current state. They
# are compacted: a late subscriber reads one record per key. Revisions stay
# at least a day before compaction may drop them, so a subscriber (or a
# gateway's SSE client resuming by offset) that was away less than a day
# still sees every revision; after that, only the newest per key.
RESULTS = TopicSpec("timing.results", 12, "race_id", compacted=True,
                    configs=(("min.compaction.lag.ms", str(DAY_MS)),))
STANDINGS = TopicSpec("timing.standings", 12, "group (standings) / event (classification)",
                      compacted=True, configs=(("min.compaction.lag.ms", str(DAY_MS)),))
DEADLETTER = TopicSpec("timing.deadletter", 3, "source key")
# Snapshots of the workers' state (agents/live.py; issue 7: a rebuild without
# re-reading the season). Partition p holds the snapshots of timing.raw
# partition p: chunks (key "p:slot:i", the two slots alternate so a snapshot
# being written never overwrites the one in force) then a manifest (key "p")
# naming their offsets. Compacted: the latest manifest and its chunks stay.
# Internal to the workers; a snapshot of another version or configuration is
# ignored (the partition is rebuilt from timing.raw).
SNAPSHOTS = TopicSpec("timing.snapshots", RAW.partitions, "timing.raw partition (manifest) / partition:slot:chunk",
                      compacted=True, configs=(("max.message.bytes", "2097152"),
                                               ("segment.ms", str(3600 * 1000))))

ALL = (RAW, RECORDS_REF, SPLITS, FINISHES, INCIDENTS, RECORDS, RESULTS, STANDINGS, DEADLETTER, SNAPSHOTS)
DERIVED = (SPLITS, FINISHES, INCIDENTS, RECORDS, RESULTS, STANDINGS)
STATE = (RESULTS, STANDINGS)   # compacted: the latest record per key is the current state

# Which derived topic carries which derived kind.
TOPIC_OF_KIND = {
    "split": SPLITS.name,
    "finish": FINISHES.name,
    "incident": INCIDENTS.name,
    "record": RECORDS.name,
    "result": RESULTS.name,
    "standings": STANDINGS.name,
    "classification": STANDINGS.name,
}


def key_of(event: dict) -> str:
    """The record key of a derived event, as the contract says."""
    kind = event["kind"]
    if kind == "standings":
        return event["group"]
    if kind == "classification":
        return event["event"]
    return event["race_id"]
