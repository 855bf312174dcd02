"""An estimate of the timing core's state size, in bytes, from counts.

For the ops gauge ``lapstream_state_size_bytes``. It used to be the length
of the pickled engine, computed on the event loop every 5 s: 9 / 61 / 270 ms
of blocked loop at 60 / 240 / 960 races. This walks the engine's containers
(venues, races, competitors, skaters: O(races x competitors), no copying)
and weighs what it counts with per-item costs fitted to the pickled size of
engines built from the Beijing feeds tiled up to 240 races (within about
10 % of it there). Pure; reads only; attributes it does not find count 0,
so an engine that releases finished races shows it.
"""
from __future__ import annotations

# bytes per item, fitted against len(pickle.dumps(engine)) (bench/bench_memory.py)
BASE = 2_000
PER_VENUE = 1_000
PER_SEQ = 14            # a remembered (source, seq) of a passing
PER_TRANSPONDER = 28
PER_RACE_DEF = 900
PER_COMPETITOR = 700  # in a race definition and its current attempt
PER_CROSSING = 31       # a closed crossing in a skater's history
PER_FINISH = 40
PER_PUB = 225           # the last version of a split published (Race.pub), kept for revisions
PER_RELEASED = 150      # a released race's summary (agents/core/retention.py)
PER_STANDING = 200      # an entry of a group's standings state (model_kept.GroupState)


def _len(obj, name: str) -> int:
    try:
        return len(getattr(obj, name))
    except Exception:
        return 0


def approx_state_bytes(engine) -> int:
    n = BASE
    for v in getattr(engine, "venues", {}).values():
        n += PER_VENUE + PER_TRANSPONDER * _len(v, "transponders")
        for seqs in getattr(v, "seqs", {}).values():
            n += PER_SEQ * len(seqs)
    for d in getattr(engine, "race_defs", {}).values():
        n += PER_RACE_DEF + PER_COMPETITOR * _len(d, "competitors")
    for race in getattr(engine, "races", {}).values():
        n += PER_PUB * _len(race, "pub")
        for c in getattr(race, "comps", ()):
            n += PER_COMPETITOR
            for s in getattr(c, "skaters", ()):
                n += PER_CROSSING * _len(s, "hist")
    n += PER_FINISH * _len(engine, "finish_log")
    kept = getattr(engine, "kept", None)
    n += PER_RELEASED * _len(kept, "released")
    for gs in getattr(kept, "gstate", {}).values():
        n += PER_STANDING * (_len(gs, "rows") + sum(len(x) for x in getattr(gs, "irms", {}).values()))
    return n
