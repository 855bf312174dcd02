"""Records: references, judging a finish, claims, withdrawals.

Records are judged in hundredths against the reference in force at the
finish's event time: the federation's (``record_ref``, kept with its
``t_us``), records set here and still valid, and those lapstream published
from other venues; on a tie the older stands. A broken record is the
reference for every later finish. When the record a finish set changes (set
or taken back by a photo, a DQ or other IRM, a VOID, a restart; another time),
every later finish of that identity is judged again, in event-time order,
against the chain as it now stands (``records_rejudge``): the records end as an
in-order feed with the final facts gives them, whenever a correction came.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from schemas.decode import parse_record_time

from . import records_rejudge
from .model import CompRun, Outcome, Race
from .model_records import RecordState, RecordStatus, Ref
from .timefmt import event_id, fmt_hundredths, utc_date

if TYPE_CHECKING:   # pragma: no cover
    from .engine import Engine


def record_ref(eng: Engine, msg: dict, out: list) -> None:
    key = (msg["record"], msg["format"], msg["gender"], msg["distance_m"], msg["scope"])
    if msg.get("origin") == "lapstream":
        # A record this pipeline set in a race (or withdrew). At the race's own
        # venue the core derives it itself (and again on a rebuild), so it
        # only counts where that venue is not ours.
        ck = (msg.get("race_id"), msg["holder"])
        if msg.get("withdrawn"):
            # taken back: a tombstone under its own key (the adapter turns it
            # into this message, without a time) or, from an older version,
            # a record_ref with "withdrawn": true. Only the claim's identity counts.
            claims = eng.foreign.get(key)
            gone = None if claims is None else claims.pop(ck, None)
            if gone is None:
                eng.outcome = Outcome.DUPLICATE.value
            elif gone.venue not in eng.venues:   # the finishes judged against it here
                records_rejudge.due(eng, key, gone.t_us)
            return
        th = parse_record_time(msg["time"])
        claims = eng.foreign.setdefault(key, {})
        cur = claims.get(ck)
        if cur is not None and cur.time_h == th:
            eng.outcome = Outcome.DUPLICATE.value
            return
        new = claims[ck] = Ref(th, fmt_hundredths(th), msg["holder"], msg.get("set_on"), msg.get("venue"),
                               msg.get("race_id"), msg["t_us"])
        if cur is None:
            if new.venue not in eng.venues:   # a reference here: for the finishes after it
                records_rejudge.due(eng, key, new.t_us)
        elif new.venue not in eng.venues or cur.venue not in eng.venues:   # another time
            records_rejudge.due(eng, key, min(cur.t_us, new.t_us))
        return
    th = parse_record_time(msg["time"])
    # The federation's word, kept with its event time: a finish is judged
    # against what was in force at the finish, whenever a reference arrives
    # (so a rebuild after a crash judges as the original run did).
    hist = eng.book.setdefault(key, [])
    ref = Ref(th, fmt_hundredths(th), msg["holder"], msg.get("set_on"), msg.get("venue"), None, msg["t_us"])
    for r in hist:
        if r.t_us == ref.t_us and r.time_h == th and r.holder == ref.holder:
            eng.outcome = Outcome.DUPLICATE.value
            return
    hist.append(ref)
    hist.sort(key=_t_us)
    records_rejudge.due(eng, key, None)   # (a finish older than any word is judged against the oldest)


def _t_us(r: Ref) -> int:
    return r.t_us


def reference(eng: Engine, key: tuple, exclude: tuple | None = None, before: int | None = None) -> Ref | None:
    """The reference in force: the fastest of the book, the valid records set
    here (but ``exclude``'s own; only those set before ``before``) and those
    set at other venues; on a tie the older stands."""
    best: Ref | None = None
    hist = eng.book.get(key)
    if hist:
        if before is None:
            best = hist[-1]
        else:
            for r in hist:   # the latest word of the federation before the finish
                if r.t_us < before:
                    best = r
            if best is None:
                best = hist[0]   # none that old (compacted away): the oldest known
    for ck, r in eng.claims.get(key, {}).items():
        if ck != exclude and (before is None or r.t_us < before) and (best is None or r.time_h < best.time_h):
            best = r
    for r in eng.foreign.get(key, {}).values():
        if (r.venue not in eng.venues and (before is None or r.t_us < before)
                and (best is None or r.time_h < best.time_h)):
            best = r
    return best


def book_keys(race: Race, comp: CompRun) -> Iterator[tuple]:
    """The record identities a finish is judged for: (record, format, gender, distance, scope)."""
    d = race.d
    if d.format == "mass_start":
        return
    base = (d.format, d.gender, d.distance)
    yield ("WR",) + base + (None,)
    if d.level == "OWG":
        yield ("OR",) + base + ("OWG",)
    yield ("TR",) + base + (d.venue,)
    yield ("NR",) + base + (comp.nation,)
    if d.format == "individual":
        sid = comp.skaters[0].id
        yield ("PB",) + base + (sid,)
        yield ("SB",) + base + (sid,)


def evaluate_records(eng: Engine, race: Race, comp: CompRun, t: int, out: list) -> None:
    """Judge a final finish (first, or revised by a photo) for each record
    identity; if the record it sets changed (set, taken back, another time),
    the later finishes of that identity are judged again (``records_rejudge``)."""
    me = (race.d.id, comp.id)
    changed = []
    for key in book_keys(race, comp):
        was = _claimed(eng, key, me)
        judge(eng, race, comp, key, t, out)
        if _claimed(eng, key, me) != was:
            changed.append(key)
    comp.records = record_codes(comp)
    if changed:
        assert comp.finish_t_us is not None
        records_rejudge.rejudge(eng, dict.fromkeys(changed, comp.finish_t_us), race, t, out)


def _claimed(eng: Engine, key: tuple, me: tuple) -> int | None:
    """The time (hundredths) of the record ``me`` holds for ``key`` as a reference, if any."""
    r = eng.claims.get(key, {}).get(me)
    return None if r is None else r.time_h


def judge(eng: Engine, race: Race, comp: CompRun, key: tuple, t: int, out: list) -> bool:
    """Judge one finish for one record identity against the reference in force
    at its finish as the chain now stands (a revision, or a record before it
    taken back, is judged again the same way); True if a record event was emitted."""
    assert comp.finish_ms is not None
    th = comp.finish_ms // 10
    me = (race.d.id, comp.id)
    ev_state = comp.record_evals.get(key)
    pr = None
    if ev_state is None:
        pr = comp.prov_rec.pop(key, None)
        if pr is not None:   # the final judgement follows the provisional ones
            comp.rec_base[key] = pr.rev + 1
    prev = reference(eng, key, exclude=me, before=comp.finish_t_us)
    prev_h = prev.time_h if prev is not None else None
    status = status_of(th, prev_h)
    if status is RecordStatus.NONE:
        if ev_state is None:
            return drop_provisional_record(eng, race, comp, key, pr, t, out)
        if not ev_state.holds:
            return False   # no record before, none now: nothing new to say
        new_state = ev_state.taken_back(ev_state.rev + 1)   # the claim taken back
    else:
        if (ev_state is not None and ev_state.status is status and ev_state.th == th
                and _same(ev_state.prev, prev)):
            return False   # the same record against the same reference
        rev = comp.rec_base.get(key, 0) if ev_state is None else ev_state.rev + 1
        new_state = RecordState(prev, prev_h, status, th, rev)
    comp.record_evals[key] = new_state
    claim(eng, key, me, race, comp, th, status, t)
    out.append(record_event(race, comp, key, new_state, t))
    return True


def _same(a: Ref | None, b: Ref | None) -> bool:
    """The same reference as a record event names it (time and holder)."""
    if a is None or b is None:
        return a is b
    return a.time_h == b.time_h and a.holder == b.holder


def status_of(th: int, prev_h: int | None) -> RecordStatus:
    """A time in hundredths against the reference's."""
    if prev_h is None or th > prev_h:
        return RecordStatus.NONE
    return RecordStatus.BROKEN if th < prev_h else RecordStatus.EQUALLED


def drop_provisional_record(eng: Engine, race: Race, comp: CompRun, key: tuple, pr: RecordState | None,
                            t: int, out: list) -> bool:
    """The final judgement found no record where a provisional one was published."""
    if pr is None:
        return False
    st = pr.taken_back(pr.rev + 1)
    comp.rec_base[key] = st.rev + 1
    ev = record_event(race, comp, key, st, t)
    ev["time_ms"] = comp.finish_ms
    out.append(ev)
    return False


def claim(eng: Engine, key: tuple, me: tuple, race: Race, comp: CompRun, th: int,
          status: RecordStatus, t: int) -> None:
    claims = eng.claims.setdefault(key, {})
    if status is RecordStatus.BROKEN:
        assert comp.finish_t_us is not None
        cur = claims.get(me)
        claims[me] = Ref(th, fmt_hundredths(th), comp.id, cur.set_on if cur else utc_date(t),
                         race.d.venue, race.d.id, comp.finish_t_us)
    else:
        claims.pop(me, None)


def record_event(race: Race, comp: CompRun, key: tuple, st: RecordState, t: int,
                 final: bool = True) -> dict:
    rec, fmt, gender, dist, scope = key
    prev = st.prev
    ev = {"kind": "record", "v": 1,
          "event_id": event_id("record", race.d.id, race.attempt, comp.id, rec, st.rev),
          "race_id": race.d.id, "t_us": t, "attempt": race.attempt,
          "competitor_id": comp.id, "record": rec, "equalled": (st.status if st.holds else st.taken) is RecordStatus.EQUALLED,
          "time": fmt_hundredths(st.th), "previous_time": prev.time if prev else None,
          "previous_holder": prev.holder if prev else None,
          "time_ms": comp.finish_ms, "scope": scope, "format": fmt, "gender": gender,
          "distance_m": dist, "holder": comp.id, "set_on": utc_date(t), "venue": race.d.venue,
          "revision": st.rev, "withdrawn": not st.holds, "final": final}
    return ev


def withdraw_records(eng: Engine, race: Race, comp: CompRun, t: int, out: list) -> None:
    me = (race.d.id, comp.id)
    lost = []
    for key, st in list(comp.record_evals.items()):
        if not st.holds:
            continue
        if st.status is RecordStatus.BROKEN:   # a reference for the finishes after it
            lost.append(key)
        st = st.taken_back(st.rev + 1)
        comp.record_evals[key] = st
        claim(eng, key, me, race, comp, st.th, st.status, t)
        out.append(record_event(race, comp, key, st, t))
    comp.records = []
    if lost:
        assert comp.finish_t_us is not None
        records_rejudge.rejudge(eng, dict.fromkeys(lost, comp.finish_t_us), race, t, out)


_RANK = {r: i for i, r in enumerate(("WR", "OR", "TR", "NR", "PB", "SB"))}   # as ``book_keys`` yields them


def record_codes(comp: CompRun) -> list[str]:
    """A finish's record codes, in the order of ``book_keys`` (whenever each was judged)."""
    held = [(_RANK[k[0]], code(k[0], s.status)) for k, s in comp.record_evals.items() if s.holds]
    held.sort()
    return [c for _, c in held]


def code(record: str, status: RecordStatus) -> str:
    """A record in a ranking entry: "OR" broken, "=OR" equalled."""
    return ("=" if status is RecordStatus.EQUALLED else "") + record
