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
    in a process of its own) of the same record: the gateway's arrival, as well as
    an outsider can see it. The clients are spread over ``--procs``
    processes, read with ``recvmsg`` from the loop's readiness callback and
    parsed after the race, so that one client's receipt is not queued behind
    the others' parsing. Two receipt times per delivery: when the client
    process read the bytes, and when they reached its socket (the kernel's
    receive timestamp, SO_TIMESTAMPNS: a client with a CPU of its own, as a
    remote one has, reads then; on this shared host the client processes
    may wait for a CPU long after). The probe's time is when it read the
    record (it also may wait for a CPU: that makes both figures smaller).
    One clock (``time.time``, CLOCK_REALTIME) in every process;
- the CPU time of one fan-out batch (``lapstream_gateway_fanout_cpu_seconds``):
  the gateway's own cost, apart from waiting for a CPU on a busy host;
- gateway RSS per idle client: (RSS with N clients connected and their
  snapshot read - RSS before) / N;
- gateway CPU (% of one core) while the race is replayed, the client
  processes', and this process's (the replay).

Targets on this machine: p99 <= 50 ms, <= 50 KiB per idle client.

    python bench/bench_gateway.py [--clients 1000] [--speed 10] [--procs 4] [--profile FILE]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import resource
import socket
import struct
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


MARK = b'"event_id":"'
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)   # Linux (asm-generic/socket.h)
ANC = socket.CMSG_SPACE(16)


class Conn:
    """One SSE connection of a client process, read with ``recvmsg`` straight
    from the event loop's readiness callback. Each read is kept raw with two
    receipt times (CLOCK_REALTIME, as the probe's): ``app``, when this process
    got the bytes, and ``kern``, the kernel's receive timestamp of the newest
    data in that read (SO_TIMESTAMPNS): when the bytes reached the client's
    socket, whatever this process then waited for a CPU. Frames are parsed
    after the race. Until its snapshot is complete, the head is kept to find
    its end."""

    def __init__(self, loop, port: int, snapshots: list) -> None:
        self.loop = loop
        self.port = port
        self.head = b""
        self.snapshot = False
        self.snapshots = snapshots
        self.chunks: list[tuple[float, float, bytes]] = []
        self.count = 0          # event ids seen after the snapshot (for "done")
        self.tail = b""
        self.sock = socket.socket()
        self.sock.setblocking(False)

    async def start(self) -> None:
        await self.loop.sock_connect(self.sock, ("127.0.0.1", self.port))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        await self.loop.sock_sendall(self.sock, b"GET /api/v1/stream HTTP/1.1\r\nHost: x\r\n"
                                                b"Accept: text/event-stream\r\n\r\n")
        self.loop.add_reader(self.sock.fileno(), self.readable)

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def readable(self) -> None:
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(1 << 16, ANC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            app = time.time()
            if not data:
                self.close()
                return
            kern = app
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
                    sec, ns = struct.unpack("qq", raw[:16])
                    kern = sec + ns / 1e9
            self.received(data, kern, app)

    def received(self, data: bytes, kern: float, app: float) -> None:
        if not self.snapshot:
            self.head += data
            i = self.head.find(b"event: snapshot")
            j = self.head.find(b"\n\n", i) if i >= 0 else -1
            if j < 0:
                return
            self.snapshot = True
            self.snapshots.append(self)
            data = self.head[j + 2:]
            self.head = b""
            if not data:
                return
        self.chunks.append((kern, app, data))
        s = self.tail + data
        self.count += s.count(MARK)
        self.tail = s[-(len(MARK) - 1):]

    def receipts(self) -> list[tuple[bytes, float, float]]:
        """(event id, kern, app) of the read that completed its frame, in stream order."""
        out = []
        buf = b""
        n = len(MARK)
        for kern, app, data in self.chunks:
            buf += data
            k = 0
            while True:
                j = buf.find(MARK, k)
                if j < 0:
                    k = max(k, len(buf) - n)
                    break
                e = buf.find(b"\n\n", j + n + 24)
                if e < 0:
                    k = j
                    break
                out.append((buf[j + n:j + n + 24], kern, app))
                k = e + 2
            buf = buf[k:]
        return out


async def client_proc(args) -> None:
    """A client process (``--client-proc``): ``--clients`` SSE connections;
    prints ``ready`` when every snapshot is read, ``done`` once every
    connection has ``--want`` events, and on ``stop`` (stdin) writes each
    event id's receipt times to ``--out`` (pickle) and exits."""

    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),) * 2)
    loop = asyncio.get_running_loop()
    snapshots: list = []
    conns = []
    for i in range(args.clients):
        c = Conn(loop, args.port, snapshots)
        await c.start()
        conns.append(c)
        if i % 50 == 49:
            await asyncio.sleep(0.02)
    while len(snapshots) < len(conns):
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    stop = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), stop.set)
    done = False
    while not stop.is_set():
        if not done and min(c.count for c in conns) >= args.want:
            print("done", flush=True)
            done = True
        try:
            await asyncio.wait_for(stop.wait(), 0.1)
        except asyncio.TimeoutError:
            pass
    for c in conns:
        if c.sock.fileno() >= 0:
            c.close()
    got: dict[bytes, list] = {}
    counts = []
    for c in conns:
        r = c.receipts()
        counts.append(len(r))
        for eid, kern, app in r:
            got.setdefault(eid, []).append((kern, app))
    with open(args.out, "wb") as f:
        pickle.dump({"receipts": got, "counts": counts}, f)


async def probe_proc(args) -> None:
    """The probe process (``--probe-proc``): reads the derived topics like the
    gateway and keeps when each event id was first read; prints ``ready``
    once reading, and on ``stop`` (stdin) writes them to ``--out``."""

    from aiokafka import AIOKafkaConsumer

    seen: dict[bytes, float] = {}
    probe = AIOKafkaConsumer(*[t.name for t in T.DERIVED], bootstrap_servers=args.bootstrap,
                             group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=5)
    await probe.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), stop.set)
    await probe.getmany(timeout_ms=100)
    print("ready", flush=True)
    while not stop.is_set():
        batch = await probe.getmany(timeout_ms=100)
        now = time.time()
        for recs in batch.values():
            for r in recs:
                j = r.value.find(MARK)
                if j >= 0:
                    seen.setdefault(r.value[j + 12:j + 36], now)
    await probe.stop()
    with open(args.out, "wb") as f:
        pickle.dump(seen, f)


class ClientProcs:
    """The SSE clients, spread over several processes (so that their reads
    are not queued behind each other's parsing in one event loop)."""

    def __init__(self, n: int, procs: int, port: int, want: int, tmp: Path) -> None:
        self.outs = []
        self.procs = []
        per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        for i, k in enumerate(x for x in per if x):
            out = tmp / f"clients-{i}.pickle"
            self.outs.append(out)
            self.procs.append(subprocess.Popen(
                [sys.executable, __file__, "--client-proc", "--clients", str(k), "--port", str(port),
                 "--want", str(want), "--out", str(out)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO))

    async def wait_line(self, word: bytes, timeout: float) -> bool:
        loop = asyncio.get_running_loop()

        def read_all() -> bool:
            for p in self.procs:
                line = p.stdout.readline()
                if line.strip() != word:
                    return False
            return True
        try:
            return await asyncio.wait_for(loop.run_in_executor(None, read_all), timeout)
        except asyncio.TimeoutError:
            return False

    def cpu(self) -> float:
        return sum(cpu_s(p.pid) for p in self.procs if p.poll() is None)

    def stop(self) -> tuple[dict, list]:

        got: dict = {}
        counts: list = []
        for p in self.procs:
            try:
                p.stdin.write(b"stop\n")
                p.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
        for p, out in zip(self.procs, self.outs):
            p.wait(60)
            if out.exists():
                r = pickle.loads(out.read_bytes())
                for eid, ts in r["receipts"].items():
                    got.setdefault(eid, []).extend(ts)
                counts += r["counts"]
        return got, counts

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


async def main_async(args) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),) * 2)
    tmp = Path(tempfile.mkdtemp(prefix="lapstream-bench-gw-"))
    broker = EmbeddedBroker("tansu", log_path=tmp / "broker.log")
    broker.start()
    worker = gateway = clients = probe = None
    try:
        await ensure_topics(broker.bootstrap)
        wport, gport = free_port(), free_port()
        worker = start_worker(broker.bootstrap, wport, log_path=str(tmp / "worker.log"))
        cmd = [sys.executable, "-m", "streams.cli", "serve", "--broker", f"kafka://{broker.bootstrap}",
               "--port", str(gport)]
        if args.profile:    # cProfile writes its file when the gateway stops (SIGTERM)
            cmd[1:3] = ["-m", "cProfile", "-o", args.profile, "-m", "streams.cli"]
        gateway = subprocess.Popen(cmd, stdout=open(tmp / "gateway.log", "ab"), stderr=subprocess.STDOUT,
                                   cwd=REPO, start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert wait_http(f"http://127.0.0.1:{wport}/readyz", 90, worker), "worker not ready"
        assert wait_http(f"http://127.0.0.1:{gport}/readyz", 90, gateway), "gateway not ready"
        await asyncio.sleep(1.0)
        rss0 = rss_kib(gateway.pid)
        lines = (beijing.FEEDS_DIR / beijing.FINAL_A_FILE).read_bytes().splitlines()
        want = sum(1 for e in process_lines(lines) if e["kind"] != "deadletter")
        clients = ClientProcs(args.clients, args.procs, gport, want, tmp)
        assert await clients.wait_line(b"ready", 120), "the clients did not all get their snapshot"
        await asyncio.sleep(2.0)
        rss1 = rss_kib(gateway.pid)

        # the probe: when did the records reach a consumer like the gateway
        # (its own process: not delayed by the replay's producer in this one)
        probe = subprocess.Popen([sys.executable, __file__, "--probe-proc", "--bootstrap", broker.bootstrap,
                                  "--out", str(tmp / "probe.pickle")],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO)
        line = await asyncio.get_running_loop().run_in_executor(None, probe.stdout.readline)
        assert line.strip() == b"ready", "the probe did not start"
        cpu0, bcpu0, ccpu0, t0 = cpu_s(gateway.pid), time.process_time(), clients.cpu(), time.perf_counter()
        await replay(broker.bootstrap, lines, speed=args.speed, skip_idle=True)
        await clients.wait_line(b"done", 60)
        t1, cpu1, bcpu1, ccpu1 = time.perf_counter(), cpu_s(gateway.pid), time.process_time(), clients.cpu()
        with urllib.request.urlopen(f"http://127.0.0.1:{gport}/metrics") as r:
            metrics = r.read().decode()
        probe.stdin.write(b"stop\n")
        probe.stdin.flush()
        probe.wait(60)
        probe_seen = pickle.loads((tmp / "probe.pickle").read_bytes())
        got, counts = clients.stop()

        lat = [(app - probe_seen[eid]) * 1000 for eid, ts in got.items() if eid in probe_seen for _, app in ts]
        klat = [(kern - probe_seen[eid]) * 1000 for eid, ts in got.items() if eid in probe_seen for kern, _ in ts]
        complete = sum(1 for n in counts if n >= want)
        h = histogram_quantiles(metrics, "lapstream_gateway_fanout_latency_seconds")
        print(f"clients: {args.clients} SSE on one gateway ({len(clients.procs)} client processes); feed "
              f"{beijing.FINAL_A_FILE} at {args.speed}x ({want} derived events); every event reached "
              f"{complete}/{args.clients} clients")
        print(f"fan-out latency, gateway histogram (arrival -> written to the client's socket), "
              f"{int(h['count'])} writes: p50 {h[0.5] * 1000:.1f} ms, p99 {h[0.99] * 1000:.1f} ms")
        hc = histogram_quantiles(metrics, "lapstream_gateway_fanout_cpu_seconds")
        print(f"fan-out CPU per batch (the gateway's own cost, {int(hc['count'])} batches): "
              f"p50 {hc[0.5] * 1000:.1f} ms, p99 {hc[0.99] * 1000:.1f} ms")
        if lat:
            print(f"fan-out latency, client receipt minus probe-consumer receipt, {len(lat)} deliveries:")
            print(f"  read by the client process:            p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms, "
                  f"max {max(lat):.1f} ms")
            print(f"  reached the client's socket (kernel):  p50 {pct(klat, 50):.1f} ms, p99 {pct(klat, 99):.1f} ms, "
                  f"max {max(klat):.1f} ms")
            # where the time goes: until the first client has an event (the
            # gateway reading it after the probe, and its first write), then
            # the spread over the clients (one write each, and, read by the
            # client processes, their waiting for a CPU)
            first = [(min(k for k, _ in ts) - probe_seen[eid]) * 1000 for eid, ts in got.items() if eid in probe_seen]
            spread = [(k - min(x for x, _ in ts)) * 1000 for eid, ts in got.items() if eid in probe_seen
                      for k, _ in ts]
            print(f"  of which (kernel): first client minus probe, {len(first)} events: p50 {pct(first, 50):.1f} ms, "
                  f"p99 {pct(first, 99):.1f} ms; each client minus the first: p50 {pct(spread, 50):.1f} ms, "
                  f"p99 {pct(spread, 99):.1f} ms")
        else:
            print("no latency samples")
        print(f"gateway RSS: {rss0 / 1024:.1f} MiB before, {rss1 / 1024:.1f} MiB with {args.clients} idle "
              f"clients: {(rss1 - rss0) / args.clients:.1f} KiB per idle client")
        wall = t1 - t0
        print(f"CPU during the replay ({wall:.1f} s): gateway {100 * (cpu1 - cpu0) / wall:.0f}% of a core, "
              f"bench clients {100 * (ccpu1 - ccpu0) / wall:.0f}%, bench replay "
              f"{100 * (bcpu1 - bcpu0) / wall:.0f}%")
        print(f"targets: p99 <= 50 ms, <= 50 KiB per idle client (machine: {os.cpu_count()} cores, shared; "
              f"load average before the replay {os.getloadavg()[0]:.2f})")
    finally:
        if clients is not None:
            clients.kill()
        if probe is not None and probe.poll() is None:
            probe.kill()
            probe.wait()
        if gateway is not None:
            stop_process(gateway)
        if worker is not None:
            stop_process(worker)
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--speed", type=float, default=10.0)
    ap.add_argument("--procs", type=int, default=4, help="client processes the SSE clients are spread over")
    ap.add_argument("--profile", metavar="FILE", help="run the gateway under cProfile, stats to FILE")
    ap.add_argument("--client-proc", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--want", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--probe-proc", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", help=argparse.SUPPRESS)
    args = ap.parse_args()
    asyncio.run(client_proc(args) if args.client_proc else probe_proc(args) if args.probe_proc
                else main_async(args))


if __name__ == "__main__":
    main()
