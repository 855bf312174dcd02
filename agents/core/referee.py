"""The referee's decisions: an IRM (DQ, DNF, DNS, WDR), a FALL confirmed,
OFFICIAL, VOID; before the gun, an IRM applies from the start.

Part of the timing core (pure): ``Engine`` dispatches ``decision`` messages
here; what a decision changes is published by the rule families it touches
(``falls``, ``records``, ``results``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from schemas.decode import IRM_CODES, Rejected

from . import falls, records, results
from .model import Outcome

if TYPE_CHECKING:   # pragma: no cover
    from .engine import Engine


def decision(eng: Engine, msg: dict, out: list) -> None:
    rid = msg["race_id"]
    race = eng.races.get(rid)
    cid = msg.get("competitor_id")
    code = msg["code"]
    if race is None:
        _before_the_gun(eng, rid, cid, code)
        return
    t = msg["t_us"]
    eng._touch(race)
    comp = None
    if cid is not None:
        comp = race.by_comp.get(cid)
        if comp is None:
            raise Rejected("unknown_reference", f"decision: competitor {cid!r} is not in race {rid}")
    if code in IRM_CODES:
        if comp is None:
            raise Rejected("unknown_reference", f"decision: {code} in race {rid} names no competitor")
        if comp.irm == code:
            eng.outcome = Outcome.DUPLICATE.value
            return
        comp.irm = code
        for s in comp.skaters:
            s.deadline = float("inf")
        records.withdraw_records(eng, race, comp, t, out)
        results.mark_complete(race)   # the last competitor on the track given an IRM
        results.after_change(eng, race, t, out)
    elif code == "FALL":
        ident = (msg.get("skater_id"), cid, t)
        if ident in race.falls_confirmed:
            eng.outcome = Outcome.DUPLICATE.value
            return
        race.falls_confirmed.add(ident)
        falls.confirm(race, comp, msg.get("skater_id"), msg, out)
    elif code == "OFFICIAL":
        if race.status in ("official", "void"):
            eng.outcome = Outcome.DUPLICATE.value if race.status == "official" else Outcome.IGNORED_LATE.value
            return
        for c in race.comps:
            if c.finish_ms is None and c.irm is None:
                c.irm = "DNF" if any(s.hist or s.lost for s in c.skaters) else "DNS"
        # the referee has spoken without confirming what is still suspected
        falls.clear_all(race, t, "not confirmed by the referee", out)
        race.status = "official"
        eng._retire(race)
        results.after_change(eng, race, t, out)
    elif code == "VOID":
        if race.status == "void":
            eng.outcome = Outcome.DUPLICATE.value
            return
        race.status = "void"
        eng._retire(race)
        # no referee's word on a fall will follow: what is still suspected is closed
        falls.clear_all(race, t, "race void", out)
        for c in race.comps:
            records.withdraw_records(eng, race, c, t, out)
            for s in c.skaters:
                s.deadline = float("inf")
        results.after_change(eng, race, t, out)

def _before_the_gun(eng: Engine, rid: str, cid: str | None, code: str) -> None:
    d = eng.race_defs.get(rid)
    if d is None:
        raise Rejected("unknown_reference", f"decision: race {rid!r} was never set up")
    if code in IRM_CODES and cid is not None:
        if cid not in {c["competitor_id"] for c in d.competitors}:
            raise Rejected("unknown_reference", f"decision: competitor {cid!r} is not in race {rid}")
        # before the gun (a DNS or WDR): it applies from the start
        eng.pre_irm.setdefault(rid, {})[cid] = code
    else:
        eng.outcome = Outcome.IGNORED_BEFORE_START.value

