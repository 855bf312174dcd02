"""Time arithmetic of the contract: truncation, display, ids. Pure."""
from __future__ import annotations

import hashlib

_blake2b = hashlib.blake2b


def elapsed_ms(crossing_us: int, gun_us: int) -> int:
    """Crossing minus gun, truncated (not rounded) to thousandths."""
    return (crossing_us - gun_us) // 1000


def fmt_time(time_ms: int) -> str:
    """34321 -> '34.32'; 173614 -> '2:53.61'; truncated to hundredths."""
    hund = time_ms // 10
    secs, hh = divmod(hund, 100)
    mins, secs = divmod(secs, 60)
    if mins:
        return f"{mins}:{secs:02d}.{hh:02d}"
    return f"{secs}.{hh:02d}"


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
