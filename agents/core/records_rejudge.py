"""Records judged again when the reference chain changes.

A finish is judged against the reference in force at its finish
(``records.reference``): the federation's word, the records set before it
here, those published from other venues. When one of these changes (a
record set here is set, taken back or given another time: a photo either
way, a DQ or other IRM, a VOID, a restart; a ``record_ref`` arrives, or the
claim of another venue changes or is withdrawn), every final finish after
it of that record identity is judged again, in the event-time order of the
finishes, against the chain as it now stands: each one judged again is the
reference (or no longer) for those after it. The records, the result's
record codes and ``timing.records.ref`` then end as an in-order feed with
the final facts gives them, whenever the correction came. Each change is the
next revision of the record's key (``records.judge``); the results follow.

A reference message changes no event by itself (the live adapter publishes
nothing of what a reference yields: it reaches every worker, outside the raw
log): the identities it touches are due (``Engine.rejudge_due``) and judged
again at the next raw message the engine applies (``Engine.apply``), or at
the end of a feed, as a rebuild would judge them.

Released races are out of the judging order (``retention``): their records
stand as published, a reference for the finishes after them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import records, results

if TYPE_CHECKING:   # pragma: no cover
    from .engine import Engine
    from .model import Race


def rejudge(eng: Engine, since: dict[tuple, int | None], caller: Race | None, t: int, out: list) -> None:
    """Judge again, for each record identity of ``since``, the final finishes
    after its time (None: all of them), in finishing order; the results of the
    races whose record codes changed follow (``caller``'s is the caller's to publish)."""
    after: int | None = None
    for frm in since.values():
        if frm is None:
            after = None
            break
        after = frm if after is None else min(after, frm)
    later = [e for e in eng.finish_log if after is None or e[0] > after]
    if not later:
        return
    later.sort(key=_at)   # (stable: finishes at the same time in the order judged)
    affected = []
    races = eng.races
    for ft, race, comp in later:
        if race.status == "void" or comp.irm is not None or races.get(race.d.id) is not race:
            continue
        judged = False
        for key in records.book_keys(race, comp):
            if key in since:
                frm = since[key]
                if (frm is None or ft > frm) and records.judge(eng, race, comp, key, t, out):
                    judged = True
        if judged:
            codes = records.record_codes(comp)
            if codes != comp.records:
                comp.records = codes
                if race is not caller and race not in affected:
                    affected.append(race)
    for race in affected:
        results.after_change(eng, race, t, out)


def _at(e: tuple) -> int:
    return e[0]


def due(eng: Engine, key: tuple, after: int | None) -> None:
    """A reference of ``key`` changed at ``after`` (None: any time): judge the
    finishes after it again at the next raw message."""
    pending = eng.rejudge_due
    if key in pending:
        cur = pending[key]
        after = None if cur is None or after is None else min(cur, after)
    pending[key] = after


# a mark in ``Engine.rejudge_due`` (no record identity): events are carried
CARRIED: tuple = ("carried",)


def run_due(eng: Engine, t: int, out: list) -> None:
    """Judge again what the references changed since the last raw message
    (``due``), after the events carried from a refused message (``carry``)."""
    since = eng.rejudge_due
    eng.rejudge_due = {}
    if CARRIED in since:
        del since[CARRIED]
        out.extend(eng.rejudge_carried)
        eng.rejudge_carried = []
    if since:
        rejudge(eng, since, None, t, out)


def carry(eng: Engine, out: list) -> None:
    """The raw message after which ``run_due`` published ``out`` was refused
    (its events are dropped): they go out with the next message applied."""
    if out:
        eng.rejudge_carried = out
        eng.rejudge_due[CARRIED] = 0
