#!/usr/bin/env python3
"""A lapstream subscriber on Kafka with aiokafka (docs/subscribers.md).

Reads the derived topics, drops repeated events by ``event_id``, keeps the
newest revision of every fact and prints each race's result when it changes.

    python examples/kafka_consumer.py --bootstrap 127.0.0.1:9092 [--group my-app] [--idle-exit 5]

With ``--group`` the consumer commits its offsets and resumes after a
restart; without, it reads everything from the start (the current state of
a competition: results and standings are compacted, the latest per key is
the state).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import OrderedDict

from aiokafka import AIOKafkaConsumer

TOPICS = ["timing.splits", "timing.finishes", "timing.incidents", "timing.records",
          "timing.results", "timing.standings"]


class SeenIds:
    """The event ids of the last ``max_age_s`` seconds (at most ``max_ids``).
    A repeat comes from a worker redoing what it had not committed: seconds to
    minutes later, so a day is generous."""

    def __init__(self, max_age_s: float = 24 * 3600, max_ids: int = 1_000_000) -> None:
        self.ids: OrderedDict[str, float] = OrderedDict()
        self.max_age_s = max_age_s
        self.max_ids = max_ids

    def first_time(self, event_id: str, now: float) -> bool:
        if event_id in self.ids:
            return False
        self.ids[event_id] = now
        while self.ids and (len(self.ids) > self.max_ids or next(iter(self.ids.values())) < now - self.max_age_s):
            self.ids.popitem(last=False)
        return True


def natural_key(ev: dict):
    """What a revision replaces (the contract's clarifications)."""
    k = ev["kind"]
    if k == "split":
        return (k, ev["race_id"], ev["competitor_id"], ev.get("skater_id"), ev["distance_m"])
    if k == "finish":
        return (k, ev["race_id"], ev["competitor_id"])
    if k == "result":
        return (k, ev["race_id"])
    if k == "standings":
        return (k, ev["group"])
    if k == "classification":
        return (k, ev["event"])
    if k == "record":
        return (k, ev["race_id"], ev["competitor_id"], ev["record"])
    # incidents: per race, competitor, skater and type, the latest in arrival order
    # (a revision 0 is that skater's next incident, not a stale repeat)
    return (k, ev["race_id"], ev["competitor_id"], ev.get("skater_id"), ev["type"])


class Current:
    def __init__(self) -> None:
        self.facts: dict = {}
        self.seen = SeenIds()

    def apply(self, ev: dict) -> bool:
        """True when the event changed the current state."""
        if not self.seen.first_time(ev["event_id"], time.time()):
            return False
        key = natural_key(ev)
        cur = self.facts.get(key)
        if cur is not None and key[0] != "incident" and ev.get("revision", 0) < cur.get("revision", 0):
            return False               # an older revision arriving late
        self.facts[key] = ev
        return True

    def results(self) -> dict:
        return {k[1]: v for k, v in self.facts.items() if k[0] == "result"}


async def consume(bootstrap: str, group: str | None = None, idle_exit_s: float | None = None,
                  on_result=print) -> Current:
    state = Current()
    consumer = AIOKafkaConsumer(*TOPICS, bootstrap_servers=bootstrap, group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=group is not None)
    await consumer.start()
    last = time.monotonic()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                for rec in records:
                    ev = json.loads(rec.value)
                    # where the event came from: "timing.raw:<partition>:<offset>"
                    source = dict(rec.headers or ()).get("lapstream-source", b"").decode()
                    if state.apply(ev) and ev["kind"] == "result":
                        ranking = ", ".join(f"{e['rank'] or e['irm']}. {e['competitor_id']} {e['time'] or ''}"
                                            for e in ev["ranking"])
                        on_result(f"{ev['race_id']} [{ev['status']} rev {ev['revision']}] {ranking} ({source})")
            if batch:
                last = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - last > idle_exit_s:
                return state
    finally:
        await consumer.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--group", default=None)
    ap.add_argument("--idle-exit", type=float, default=None)
    args = ap.parse_args()
    asyncio.run(consume(args.bootstrap, args.group, args.idle_exit))


if __name__ == "__main__":
    main()
