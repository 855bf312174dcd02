"""Provisional splits: the split (and a team's split) each open crossing
gives now, its rank and gap among the splits at its distance, published as
the next revision of its natural key, withdrawn when no crossing supports it
(see ``provisional``, which places the open crossings and calls these).

Pure and deterministic.
"""
from __future__ import annotations

from bisect import bisect_left
from operator import itemgetter

from .config import TEAM_SIZE
from .events import lap_ms, split_event, withdrawn
from .model import CompRun, Pub, Race, SkaterRun
from .timefmt import split_id

_NO_KEYS: frozenset = frozenset()


def _level(race: Race, key: tuple) -> str:
    return "skater" if race.d.format == "team_pursuit" and key[1] is not None else "comp"


# natural key -> (t_us, competitor, skater run or None for a team, distance, loop, level)
Want = dict[tuple, tuple[int, CompRun, "SkaterRun | None", int, str, str]]


def team_splits(race: Race, cids, want: Want) -> list[tuple]:
    """A team's split is its third skater's: from closed crossings and open ones.
    Adds the teams' keys to ``want``; returns them."""
    keys = []
    for cid in cids:
        comp = race.by_comp[cid]
        at: dict[int, list] = {}   # distance -> [loop of the first open crossing, its times...]
        for k, w in want.items():
            if k[0] == cid and k[1] is not None:
                lst = at.get(w[3])
                if lst is None:
                    at[w[3]] = [w[4], w[0]]
                else:
                    lst.append(w[0])
        skaters = comp.skaters
        for d, lst in at.items():
            times = lst[1:]
            closed = 0
            for s in skaters:
                st = s.split_t.get(d)
                if st is not None:
                    times.append(st)
                    closed += 1
            if closed >= TEAM_SIZE or len(times) < TEAM_SIZE:
                continue
            times.sort()   # the third skater's time is the team's
            key = (cid, None, d)
            want[key] = (times[TEAM_SIZE - 1], comp, None, d, lst[0], "comp")
            keys.append(key)
    return keys


_EMPTY: list[int] = []


_first3 = itemgetter(0, 1, 2)   # (a C call: no Python frame per item sorted)


def publish_splits(race: Race, want: Want, changed: list[tuple], gone: list[tuple],
                    out: list[dict]) -> None:
    """(Re)compute the open splits that ``changed`` and ``gone`` can affect: the
    changed ones, and the others at the same distance whose rank or behind may
    move (a changed split ahead of them, or one gone)."""
    gun = race.gun
    lap = race.venue.lap_m
    full = {(_level(race, k), k[2]) for k in gone} if gone else _NO_KEYS
    first: dict[tuple[str, int], int] = {}   # per group: the earliest changed time
    if gone or len(changed) > 1:
        for k in changed:
            w = want[k]
            g = (w[5], w[3])
            f = first.get(g)
            if f is None or w[0] < f:
                first[g] = w[0]
    ms_at: dict[tuple[str, int], list[int]] = {}
    todo = []
    if not gone and len(changed) == 1:   # the common case: one split (re)opened
        k0 = changed[0]
        t0, _c, _r, d0, _l, lv0 = want[k0]
        at_d0 = ms_at[(lv0, d0)] = []
        for key, w in want.items():
            if w[3] != d0 or w[5] != lv0:
                continue
            at_d0.append((w[0] - gun) // 1000)   # elapsed_ms, inlined
            # an unchanged split earlier than the change at its distance keeps its values
            if w[0] > t0 or key == k0:
                todo.append((w[0], w[1].order, key[1] or "", key, w))
    else:
        ch = set(changed)
        for key, w in want.items():
            g = (w[5], w[3])
            f = first.get(g)
            if f is None and g not in full:
                continue
            ms = (w[0] - gun) // 1000   # elapsed_ms, inlined
            lst = ms_at.get(g)
            if lst is None:
                ms_at[g] = [ms]
            else:
                lst.append(ms)
            # an unchanged split earlier than every change at its distance keeps its values
            if f is None or w[0] > f or key in ch or g in full:
                todo.append((w[0], w[1].order, key[1] or "", key, w))
    if len(todo) > 1:
        todo.sort(key=_first3)
    pubs = race.pub
    opened = race.open
    split_idx = race.split_idx
    for _t, _o, _s, key, w in todo:
        t, comp, run, d, loop, level = w
        pub = pubs.get(key)
        if pub is not None and pub.final and pub.val is not None:
            continue   # decided: only the final step revises it
        ms = (t - gun) // 1000
        idx = split_idx.get((level, d), _EMPTY)
        rank = bisect_left(idx, ms) + 1
        best = ms
        for x in ms_at[(level, d)]:
            if x < ms:
                rank += 1
                if x < best:
                    best = x
        if idx and idx[0] < best:
            best = idx[0]
        if run is not None:
            sid = run.id
            prev = run.split_t.get(d - lap)
        else:
            sid = None
            prev = comp.team_split.get(d - lap)
        if prev is None:
            w_prev = want.get((comp.id, sid, d - lap))
            prev = w_prev[0] if w_prev is not None else None
        lap_time = lap_ms(ms, prev, gun)
        val = (ms, lap_time, rank, ms - best)   # what a subscriber sees (t_us aside)
        opened[key] = w
        if pub is not None and pub.val == val:
            continue
        rev = 0 if pub is None else pub.rev + 1
        ev = split_event(race, comp.id, sid, d, t, ms, lap_time, rank, ms - best, loop, rev, False)
        if pub is None:
            pubs[key] = Pub(rev, val, False, ev)
        else:
            pub.rev, pub.val, pub.final, pub.ev = rev, val, False, ev
        out.append(ev)


def withdrawn_split(race: Race, key: tuple, last: dict, rev: int, final: bool) -> dict:
    cid, sid, d = key
    return withdrawn(last, split_id(race.split_h, cid, sid, d, rev), rev, final)


def _has_open(race: Race, cid: str, sid: str | None) -> bool:
    for p in race.venue.pending.values():
        run = p.run
        if run.race is race and run.comp.id == cid and (sid is None or run.id == sid):
            return True
    return False


def withdraw_splits(race: Race, keys: list[tuple], live: bool, out: list[dict]) -> None:
    """Open keys no crossing supports any more: withdrawn, finally once no
    crossing of that skater (team) is open."""
    for key in keys:
        pub = race.pub[key]
        if pub.final:
            race.open.pop(key, None)
            continue
        still = live and _has_open(race, key[0], key[1])
        if pub.val is None and still:
            continue
        rev = pub.rev + 1
        ev = withdrawn_split(race, key, pub.ev, rev, not still)
        pub.rev, pub.val, pub.final, pub.ev = rev, None, not still, ev
        if still:
            race.open[key] = None
        else:
            race.open.pop(key, None)
        out.append(ev)
