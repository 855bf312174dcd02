"""Soak: kill -9, a second worker, a frozen broker, during a paced replay;
then what subscribers got versus ``lapstream process`` of the same feed.

    python bench/soak.py [--kills 20] [--feed women|men|final|FILE] [--speed 20]
                         [--only kills,pair,broker,restart] [--seed 1]
                         [--broker-down 15] [--broker-signal term|kill]

Variants (each on a fresh embedded broker, tansu by default: LAPSTREAM_TEST_BROKER):

- ``kills``: one worker; at N random moments of the replay it is killed
  (SIGKILL, its whole process group) and a new one started at once;
- ``pair``: two workers share the partitions; one is killed mid-replay and
  restarted later;
- ``broker``: the broker is stopped (SIGSTOP: frozen, unreachable, its data
  kept; tansu keeps its log only in memory, so a real restart would be a new
  empty broker) for ``--broker-stop`` seconds mid-replay, then resumed;
- ``restart``: a real broker outage (``--broker-down`` 25 s: longer than
  the worker's 15 s after which ``/readyz`` fails; ``readyz_while_down``
  lists the statuses it answered meanwhile). The broker is the durable one (noida,
  whatever LAPSTREAM_TEST_BROKER says: tansu keeps its log only in memory)
  on a data directory; mid-replay its process is ended (``--broker-signal``:
  ``term``, SIGTERM, noida saves its log and exits; ``kill``, SIGKILL, a
  crash: noida writes its log to disk about once a second, so acknowledged
  records may be lost, see README) and, after ``--broker-down`` seconds, a
  new broker process is started on the same data directory and port. The
  worker must come back by itself (no restart) and the derived topics must
  equal ``lapstream process``. The replay's producer is given a delivery
  timeout longer than the outage; ``send_failed`` counts records the
  broker never acknowledged (a loss on the producer's side, not the
  worker's).

Each prints: input_lost (feed lines the broker does not hold at the end:
acknowledged and then lost by the broker, or never acknowledged), expected
(offline events), got (live records on the derived
topics), missing (ids offline has and live not), extra (ids live has and
offline not), changed (ids whose live content differs from offline, any
copy), duplicates (copies beyond the first, all identical), and seconds.
Exit 1 if any variant has missing, extra or changed events, except in a
run where the broker lost acknowledged input records (``input_lost`` with
no ``send_failed``: the worker did not get the feed, so offline is not its
reference; the line says so). noida loses acknowledged records not only
under SIGKILL: measured, 3 heartbeats of the 1,354-line final feed after a
SIGTERM 5 s into a speed-20 replay (it writes its log about once a second).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from streams import beijing  # noqa: E402
from streams import topics as T  # noqa: E402
from streams.broker import EmbeddedBroker, ensure_topics  # noqa: E402
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


class Worker(L.Worker):
    """``lapstream worker`` with the session timeout its broker takes (noida
    refuses one below 6 s, whatever LAPSTREAM_TEST_BROKER says)."""

    def __init__(self, *a, kind: str = L.BROKER_KIND, **kw) -> None:
        super().__init__(*a, **kw)
        self.kind = kind

    def start(self) -> "Worker":
        session = "2" if self.kind == "tansu" else "6"
        cmd = [sys.executable, "-m", "streams.cli", "worker", "--broker", f"kafka://{self.bootstrap}",
               "--http-port", str(self.port), "--worker-id", self.worker_id, "--no-create-topics",
               "--session-timeout", session, "--loglevel", "info"]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=L.REPO,
                                     env={**os.environ, "PYTHONPATH": str(L.REPO), **self.env})
        return self


class Stack:
    def __init__(self, kind: str = L.BROKER_KIND) -> None:
        self.tmp = L.tmpdir()
        self.kind = kind
        if kind == "noida":   # durable: a data directory that outlives the broker process
            self.broker = EmbeddedBroker("noida", data_dir=self.tmp / "broker-data",
                                         log_path=self.tmp / "broker.log")
        else:
            self.broker = EmbeddedBroker(kind, log_path=self.tmp / "broker.log")
        self.broker.start()
        asyncio.run(ensure_topics(self.broker.bootstrap))
        self.workers: list = []
        self.n = 0

    def worker(self) -> Worker:
        self.n += 1
        w = Worker(self.broker.bootstrap, self.tmp, f"soak{self.n}", kind=self.kind).start()
        self.workers.append(w)
        return w

    def outage(self, down_s: float, sig: int, probe=None) -> dict:
        """End the broker's process (``sig`` to its process group), wait
        ``down_s``, start a new one on the same data directory and port."""
        b = self.broker
        port, data = b.port, b.data_dir
        t0 = time.monotonic()
        b._reap(sig)   # the whole process group; waits for it to exit
        gone = time.monotonic()
        while time.monotonic() - gone < down_s:
            try:   # nothing may answer on the port meanwhile
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    raise AssertionError(f"something answers on {port} while the broker is down")
            except OSError:
                pass
            if probe is not None:
                probe()
            time.sleep(0.5)
        b.restart()
        assert b.port == port and b.data_dir == data
        return {"down_s": round(time.monotonic() - t0, 1), "restart_s": round(b.started_in or 0, 1)}

    def close(self) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.stop()
        self.broker.stop()


def input_lost(bootstrap: str, lines: list[bytes]) -> int:
    """Feed lines the broker does not hold at the end (timing.raw and
    timing.records.ref read back, as a multiset): records it acknowledged
    and lost (noida under SIGKILL), or that were never acknowledged."""
    from collections import Counter

    async def go():
        from aiokafka import TopicPartition

        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False)
        await c.start()
        held: Counter = Counter()
        try:
            tps = [TopicPartition(t.name, p) for t in (T.RAW, T.RECORDS_REF) for p in range(t.partitions)]
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            end = await c.end_offsets(tps)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                for recs in (await c.getmany(timeout_ms=500)).values():
                    held.update(r.value for r in recs if r.value is not None)
                positions = [await c.position(tp) for tp in end]
                if all(pos >= off for pos, off in zip(positions, end.values())):
                    break
        finally:
            await c.stop()
        return held

    held = asyncio.run(go())
    want = Counter(ln.rstrip(b"\r\n") for ln in lines if ln.strip())
    return sum((want - held).values())


def readyz(w: Worker) -> int:
    """The worker's /readyz status (0: no answer)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(w.url("/readyz"), timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def run_variant(name: str, lines: list[bytes], want: list[dict], args, rng: random.Random) -> dict:
    st = Stack("noida" if name == "restart" else L.BROKER_KIND)
    t0 = time.monotonic()
    outcome: dict = {}
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

        failed: list = []

        def play():
            async def go():
                # delivery timeout longer than any outage: a record waits for the broker
                producer = AIOKafkaProducer(bootstrap_servers=st.broker.bootstrap, acks="all", linger_ms=5,
                                            enable_idempotence=False, max_request_size=4 * 1024 * 1024,
                                            request_timeout_ms=int((args.broker_down + 120) * 1000),
                                            retry_backoff_ms=200)
                await producer.start()
                futures = []
                send = producer.send

                async def counted(*a, **kw):
                    fut = await send(*a, **kw)
                    futures.append(fut)
                    return fut

                producer.send = counted
                try:
                    await replay(st.broker.bootstrap, lines, speed=args.speed, skip_idle=True, producer=producer)
                finally:
                    await producer.stop()
                failed.extend(f for f in futures if f.done() and not f.cancelled() and f.exception())
            asyncio.run(go())
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
        elif name == "restart":
            time.sleep(rng.uniform(0.3, 0.5) * args.replay_s)
            seen = set()
            sig = signal.SIGKILL if args.broker_signal == "kill" else signal.SIGTERM
            outcome.update(st.outage(args.broker_down, sig, probe=lambda: seen.add(readyz(w))))
            outcome["readyz_while_down"] = "/".join(str(c) for c in sorted(seen)) or "-"
            back = time.monotonic()
            w.wait_ready(timeout=300)
            outcome["ready_again_s"] = round(time.monotonic() - back, 1)
        player.join()
        w.wait_ready(timeout=300)
        stop.set()
        coll.join()
        res = compare(want, got)
        res.update(outcome)
        res["send_failed"] = len(failed)
        res["input_lost"] = input_lost(st.broker.bootstrap, lines)
        res["seconds"] = round(time.monotonic() - t0)
        alive = [x for x in st.workers if x.proc.poll() is None]
        res["workers_alive"] = len(alive)
        res["workers_started"] = st.n
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
    ap.add_argument("--broker-down", type=float, default=25.0,
                    help="restart: seconds between the broker's end and its new start")
    ap.add_argument("--broker-signal", choices=("term", "kill"), default="term",
                    help="restart: how the broker process is ended (SIGTERM or SIGKILL)")
    ap.add_argument("--only", default="kills,pair,broker,restart")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    import logging

    # the soak's own clients (replay, collector) retry through outages: their
    # connection errors are expected, not news
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    path = Path(args.feed) if args.feed not in FEEDS else beijing.FEEDS_DIR / FEEDS[args.feed]
    lines = path.read_bytes().splitlines()
    want = [e for e in process_lines(lines) if e["kind"] != "deadletter"]
    if args.replay_s is None:
        args.replay_s = paced_seconds(lines, args.speed)
    rng = random.Random(args.seed)
    bad = 0
    print(f"feed {path.name}: {len(lines)} lines, {len(want)} events offline; speed {args.speed}, "
          f"replay ~{args.replay_s:.0f} s, broker {L.BROKER_KIND} (restart: noida)", flush=True)
    for name in args.only.split(","):
        res = run_variant(name, lines, want, args, rng)
        print(f"{name:7s} " + "  ".join(f"{k} {v}" for k, v in res.items()), flush=True)
        if res["input_lost"] and res["send_failed"] == 0:
            # acknowledged, then gone: the worker's input was not the feed
            print(f"{'':7s} the broker lost {res['input_lost']} acknowledged input records: missing/extra/"
                  "changed are not the worker's to judge in this run", flush=True)
            bad += res["workers_alive"] < 1
            continue
        bad += (res["missing"] + res["extra"] + res["changed"] + res["input_lost"]
                + (res["workers_alive"] < 1))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
