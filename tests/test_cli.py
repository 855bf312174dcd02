"""The console command, as a user runs it."""
from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
from rich.console import Console

from streams import beijing
from streams.board import Board
from streams.process import process_lines
from tests.schemacheck import validate

FINAL_A = beijing.FEEDS_DIR / beijing.FINAL_A_FILE


def lapstream(*args, **kw):
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, **kw)


def test_process_prints_every_derived_event_as_json_lines(tmp_path):
    feed = tmp_path / "feed.jsonl"
    data = FINAL_A.read_bytes().splitlines()
    data.insert(10, b"{broken")
    feed.write_bytes(b"\n".join(data) + b"\n")
    r = lapstream("process", str(feed), "--stats")
    assert r.returncode == 0, r.stderr
    out = [orjson.loads(line) for line in r.stdout.splitlines()]
    for e in out:
        validate(e)
    dl = [e for e in out if e["kind"] == "deadletter"]
    assert len(dl) == 1 and dl[0]["line"] == 11 and dl[0]["raw"] == "{broken"
    assert [e for e in out if e["kind"] != "deadletter"] == list(process_lines(FINAL_A.read_bytes().splitlines()))
    assert b"passing\tapplied" in r.stderr and b"deadlettered" in r.stderr


def test_process_exit_code_when_the_file_cannot_be_read(tmp_path):
    r = lapstream("process", str(tmp_path / "missing.jsonl"))
    assert r.returncode == 2
    assert b"cannot read" in r.stderr


@pytest.mark.parametrize("sub", ["process", "broker", "worker", "replay", "record", "demo"])
def test_every_subcommand_has_help(sub):
    r = lapstream(sub, "--help")
    assert r.returncode == 0 and b"usage: lapstream " + sub.encode() in r.stdout


def test_the_demo_board_shows_the_final_as_a_broadcaster_would():
    board = Board()
    for ev in process_lines(FINAL_A.read_bytes().splitlines()):
        board.apply(ev)
    race = board.current
    assert race.race_id == "OWG2022-TPW-FA" and race.status == "official"
    assert [e["competitor_id"] for e in race.result] == ["CAN", "JPN"]
    assert race.rows["CAN"].finish == "2:53.44" and race.rows["JPN"].finish == "3:04.47"
    assert any("NEW OR 2:53.44 by CAN" in a for a in board.alerts)
    assert any("FALL suspected - JPN-TAKAGI-N" in a for a in board.alerts)
    assert any("FALL confirmed - JPN-TAKAGI-N" in a for a in board.alerts)
    console = Console(record=True, width=120)
    console.print(board.render())
    text = console.export_text()
    assert "OWG2022-TPW-FA" in text and "2:53.44" in text and "classification" in text


def test_replay_skips_the_quiet_time_between_races_only():
    from streams.replay import idle_windows

    lines = (beijing.FEEDS_DIR / beijing.WOMEN_FILE).read_bytes().splitlines()
    msgs = [orjson.loads(ln) for ln in lines]
    guns = sorted(m["t_us"] for m in msgs if m["kind"] == "start")
    offs = sorted(m["t_us"] for m in msgs if m["kind"] == "decision" and m["code"] == "OFFICIAL")
    w = idle_windows(lines)
    assert [b for _, b in w] == [g - 5_000_000 for g in guns]
    assert [a for a, _ in w][1:] == offs[:-1]
    # nothing between a gun and its OFFICIAL is ever skipped
    for g, o in zip(guns, offs):
        assert not any(a < o and b > g for a, b in w)
