"""Soak: kill -9, a second worker, a frozen broker, during a paced replay;
then what subscribers got versus ``lapstream process`` of the same feed.

    python bench/soak.py [--kills 20] [--feed women|men|final|FILE] [--speed 20]
                         [--only kills,pair,broker] [--seed 1]

Variants (each on a fresh embedded broker, tansu by default: LAPSTREAM_TEST_BROKER):

- ``kills``: one worker; at N random moments of the replay it is killed
  (SIGKILL, its whole process group) and a new one started at once;
- ``pair``: two workers share the partitions; one is killed mid-replay and
  restarted later;
- ``broker``: the broker is stopped (SIGSTOP: frozen, unreachable, its data
  kept; tansu keeps its log only in memory, so a real restart would be a new
  empty broker) for ``--broker-stop`` seconds mid-replay, then resumed.

Each prints: expected (offline events), got (live records on the derived
topics), missing (ids offline has and live not), extra (ids live has and
offline not), changed (ids whose live content differs from offline, any
copy), duplicates (copies beyond the first, all identical), and seconds.
Exit 1 if any variant has missing, extra or changed events.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aiokafka import AIOKafkaConsumer  # noqa: E402

from streams import beijing  # noqa: E402
from streams import topics as T  # noqa: E402
from streams.process import process_lines  # noqa: E402
from streams.replay import replay  # noqa: E402
from tests import livekit as L  # noqa: E402

FEEDS = {"women": beijing.WOMEN_FILE, "men": beijing.MEN_FILE, "final": beijing.FINAL_A_FILE}


def canon(ev: dict) -> bytes:
    return orjson.dumps(ev, option=orjson.OPT_SORT_KEYS)


def collect(bootstrap: str, want_ids: set, stop: threading.Event, out: list, idle_s: float) -> None:
    """Everything on the derived topics, until every expected id is in and
    ``stop`` is set, or nothing new came for ``idle_s`` after ``stop``."""
    async def go():
        c = AIOKafkaConsumer(*[t.name for t in T.DERIVED], bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False)
        await c.start()
        seen: set = set()
        last = time.monotonic()
        try:
            while True:
                batch = await c.getmany(timeout_ms=500)
                for recs in batch.values():
                    for r in recs:
                        ev = orjson.loads(r.value)
                        out.append(ev)
                        seen.add(ev.get("event_id"))
                        last = time.monotonic()
                if stop.is_set() and (want_ids <= seen and time.monotonic() - last > 3
                                      or time.monotonic() - last > idle_s):
                    return
        finally:
            await c.stop()
    asyncio.run(go())


def compare(want: list[dict], got: list[dict]) -> dict:
    w = {e["event_id"]: canon(e) for e in want}
    copies: dict = {}
    for e in got:
        copies.setdefault(e["event_id"], []).append(canon(e))
    changed = sum(1 for i, cs in copies.items() if i in w and any(c != w[i] for c in cs))
    return {"expected": len(w), "got": len(got), "missing": len(set(w) - set(copies)),
            "extra": len(set(copies) - set(w)), "changed": changed,
            "duplicates": sum(len(cs) - 1 for cs in copies.values())}


def paced_seconds(lines: list[bytes], speed: float) -> float:
    """How long ``replay(..., speed, skip_idle=True)`` takes (its pacing rule)."""
    from streams.replay import idle_windows

    idle = idle_windows(lines)
    total = 0.0
    t_max = None
    for ln in lines:
        t = orjson.loads(ln).get("t_us")
        if type(t) is not int:
            continue
        if t_max is not None and t > t_max and not any(a <= t < b for a, b in idle):
            total += (t - t_max) / 1e6 / speed
        t_max = t if t_max is None else max(t_max, t)
    return max(5.0, total)


class Stack:
    def __init__(self) -> None:
        self.tmp = L.tmpdir()
        self.broker = L.start_broker(self.tmp)
        self.workers: list = []
        self.n = 0

    def worker(self) -> L.Worker:
        self.n += 1
        w = L.Worker(self.broker.bootstrap, self.tmp, f"soak{self.n}").start()
        self.workers.append(w)
        return w

    def close(self) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.stop()
        self.broker.stop()


def run_variant(name: str, lines: list[bytes], want: list[dict], args, rng: random.Random) -> dict:
    st = Stack()
    t0 = time.monotonic()
    try:
        w = st.worker()
        w.wait_ready()
        extra = None
        if name == "pair":
            extra = st.worker()
            extra.wait_ready()
        got: list = []
        stop = threading.Event()
        coll = threading.Thread(target=collect, args=(st.broker.bootstrap, {e["event_id"] for e in want},
                                                      stop, got, args.idle))
        coll.start()
        done = threading.Event()

        def play():
            asyncio.run(replay(st.broker.bootstrap, lines, speed=args.speed, skip_idle=True))
            done.set()

        player = threading.Thread(target=play)
        player.start()
        if name == "kills":
            # random moments over the replay's expected length, at least 2 s apart
            moments = sorted(rng.uniform(1.0, args.replay_s) for _ in range(args.kills))
            start = time.monotonic()
            killed = 0
            for m in moments:
                delay = start + m - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                w.kill9()
                killed += 1
                w = st.worker()
                time.sleep(2.0)
            print(f"  kills: {killed} (the last at {time.monotonic() - start:.0f} s; replay "
                  f"{'done' if done.is_set() else 'still running'})", flush=True)
        elif name == "pair":
            time.sleep(rng.uniform(0.25, 0.5) * args.replay_s)
            extra.kill9()
            time.sleep(rng.uniform(0.2, 0.3) * args.replay_s)
            extra = st.worker()
        elif name == "broker":
            time.sleep(rng.uniform(0.3, 0.5) * args.replay_s)
            os.kill(st.broker.pid, signal.SIGSTOP)
            time.sleep(args.broker_stop)
            os.kill(st.broker.pid, signal.SIGCONT)
        player.join()
        w.wait_ready(timeout=300)
        stop.set()
        coll.join()
        res = compare(want, got)
        res["seconds"] = round(time.monotonic() - t0)
        alive = [x for x in st.workers if x.proc.poll() is None]
        res["workers_alive"] = len(alive)
        return res
    finally:
        st.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--feed", default="women")
    ap.add_argument("--speed", type=float, default=20.0)
    ap.add_argument("--replay-s", type=float, default=None,
                    help="the replay's length in seconds (default: from the feed and speed)")
    ap.add_argument("--broker-stop", type=float, default=20.0)
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("--only", default="kills,pair,broker")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    path = Path(args.feed) if args.feed not in FEEDS else beijing.FEEDS_DIR / FEEDS[args.feed]
    lines = path.read_bytes().splitlines()
    want = [e for e in process_lines(lines) if e["kind"] != "deadletter"]
    if args.replay_s is None:
        args.replay_s = paced_seconds(lines, args.speed)
    rng = random.Random(args.seed)
    bad = 0
    print(f"feed {path.name}: {len(lines)} lines, {len(want)} events offline; speed {args.speed}, "
          f"replay ~{args.replay_s:.0f} s, broker {L.BROKER_KIND}", flush=True)
    for name in args.only.split(","):
        res = run_variant(name, lines, want, args, rng)
        print(f"{name:7s} " + "  ".join(f"{k} {v}" for k, v in res.items()), flush=True)
        bad += res["missing"] + res["extra"] + res["changed"]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
