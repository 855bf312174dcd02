"""bench/soak.py's ``restart`` variant, small: the durable broker (noida on
a data directory) is really stopped (SIGTERM) mid-replay and a new broker
process started on the same directory and port; the worker recovers by
itself (no restart), says it was not ready while the broker was gone, and
the derived topics equal ``lapstream process``.

noida sometimes loses records it had acknowledged just before it stops
(measured: a few heartbeats); such a run is not the worker's to judge
(``input_lost``), so the variant is run up to three times until one keeps
its whole input, and every run must show the worker's recovery."""
from __future__ import annotations

import argparse
import importlib.util
import random
from pathlib import Path

import pytest

from streams import beijing

pytestmark = [pytest.mark.live, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[1]


def soak_module():
    spec = importlib.util.spec_from_file_location("lapstream_soak", REPO / "bench" / "soak.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_worker_recovers_from_a_real_broker_outage(monkeypatch):
    monkeypatch.setenv("LAPSTREAM_BROKER_DOWN_S", "3")     # the worker's /readyz fails after 3 s unreachable
    soak = soak_module()
    lines = (beijing.FEEDS_DIR / beijing.FINAL_A_FILE).read_bytes().splitlines()
    want = [e for e in soak.process_lines(lines) if e["kind"] != "deadletter"]
    args = argparse.Namespace(speed=20.0, idle=30.0, kills=0, broker_stop=0, broker_down=8.0,
                              broker_signal="term", replay_s=soak.paced_seconds(lines, 20.0))
    runs = []
    for seed in (7, 8, 9):
        res = soak.run_variant("restart", lines, want, args, random.Random(seed))
        runs.append(res)
        # every run: the same worker came back by itself and said it was not ready meanwhile
        assert res["workers_started"] == 1 and res["workers_alive"] == 1, res
        assert "503" in res["readyz_while_down"].split("/"), res
        assert res["send_failed"] == 0, res
        if res["input_lost"] == 0:
            assert (res["missing"], res["extra"], res["changed"]) == (0, 0, 0), res
            return
    pytest.fail(f"the broker lost acknowledged input in each of {len(runs)} runs: {runs}")
