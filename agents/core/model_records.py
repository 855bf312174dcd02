"""Record judgements of the core's state (``records``, ``live_finish``): a
record reference, and how a finish stands against it."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class RecordStatus(Enum):
    """A finish judged for one record identity."""

    BROKEN = "broken"
    EQUALLED = "equalled"
    NONE = "none"          # no record (or no longer: withdrawn)


@dataclass(slots=True, eq=False)
class RecordState:
    """A finish judged for one record identity: against ``prev`` (its time in
    hundredths ``prev_h``), the finish's hundredths ``th``, the event revision;
    a withdrawal keeps the claim's ``prev`` and ``th`` and its status in ``taken``."""

    prev: Ref | None
    prev_h: int | None
    status: RecordStatus
    th: int
    rev: int
    taken: RecordStatus | None = None   # a withdrawal (NONE): the status of the claim it takes back

    @property
    def holds(self) -> bool:
        return self.status is not RecordStatus.NONE

    def taken_back(self, rev: int) -> RecordState:
        """The withdrawal of this claim, as revision ``rev``: it repeats what the
        claim said (its time, the reference it beat or equalled), so that a
        subscriber sees which record is taken back (a withdrawal's withdrawal,
        e.g. the final version of a provisional one, repeats the same claim)."""
        return RecordState(self.prev, self.prev_h, RecordStatus.NONE, self.th, rev,
                           self.status if self.holds else self.taken)


@dataclass(slots=True, eq=False)
class Ref:
    """A record reference: from a record_ref message, or a record set in a race."""

    time_h: int
    time: str
    holder: str
    set_on: str | None
    venue: str | None
    race_id: str | None
    t_us: int                    # event time: of the reference message, or of the finish that set it
