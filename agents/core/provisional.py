"""Provisional events: a crossing published at its first read.

The reordering window keeps a crossing open for ``reorder_us`` after its
first read, in case an earlier read of it is still on its way (the backup
decoder, the other ankle). The final facts are decided when it closes
(``Engine._timeline``). Meanwhile this module publishes what the open
crossings say *now*: each one's split (and team split), a finish, the rank
it gives, a record it would set, and the race's ``live`` result, all with
``"final": false``. Each later change (an earlier read, a crossing closing
before it, a crossing placed elsewhere) is published as the next revision of
the same natural key; the final version, ``"final": true``, follows when the
window closes (``Engine._split`` / ``_settle_finish`` / ``_judge`` continue
the same revision counters). A provisional value that no longer holds is
withdrawn (``"withdrawn": true``).

Pure and deterministic: the output depends only on the engine's state, so
offline, replayed and live runs publish the same provisional events.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING

from . import falls, live_finish, tracking
from .config import TEAM_SIZE
from .events import split_event, withdrawn
from .model import CompRun, Pub, Race, SkaterRun
from .timefmt import elapsed_ms, split_id

if TYPE_CHECKING:   # pragma: no cover
    from .engine import Engine

# one open crossing placed on the race distance: (t_us, run, distance, loop)
Placed = tuple[int, "SkaterRun", int, str]


_ENDED = ("official", "void")   # Race.ended, inlined (a property call costs)
_NO_KEYS: frozenset = frozenset()


def refresh(eng: Engine, race: Race, touched: set[SkaterRun] | None, out: list[dict]) -> None:
    """Publish what changed in the race's provisional events since last time.

    ``touched``: the skaters whose open crossings changed (None: all of them)."""
    d_race = race.d
    live = race.status not in _ENDED and eng.races.get(d_race.id) is race
    if touched is None or not live:
        touched = set(race.by_skater.values())
    # the common case: one skater's crossing opened (or read earlier)
    one = None
    if len(touched) == 1:
        (one,) = touched
    team = d_race.format == "team_pursuit"
    opened = race.open
    want: Want = {}
    old = []   # what the touched skaters (teams) published and still hold open
    if opened:
        if one is not None:
            sid = one.id
            cid = one.comp.id
            for k, w in opened.items():
                ks = k[1]
                if ks == sid or (ks is None and k[0] == cid):
                    old.append(k)
                elif w is not None:
                    want[k] = w
        else:
            sids = {run.id for run in touched}
            cids = {run.comp.id for run in touched}
            for k, w in opened.items():
                if k[1] in sids or (k[1] is None and k[0] in cids):
                    old.append(k)
                elif w is not None:
                    want[k] = w
    sus: dict[SkaterRun, tuple[int, int] | None] = {}
    new: list[tuple] = []   # keys the touched skaters (teams) support now
    if live:
        level = "skater" if team else "comp"
        provisional_suspicion = falls.provisional_suspicion
        pace = tracking.pace
        for t, run, d, loop in _place_open(eng, race, touched, one):
            comp = run.comp
            key = (comp.id, run.id, d)
            want[key] = (t, comp, run, d, loop, level)
            new.append(key)
            if run not in sus:   # its first open crossing: does it reveal a fall?
                sus[run] = provisional_suspicion(run, d, t, pace(eng, run))
        if team:
            new.extend(_team_splits(race, (one.comp.id,) if one is not None else {run.comp.id for run in touched},
                                    want))
    if sus or one is None or one.prov_sus is not None:
        for run in touched:
            if run.prov_sus is not None or sus.get(run) is not None:
                falls.publish_provisional(race, run, sus.get(run), out)
    # the other open keys come from ``opened`` as they were: only the new can have changed
    changed = []
    distance = d_race.distance
    at_finish = race.prov_result is not None
    for k in new:
        if opened.get(k) != want[k]:
            changed.append(k)
            if k[2] == distance:
                at_finish = True
    gone = []
    for k in old:
        if k not in want:
            gone.append(k)
            if k[2] == distance:
                at_finish = True
    if changed or gone:
        _publish_splits(race, want, changed, gone, out)
        if gone:
            _withdraw_splits(race, gone, live, out)
    if not at_finish:
        for c in race.comps:
            if c.prov_finish is not None:
                at_finish = True
                break
    if at_finish:
        still = {p.run.comp.id for p in race.venue.pending.values() if p.run.race is race} if live else set()
        live_finish.refresh(eng, race, want, still, out)


def _level(race: Race, key: tuple) -> str:
    return "skater" if race.d.format == "team_pursuit" and key[1] is not None else "comp"


def withdraw_attempt(race: Race, out: list[dict]) -> None:
    """A restart discarded this attempt: every split it published is withdrawn."""
    for key, pub in race.pub.items():
        if pub.val is None and pub.final:
            continue
        rev = pub.rev + 1
        ev = _withdrawn_split(race, key, pub.ev, rev, True)
        pub.rev, pub.val, pub.final, pub.ev = rev, None, True, ev
        out.append(ev)
    race.open.clear()
    live_finish.withdraw_attempt(race, out)


# -- placing the open crossings -----------------------------------------------


def _place_open(eng: Engine, race: Race, touched: set[SkaterRun], one: SkaterRun | None = None) -> list[Placed]:
    """The race distance of every open crossing of the touched skaters, in time
    order (a skater with two open crossings: the second placed after the first).
    ``one``: the only skater touched, if so."""
    if one is not None:
        pend = []
        for p in race.venue.pending.values():
            if p.run is one:
                pend.append(p)
    else:
        pend = [p for p in race.venue.pending.values() if p.run in touched]
    if not pend:
        return []
    distance = race.d.distance
    if len(pend) == 1:   # the common case: no chain of open crossings to follow
        p = pend[0]
        run = p.run
        if run.finished or run.lost or run.comp.irm is not None:
            return []
        sig = (p.t, run.last_t)
        if p.sig == sig:
            d = p.d
        else:
            d = tracking.place(eng, run, p.at_m, p.t, run.last_d, run.last_t, bool(run.hist), tracking.pace(eng, run))
            p.sig = sig
            p.d = d
        if d is None or d > distance:
            return []
        return [(p.t, run, d, p.loop)]
    pend.sort(key=lambda p: (p.t, p.run.comp.order, p.run.id))
    chain: dict[int, tuple[int, int, bool, float]] = {}
    placed: list[Placed] = []
    for p in pend:
        run = p.run
        if run.finished or run.lost or run.comp.irm is not None:
            continue
        st = chain.get(id(run))
        if st is None:
            sig = (p.t, run.last_t)
            if p.sig == sig:
                d = p.d
            else:
                d = tracking.place(eng, run, p.at_m, p.t, run.last_d, run.last_t, bool(run.hist), tracking.pace(eng, run))
                p.sig = sig
                p.d = d
            st = (run.last_d, run.last_t, bool(run.hist), tracking.pace(eng, run))
        elif st[0] >= distance:
            continue   # provisionally finished already
        else:
            d = tracking.place(eng, run, p.at_m, p.t, st[0], st[1], st[2], st[3])
        if d is None or d > distance:
            continue   # no split: a misread, or the final step will call it an anomaly
        pace = st[3] if st[2] else d / max(1, p.t - race.gun)
        chain[id(run)] = (d, p.t, True, pace)
        placed.append((p.t, run, d, p.loop))
    return placed


# -- splits ---------------------------------------------------------------------

# natural key -> (t_us, competitor, skater run or None for a team, distance, loop, level)
Want = dict[tuple, tuple[int, CompRun, "SkaterRun | None", int, str, str]]


def _team_splits(race: Race, cids, want: Want) -> list[tuple]:
    """A team's split is its third skater's: from closed crossings and open ones.
    Adds the teams' keys to ``want``; returns them."""
    keys = []
    for cid in cids:
        comp = race.by_comp[cid]
        at: dict[int, list[tuple[int, str]]] = {}
        for k, w in want.items():
            if k[0] == cid and k[1] is not None:
                lst = at.get(w[3])
                if lst is None:
                    at[w[3]] = [(w[0], w[4])]
                else:
                    lst.append((w[0], w[4]))
        for d, lst in at.items():
            times = [x[0] for x in lst]
            closed = 0
            for s in comp.skaters:
                st = s.split_t.get(d)
                if st is not None:
                    times.append(st)
                    closed += 1
            if closed >= TEAM_SIZE or len(times) < TEAM_SIZE:
                continue
            times.sort()   # the third skater's time is the team's
            key = (cid, None, d)
            want[key] = (times[TEAM_SIZE - 1], comp, None, d, lst[0][1], "comp")
            keys.append(key)
    return keys


_EMPTY: list[int] = []


def _first3(x: tuple) -> tuple:
    return x[:3]


def _publish_splits(race: Race, want: Want, changed: list[tuple], gone: list[tuple],
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
        lap_ms = ms - (prev - gun) // 1000 if prev is not None else None
        val = (ms, lap_ms, rank, ms - best)   # what a subscriber sees (t_us aside)
        opened[key] = w
        if pub is not None and pub.val == val:
            continue
        rev = 0 if pub is None else pub.rev + 1
        ev = split_event(race, comp.id, sid, d, t, ms, lap_ms, rank, ms - best, loop, rev, False)
        if pub is None:
            pubs[key] = Pub(rev, val, False, ev)
        else:
            pub.rev, pub.val, pub.final, pub.ev = rev, val, False, ev
        out.append(ev)


def _withdrawn_split(race: Race, key: tuple, last: dict, rev: int, final: bool) -> dict:
    cid, sid, d = key
    return withdrawn(last, split_id(race.split_h, cid, sid, d, rev), rev, final)


def _has_open(race: Race, cid: str, sid: str | None) -> bool:
    for p in race.venue.pending.values():
        run = p.run
        if run.race is race and run.comp.id == cid and (sid is None or run.id == sid):
            return True
    return False


def _withdraw_splits(race: Race, keys: list[tuple], live: bool, out: list[dict]) -> None:
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
        ev = _withdrawn_split(race, key, pub.ev, rev, not still)
        pub.rev, pub.val, pub.final, pub.ev = rev, None, not still, ev
        if still:
            race.open[key] = None
        else:
            race.open.pop(key, None)
        out.append(ev)
