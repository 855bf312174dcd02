"""Benchmark: how soon a subscriber sees a split or a finish, from the crossing's first read.

A race (the women's team pursuit final A, Beijing 2022) is produced to
``timing.raw`` at real speed through the embedded broker and one worker,
with N venues skating it at once (each shifted by its own phase, as in
``bench_kafka.py``; N = 1 and 50 by default). A subscriber consumes
``timing.splits`` and ``timing.finishes``. For every split and finish:

- **first version**: from sending the raw read that opened the crossing (the
  read whose processing published the split's first version: the crossing's
  first read to arrive) to receiving that first version;
- **final version**: from the same send to receiving the version with
  ``"final": true`` (the reordering window, 3 s of event time, is in it by
  design).

Which raw message caused which event is known from the same feed through the
same core offline (``process_lines``: ids are deterministic and the live
output is the offline output). Prints p50/p99/max of both, and the revision
rate (provisional values that changed, per 1,000 splits). Targets on this
machine: first version p99 <= 100 ms at one venue, <= 250 ms at 50 venues.
No test asserts a timing; machines here are noisy, run it more than once.

    python bench/bench_latency.py [--venues 1,50] [--seconds S] [--broker tansu|noida]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_kafka import multi_venue_feed, pct, raw_counter  # noqa: E402
from streams import topics as T  # noqa: E402
from streams.broker import EmbeddedBroker, ensure_topics, free_port  # noqa: E402
from streams.demo import start_worker, stop_process, wait_http  # noqa: E402
from streams.process import Processor  # noqa: E402
from streams.replay import route  # noqa: E402


def natural_key(e: dict) -> tuple:
    if e["kind"] == "split":
        return ("split", e["race_id"], e["attempt"], e["competitor_id"], e["skater_id"], e["distance_m"])
    return ("finish", e["race_id"], e["attempt"], e["competitor_id"])


def offline_causes(lines: list[bytes]) -> tuple[dict[str, int], dict[tuple, list[dict]]]:
    """event_id -> index of the raw line whose processing emitted it; the
    versions of every split and finish, in emission order."""
    cause: dict[str, int] = {}
    versions: dict[tuple, list[dict]] = defaultdict(list)
    proc = Processor()   # one core over the prefix: the events of line i are caused by line i
    for i, line in enumerate(lines):
        evs, _rej = proc.handle(line)
        for e in evs:
            if e["kind"] in ("split", "finish"):
                cause[e["event_id"]] = i
                versions[natural_key(e)].append(e)
    return cause, versions


def revision_rate(versions: dict[tuple, list[dict]]) -> tuple[int, int, int]:
    """(splits, splits whose provisional value changed, events) over the splits."""
    n = changed = events = 0
    for key, vs in versions.items():
        if key[0] != "split":
            continue
        n += 1
        events += len(vs)
        vals = [(v["time_ms"], v["rank"], v["behind_ms"], v["lap_ms"], bool(v.get("withdrawn"))) for v in vs]
        changed += sum(1 for a, b in zip(vals, vals[1:]) if a != b)
    return n, changed, events


async def live_run(boot: str, lines: list[bytes], seconds: float):
    """Produce ``lines`` paced by t_us (the set-up before the first gun at full
    speed) for ``seconds``; return (send time per line index, arrival time per
    event_id, lines sent)."""
    sent: dict[int, float] = {}
    arrived: dict[str, float] = {}
    stop = asyncio.Event()
    cons = AIOKafkaConsumer(T.SPLITS.name, T.FINISHES.name, bootstrap_servers=boot, group_id=None,
                            fetch_max_wait_ms=5, enable_auto_commit=False, auto_offset_reset="latest")
    await cons.start()
    await asyncio.sleep(1.0)

    async def consume():
        while not stop.is_set():
            batch = await cons.getmany(timeout_ms=100)
            now = time.perf_counter()
            for recs in batch.values():
                for rec in recs:
                    eid = orjson.loads(rec.value)["event_id"]
                    arrived.setdefault(eid, now)

    ctask = asyncio.create_task(consume())
    prod = AIOKafkaProducer(bootstrap_servers=boot, linger_ms=0, acks=1)
    await prod.start()
    race_venue: dict = {}
    last = None
    gun = min(orjson.loads(ln)["t_us"] for ln in lines if b'"kind":"start"' in ln)
    pace_from = gun - 3_000_000
    first_t = None
    wall0 = time.perf_counter()
    n_sent = 0
    for i, ln in enumerate(lines):
        topic, key, t_us = route(ln, race_venue, last)
        if topic == T.RAW.name and key:
            last = key.decode()
        if t_us is not None and topic == T.RAW.name and t_us >= pace_from:
            if first_t is None:
                first_t = t_us
                wall0 = time.perf_counter()
            due = wall0 + (t_us - first_t) / 1e6
            if due - wall0 > seconds:
                break
            d = due - time.perf_counter()
            if d > 0:
                await asyncio.sleep(d)
        sent[i] = time.perf_counter()
        await prod.send(topic, value=ln, key=key)
        n_sent = i + 1
    await prod.flush()
    await asyncio.sleep(5.0)     # the last crossings' windows close (heartbeats keep coming until then)
    stop.set()
    await ctask
    await prod.stop()
    await cons.stop()
    return sent, arrived, n_sent


def measure(broker_kind: str, venues: int, seconds: float, tmp: Path, timeline: bool = False) -> dict:
    lines = multi_venue_feed(venues)
    print(f"\n[{broker_kind}] {venues} venue(s) skating the women's final A, up to {seconds:.0f} s at real speed")
    with EmbeddedBroker(broker_kind, log_path=tmp / f"broker-{broker_kind}-{venues}.log") as broker:
        boot = broker.bootstrap
        asyncio.run(ensure_topics(boot))
        port = free_port()
        worker = start_worker(boot, port, log_path=str(tmp / f"worker-{broker_kind}-{venues}.log"),
                              session_timeout=2.0 if broker_kind == "tansu" else 6.0)
        try:
            assert wait_http(f"http://127.0.0.1:{port}/readyz", 90, worker), "worker not ready"
            sent, arrived, n_sent = asyncio.run(live_run(boot, lines, seconds))
            msgs = raw_counter(port)
        finally:
            stop_process(worker)
    cause, versions = offline_causes(lines[:n_sent])
    first: list[float] = []
    final: list[float] = []
    by_time: list[tuple[float, float]] = []
    missing = 0
    for key, vs in versions.items():
        v0 = vs[0]
        i0 = cause[v0["event_id"]]
        t0 = sent.get(i0)
        if t0 is None:
            continue
        a0 = arrived.get(v0["event_id"])
        if a0 is None:
            missing += 1
            continue
        first.append(a0 - t0)
        by_time.append((t0, a0 - t0))
        vf = next((v for v in vs if v.get("final")), None)
        if vf is not None and vf["event_id"] in arrived:
            final.append(arrived[vf["event_id"]] - t0)
    n, changed, events = revision_rate(versions)
    out = {"venues": venues, "n": len(first), "missing": missing}
    print(f"  worker consumed {msgs:.0f} raw messages; {len(first)} splits and finishes measured"
          + (f" ({missing} first versions not seen)" if missing else ""))
    if first:
        out.update(first_p50=pct(first, 0.5), first_p99=pct(first, 0.99), first_max=max(first))
        print(f"  first version: p50 {pct(first, 0.5) * 1000:7.1f} ms  p99 {pct(first, 0.99) * 1000:7.1f} ms  "
              f"max {max(first) * 1000:7.1f} ms")
    if final:
        out.update(final_p50=pct(final, 0.5), final_p99=pct(final, 0.99), final_max=max(final))
        print(f"  final version: p50 {pct(final, 0.5) * 1000:7.1f} ms  p99 {pct(final, 0.99) * 1000:7.1f} ms  "
              f"max {max(final) * 1000:7.1f} ms  ({len(final)})")
    if timeline and by_time:
        t_start = min(t for t, _ in by_time)
        buckets: dict[int, list[float]] = defaultdict(list)
        for t, lat in by_time:
            buckets[int((t - t_start) // 10)].append(lat)
        print("  first version by 10 s of sending: " + "  ".join(
            f"{k * 10}s: p50 {pct(v, 0.5) * 1000:.0f}/max {max(v) * 1000:.0f} ms" for k, v in sorted(buckets.items())))
    print(f"  revisions: {changed} provisional values changed over {n} splits = {1000 * changed / max(1, n):.0f} "
          f"per 1,000 splits; {events / max(1, n):.2f} events per split")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venues", default="1,50", help="comma-separated venue counts (default 1,50)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="real-time seconds of racing to produce (default: the whole race, 200 s, at one "
                         "venue; 40 s at more, as bench_kafka.py: tansu slows down as its log grows)")
    ap.add_argument("--broker", choices=("tansu", "noida"), default="tansu")
    ap.add_argument("--timeline", action="store_true", help="also print the latency by 10 s of sending")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="lapstream-bench-latency-"))
    targets = {1: 0.100, 50: 0.250}
    summary = []
    for n in (int(x) for x in args.venues.split(",")):
        seconds = args.seconds if args.seconds is not None else (200.0 if n == 1 else 40.0)
        r = measure(args.broker, n, seconds, tmp, args.timeline)
        if "first_p99" in r:
            tgt = targets.get(n)
            summary.append(f"{n} venue(s): first p99 {r['first_p99'] * 1000:.1f} ms"
                           + (f" (target <= {tgt * 1000:.0f})" if tgt else "")
                           + f", final p99 {r.get('final_p99', float('nan')) * 1000:.0f} ms")
    print("\nsummary: " + "; ".join(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
