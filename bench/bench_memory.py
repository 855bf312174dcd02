"""Peak RSS of ``lapstream process`` over long feeds (60 / 240 / 960 races by
default: the Beijing women's tournament tiled, bench/feeds.py).

    python bench/bench_memory.py [RACES ...]

Each run is a fresh ``python -m streams.cli process FEED`` whose output goes
to /dev/null; the peak RSS comes from the kernel (wait4 ru_maxrss). Linux
keeps a process's peak across exec, so this process stays small: the feeds
are written by another one."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mb(feed: Path) -> tuple[float, float]:
    t = time.monotonic()
    with open(os.devnull, "wb") as out:
        p = subprocess.Popen([sys.executable, "-m", "streams.cli", "process", str(feed)], stdout=out,
                             cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        _, status, usage = os.wait4(p.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return usage.ru_maxrss / 1024, time.monotonic() - t


def main(argv=None) -> int:
    sizes = [int(a) for a in (argv if argv is not None else sys.argv[1:])] or [60, 240, 960]
    with tempfile.TemporaryDirectory() as d:
        for n in sizes:
            path = Path(d) / f"feed-{n}.jsonl"
            subprocess.run([sys.executable, str(Path(__file__).parent / "feeds.py"), str(n), str(path)],
                           check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
            with open(path, "rb") as f:
                lines = sum(1 for _ in f)
            rss, secs = peak_rss_mb(path)
            print(f"{n:6d} races {lines:9,d} lines  peak RSS {rss:7.1f} MB  ({secs:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
