"""Long feeds for the memory figures and the soak: the Beijing women's team
pursuit tournament (10 races over three days) tiled ``copies`` times, each
copy shifted in time (a day after the previous one ends) and renamed (race
ids, groups and competition get a ``-k`` suffix), at one venue. Deterministic.

Each copy is its own competition with its own groups (the quarter-finals of
one tournament are one group): a group of a season does not grow without
bound. (Reusing the same group ids in every copy would make one group of
every quarter-final of the season, whose standings, a complete ranking
re-published at each change, grow with the square of the feed.)

``iter_tiled_feed`` yields the lines one copy at a time (a 5,000-race feed
is ~1 GB): the generator holds one copy, not the feed."""
from __future__ import annotations

from typing import Iterator

import orjson

from streams import beijing

DAY_US = 86_400_000_000


def tiled_feed(races: int) -> list[bytes]:
    return list(iter_tiled_feed(races))


def iter_tiled_feed(races: int) -> Iterator[bytes]:
    base = (beijing.FEEDS_DIR / beijing.WOMEN_FILE).read_bytes().splitlines()
    msgs = [orjson.loads(ln) for ln in base]
    per = sum(1 for m in msgs if m["kind"] == "race")
    copies = max(1, -(-races // per))
    t0 = min(m["t_us"] for m in msgs)
    t1 = max(m["t_us"] for m in msgs)
    span = t1 - t0 + DAY_US
    made = 0
    for k in range(copies):
        shift = k * span
        keep_races: set = set()
        for m in msgs:
            kind = m["kind"]
            if k and kind in ("venue", "record_ref"):
                continue
            m = dict(m)
            m["t_us"] += shift
            if "finish_us" in m:
                m["finish_us"] += shift
            if kind == "race":
                if made >= races:
                    continue
                made += 1
                keep_races.add(m["race_id"])
                m["competition"] = f"{m['competition']}-{k}"
                if "group" in m:
                    m["group"] = f"{m['group']}-{k}"
            if "race_id" in m:
                if m["race_id"] not in keep_races:
                    continue
                m["race_id"] = f"{m['race_id']}-{k}"
            yield orjson.dumps(m)


if __name__ == "__main__":
    import sys

    n, path = int(sys.argv[1]), sys.argv[2]
    with open(path, "wb") as f:
        for line in iter_tiled_feed(n):
            f.write(line)
            f.write(b"\n")
