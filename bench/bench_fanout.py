#!/usr/bin/env python3
"""The gateway's fan-out alone: CPU and wall time of ``Gateway._fan_out`` for
N direct SSE clients on loopback (readers in ``--procs`` other processes that
read and discard), no Kafka, no broker. Tells the gateway's own per-client
cost apart from everything else ``bench_gateway.py`` measures.

    python bench/bench_fanout.py [--clients 1000] [--batches 200] [--events 3]
"""
from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streams.gateway import Client, Gateway, GatewaySettings  # noqa: E402
from streams.gateway_state import Filter, Item  # noqa: E402

READER = r'''
import asyncio, sys
class P(asyncio.Protocol):
    def data_received(self, data): pass
async def main(port, n):
    loop = asyncio.get_running_loop()
    for _ in range(n):
        await loop.create_connection(P, "127.0.0.1", port)
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
'''


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


async def main_async(args) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),) * 2)
    gw = Gateway(GatewaySettings(bootstrap="unused"))
    transports = []
    server = await asyncio.start_server(lambda r, w: transports.append(w.transport), "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    per = [args.clients // args.procs + (1 if i < args.clients % args.procs else 0) for i in range(args.procs)]
    procs = [subprocess.Popen([sys.executable, "-c", READER, str(port), str(k)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE) for k in per if k]
    loop = asyncio.get_running_loop()
    for p in procs:
        await loop.run_in_executor(None, p.stdout.readline)
    while len(transports) < args.clients:
        await asyncio.sleep(0.01)
    pos = {(t, p): 0 for t in range(7) for p in range(12)}
    gw.state.position = dict(pos)
    for tr in transports:
        c = Client("sse", Filter(), dict(pos), 1024)
        c.direct, c.sock, c.chunked = True, tr, True
        gw.clients.add(c)
    data = (b'{"kind":"split","v":1,"event_id":"0123456789abcdef01234567","race_id":"BEI-2022-TPW-FA",'
            b'"competitor_id":"CAN","skater_id":null,"distance_m":1200,"time_ms":81234,"lap_ms":28123,'
            b'"rank":1,"gap_ms":0,"revision":0,"attempt":1,"t_us":1644570000000000,"provisional":false}')
    cpu, wall = [], []
    off = 0
    for b in range(args.batches):
        items = []
        for _ in range(args.events):
            items.append(Item(0, off % 12, off, "split", {}, data, time.perf_counter(), "BEI-2022-TPW-FA",
                              "G", "V", None))
            off += 1
        c0, w0 = time.thread_time(), time.perf_counter()
        gw._fan_out(items)
        cpu.append((time.thread_time() - c0) * 1000)
        wall.append((time.perf_counter() - w0) * 1000)
        await asyncio.sleep(0.05)
    dropped = sum(1 for c in gw.clients if c.dropped)
    print(f"fan-out of {args.events} events to {args.clients} direct SSE clients, {args.batches} batches "
          f"({dropped} clients dropped): CPU per batch p50 {pct(cpu, 50):.2f} ms, p99 {pct(cpu, 99):.2f} ms "
          f"({1000 * pct(cpu, 50) / args.clients:.1f} us per client); wall p50 {pct(wall, 50):.2f} ms, "
          f"p99 {pct(wall, 99):.2f} ms")
    for p in procs:
        p.stdin.close()
        p.wait()
    server.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--events", type=int, default=3)
    ap.add_argument("--procs", type=int, default=2)
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
