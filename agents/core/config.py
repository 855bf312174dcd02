"""Settings of the timing core and the named constants of its rules."""
from __future__ import annotations

from dataclasses import dataclass

INF = float("inf")

US_PER_S = 1_000_000
TEAM_SIZE = 3                    # a team pursuit is timed on its third skater
LOOPS_AHEAD = 2                  # overdue: not seen at this many next loops (one missed read is normal)
STANDING_START_US = 2_000_000    # time a standing start loses before cruising (placing a first crossing)
RECENT_RACE_US = 1_800_000_000   # a race started in the last half hour may still be running
DEFAULT_SPRINTS = {4: [5, 3, 1], 8: [5, 3, 1], 12: [5, 3, 1]}   # mass start: lap -> points
DEFAULT_FINAL = [60, 40, 20]     # mass start: points of the final sprint


@dataclass(frozen=True, slots=True)
class CoreConfig:
    reorder_us: int = 3_000_000       # reads may arrive this late (contract: a few seconds)
    group_us: int = 2_000_000         # reads of one skater at one loop this close are one crossing
    v_start_mps: float = 10.0         # assumed pace before a skater's first crossing
    v_cruise_mps: float = 12.5        # assumed speed after the start, to place a first crossing
    v_max_mps: float = 22.0           # faster than this between crossings is a misread
    fall_factor: float = 1.15         # overdue: not seen at the next TWO loops within factor x pace
    fall_slack_us: int = 500_000
    clear_ratio: float = 0.75         # turned up at >= this share of its pace: a missed read, cleared
    seq_keep_us: int = 120_000_000    # how long (source, seq) pairs are remembered for resends
    max_jump_us: int = 600_000_000    # a clock leap beyond this during a race is out of contract
    release_us: int = 3_600_000_000   # an official (void) race's state is released this long after (venue time)
    abandon_us: int = 86_400_000_000  # a started race never official nor void is released this long after its gun
