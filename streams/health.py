"""Health that tells the truth: broker reachability and rate-limited logs.

``BrokerWatch`` records the outcome of the worker's broker probe (a metadata
request every few seconds, ``streams.app``): ``/readyz`` fails once the
broker has been unreachable for longer than ``limit_s``, and the gauge
``lapstream_broker_unreachable_seconds`` says for how long.

``RateLimit`` is a logging filter: during a broker outage aiokafka and Faust
log the same few lines about a hundred times a second; each message template
(per logger) passes ``burst`` times per ``period_s``, the rest are counted
and the next line that passes says how many were suppressed.
"""
from __future__ import annotations

import logging
import time
from typing import Callable


class BrokerWatch:
    def __init__(self, limit_s: float = 15.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit_s = limit_s
        self.clock = clock
        self.failing_since: float | None = None
        self.last_error = ""

    def ok(self) -> None:
        self.failing_since = None
        self.last_error = ""

    def failed(self, error: BaseException | str) -> None:
        if self.failing_since is None:
            self.failing_since = self.clock()
        self.last_error = str(error)[:200]

    def unreachable_s(self) -> float:
        return 0.0 if self.failing_since is None else self.clock() - self.failing_since

    def reachable(self) -> bool:
        return self.unreachable_s() <= self.limit_s


class RateLimit(logging.Filter):
    MAX_KEYS = 2000

    def __init__(self, period_s: float = 10.0, burst: int = 5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.period_s = period_s
        self.burst = burst
        self.clock = clock
        self.state: dict[tuple, list] = {}     # key -> [window start, passed, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
        key = (record.name, record.levelno, msg[:200])
        now = self.clock()
        st = self.state.get(key)
        if st is None or now - st[0] >= self.period_s:
            suppressed = st[2] if st is not None else 0
            if st is None and len(self.state) >= self.MAX_KEYS:
                self.state.clear()
            self.state[key] = [now, 1, 0]
            if suppressed:
                record.msg = f"{msg} [{suppressed} more like this suppressed in {self.period_s:.0f} s]" \
                    if isinstance(record.msg, str) else record.msg
            return True
        if st[1] < self.burst:
            st[1] += 1
            return True
        st[2] += 1
        return False


def install_rate_limit(logger: logging.Logger | None = None, **kw) -> RateLimit:
    """Put one ``RateLimit`` on every handler of ``logger`` (the root logger)."""
    logger = logger or logging.getLogger()
    flt = RateLimit(**kw)
    for h in logger.handlers:
        if not any(isinstance(f, RateLimit) for f in h.filters):
            h.addFilter(flt)
    return flt
