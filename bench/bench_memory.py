"""Peak RSS of ``lapstream process`` over long feeds (60 / 240 / 960 races by
default, ``--season`` adds 5,000: the Beijing women's tournament tiled,
bench/feeds.py).

    python bench/bench_memory.py [--season] [--live] [RACES ...]

Each run is a fresh ``python -m streams.cli process FEED``; the peak RSS
comes from the kernel (wait4 ru_maxrss). Linux keeps a process's peak across
exec, so this process stays small: the feeds are written by another one, and
the output is read here in chunks only to count its bytes (all, and those of
standings and classification events). The 5,000-race feed is ~1 GB on disk
and takes minutes to write and to process.

``--live``: one ``lapstream worker`` on the embedded broker instead, the
tiled feed produced in steps up to each size; the worker's RSS once it has
counted every raw message of the step (``rss_mb``)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mb(feed: Path) -> tuple[float, float, int, int]:
    """(peak RSS in MB, seconds, output bytes, standings + classification bytes)."""
    t = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "streams.cli", "process", str(feed)], stdout=subprocess.PIPE,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.stdout is not None
    total = standings = 0
    for line in p.stdout:
        total += len(line)
        if line.startswith((b'{"kind":"standings"', b'{"kind":"classification"')):
            standings += len(line)
    _, status, usage = os.wait4(p.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return usage.ru_maxrss / 1024, time.monotonic() - t, total, standings


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a live process, in MB."""
    vals = {}
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            k, _, v = ln.partition(":")
            if k in ("VmRSS", "VmHWM"):
                vals[k] = int(v.split()[0]) / 1024
    return vals["VmRSS"], vals["VmHWM"]


def live(sizes: list[int]) -> None:
    """One ``lapstream worker`` on the embedded broker (tansu); the tiled feed
    produced in steps (at max speed) up to each size; after each step, once
    the worker has counted every raw message, its RSS."""
    import asyncio
    import re
    import urllib.request

    from aiokafka import AIOKafkaProducer

    from streams import topics as T
    from streams.broker import EmbeddedBroker, ensure_topics, free_port
    from streams.procs import start_worker, stop_process, wait_http
    from streams.replay import route

    sys.path.insert(0, str(Path(__file__).parent))
    from feeds import iter_tiled_feed

    def counted(port: int) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(float(v) for v in re.findall(r"^lapstream_raw_messages_total\{[^}]*\} (\S+)$", text, re.M))

    async def produce(boot: str, items: list) -> None:
        p = AIOKafkaProducer(bootstrap_servers=boot, linger_ms=5, acks=1, max_batch_size=256 * 1024)
        await p.start()
        for topic, key, value in items:
            await p.send(topic, value=value, key=key)
        await p.flush()
        await p.stop()

    with tempfile.TemporaryDirectory() as d, EmbeddedBroker("tansu", log_path=Path(d) / "broker.log") as broker:
        boot = broker.bootstrap
        asyncio.run(ensure_topics(boot))
        port = free_port()
        worker = start_worker(boot, port, log_path=str(Path(d) / "worker.log"))
        try:
            assert wait_http(f"http://127.0.0.1:{port}/readyz", 120, worker), "worker not ready"
            print(f"  worker ready: RSS {rss_mb(worker.pid)[0]:.1f} MB", flush=True)
            feed = iter_tiled_feed(max(sizes))
            race_venue: dict = {}
            last = None
            raw_sent = races = 0
            for n in sorted(sizes):
                batch = []
                t = time.monotonic()
                for ln in feed:
                    if races >= n and ln.startswith(b'{"kind":"race"'):
                        feed = _chain([ln], feed)
                        break
                    topic, key, _ = route(ln, race_venue, last)
                    if topic == T.RAW.name:
                        last = key.decode() if key else last
                        raw_sent += 1
                    races += ln.startswith(b'{"kind":"race"')
                    batch.append((topic, key, ln))
                    if len(batch) >= 20_000:
                        asyncio.run(produce(boot, batch))
                        batch = []
                asyncio.run(produce(boot, batch))
                while counted(port) < raw_sent:
                    assert worker.poll() is None, "worker exited"
                    time.sleep(0.2)
                rss, hwm = rss_mb(worker.pid)
                print(f"{races:6d} races {raw_sent:10,d} raw  worker RSS {rss:7.1f} MB (peak {hwm:7.1f} MB)  "
                      f"({time.monotonic() - t:.1f} s)", flush=True)
        finally:
            stop_process(worker)


def _chain(first, rest):
    yield from first
    yield from rest


def main(argv=None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    season = "--season" in args
    sizes = [int(a) for a in args if not a.startswith("--")] or [60, 240, 960]
    if "--live" in args:
        live(sizes + ([5000] if season else []))
        return 0
    if season:
        sizes.append(5000)
    with tempfile.TemporaryDirectory() as d:
        for n in sizes:
            path = Path(d) / f"feed-{n}.jsonl"
            subprocess.run([sys.executable, str(Path(__file__).parent / "feeds.py"), str(n), str(path)],
                           check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
            with open(path, "rb") as f:
                lines = sum(1 for _ in f)
            rss, secs, out, st = peak_rss_mb(path)
            path.unlink()
            print(f"{n:6d} races {lines:10,d} lines  peak RSS {rss:7.1f} MB  output {out / 1e6:8.1f} MB "
                  f"(standings {st / 1e6:6.2f} MB)  ({secs:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
