"""Long feeds for the memory figures and the soak: the Beijing women's team
pursuit tournament (10 races over three days) tiled ``copies`` times, each
copy shifted in time (a day after the previous one ends) and renamed (race
ids, groups and competition get a ``-k`` suffix), at one venue. Deterministic."""
from __future__ import annotations

import orjson

from streams import beijing

DAY_US = 86_400_000_000


def tiled_feed(races: int) -> list[bytes]:
    base = (beijing.FEEDS_DIR / beijing.WOMEN_FILE).read_bytes().splitlines()
    msgs = [orjson.loads(ln) for ln in base]
    per = sum(1 for m in msgs if m["kind"] == "race")
    copies = max(1, -(-races // per))
    t0 = min(m["t_us"] for m in msgs)
    t1 = max(m["t_us"] for m in msgs)
    span = t1 - t0 + DAY_US
    out: list[bytes] = []
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
            out.append(orjson.dumps(m))
    return out


if __name__ == "__main__":
    import sys

    n, path = int(sys.argv[1]), sys.argv[2]
    with open(path, "wb") as f:
        for line in tiled_feed(n):
            f.write(line)
            f.write(b"\n")
