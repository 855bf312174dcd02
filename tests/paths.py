"""Test data shipped with the repository (nothing outside the clone is needed)."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"


def example_feed() -> Path:
    """The v1 contract's worked example (men's 500 m, one pair); see tests/data/m500-pair.md."""
    return DATA / "m500-pair.jsonl"
