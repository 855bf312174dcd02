"""Shared fixtures and the ``live`` marker.

``pytest -m "not live"`` runs the fast suite alone: every test that starts a
broker, a worker or a Prometheus server is marked ``live``, by a module's
``pytestmark``, by ``@pytest.mark.live``, or because it uses one of the
fixtures in ``LIVE_FIXTURES`` (marked here, so a new test using them cannot
forget).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parents[1]

# No test asserts a timing: hypothesis's per-example deadline (200 ms) and its
# "too slow" health check are timings, and CI's 2 shared cores under load
# break them (an example of 405 ms failed a passing test). Every test's own
# @settings inherits this profile for what it does not set.
settings.register_profile("lapstream", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("lapstream")

# fixtures that start a broker or workers: a test using one is live
LIVE_FIXTURES = frozenset({"live_broker", "broker", "stack"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if LIVE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.live)


@pytest.fixture
def free_port() -> int:
    """A loopback port nothing listens on (now): for a server the test starts, or as a
    broker address that refuses connections."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def taken_port():
    """A loopback port some other program listens on, for as long as the test runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
def cli():
    """Run ``lapstream ARGS...`` (this checkout's code) as a user would:
    ``cli("process", path, env={...}, timeout=...)`` -> CompletedProcess (text)."""
    def run(*args: str, env: dict | None = None, timeout: float = 120, **kw):
        full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True,
                              text=True, timeout=timeout, env=full, cwd=kw.pop("cwd", REPO), **kw)
    return run


@pytest.fixture
def live_broker(tmp_path):
    """An embedded broker on loopback with the contract's topics (live)."""
    from tests import livekit as L

    b = L.start_broker(tmp_path)
    try:
        yield b
    finally:
        b.stop()
