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
    hundredths ``prev_h``), the finish's hundredths ``th``, the event revision."""

    prev: Ref | None
    prev_h: int | None
    status: RecordStatus
    th: int
    rev: int

    @property
    def holds(self) -> bool:
        return self.status is not RecordStatus.NONE


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
