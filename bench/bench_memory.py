"""Peak RSS of ``lapstream process`` over long feeds (60 / 240 / 960 races by
default, ``--season`` adds 5,000: the Beijing women's tournament tiled,
bench/feeds.py).

    python bench/bench_memory.py [--season] [RACES ...]

Each run is a fresh ``python -m streams.cli process FEED``; the peak RSS
comes from the kernel (wait4 ru_maxrss). Linux keeps a process's peak across
exec, so this process stays small: the feeds are written by another one, and
the output is read here in chunks only to count its bytes (all, and those of
standings and classification events). The 5,000-race feed is ~1 GB on disk
and takes minutes to write and to process."""
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


def main(argv=None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    season = "--season" in args
    sizes = [int(a) for a in args if a != "--season"] or [60, 240, 960]
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
