"""Benchmark: ``lapstream process`` throughput vs. a plain orjson pass.

Prints lines/s of the core (decode + engine + dumps of every derived event)
over the shipped Beijing feeds, and the ratio to plain ``orjson.loads`` +
``orjson.dumps`` of the same lines, measured in the same run (machines here
are noisy; the ratio is what to compare). Target: ratio >= 0.25.

    python bench/bench_process.py [--repeat N] [FEED ...]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import orjson

from streams import beijing
from streams.process import process_lines


def baseline(lines: list[bytes]) -> float:
    loads, dumps = orjson.loads, orjson.dumps
    t = time.perf_counter()
    for line in lines:
        dumps(loads(line))
    return time.perf_counter() - t


def core(feeds: list[list[bytes]]) -> float:
    # each feed through its own pipeline: the two Beijing feeds are at the same
    # venue on the same days, so one after the other would be an older feed
    # replayed onto a venue that has moved on (refused by the clock guard)
    dumps = orjson.dumps
    t = time.perf_counter()
    for lines in feeds:
        for ev in process_lines(lines):
            dumps(ev)
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("feeds", nargs="*", type=Path)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    feeds = args.feeds or [beijing.FEEDS_DIR / beijing.WOMEN_FILE, beijing.FEEDS_DIR / beijing.MEN_FILE]
    per_feed = [f.read_bytes().splitlines() for f in feeds]
    lines = [ln for f in per_feed for ln in f]
    # interleave the two measurements so drift hits both alike
    base, mine = [], []
    for _ in range(args.repeat):
        base.append(baseline(lines))
        mine.append(core(per_feed))
    b, m = statistics.median(base), statistics.median(mine)
    n = len(lines)
    print(f"lines: {n} from {', '.join(f.name for f in feeds)}")
    print(f"orjson loads+dumps: {n / b:12,.0f} lines/s  ({b / n * 1e6:.2f} us/line)")
    print(f"lapstream process:  {n / m:12,.0f} lines/s  ({m / n * 1e6:.2f} us/line)")
    print(f"ratio process/baseline: {b / m:.3f}  (target >= 0.25)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
