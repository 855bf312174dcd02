"""Benchmark of the Kafka path: broker + lapstream worker vs. a bare pass-through.

1. Throughput. The Beijing feeds are produced as fast as possible into
   ``timing.raw`` with a worker running; messages/s = raw messages / time
   until the worker has consumed them all (its own counter). Baseline, same
   broker, same run: a bare aiokafka consume -> produce pass-through of the
   same messages (no group, no processing). Ratio target >= 0.25.
2. Latency at a steady load: N venues (default 50) skating the women's final
   A at the same time, each shifted by its own phase, replayed at real speed
   for ``--seconds``. For every derived event the latency is from producing
   the raw message that caused it (the worker puts its partition:offset in
   the ``lapstream-source`` header) to consuming the derived event, as a
   subscriber of the seven derived topics. Prints p50/p99 (target p99 <
   25 ms), and for scale the same feed through the broker alone (one hop,
   no worker, on a fresh broker).

Both embedded brokers are measured by default: tansu (what the demo and the
tests use) and noida. They differ in what matters for latency: a waiting
fetch on tansu is answered when its wait ends, on noida (as on Apache Kafka)
as soon as data arrives; tansu's in-memory store also costs more CPU per
fetch as the log grows (README, "Benchmarks").

    python bench/bench_kafka.py [--broker tansu|noida|both] [--venues 50] [--seconds 40]
                                [--only throughput|latency]
"""
from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams import beijing  # noqa: E402
from streams import topics as T  # noqa: E402
from streams.broker import EmbeddedBroker, ensure_topics, free_port  # noqa: E402
from streams.procs import start_worker, stop_process, wait_http  # noqa: E402
from streams.replay import route  # noqa: E402
from streams.topics import TopicSpec  # noqa: E402


def raw_counter(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(v) for v in re.findall(r"^lapstream_raw_messages_total\{[^}]*\} (\S+)$", text, re.M))


def keyed(lines):
    race_venue, last = {}, None
    out = []
    for ln in lines:
        topic, key, _ = route(ln, race_venue, last)
        if topic == T.RAW.name:
            last = key.decode() if key else last
            out.append((key, ln))
    return out


async def produce_all(boot: str, topic: str, msgs) -> float:
    p = AIOKafkaProducer(bootstrap_servers=boot, linger_ms=5, acks=1, max_batch_size=256 * 1024)
    await p.start()
    t0 = time.perf_counter()
    for key, value in msgs:
        await p.send(topic, value=value, key=key)
    await p.flush()
    await p.stop()
    return t0


async def passthrough(boot: str, msgs, partitions: int) -> float:
    """Bare consume -> produce of the same messages; seconds from first produce to last forwarded."""
    src, dst = "bench.in", "bench.out"
    await ensure_topics(boot, [TopicSpec(src, partitions, "venue"), TopicSpec(dst, partitions, "venue")])
    cons = AIOKafkaConsumer(bootstrap_servers=boot, group_id=None, enable_auto_commit=False,
                            auto_offset_reset="earliest")
    prod = AIOKafkaProducer(bootstrap_servers=boot, linger_ms=0, acks=1)
    await cons.start()
    await prod.start()
    tps = [TopicPartition(src, p) for p in range(partitions)]
    cons.assign(tps)
    await cons.seek_to_beginning(*tps)
    n = len(msgs)
    done = 0
    producer_task = asyncio.create_task(produce_all(boot, src, msgs))
    while done < n:
        batch = await cons.getmany(timeout_ms=500)
        for tp, recs in batch.items():
            for rec in recs:
                await prod.send(dst, value=rec.value, key=rec.key)
                done += 1
    await prod.flush()
    t1 = time.perf_counter()
    t0 = await producer_task
    await cons.stop()
    await prod.stop()
    return t1 - t0


def multi_venue_feed(n: int) -> list[bytes]:
    """n venues skating the women's final A, each shifted in time by its own
    phase (spread over 7 s) so the load is steady, not 50 copies in lockstep.
    Each venue keeps its own line order; venues interleave by arrival."""
    import heapq

    base = [orjson.loads(ln) for ln in (beijing.FEEDS_DIR / beijing.FINAL_A_FILE).read_bytes().splitlines()]
    refs = [orjson.dumps(m) for m in base if m["kind"] == "record_ref"]
    body = [m for m in base if m["kind"] != "record_ref"]
    copies = []
    for i in range(n):
        vid = f"V{i + 1:02d}"
        shift = i * 7_000_000 // max(1, n)
        seq = []
        arrival = 0
        for m in body:
            c = dict(m)
            for f in ("t_us", "finish_us"):
                if f in c:
                    c[f] += shift
            if "venue" in c:
                c["venue"] = vid
            if "race_id" in c:
                c["race_id"] = f"{c['race_id']}-{vid}"
            if c["kind"] == "passing":
                c["transponder"] = f"{vid}{c['transponder']}"
            elif c["kind"] == "race":
                c["group"] = c["race_id"]
                c["competitors"] = [dict(comp, skaters=[dict(s, transponders=[f"{vid}{t}" for t in s["transponders"]])
                                                        for s in comp["skaters"]]) for comp in c["competitors"]]
            arrival = max(arrival, c["t_us"])
            seq.append((arrival, orjson.dumps(c)))
        copies.append(seq)
    merged = heapq.merge(*[[(a, i, k, ln) for k, (a, ln) in enumerate(seq)] for i, seq in enumerate(copies)])
    return refs + [ln for _, _, _, ln in merged]


async def latency_run(boot: str, lines: list[bytes], seconds: float, with_worker: bool):
    """Replays ``lines`` paced by t_us for ``seconds``. With the worker: the
    latency of every derived event, from producing the raw message that caused
    it (the worker names it in the ``lapstream-source`` header) to consuming
    the event, as a subscriber of the derived topics would. Without: the
    broker and client alone, producing raw messages and consuming them back
    (one hop; the pipeline is two)."""
    sent: dict[tuple[int, int], float] = {}
    lat: list[float] = []
    triggers: set = set()
    stop = asyncio.Event()
    topics = [t.name for t in T.DERIVED] if with_worker else [T.RAW.name]
    cons = AIOKafkaConsumer(*topics, bootstrap_servers=boot, group_id=None, fetch_max_wait_ms=5,
                            enable_auto_commit=False, auto_offset_reset="latest")
    await cons.start()
    await asyncio.sleep(1.0)

    async def consume():
        while not stop.is_set():
            batch = await cons.getmany(timeout_ms=100)
            now = time.perf_counter()
            for tp, recs in batch.items():
                for rec in recs:
                    if not with_worker:
                        t = sent.get((tp.partition, rec.offset))
                        if t is not None:
                            lat.append(now - t)
                        continue
                    for k, v in rec.headers or ():
                        if k == "lapstream-source":
                            _, p, o = v.decode().rsplit(":", 2)
                            key = (int(p), int(o))
                            t = sent.get(key)
                            if t is not None:
                                lat.append(now - t)
                                triggers.add(key)

    ctask = asyncio.create_task(consume())
    prod = AIOKafkaProducer(bootstrap_servers=boot, linger_ms=0, acks=1)
    await prod.start()
    race_venue, last = {}, None
    # the race set-up minute before the gun goes at full speed; pacing starts
    # 3 s before the first gun, so the window is racing
    gun = min(orjson.loads(ln)["t_us"] for ln in lines if b'"kind":"start"' in ln)
    pace_from = gun - 3_000_000
    first_t = None
    wall0 = time.perf_counter()
    tmax = None
    for ln in lines:
        topic, key, t_us = route(ln, race_venue, last)
        if topic == T.RAW.name and key:
            last = key.decode()
        if t_us is not None and topic == T.RAW.name and t_us >= pace_from:
            if first_t is None:
                first_t = t_us
            if tmax is None or t_us > tmax:
                tmax = t_us
                due = wall0 + (t_us - first_t) / 1e6
                if due - wall0 > seconds:
                    break
                d = due - time.perf_counter()
                if d > 0:
                    await asyncio.sleep(d)
        t_send = time.perf_counter()
        fut = await prod.send(topic, value=ln, key=key)
        if topic == T.RAW.name and first_t is not None:
            fut.add_done_callback(lambda f, t=t_send: sent.__setitem__((f.result().partition, f.result().offset), t)
                                  if not f.exception() else None)
    await asyncio.sleep(4.0)
    stop.set()
    await ctask
    await prod.stop()
    await cons.stop()
    return lat, len(triggers)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def throughput(broker_kind: str, tmp: Path) -> float:
    lines = []
    for f in (beijing.WOMEN_FILE, beijing.MEN_FILE):
        # the men's tournament at its own venue, so both run in one pass
        for ln in (beijing.FEEDS_DIR / f).read_bytes().splitlines():
            if f == beijing.MEN_FILE:
                ln = ln.replace(b'"venue":"NSO"', b'"venue":"NSO-M"')
            lines.append(ln)
    raw = keyed(lines)
    n = len(raw)
    print(f"\n[{broker_kind}] throughput: {n} raw messages (Beijing 2022 women + men) at max speed")
    with EmbeddedBroker(broker_kind, log_path=tmp / f"broker-{broker_kind}.log") as broker:
        boot = broker.bootstrap
        asyncio.run(ensure_topics(boot))
        base_s = asyncio.run(passthrough(boot, raw, T.RAW.partitions))
        port = free_port()
        worker = start_worker(boot, port, log_path=str(tmp / f"worker-{broker_kind}.log"),
                              session_timeout=2.0 if broker_kind == "tansu" else 6.0)
        try:
            assert wait_http(f"http://127.0.0.1:{port}/readyz", 90, worker), "worker not ready"
            refs = [ln for ln in lines if b'"record_ref"' in ln]

            async def go():
                p = AIOKafkaProducer(bootstrap_servers=boot)
                await p.start()
                for r in refs:
                    await p.send(T.RECORDS_REF.name, value=r, key=b"ref")
                await p.stop()
                await asyncio.sleep(1.0)
                return await produce_all(boot, T.RAW.name, raw)

            t0 = asyncio.run(go())
            while raw_counter(port) < n:
                time.sleep(0.05)
            live_s = time.perf_counter() - t0
        finally:
            stop_process(worker)
    ratio = base_s / live_s
    print(f"  bare aiokafka pass-through: {n / base_s:10,.0f} msg/s ({base_s:.2f} s)")
    print(f"  lapstream worker:           {n / live_s:10,.0f} msg/s ({live_s:.2f} s)")
    print(f"  ratio worker/pass-through:  {ratio:.3f}  (target >= 0.25)")
    return ratio


def latency(broker_kind: str, venues: int, seconds: float, tmp: Path) -> float | None:
    feed = multi_venue_feed(venues)
    print(f"\n[{broker_kind}] latency: {venues} venues skating the women's final A, {seconds:.0f} s at real speed")
    # the broker and client alone (no worker), on a fresh broker
    with EmbeddedBroker(broker_kind, log_path=tmp / f"broker-{broker_kind}-hop.log") as broker:
        asyncio.run(ensure_topics(broker.bootstrap))
        hop, _ = asyncio.run(latency_run(broker.bootstrap, feed, seconds, with_worker=False))
    if hop:
        print(f"  one hop, raw produced -> consumed (no worker): p50 {pct(hop, 0.5) * 1000:.1f} ms, "
              f"p99 {pct(hop, 0.99) * 1000:.1f} ms ({len(hop)} messages)")
    with EmbeddedBroker(broker_kind, log_path=tmp / f"broker-{broker_kind}-lat.log") as broker:
        boot = broker.bootstrap
        asyncio.run(ensure_topics(boot))
        port = free_port()
        worker = start_worker(boot, port, log_path=str(tmp / f"worker-{broker_kind}-lat.log"),
                              session_timeout=2.0 if broker_kind == "tansu" else 6.0)
        try:
            assert wait_http(f"http://127.0.0.1:{port}/readyz", 90, worker), "worker not ready"
            lat, triggers = asyncio.run(latency_run(boot, feed, seconds, with_worker=True))
            msgs = raw_counter(port)
        finally:
            stop_process(worker)
    if not lat:
        print("  latency: no derived events seen")
        return None
    p99 = pct(lat, 0.99)
    print(f"  worker consumed {msgs:.0f} raw messages; {len(lat)} derived events caused by {triggers} of them")
    print(f"  pipeline, raw produced -> derived consumed: p50 {pct(lat, 0.5) * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms  (target p99 < 25 ms)")
    return p99


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", choices=("tansu", "noida", "both"), default="both")
    ap.add_argument("--venues", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--only", choices=("throughput", "latency"), default=None)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="lapstream-bench-"))
    kinds = ("tansu", "noida") if args.broker == "both" else (args.broker,)
    summary = []
    for kind in kinds:
        if args.only != "latency":
            summary.append(f"{kind}: throughput ratio {throughput(kind, tmp):.3f}")
        if args.only != "throughput":
            p99 = latency(kind, args.venues, args.seconds, tmp)
            summary.append(f"{kind}: latency p99 " + (f"{p99 * 1000:.1f} ms" if p99 is not None else "n/a"))
    print("\nsummary: " + "; ".join(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
