"""Benchmark: P3 ingest.

1. Decoding, one process: frames/s of the incremental frame decoder fed
   64 KiB chunks of a capture (the Beijing women's tournament as eight
   simulated decoders would send it), and of the whole path to contract
   messages (frames -> records -> v1 dicts -> JSON bytes), against a
   baseline measured in the same run: a plain Python scan of the same bytes
   that finds each frame's SOR and EOR and slices it out (no unescaping, no
   CRC, no fields), the floor of any frame reader written in Python.
2. End-to-end latency, decoder frame -> ``timing.raw``: an embedded broker,
   ``lapstream ingest p3`` as its own process connected to a simulated
   decoder, passings written at a steady rate; for each, from the write on
   the decoder's socket to a consumer (in this process, same clock) having
   it from ``timing.raw``. For scale, the broker hop alone (produce ->
   consume of the same messages on the same broker).

    python bench/bench_p3.py [--repeat N] [--rate PER_S] [--seconds S] [--only decode|latency]

Prints figures; no test asserts a timing.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streams import beijing  # noqa: E402
from streams.p3.codec import EOR, SOR, FrameDecoder  # noqa: E402
from streams.p3.mapping import Converter, DecoderMap  # noqa: E402
from streams.p3.simdecoder import plan  # noqa: E402

MAP = REPO / "tests" / "data" / "p3-map.json"
CHUNK = 1 << 16


def capture() -> bytes:
    lines = (beijing.FEEDS_DIR / beijing.WOMEN_FILE).read_bytes().splitlines()
    dmap = DecoderMap.load(MAP)
    return b"".join(s.record.encode() for s in plan(lines, dmap) if s.target is not None)


def chunks(data: bytes) -> list[bytes]:
    return [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]


def baseline(parts: list[bytes]) -> tuple[float, int]:
    t = time.perf_counter()
    n = 0
    buf = b""
    for part in parts:
        buf += part
        pos = 0
        while True:
            s = buf.find(SOR, pos)
            if s < 0:
                pos = len(buf)
                break
            e = buf.find(EOR, s + 1)
            if e < 0:
                pos = s
                break
            buf[s + 1:e]
            n += 1
            pos = e + 1
        buf = buf[pos:]
    return time.perf_counter() - t, n


def decode(parts: list[bytes]) -> tuple[float, int]:
    t = time.perf_counter()
    d = FrameDecoder()
    n = 0
    for part in parts:
        n += len(d.feed(part))
    return time.perf_counter() - t, n


def full(parts: list[bytes], dmap: DecoderMap) -> tuple[float, int]:
    t = time.perf_counter()
    d = FrameDecoder()
    c = Converter(dmap)
    dumps = orjson.dumps
    n = 0
    for part in parts:
        for f in d.feed(part):
            n += 1
            for m in c.convert(f, None).messages:
                dumps(m)
    return time.perf_counter() - t, n


def bench_decode(repeat: int) -> None:
    data = capture()
    parts = chunks(data)
    dmap = DecoderMap.load(MAP)
    b, dd, ff = [], [], []
    nb = nd = nf = 0
    for _ in range(repeat):       # interleaved, so drift hits all three alike
        x, nb = baseline(parts)
        b.append(x)
        x, nd = decode(parts)
        dd.append(x)
        x, nf = full(parts, dmap)
        ff.append(x)
    assert nb == nd == nf, (nb, nd, nf)
    mb, md, mf = statistics.median(b), statistics.median(dd), statistics.median(ff)
    print(f"capture: {len(data):,} bytes, {nd:,} frames (Beijing women's tournament, 8 decoders)")
    print(f"baseline SOR/EOR scan:          {nb / mb:12,.0f} frames/s")
    print(f"FrameDecoder (CRC, unescape, TLV): {nd / md:9,.0f} frames/s  ratio to baseline {mb / md:.3f}")
    print(f"frames -> v1 JSON bytes:        {nf / mf:12,.0f} frames/s  ratio to baseline {mb / mf:.3f}")


async def bench_latency(rate: float, seconds: float) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from streams.broker import EmbeddedBroker, ensure_topics, free_port
    from streams.p3.records import Passing, Status
    from streams.p3.simdecoder import DecoderServer

    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-p3-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    broker = EmbeddedBroker("tansu", log_path=tmp / "broker.log")
    broker.start()
    proc = None
    try:
        await ensure_topics(broker.bootstrap)
        dmap = DecoderMap.load(MAP)
        srv = await DecoderServer(dmap.by_id[1001]).start()
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "ingest", "p3", "--decoder", srv.address,
                                 "--map", str(MAP), "--broker", f"kafka://{broker.bootstrap}",
                                 "--http-port", str(port), "--loglevel", "warning"],
                                stdout=open(tmp / "ingest.log", "wb"), stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        while not srv.clients:
            await asyncio.sleep(0.05)
        consumer = AIOKafkaConsumer("timing.raw", bootstrap_servers=broker.bootstrap, group_id=None,
                                    auto_offset_reset="latest", fetch_max_wait_ms=5)
        await consumer.start()
        await consumer.seek_to_end()
        sent: dict[int, float] = {}
        got: dict[int, float] = {}
        n = int(rate * seconds)

        async def consume(stop):
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=100)
                now = time.perf_counter()
                for recs in batch.values():
                    for r in recs:
                        m = orjson.loads(r.value)
                        if m.get("kind") == "passing":
                            got.setdefault(m["seq"], now)
                        elif m.get("kind") == "bench":
                            got.setdefault(m["seq"], now)

        stop = asyncio.Event()
        task = asyncio.create_task(consume(stop))
        t0 = time.time_ns() // 1000
        await srv.emit(Status(noise=40, gps=1, decoder_id=1001, utc_us=t0))
        await asyncio.sleep(1.0)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(1, n + 1):
            due = start + i / rate
            d = due - loop.time()
            if d > 0:
                await asyncio.sleep(d)
            rec = Passing(passing_number=i, transponder=410011, utc_us=t0 + i * 1000, rtc_us=t0 + i * 1000,
                          strength=100, hits=20, decoder_id=1001)
            sent[i * 100] = time.perf_counter()
            await srv.emit(rec)
        deadline = time.monotonic() + 15
        while len(got) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        lat = sorted((got[k] - sent[k]) * 1000 for k in sent if k in got)
        # the broker hop alone, same load, produced from a thread with its own event loop
        # (as ingest produces from its own process)
        sent2: dict[int, float] = {}
        got.clear()

        async def produce_hop():
            prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0)
            await prod.start()
            lp = asyncio.get_running_loop()
            begin = lp.time()
            for i in range(1, n + 1):
                d = begin + i / rate - lp.time()
                if d > 0:
                    await asyncio.sleep(d)
                sent2[10**9 + i] = time.perf_counter()
                await prod.send("timing.raw", orjson.dumps({"kind": "bench", "seq": 10**9 + i}), key=b"NSO")
            await prod.flush()
            await prod.stop()

        await asyncio.to_thread(asyncio.run, produce_hop())
        deadline = time.monotonic() + 15
        while len(got) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        hop = sorted((got[k] - sent2[k]) * 1000 for k in sent2 if k in got)
        stop.set()
        await task
        await consumer.stop()
        await srv.stop()

        def q(xs, p):
            return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")

        print(f"latency decoder frame -> timing.raw ({n} passings at {rate:.0f}/s): received {len(lat)}; "
              f"p50 {q(lat, .5):.2f} ms, p99 {q(lat, .99):.2f} ms, max {lat[-1] if lat else float('nan'):.2f} ms")
        print(f"broker hop alone (produce -> consume):                received {len(hop)}; "
              f"p50 {q(hop, .5):.2f} ms, p99 {q(hop, .99):.2f} ms, max {hop[-1] if hop else float('nan'):.2f} ms")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        broker.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rate", type=float, default=200.0, help="passings per second (latency)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--only", choices=("decode", "latency"))
    args = ap.parse_args(argv)
    if args.only != "latency":
        bench_decode(args.repeat)
    if args.only != "decode":
        asyncio.run(bench_latency(args.rate, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
