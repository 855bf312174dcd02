"""Where the shared contract material is: beside the checkout (``../shared``),
as it is for developers and CI, or where ``LAPSTREAM_SHARED`` says."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    env = os.environ.get("LAPSTREAM_SHARED")
    candidates = [Path(env)] if env else []
    candidates += [p / "shared" for p in REPO.parents]
    for c in candidates:
        if (c / "spec" / "feed-v1.md").exists():
            return c
    raise FileNotFoundError("the shared contract folder (shared/spec/feed-v1.md) is not beside the checkout; "
                            "set LAPSTREAM_SHARED")


def example_feed() -> Path:
    return shared_dir() / "spec" / "examples" / "m500-pair.jsonl"
