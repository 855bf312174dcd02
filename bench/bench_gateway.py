#!/usr/bin/env python3
"""Gateway fan-out benchmark: N concurrent SSE clients on one ``lapstream
serve`` process (loopback), the Beijing final A replayed at 10x through an
embedded broker and a worker.

Prints:
- fan-out latency p50/p99, two ways:
  * the gateway's own histogram ``lapstream_gateway_fanout_latency_seconds``
    (from a record's arrival at the gateway to its write to each client's
    socket; quantiles interpolated within buckets);
  * seen by the clients: receipt by each client minus receipt by a probe
    consumer (aiokafka, no group, same broker and fetch wait as the gateway,
    in this process) of the same record: the gateway's arrival, as well as
    an outsider can see it;
- the CPU time of one fan-out batch (``lapstream_gateway_fanout_cpu_seconds``):
  the gateway's own cost, apart from waiting for a CPU on a busy host;
- gateway RSS per idle client: (RSS with N clients connected and their
  snapshot read - RSS before) / N;
- gateway CPU (% of one core) while the race is replayed, and this process's.

Targets on this machine: p99 <= 50 ms, <= 50 KiB per idle client.

    python bench/bench_gateway.py [--clients 1000] [--speed 10]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streams import beijing  # noqa: E402
from streams import topics as T  # noqa: E402
from streams.broker import EmbeddedBroker, ensure_topics, free_port  # noqa: E402
from streams.procs import start_worker, stop_process, wait_http  # noqa: E402
from streams.process import process_lines  # noqa: E402
from streams.replay import replay  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(q / 100 * (len(values) - 1)))))
    return values[k]


def histogram_quantiles(metrics_text: str, name: str, qs=(0.5, 0.99)) -> dict:
    buckets = []
    for line in metrics_text.splitlines():
        if line.startswith(name + "_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    out = {"count": total}
    for q in qs:
        rank = q * total
        prev_le, prev_c = 0.0, 0.0
        for le, c in buckets:
            if c >= rank:
                if le == float("inf"):
                    out[q] = prev_le
                else:
                    frac = (rank - prev_c) / (c - prev_c) if c > prev_c else 0
                    out[q] = prev_le + (le - prev_le) * frac
                break
            prev_le, prev_c = le, c
    return out


class Client:
    """One SSE connection; records (event_id, receipt time) of every event."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, float]] = []
        self.snapshot = asyncio.Event()
        self.task = None

    async def run(self, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /api/v1/stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        await writer.drain()
        buf = b""
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                now = time.perf_counter()
                buf += chunk
                while True:
                    i = buf.find(b"\n\n")
                    if i < 0:
                        break
                    block, buf = buf[:i], buf[i + 2:]
                    j = block.find(b'"event_id":"')
                    if j >= 0:
                        self.got.append((block[j + 12:j + 36], now))
                    elif b"event: snapshot" in block:
                        self.snapshot.set()
        finally:
            writer.close()


async def main_async(args) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),) * 2)
    tmp = Path(tempfile.mkdtemp(prefix="lapstream-bench-gw-"))
    broker = EmbeddedBroker("tansu", log_path=tmp / "broker.log")
    broker.start()
    worker = gateway = None
    try:
        await ensure_topics(broker.bootstrap)
        wport, gport = free_port(), free_port()
        worker = start_worker(broker.bootstrap, wport, log_path=str(tmp / "worker.log"))
        gateway = subprocess.Popen([sys.executable, "-m", "streams.cli", "serve", "--broker",
                                    f"kafka://{broker.bootstrap}", "--port", str(gport)],
                                   stdout=open(tmp / "gateway.log", "ab"), stderr=subprocess.STDOUT,
                                   cwd=REPO, start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert wait_http(f"http://127.0.0.1:{wport}/readyz", 90, worker), "worker not ready"
        assert wait_http(f"http://127.0.0.1:{gport}/readyz", 90, gateway), "gateway not ready"
        await asyncio.sleep(1.0)
        rss0 = rss_kib(gateway.pid)
        clients = [Client() for _ in range(args.clients)]
        for i, c in enumerate(clients):
            c.task = asyncio.create_task(c.run(gport))
            if i % 100 == 99:
                await asyncio.sleep(0.05)
        await asyncio.wait_for(asyncio.gather(*(c.snapshot.wait() for c in clients)), 120)
        await asyncio.sleep(2.0)
        rss1 = rss_kib(gateway.pid)

        # the probe: when did the records reach a consumer like the gateway
        from aiokafka import AIOKafkaConsumer

        probe_seen: dict[bytes, float] = {}
        probe = AIOKafkaConsumer(*[t.name for t in T.DERIVED], bootstrap_servers=broker.bootstrap,
                                 group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=5)
        await probe.start()

        async def run_probe():
            while True:
                batch = await probe.getmany(timeout_ms=100)
                now = time.perf_counter()
                for recs in batch.values():
                    for r in recs:
                        j = r.value.find(b'"event_id":"')
                        probe_seen.setdefault(r.value[j + 12:j + 36], now)

        probe_task = asyncio.create_task(run_probe())
        lines = (beijing.FEEDS_DIR / beijing.FINAL_A_FILE).read_bytes().splitlines()
        want = sum(1 for e in process_lines(lines) if e["kind"] != "deadletter")
        cpu0, bcpu0, t0 = cpu_s(gateway.pid), time.process_time(), time.perf_counter()
        await replay(broker.bootstrap, lines, speed=args.speed, skip_idle=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and min(len(c.got) for c in clients) < want:
            await asyncio.sleep(0.2)
        t1, cpu1, bcpu1 = time.perf_counter(), cpu_s(gateway.pid), time.process_time()
        with urllib.request.urlopen(f"http://127.0.0.1:{gport}/metrics") as r:
            metrics = r.read().decode()
        probe_task.cancel()
        await probe.stop()
        for c in clients:
            c.task.cancel()
        await asyncio.gather(*(c.task for c in clients), return_exceptions=True)

        lat = [(t - probe_seen[eid]) * 1000 for c in clients for eid, t in c.got if eid in probe_seen]
        complete = sum(1 for c in clients if len(c.got) >= want)
        h = histogram_quantiles(metrics, "lapstream_gateway_fanout_latency_seconds")
        print(f"clients: {args.clients} SSE on one gateway; feed {beijing.FINAL_A_FILE} at {args.speed}x "
              f"({want} derived events); every event reached {complete}/{args.clients} clients")
        print(f"fan-out latency, gateway histogram (arrival -> written to the client's socket), "
              f"{int(h['count'])} writes: p50 {h[0.5] * 1000:.1f} ms, p99 {h[0.99] * 1000:.1f} ms")
        hc = histogram_quantiles(metrics, "lapstream_gateway_fanout_cpu_seconds")
        print(f"fan-out CPU per batch (the gateway's own cost, {int(hc['count'])} batches): "
              f"p50 {hc[0.5] * 1000:.1f} ms, p99 {hc[0.99] * 1000:.1f} ms")
        print(f"fan-out latency, client receipt minus probe-consumer receipt, {len(lat)} deliveries: "
              f"p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms, max {max(lat):.1f} ms"
              if lat else "no latency samples")
        print(f"gateway RSS: {rss0 / 1024:.1f} MiB before, {rss1 / 1024:.1f} MiB with {args.clients} idle "
              f"clients: {(rss1 - rss0) / args.clients:.1f} KiB per idle client")
        wall = t1 - t0
        print(f"CPU during the replay ({wall:.1f} s): gateway {100 * (cpu1 - cpu0) / wall:.0f}% of a core, "
              f"bench clients+probe {100 * (bcpu1 - bcpu0) / wall:.0f}%")
        print(f"targets: p99 <= 50 ms, <= 50 KiB per idle client (machine: {os.cpu_count()} cores, shared)")
    finally:
        if gateway is not None:
            stop_process(gateway)
        if worker is not None:
            stop_process(worker)
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--speed", type=float, default=10.0)
    args = ap.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
