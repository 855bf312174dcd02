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

from typing import TYPE_CHECKING

from . import falls, live_finish, tracking
from .model import Pending, Race, SkaterRun
from .provisional_splits import Want, publish_splits, team_splits, withdraw_splits, withdrawn_split

if TYPE_CHECKING:   # pragma: no cover
    from .engine import Engine

# one open crossing placed on the race distance: (t_us, run, distance, loop)
Placed = tuple[int, "SkaterRun", int, str]


_ENDED = ("official", "void")   # Race.ended, inlined (a property call costs)


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
            new.extend(team_splits(race, (one.comp.id,) if one is not None else {run.comp.id for run in touched},
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
        publish_splits(race, want, changed, gone, out)
        if gone:
            withdraw_splits(race, gone, live, out)
    if not at_finish:
        for c in race.comps:
            if c.prov_finish is not None:
                at_finish = True
                break
    if at_finish:
        still = {p.run.comp.id for p in race.venue.pending.values() if p.run.race is race} if live else set()
        live_finish.refresh(eng, race, want, still, out)


def withdraw_attempt(race: Race, out: list[dict]) -> None:
    """A restart discarded this attempt: every split it published is withdrawn."""
    for key, pub in race.pub.items():
        if pub.val is None and pub.final:
            continue
        rev = pub.rev + 1
        ev = withdrawn_split(race, key, pub.ev, rev, True)
        pub.rev, pub.val, pub.final, pub.ev = rev, None, True, ev
        out.append(ev)
    race.open.clear()
    live_finish.withdraw_attempt(race, out)
    for run in race.by_skater.values():   # a provisional suspicion of the recalled attempt
        if run.prov_sus is not None:
            falls.publish_provisional(race, run, None, out)


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
        d = _placed(eng, p, run)
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
            d = _placed(eng, p, run)
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


def _placed(eng: Engine, p: Pending, run: SkaterRun) -> int | None:
    """The race distance of the open crossing ``p`` after the skater's last
    closed one, kept on ``p`` for its (time, the skater's last crossing time)."""
    sig = (p.t, run.last_t)
    if p.sig == sig:
        return p.d
    d = tracking.place(eng, run, p.at_m, p.t, run.last_d, run.last_t, bool(run.hist), tracking.pace(eng, run))
    p.sig = sig
    p.d = d
    return d
