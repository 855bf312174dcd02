"""The console command, as a user runs it."""
from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from streams import beijing
from streams.board import Board
from streams.cli import build_parser
from streams.process import process_lines
from tests.schemacheck import validate

FINAL_A = beijing.FEEDS_DIR / beijing.FINAL_A_FILE
REPO = Path(__file__).resolve().parents[1]


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


# ------------------------------------------------- a user's mistake: one line, no traceback
#
# Exit 2: the command line or an input file is wrong. Exit 1: a failure at run time
# (the broker cannot be reached, a port is taken).

EXAMPLE = REPO / "tests" / "data" / "m500-pair.jsonl"


def one_line(r) -> str:
    """The whole of stderr, which must be exactly one line (and no traceback)."""
    err = r.stderr
    assert "Traceback" not in err and "Unclosed" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("lapstream"), err
    return lines[0]


def test_worker_with_no_broker_there(cli, free_port, taken_port):
    r = cli("worker", "--broker", f"kafka://127.0.0.1:{free_port}", "--http-port", "0")
    line = one_line(r)
    assert r.returncode == 1
    assert f"cannot reach the Kafka broker at kafka://127.0.0.1:{free_port}" in line
    assert "--broker" in line and "metrics" not in r.stdout + r.stderr


def test_worker_with_no_broker_there_and_no_topic_creation(cli, free_port):
    r = cli("worker", "--broker", f"kafka://127.0.0.1:{free_port}", "--http-port", "0",
            "--no-create-topics")
    assert r.returncode == 1
    assert "cannot reach the Kafka broker" in one_line(r)


def test_replay_with_no_broker(cli, free_port):
    # no --broker: the setting comes from LAPSTREAM_BROKER (here a port nobody listens on)
    r = cli("replay", str(EXAMPLE), "--speed", "max", "--quiet",
            env={"LAPSTREAM_BROKER": f"kafka://127.0.0.1:{free_port}"})
    assert r.returncode == 1
    assert "cannot reach the Kafka broker" in one_line(r)


def test_record_with_no_broker(cli, free_port, tmp_path):
    r = cli("record", "--out", str(tmp_path / "x.jsonl"), "--broker", f"kafka://127.0.0.1:{free_port}")
    assert r.returncode == 1
    assert "cannot reach the Kafka broker" in one_line(r)


def test_replay_of_a_file_that_is_not_there(cli, free_port):
    r = cli("replay", "/nonexistent.jsonl", "--broker", f"kafka://127.0.0.1:{free_port}")
    assert r.returncode == 2
    assert one_line(r) == "lapstream replay: cannot read /nonexistent.jsonl: No such file or directory"


def test_replay_of_an_empty_file(cli, tmp_path, free_port):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"\n")
    r = cli("replay", str(empty), "--broker", f"kafka://127.0.0.1:{free_port}")
    assert r.returncode == 2 and "no message" in one_line(r)


@pytest.mark.parametrize("command", ["worker", "replay", "record"])
def test_a_broker_without_its_scheme(cli, command):
    args = {"worker": [], "replay": [str(EXAMPLE)], "record": ["--out", "-"]}[command]
    r = cli(command, *args, "--broker", "localhost:9092")
    assert r.returncode == 2
    line = one_line(r)
    assert "bad broker setting 'localhost:9092'" in line and "did you mean kafka://localhost:9092?" in line


def test_worker_given_an_embedded_broker_it_cannot_start(cli):
    r = cli("worker", "--broker", "embedded")
    assert r.returncode == 2 and "lapstream broker" in one_line(r)


def test_record_into_a_folder_that_is_not_there(cli, free_port):
    r = cli("record", "--out", "/nonexistent/dir/x", "--broker", f"kafka://127.0.0.1:{free_port}")
    assert r.returncode == 2
    assert one_line(r) == "lapstream record: cannot write --out /nonexistent/dir/x: No such file or directory"


def test_worker_whose_http_port_is_taken(cli, taken_port, free_port):
    # the port is checked before anything starts: no metrics URL that is not its own
    r = cli("worker", "--broker", f"kafka://127.0.0.1:{free_port}", "--http-port", str(taken_port))
    assert r.returncode == 1
    line = one_line(r)
    assert f"cannot listen on 127.0.0.1:{taken_port}" in line and "--http-port" in line
    assert "metrics" not in r.stdout


def test_worker_port_from_the_environment_must_be_a_number(cli, free_port):
    r = cli("worker", "--broker", f"kafka://127.0.0.1:{free_port}", env={"LAPSTREAM_HTTP_PORT": "nine"})
    assert r.returncode == 2 and "$LAPSTREAM_HTTP_PORT: a port is a whole number" in one_line(r)


def test_demo_whose_http_port_is_taken(cli, taken_port):
    r = cli("demo", "--plain", "--http-port", str(taken_port))
    assert r.returncode == 1
    line = one_line(r)
    assert f"127.0.0.1:{taken_port}" in line and "Address already in use" in line and "--http-port" in line


def test_demo_with_a_feed_that_is_not_there(cli):
    r = cli("demo", "--plain", "--feed", "/nonexistent.jsonl")
    assert r.returncode == 2 and "no feed /nonexistent.jsonl" in one_line(r)


@pytest.mark.parametrize("command", ["replay", "demo"])
@pytest.mark.parametrize("speed", ["fast", "0", "-2", "inf", "nan", ""])
def test_an_invalid_speed(cli, command, speed):
    args = [str(EXAMPLE)] if command == "replay" else []
    r = cli(command, *args, "--speed", speed)
    assert r.returncode == 2
    line = one_line(r)
    assert "speed must be a number > 0 (times real time) or 'max'" in line and repr(speed) in line
    assert "_speed" not in line and f"lapstream {command} --help" in line


def test_a_usage_error_is_one_line_too(cli):
    r = cli("process")
    assert r.returncode == 2
    assert "the following arguments are required: feed" in one_line(r)
    r = cli("replay", str(EXAMPLE), "--sped", "max")
    assert r.returncode == 2 and "unrecognized arguments: --sped" in one_line(r)


def test_process_reads_a_gzipped_feed(cli, tmp_path):
    plain = cli("process", str(EXAMPLE))
    gz = tmp_path / "feed.jsonl.gz"
    gz.write_bytes(gzip.compress(EXAMPLE.read_bytes()))
    also = tmp_path / "feed-without-suffix"      # by its content, not its name
    also.write_bytes(gz.read_bytes())
    for path in (gz, also):
        r = cli("process", str(path))
        assert r.returncode == 0 and r.stderr == ""
        assert r.stdout == plain.stdout and '"deadletter"' not in r.stdout


def test_process_on_a_cut_gzip_file(cli, tmp_path):
    gz = tmp_path / "cut.jsonl.gz"
    gz.write_bytes(gzip.compress(EXAMPLE.read_bytes())[:200])
    r = cli("process", str(gz))
    assert r.returncode == 2 and f"cannot read {gz}" in one_line(r)


@pytest.mark.parametrize("content", [b"", b"\n\n", b"  \r\n"])
def test_process_on_an_empty_file_says_so(cli, tmp_path, content):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(content)
    r = cli("process", str(empty))
    assert r.returncode == 0 and r.stdout == ""
    assert one_line(r) == f"lapstream process: {empty} holds no message (it is empty): no events"


def test_process_on_something_that_is_not_a_feed_says_so(cli, tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"lap times\n34.32 34.39\n\x00\x01\x02\n")
    r = cli("process", str(junk))
    assert r.returncode == 0
    assert [json.loads(x)["kind"] for x in r.stdout.splitlines()] == ["deadletter"] * 3
    assert "no line of" in one_line(r) and "3 dead letters" in r.stderr


def test_process_on_a_folder(cli, tmp_path):
    r = cli("process", str(tmp_path))
    assert r.returncode == 2 and "Is a directory" in one_line(r)


def test_every_worker_flag_has_help(cli):
    r = cli("worker", "--help")
    assert r.returncode == 0
    parser = build_parser()
    worker = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "worker")[1]
    for action in worker._actions:
        assert action.help, action.option_strings
    for flag in ("--http-port", "--worker-id", "--session-timeout", "--loglevel"):
        assert flag in r.stdout
    assert "$LAPSTREAM_HTTP_PORT or 9300" in " ".join(r.stdout.split())


def test_every_flag_of_every_command_has_help():
    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            assert action.help, (name, action.option_strings or action.dest)


def test_the_demo_says_how_fast_it_replays():
    from streams.demo import pace_text

    assert pace_text(None) == "as fast as possible"
    assert pace_text(10.0) == "at 10x real time" and pace_text(1.0) == "at 1x real time"
    assert pace_text(2.5) == "at 2.5x real time"


# ---------------------------------------------------------------- live: a real broker

@pytest.mark.live
def test_record_writes_a_dead_letter_in_its_documented_shape(cli, live_broker, tmp_path):
    """A record of timing.deadletter (original bytes as the value, the reason in headers)
    comes out of ``lapstream record`` as the schema's "recorded" dead letter."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    from streams import topics as T

    bad = b'{"kind":"passing","v":1,"seq":"x"\xff'
    headers = [("error", b"not valid JSON: invalid UTF-8"), ("source-topic", b"timing.raw"),
               ("source-partition", b"7"), ("source-offset", b"1358")]

    async def produce():
        p = AIOKafkaProducer(bootstrap_servers=live_broker.bootstrap)
        await p.start()
        try:
            await p.send_and_wait(T.DEADLETTER.name, value=bad, key=b"NSO", headers=headers)
            await p.send_and_wait(T.DEADLETTER.name, value=b"no headers at all", key=None)
        finally:
            await p.stop()

    asyncio.run(produce())
    out = tmp_path / "events.jsonl"
    r = cli("record", "--out", str(out), "--broker", f"kafka://{live_broker.bootstrap}",
            "--topics", T.DEADLETTER.name, "--idle-exit", "3")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in out.read_bytes().splitlines()]
    assert len(lines) == 2
    for line in lines:
        validate(line)
    # timing.deadletter has 3 partitions: the two records may come in either order
    first, second = sorted(lines, key=lambda d: d["key"] is None)
    assert base64.b64decode(first["raw_b64"]) == bad
    assert (first["error"], first["source_topic"], first["source_partition"], first["source_offset"],
            first["key"]) == ("not valid JSON: invalid UTF-8", "timing.raw", 7, 1358, "NSO")
    assert second["raw"] == "no headers at all" and second["source_topic"] is None
    assert second["error"] == "no error header on the dead-letter record"


@pytest.mark.live
def test_the_demo_runs_a_feed_to_the_end(cli, tmp_path):
    feed = tmp_path / "m500-pair.jsonl.gz"          # a gzipped feed, read as such
    feed.write_bytes(gzip.compress(EXAMPLE.read_bytes()))
    r = cli("demo", "--plain", "--feed", str(feed), "--speed", "max", "--exit-when-done",
            "--http-port", "0", timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "replaying m500-pair.jsonl.gz as fast as possible" in r.stdout
    assert "FINISH" in r.stdout and "official" in r.stdout
