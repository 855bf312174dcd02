"""Time arithmetic of the contract: truncation, display, ids. Pure."""
from __future__ import annotations

import hashlib

_blake2b = hashlib.blake2b


def elapsed_ms(crossing_us: int, gun_us: int) -> int:
    """Crossing minus gun, truncated (not rounded) to thousandths."""
    return (crossing_us - gun_us) // 1000


_TWO = tuple(f"{i:02d}" for i in range(100))   # 0..99 as two digits (a format spec costs more)


def fmt_time(time_ms: int, _two: tuple[str, ...] = _TWO) -> str:
    """34321 -> '34.32'; 173614 -> '2:53.61'; truncated to hundredths."""
    hund = time_ms // 10
    secs = hund // 100
    if 0 <= secs < 60:
        return f"{secs}.{_two[hund % 100]}"
    return f"{secs // 60}:{_two[secs % 60]}.{_two[hund % 100]}"


def fmt_hundredths(hund: int) -> str:
    return fmt_time(hund * 10)


def utc_date(t_us: int) -> str:
    """Calendar date (UTC) of an event time, without reading any clock."""
    days = t_us // 86_400_000_000
    # civil-from-days (Howard Hinnant's algorithm), proleptic Gregorian
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    if m <= 2:
        y += 1
    return f"{y:04d}-{m:02d}-{d:02d}"


def event_id(*parts: object) -> str:
    """Deterministic id from the identity of a derived fact."""
    text = "\x1f".join([p if p.__class__ is str else "" if p is None else str(p) for p in parts])
    return _blake2b(text.encode(), digest_size=12).hexdigest()


class IdPrefix:
    """A hash already fed with the leading parts of ids (and the separator
    after them); pickles as its text (a hash object does not pickle, and the
    engine's state is pickled to measure it)."""

    __slots__ = ("text", "h")

    def __init__(self, text: str) -> None:
        self.text = text
        self.h = _blake2b(text.encode(), digest_size=12)

    def __reduce__(self):
        return (IdPrefix, (self.text,))


def id_prefix(*parts: object) -> IdPrefix:
    """``event_id(*parts, *rest)`` is ``split_id(id_prefix(*parts), ...)`` for a
    split's rest, without hashing the common part again (a race's split ids
    share theirs)."""
    text = "\x1f".join([p if p.__class__ is str else "" if p is None else str(p) for p in parts])
    return IdPrefix(text + "\x1f")


def split_id(prefix: IdPrefix, cid: str, sid: str | None, d: int, rev: int) -> str:
    """``event_id("split", race_id, attempt, cid, sid, d, rev)`` from the race's
    ``id_prefix("split", race_id, attempt)``."""
    h = prefix.h.copy()
    h.update(f"{cid}\x1f{sid or ''}\x1f{d}\x1f{rev}".encode())
    return h.hexdigest()
