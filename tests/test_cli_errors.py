"""A user's mistake, or the world at run time, is one line on stderr and never a
traceback (streams/cli.py's promise): ports out of range or taken, a broker that
is not there (the gateway tries again and says so on /readyz), sim-decoder's
files, a closed stdout (``| head``), a feed whose every message is refused."""
from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import beijing
from streams.procs import stop_process
from tests.gatewaykit import http_get as _get
from streams.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
FINAL_A = beijing.FEEDS_DIR / beijing.FINAL_A_FILE
MAP = REPO / "tests" / "data" / "p3-map.json"
PAIR = REPO / "tests" / "data" / "m500-pair.jsonl"

# every port option: (command words, option, lowest allowed (0: a free port))
PORT_OPTIONS = [
    (["broker"], "--port", 0),
    (["worker"], "--http-port", 0),
    (["demo"], "--http-port", 0),
    (["demo"], "--web-port", 0),
    (["serve"], "--port", 0),
    (["ingest", "p3"], "--http-port", 1),
    (["sim-decoder", "feed.jsonl", "--map", "m.json"], "--port-base", 0),
]


def one_line(r) -> str:
    err = r.stderr if isinstance(r.stderr, str) else r.stderr.decode()
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def parse(argv: list[str]) -> tuple[int | None, str]:
    """``lapstream ARGV`` through the parser alone: (exit code or None, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            return exc.code, err.getvalue()
    return None, err.getvalue()


def test_every_port_option_is_checked():
    """No port option is left a bare int (a new one must be added to PORT_OPTIONS)."""
    found = set()

    def walk(parser, words):
        for action in parser._actions:
            if getattr(action, "choices", None) and isinstance(action.choices, dict):
                for name, sub in action.choices.items():
                    walk(sub, words + [name])
            elif any("port" in o for o in action.option_strings):
                found.add((" ".join(words), max(action.option_strings, key=len)))
                assert getattr(action.type, "__name__", "") == "port", (words, action.option_strings)
    walk(build_parser(), [])
    assert found == {(" ".join(w[:2] if w[0] == "ingest" else w[:1]), o) for w, o, _ in PORT_OPTIONS}


bad_ports = st.one_of(
    st.integers(max_value=-1), st.integers(min_value=65536),
    # ("--port=--": argparse itself drops a "--" value, before any type sees it)
    st.text(min_size=0, max_size=8).filter(lambda t: not (t.strip().isascii() and t.strip().isdigit())
                                           and t != "--"),
    st.sampled_from(["0x50", "80.0", "1e3", "８０", "+80", " "]))


@settings(max_examples=150, deadline=None)
@given(where=st.sampled_from(PORT_OPTIONS), value=bad_ports)
def test_a_port_out_of_range_is_a_usage_error_in_one_line(where, value):
    words, option, low = where
    code, err = parse(words + [f"{option}={value}"])
    assert code == 2, (words, option, value, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert option in lines[0] and f"from {low} to 65535" in lines[0] and "--http-host" not in lines[0]


@settings(max_examples=100, deadline=None)
@given(where=st.sampled_from(PORT_OPTIONS), value=st.integers(min_value=0, max_value=65535))
def test_a_port_in_range_is_taken(where, value):
    words, option, low = where
    code, err = parse(words + [option, str(value)])
    if value < low:
        assert code == 2 and f"from {low} to 65535" in err
    else:
        assert code is None, err


@pytest.mark.parametrize("argv, words", [
    (["serve", "--port", "99999"], "argument --port: a port is a whole number from 0 to 65535"),
    (["worker", "--http-port", "-1"], "argument --http-port: a port is a whole number from 0 to 65535"),
    (["broker", "--port", "65536"], "argument --port"),
])
def test_out_of_range_ports_in_a_subprocess(cli, argv, words):
    r = cli(*argv)
    assert r.returncode == 2 and words in one_line(r)


@pytest.mark.parametrize("argv, env", [
    (["serve", "--broker", "kafka://127.0.0.1:1"], {"LAPSTREAM_GATEWAY_PORT": "99999"}),
    (["worker", "--broker", "kafka://127.0.0.1:1"], {"LAPSTREAM_HTTP_PORT": "x"}),
])
def test_a_port_from_the_environment_is_checked_too(cli, argv, env):
    r = cli(*argv, env=env)
    line = one_line(r)
    assert r.returncode == 2 and f"${next(iter(env))}" in line and "a port is a whole number" in line


def test_serve_with_a_bad_fetch_wait_in_the_environment(cli):
    r = cli("serve", "--port", "0", env={"LAPSTREAM_FETCH_MAX_WAIT_MS": "soon"})
    assert r.returncode == 2 and "$LAPSTREAM_FETCH_MAX_WAIT_MS must be a whole number" in one_line(r)


def test_serve_on_a_port_taken_is_one_line(cli, taken_port):
    r = cli("serve", "--port", str(taken_port), "--broker", "kafka://127.0.0.1:1", timeout=60)
    line = one_line(r)
    assert r.returncode == 1 and f"cannot listen on 127.0.0.1:{taken_port}" in line and "--port" in line
    assert r.stdout == ""


def test_serve_on_its_default_port_taken_is_one_line(cli, taken_port):
    r = cli("serve", "--broker", "kafka://127.0.0.1:1", env={"LAPSTREAM_GATEWAY_PORT": str(taken_port)},
            timeout=60)
    assert r.returncode == 1 and f"cannot listen on 127.0.0.1:{taken_port}" in one_line(r)


def test_serve_on_an_address_not_of_this_machine_is_one_line(cli):
    r = cli("serve", "--port", "0", "--host", "192.0.2.1", "--broker", "kafka://127.0.0.1:1", timeout=60)
    assert r.returncode == 1 and "cannot listen on 192.0.2.1" in one_line(r)


@pytest.mark.timeout(300)
def test_worker_with_http_port_0_serves_on_a_free_port(live_broker, tmp_path):
    """--http-port 0: a free port, named in its start line (Faust takes no 0: it
    used to end in a traceback, ImproperlyConfigured)."""
    import re

    log = tmp_path / "worker.err"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--http-port", "0", "--broker",
                                 f"kafka://{live_broker.bootstrap}", "--no-create-topics"], stdout=err,
                                stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 180
        while not (m := re.search(r"metrics http://127\.0\.0\.1:(\d+)/metrics", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        port = int(m.group(1))
        assert port > 0
        while True:
            try:
                status = _get(f"http://127.0.0.1:{port}/healthz")[0]
            except OSError:
                status = None
            if status == 200:
                break
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
    finally:
        stop_process(proc, 60)
    text = log.read_text()
    assert "Traceback" not in text and "ImproperlyConfigured" not in text


def test_ingest_on_a_port_taken_is_one_line(cli, taken_port):
    r = cli("ingest", "p3", "--decoder", "127.0.0.1:1", "--map", str(MAP), "--http-port", str(taken_port),
            "--broker", "kafka://127.0.0.1:1", timeout=60)
    assert r.returncode == 1 and f"cannot listen on 127.0.0.1:{taken_port}" in one_line(r)


# -- sim-decoder's files --------------------------------------------------------------


def test_sim_decoder_files(cli, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{bad")
    array = tmp_path / "array.jsonl"
    array.write_text('{"kind":"heartbeat"}\n[1]\n')
    cases = [
        ([str(tmp_path / "none.jsonl"), "--map", str(MAP)], "cannot read"),
        ([str(PAIR), "--map", str(tmp_path / "none.json")], "cannot read --map"),
        ([str(PAIR), "--map", str(bad)], "is not valid JSON"),
        ([str(bad), "--map", str(MAP)], "line 1 is not valid JSON"),
        ([str(array), "--map", str(MAP)], "line 2 is not a JSON object"),
        ([str(PAIR), "--map", str(array)], "--map"),
        ([str(PAIR), "--map", str(MAP), "--port-base", "65535"], "beyond 65535"),
    ]
    for argv, words in cases:
        r = cli("sim-decoder", *argv, "--exit-when-done", timeout=60)
        assert r.returncode == 2 and words in one_line(r), (argv, r.stderr)


# -- a closed stdout ------------------------------------------------------------------


def test_process_into_a_pipe_closed_early_ends_quietly():
    """``lapstream process FEED | head -1``: no "cannot read FEED: Broken pipe", no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "process", str(FINAL_A)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        first = proc.stdout.readline()
        proc.stdout.close()          # as head does after its line
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert json.loads(first)["kind"]
    assert err == "" and code == 141, (code, err)


def test_process_into_a_full_disk_blames_the_output(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with open("/dev/full", "wb") as full:
        r = subprocess.run([sys.executable, "-m", "streams.cli", "process", str(FINAL_A)], stdout=full,
                           stderr=subprocess.PIPE, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                           timeout=120)
    line = one_line(r)
    assert r.returncode == 1 and "cannot write the events to stdout" in line and str(FINAL_A) not in line


# -- every message refused ------------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(venue=st.text(st.characters(min_codepoint=65, max_codepoint=90), min_size=3, max_size=6)
       .filter(lambda v: v != "NSO"),
       n=st.integers(min_value=1, max_value=5))
def test_process_says_why_every_message_was_refused(tmp_path_factory, venue, n):
    """Valid v1 lines of a venue never set up: not "no line is a v1 message", but
    every message refused, with the commonest reason."""
    feed = tmp_path_factory.mktemp("unk") / "unk.jsonl"
    lines = []
    for i in range(n):
        lines.append(json.dumps({"kind": "passing", "v": 1, "t_us": 10**15 + i, "venue": venue, "source": "Q",
                                 "seq": i + 1, "loop": "L0", "transponder": "1"}))
        lines.append(json.dumps({"kind": "heartbeat", "v": 1, "t_us": 10**15 + i, "venue": venue,
                                 "source": "Q"}))
    feed.write_text("\n".join(lines) + "\n")
    r = subprocess.run([sys.executable, "-m", "streams.cli", "process", str(feed)], capture_output=True,
                       text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    line = one_line(r)
    assert r.returncode == 0
    assert "is a v1 message" not in line and "JSON Lines" not in line
    assert f"every message of {feed} was refused ({2 * n} dead letters" in line
    assert f"({2 * n} of {2 * n}): venue '{venue}' was never set up" in line


# -- the gateway's reader tries the broker again ----------------------------------------




@pytest.mark.live
@pytest.mark.timeout(400)
def test_serve_without_a_broker_tries_again_and_gets_ready_when_it_comes(tmp_path):
    from streams import broker as B

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        kport = s.getsockname()[1]   # nothing listens there (yet)
    log = tmp_path / "serve.err"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "serve", "--port", "0", "--broker",
                                 f"kafka://127.0.0.1:{kport}"], stdout=subprocess.PIPE, stderr=err, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    broker = None
    try:
        url = proc.stdout.readline().decode().strip()
        assert url.startswith("http://127.0.0.1:"), log.read_text()
        deadline = time.monotonic() + 120
        while True:
            status, body = _get(url + "readyz")
            if "cannot read the Kafka broker" in body:
                break
            assert time.monotonic() < deadline, (status, body)
            time.sleep(0.2)
        assert status == 503 and f"127.0.0.1:{kport}" in body and "trying again" in body
        assert _get(url + "healthz")[0] == 200          # alive: the reader waits to try again
        while log.read_text().count("trying again in") < 2:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        broker = B.EmbeddedBroker("tansu", port=kport, log_path=tmp_path / "broker.log")
        broker.start()
        import asyncio

        asyncio.run(B.ensure_topics(broker.bootstrap))
        deadline = time.monotonic() + 180
        while _get(url + "readyz")[0] != 200:
            assert proc.poll() is None and time.monotonic() < deadline, (_get(url + "readyz"), log.read_text())
            time.sleep(0.3)
        assert _get(url + "api/v1/races")[0] == 200
    finally:
        stop_process(proc, 30)
        if broker is not None:
            broker.stop()
    text = log.read_text()
    assert "Traceback" not in text and "gateway reader stopped" not in text
    tries = [ln for ln in text.splitlines() if "trying again in" in ln]
    assert len(tries) >= 2 and all(ln.startswith("gateway reader: cannot read the Kafka broker") for ln in tries)
    assert "connected to the Kafka broker" in text
