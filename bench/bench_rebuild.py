"""Time to ready of a restarted worker, with and without snapshots.

    python bench/bench_rebuild.py [RACES] [--every N]

A long feed (the Beijing women's tournament tiled to RACES races,
bench/feeds.py) goes through an embedded tansu broker into one worker that
writes snapshots every N raw records (LAPSTREAM_SNAPSHOT_EVERY, default the
worker's own). Once the group has committed every record and the last
snapshot is saved, the worker is killed (-9) and a new one started: the time
from its start to /readyz 200 is measured, with snapshots (it loads the
newest and replays the records after it) and then, killed again, without
(LAPSTREAM_SNAPSHOT_EVERY=0: it reads the whole partition). A worker started
on an empty topic gives the floor (start-up and joining the group).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.feeds import tiled_feed  # noqa: E402
from tests import livekit as L  # noqa: E402


def timed_start(worker, wid: str, env: dict) -> tuple:
    t0 = time.monotonic()
    w = worker(wid, env)
    w.wait_ready(timeout=1800)
    return w, time.monotonic() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("races", nargs="?", type=int, default=120)
    ap.add_argument("--every", type=int, default=None, help="raw records between snapshots")
    args = ap.parse_args(argv)
    lines = tiled_feed(args.races)
    raw = L.raw_count(lines)
    env = {} if args.every is None else {"LAPSTREAM_SNAPSHOT_EVERY": str(args.every)}
    with L.live_stack() as (broker, worker, _):
        w1, floor = timed_start(worker, "w1", env)
        t0 = time.monotonic()
        L.replay_lines(broker.bootstrap, lines, speed=None)
        L.wait_for(lambda: L.committed_total(broker.bootstrap) >= raw, "every record committed",
                   timeout=1800, every=1.0)
        live_s = time.monotonic() - t0
        st = L.wait_for(w1.snapshots_settled, "the last snapshot saved", timeout=1800, every=1.0)
        print(f"{args.races} races, {raw:,d} raw records (replayed and handled live in {live_s:.1f} s); "
              f"snapshots taken {st['taken']}, saved {st['saved']}", flush=True)
        w1.kill9()
        w2, with_s = timed_start(worker, "w2", env)
        r2 = w2.readyz()
        w2.kill9()
        w3, without_s = timed_start(worker, "w3", {"LAPSTREAM_SNAPSHOT_EVERY": "0"})
        r3 = w3.readyz()
        print(f"floor (empty topic):  ready in {floor:6.1f} s")
        print(f"with snapshots:       ready in {with_s:6.1f} s  raw records re-read {r2['rebuilt_messages']:9,d}"
              f"  snapshots {r2['snapshots']}")
        print(f"without snapshots:    ready in {without_s:6.1f} s  raw records re-read {r3['rebuilt_messages']:9,d}")
        print(f"ratio (without / with): {without_s / with_s:.2f}x; "
              f"above the floor: {(without_s - floor) / max(0.1, with_s - floor):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
