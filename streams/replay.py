"""Replay a recorded feed into Kafka, and record derived topics back to JSON Lines."""
from __future__ import annotations

import asyncio
import time
from typing import Callable, Iterable, Optional

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from agents.core.engine import own_record_key, record_key
from streams import topics as T
from streams.deadletter import recorded_deadletter
from streams.tombstones import tombstone_line, tombstone_of_bytes


def route(line: bytes, race_venue: dict[str, str], last_venue: Optional[str]) -> tuple[str, Optional[bytes], Optional[int]]:
    """(topic, key, t_us) of one feed line: record refs to ``timing.records.ref``
    keyed by identity (one lapstream set: by its own key, as the worker
    published it), the rest to ``timing.raw`` keyed by venue. Photos and
    decisions carry no venue; they are keyed by their race's venue. A line
    that is not a message still goes to ``timing.raw`` (the worker
    dead-letters it), keyed by the last venue seen so it stays in order.
    A recorded tombstone line (``streams.tombstones``) is routed by
    ``tombstone_of_line``, not here."""
    try:
        msg = orjson.loads(line)
    except orjson.JSONDecodeError:
        return T.RAW.name, last_venue.encode() if last_venue else None, None
    if not isinstance(msg, dict):
        return T.RAW.name, last_venue.encode() if last_venue else None, None
    t_us = msg.get("t_us") if type(msg.get("t_us")) is int else None
    kind = msg.get("kind")
    if kind == "record_ref":
        try:
            if msg.get("origin") == "lapstream":
                key = own_record_key(msg)
            else:
                key = record_key(msg["record"], msg["format"], msg["gender"], msg["distance_m"], msg.get("scope"))
        except (KeyError, TypeError, AttributeError):
            key = "invalid"
        return T.RECORDS_REF.name, key.encode(), t_us
    venue = msg.get("venue") if isinstance(msg.get("venue"), str) else None
    if kind == "race" and venue and isinstance(msg.get("race_id"), str):
        race_venue[msg["race_id"]] = venue
    if venue is None and isinstance(msg.get("race_id"), str):
        venue = race_venue.get(msg["race_id"])
    venue = venue or last_venue
    return T.RAW.name, venue.encode() if venue else None, t_us


def idle_windows(lines: list[bytes], lead_us: int = 5_000_000) -> list[tuple[int, int]]:
    """Event-time windows with no race on the track at any venue: the complement
    of [gun - lead_us, OFFICIAL or VOID] over every race of the feed."""
    guns: dict[str, int] = {}
    ends: dict[str, int] = {}
    for line in lines:
        if b'"start"' in line or b'"decision"' in line:
            try:
                m = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(m, dict) or type(m.get("t_us")) is not int or not isinstance(m.get("race_id"), str):
                continue
            if m.get("kind") == "start":
                guns.setdefault(m["race_id"], m["t_us"])
            elif m.get("kind") == "decision" and m.get("code") in ("OFFICIAL", "VOID"):
                ends[m["race_id"]] = max(ends.get(m["race_id"], m["t_us"]), m["t_us"])
    busy = sorted((g - lead_us, ends.get(rid, 2**63)) for rid, g in guns.items())
    windows = []
    t = -1
    for a, b in busy:
        if a > t:
            windows.append((t, a))
        t = max(t, b)
    return windows


async def replay(bootstrap: str, lines: Iterable[bytes], speed: Optional[float] = 1.0,
                 progress: Optional[Callable[[int], None]] = None, ref_settle_s: float = 1.0,
                 producer: Optional[AIOKafkaProducer] = None,
                 on_sent: Optional[Callable[[bytes, str, float], None]] = None,
                 skip_idle: bool = False, security=None) -> dict:
    """Produce a feed paced by ``t_us`` (``speed`` None = as fast as possible).

    Pacing never waits for a line older than one already sent (the contract).
    ``skip_idle``: no waiting while no race is on the track (before a gun,
    after an OFFICIAL), so a recorded session plays race after race.
    Returns counts by topic.
    """
    lines = list(lines)
    idle = idle_windows(lines) if skip_idle and speed is not None else []
    own = producer is None
    if own:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                    enable_idempotence=False, max_request_size=4 * 1024 * 1024,
                                    **_security_kwargs(security))
        try:
            await producer.start()
        except BaseException:
            await producer.stop()    # (else: "Unclosed AIOKafkaProducer" on top of the error)
            raise
    counts = {T.RAW.name: 0, T.RECORDS_REF.name: 0}
    race_venue: dict[str, str] = {}
    last_venue = None
    t_first = None
    t_max = None
    wall0 = None
    refs_pending = False
    try:
        for n, line in enumerate(lines, 1):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            value: bytes | None = line
            tomb = tombstone_of_bytes(line) if b'"tombstone"' in line else None
            if tomb is not None:   # a recorded tombstone: produced again as one, same key
                (topic, key), t_us, value = tomb, None, None
            else:
                topic, key, t_us = route(line, race_venue, last_venue)
            if topic == T.RAW.name and key is not None:
                last_venue = key.decode()
            if speed is not None and t_us is not None:
                if t_first is None:
                    t_first, wall0 = t_us, time.monotonic()
                if idle and any(a <= t_us < b for a, b in idle):
                    # nothing on the track: go on at once, and pace from here
                    t_max = t_us if t_max is None else max(t_max, t_us)
                    t_first, wall0 = t_max, time.monotonic()
                elif t_max is None or t_us > t_max:
                    due = wall0 + (t_us - t_first) / 1e6 / speed
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    t_max = t_us
            if topic == T.RAW.name and refs_pending:
                # let workers read the references before the races they apply to
                await producer.flush()
                if ref_settle_s:
                    await asyncio.sleep(ref_settle_s)
                refs_pending = False
            if topic == T.RECORDS_REF.name:
                # one record per batch: brokers whose ListOffsets answers the last
                # batch's base offset (tansu 0.6) then still report the true end,
                # which workers use to know they have read every reference
                await producer.send_and_wait(topic, value=value, key=key)
            else:
                await producer.send(topic, value=value, key=key)
            if on_sent is not None:
                on_sent(line, topic, time.perf_counter())
            counts[topic] += 1
            if topic == T.RECORDS_REF.name:
                refs_pending = True
            if progress is not None:
                progress(n)
        await producer.flush()
    finally:
        if own:
            await producer.stop()
    return counts


def _security_kwargs(security) -> dict:
    """aiokafka's TLS/SASL arguments from a ``streams.kafka_security.KafkaSecurity``."""
    return security.aiokafka_kwargs() if security is not None else {}


async def record(bootstrap: str, out, topics: Iterable[str], idle_exit_s: Optional[float] = None,
                 stop: Optional[asyncio.Event] = None, from_beginning: bool = True,
                 on_record: Optional[Callable[[str, bytes], None]] = None, security=None) -> int:
    """Write what arrives on ``topics`` as JSON Lines (the shape ``process`` prints).
    A null value (a tombstone) on a derived topic is no event and is not
    written; one on the dead-letter topic is written with ``"raw": ""`` and
    ``"null_value": true``; one on ``timing.records.ref`` (a record lapstream
    set, taken back) as a ``tombstone`` line with its key, which ``replay``
    produces again as a tombstone under that key (``on_record`` gets None)."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False,
                                auto_offset_reset="earliest" if from_beginning else "latest",
                                **_security_kwargs(security))
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()
        raise
    n = 0
    last = time.monotonic()
    try:
        while stop is None or not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            got = False
            for tp, recs in batch.items():
                for rec in recs:
                    got = True
                    if tp.topic == T.DEADLETTER.name:
                        line = orjson.dumps(recorded_deadletter(rec.value, rec.headers, rec.key))
                    elif rec.value is None and tp.topic == T.RECORDS_REF.name:
                        line = tombstone_line(tp.topic, rec.key)
                    elif rec.value is None:
                        continue
                    else:
                        line = rec.value
                    out.write(line + b"\n")
                    n += 1
                    if on_record is not None:
                        on_record(tp.topic, rec.value)
            if got:
                out.flush()
                last = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - last >= idle_exit_s:
                break
    finally:
        await consumer.stop()
    return n
