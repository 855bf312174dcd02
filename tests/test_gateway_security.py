"""Kafka TLS / SASL for ``lapstream serve`` (the subscribers' gateway).

Unit tests: the ``--kafka-*`` flags, ``LAPSTREAM_KAFKA_*`` and a config file
reach the gateway's Kafka reader (its only Kafka client), bad settings are
one line before anything listens, and no secret is printed.
Live tests (``-m live``): the gateway through stunnel with client
certificates (mTLS) in front of the embedded broker serves the final A, two
gateways configured two ways serve the same and an SSE client resumes from
one on the other; a gateway without a client certificate is refused; SASL
SCRAM refused by tansu without the password in any output.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from streams import beijing
from streams.cli import build_parser
from streams.gateway import Gateway, GatewaySettings
from streams.gateway_state import DERIVED_KINDS
from streams.kafka_security import KafkaSecurity
from tests import gatewaykit as G
from tests import livekit as L
from tests.securitykit import TLSBroker, make_certs

REPO = Path(__file__).resolve().parents[1]
RACE = "OWG2022-TPW-FA"
pytestmark = pytest.mark.timeout(600)


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAPSTREAM_KAFKA_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("gwcerts"))


def serve_settings(argv: list[str], env: dict, monkeypatch) -> GatewaySettings:
    """What ``lapstream serve ARGV`` hands the gateway, with ``env`` as the
    environment (the gateway itself is not started)."""
    import streams.gateway as gw

    for k in list(os.environ):
        if k.startswith("LAPSTREAM_KAFKA_"):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    seen = []
    monkeypatch.setattr(gw, "run", lambda settings: seen.append(settings) or 0)
    args = build_parser().parse_args(["serve", "--broker", "kafka://127.0.0.1:1", "--port", "0", *argv])
    assert args.func(args) == 0
    (settings,) = seen
    return settings


def consumer_auth(settings: GatewaySettings) -> dict:
    """The security settings of the consumer the gateway's reader builds."""
    async def build():
        c = Gateway(settings).consumer()
        cl = c._client
        out = {"protocol": cl._security_protocol, "ssl_context": cl._ssl_context,
               "mechanism": cl._sasl_mechanism, "user": cl._sasl_plain_username,
               "password": cl._sasl_plain_password, "group": c._group_id}
        await c.stop()
        return out

    return asyncio.run(build())


def key_password_file(certs, tmp_path: Path) -> Path:
    pw = tmp_path / "key-pw"
    pw.write_bytes(certs.client_key_password + b"\n")
    pw.chmod(0o600)
    return pw


# -- settings reach the consumer --------------------------------------------------


def test_default_is_plaintext(monkeypatch):
    s = serve_settings([], {}, monkeypatch)
    auth = consumer_auth(s)
    assert auth["protocol"] == "PLAINTEXT" and auth["ssl_context"] is None and auth["user"] is None
    assert auth["group"] is None   # no consumer group: every gateway reads everything


def test_mtls_flags_reach_the_gateway_consumer(certs, tmp_path, monkeypatch):
    pw = key_password_file(certs, tmp_path)
    s = serve_settings(["--kafka-security-protocol", "SSL", "--kafka-ssl-cafile", str(certs.ca),
                        "--kafka-ssl-certfile", str(certs.client_cert), "--kafka-ssl-keyfile",
                        str(certs.client_key), "--kafka-ssl-key-password-file", str(pw)], {}, monkeypatch)
    assert s.security.security_protocol == "SSL" and s.security.ssl_certfile == str(certs.client_cert)
    auth = consumer_auth(s)
    assert auth["protocol"] == "SSL" and auth["user"] is None and auth["password"] is None
    ctx = auth["ssl_context"]
    assert ctx.verify_mode.name == "CERT_REQUIRED" and ctx.check_hostname
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "lapstream test CA"),),)]


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_from_the_environment_reaches_the_gateway_consumer(mechanism, certs, tmp_path, monkeypatch):
    secret = f"gw-env-{mechanism}-secret"
    s = serve_settings([], {"LAPSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                            "LAPSTREAM_KAFKA_SASL_MECHANISM": mechanism,
                            "LAPSTREAM_KAFKA_SASL_USERNAME": "gateway",
                            "LAPSTREAM_KAFKA_SASL_PASSWORD": secret,
                            "LAPSTREAM_KAFKA_SSL_CAFILE": str(certs.ca)}, monkeypatch)
    auth = consumer_auth(s)
    assert (auth["protocol"], auth["mechanism"], auth["user"], auth["password"]) == \
        ("SASL_SSL", mechanism, "gateway", secret)
    assert auth["ssl_context"] is not None
    assert secret not in repr(s) and secret not in repr(s.security) and secret not in s.security.describe()


def test_config_file_under_env_under_flags_for_the_gateway(certs, tmp_path, monkeypatch):
    pw = tmp_path / "sasl-pw"
    pw.write_text("from-file-secret\n")
    cfg = tmp_path / "kafka.conf"
    cfg.write_text(f"security.protocol = SASL_SSL\nsasl.mechanism = SCRAM-SHA-256\nsasl_username = cfg-user\n"
                   f"sasl_password_file = {pw}\nssl.cafile = {certs.ca}\n")
    # the config file alone (named by the env)
    s = serve_settings([], {"LAPSTREAM_KAFKA_CONFIG": str(cfg)}, monkeypatch)
    auth = consumer_auth(s)
    assert (auth["protocol"], auth["mechanism"], auth["user"], auth["password"]) == \
        ("SASL_SSL", "SCRAM-SHA-256", "cfg-user", "from-file-secret")
    # env over the file, a flag over both (the file named by --kafka-config)
    s = serve_settings(["--kafka-config", str(cfg), "--kafka-sasl-mechanism", "SCRAM-SHA-512"],
                       {"LAPSTREAM_KAFKA_SASL_USERNAME": "env-user",
                        "LAPSTREAM_KAFKA_SASL_MECHANISM": "PLAIN"}, monkeypatch)
    auth = consumer_auth(s)
    assert (auth["mechanism"], auth["user"], auth["password"]) == ("SCRAM-SHA-512", "env-user", "from-file-secret")


def test_the_running_reader_connects_with_the_settings(certs, monkeypatch):
    """Not only ``consumer()``: the reader task of a started gateway builds its
    consumer with the settings (a stand-in consumer records what it was given
    and refuses to start); the reader tries again, and /readyz says why without the secret."""
    import aiokafka

    given = []

    class Refusing:
        def __init__(self, **kw):
            given.append(kw)

        async def start(self):
            raise ConnectionError("refused by the test")

        async def stop(self):
            pass

    monkeypatch.setattr(aiokafka, "AIOKafkaConsumer", Refusing)
    secret = "reader-secret-5521"
    sec = KafkaSecurity.from_env({"LAPSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                                  "LAPSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                                  "LAPSTREAM_KAFKA_SASL_USERNAME": "gw",
                                  "LAPSTREAM_KAFKA_SASL_PASSWORD": secret,
                                  "LAPSTREAM_KAFKA_SSL_CAFILE": str(certs.ca)})

    async def go():
        gw = Gateway(GatewaySettings(bootstrap="127.0.0.1:1", port=0, security=sec))
        await gw.start()
        try:
            deadline = time.monotonic() + 60
            while len(given) < 2:           # refused, then tried again (never stops for good)
                assert time.monotonic() < deadline and not gw.reader_task.done()
                await asyncio.sleep(0.05)
            status = await asyncio.get_running_loop().run_in_executor(
                None, _get, f"http://127.0.0.1:{gw.port}/readyz")
            health = await asyncio.get_running_loop().run_in_executor(
                None, _get, f"http://127.0.0.1:{gw.port}/healthz")
            return status, health
        finally:
            await gw.stop()

    (status, body), health = asyncio.run(go())
    kw = given[0]
    def same(k):   # every try with the same settings (a TLS context is built anew each time)
        return {a: b for a, b in k.items() if a != "ssl_context"}
    assert all(same(k) == same(kw) and k["ssl_context"] is not None for k in given)
    assert health[0] == 200
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "gw" and kw["sasl_plain_password"] == secret
    assert kw["ssl_context"] is not None and kw["group_id"] is None
    assert status == 503 and b"refused by the test" in body and secret.encode() not in body


def _get(url: str):
    import urllib.error

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# -- behind a load balancer: a resume on a gateway that has read less ---------------


def test_a_resume_on_a_gateway_behind_the_id_gets_no_event_twice():
    """Gateways read the same topics at their own pace. A client that resumes
    with an id from a gateway that had read further than this one must not
    be sent the events between: this gateway's fan-out skips them until it
    has read up to the client's position (found by the live mTLS test below:
    5 splits came twice)."""
    from streams.gateway import Client
    from streams.gateway_state import Filter, Item, encode_position

    gw = Gateway(GatewaySettings(bootstrap="unused"))
    gw.state.position = {(0, 5): 99}            # this gateway has read offsets .. 98
    last = encode_position({(0, 5): 104})       # the client got .. 103 from another gateway
    client, snapshot, backlog = gw._subscribe("ws", Filter.from_query({}), last)
    assert snapshot is None and backlog == [] and client.ahead

    def item(off):
        return Item(topic=0, partition=5, offset=off, kind="split", event={}, data=b"{}", arrived=0.0,
                    race_id="R", group=None, venue=None, cls_event=None)

    for batch in ([item(99), item(100)], [item(101), item(102), item(103), item(104)], [item(105)]):
        gw.state.position[(0, 5)] = batch[-1].offset + 1
        gw._fan_out(batch)
    assert [it.offset for it in client.queue] == [104, 105]
    assert not client.ahead   # caught up: the fast path again
    # a client at this gateway's own position is not "ahead"
    other, _, _ = gw._subscribe("ws", Filter.from_query({}), encode_position(gw.state.position))
    assert not other.ahead


# -- mistakes: one line, exit 2, nothing listening, no secret -------------------------


@pytest.mark.parametrize("extra_args, env, words", [
    ([], {"LAPSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs sasl_mechanism"),
    (["--kafka-security-protocol", "SSL", "--kafka-ssl-cafile", "/nonexistent/ca.pem"], {}, "cannot read it"),
    (["--kafka-security-protocol", "PLAINTEXT"], {"LAPSTREAM_KAFKA_SASL_PASSWORD": "gw-stray-secret-31"},
     "use SASL_SSL"),
    ("KEY", {"LAPSTREAM_KAFKA_SSL_KEY_PASSWORD": "gw-wrong-key-secret-32"}, "cannot load the client"),
])
def test_serve_settings_errors_are_one_line_without_secrets(extra_args, env, words, certs, tmp_path):
    if extra_args == "KEY":   # an encrypted client key with the wrong password
        extra_args = ["--kafka-security-protocol", "SSL", "--kafka-ssl-cafile", str(certs.ca),
                      "--kafka-ssl-certfile", str(certs.client_cert), "--kafka-ssl-keyfile", str(certs.client_key)]
    r = subprocess.run([sys.executable, "-m", "streams.cli", "serve", "--broker", "kafka://127.0.0.1:1",
                        "--port", "0", *extra_args], env=clean_env(**env), capture_output=True,
                       cwd=tmp_path, timeout=120)
    err = r.stderr.decode()
    assert r.returncode == 2, err[-2000:]
    assert err.startswith("lapstream serve: ") and words in err and len(err.strip().splitlines()) == 1
    assert r.stdout == b""   # no page URL: nothing was served
    assert "secret" not in err


def test_serve_prints_what_it_uses_and_never_the_password(tmp_path):
    """A gateway with SASL_PLAINTEXT PLAIN to a broker that is not there: its
    start line names the protocol, mechanism and user (and warns that PLAIN
    crosses in clear text), its reader tries again and /readyz says why, and the
    password is in no output."""
    secret = f"gw-print-secret-{os.getpid()}"
    pw = tmp_path / "pw"
    pw.write_text(secret)
    port = G.free_port()
    dead = G.free_port()   # nothing listens there
    log = tmp_path / "serve.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "serve", "--broker", f"kafka://127.0.0.1:{dead}",
             "--port", str(port), "--kafka-security-protocol", "SASL_PLAINTEXT", "--kafka-sasl-mechanism",
             "PLAIN", "--kafka-sasl-username", "gw-user", "--kafka-sasl-password-file", str(pw)],
            stdout=f, stderr=subprocess.STDOUT, env=clean_env(), cwd=REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        status = body = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                status, body = _get(f"http://127.0.0.1:{port}/readyz")
            except OSError:
                status = None
            if status == 503 and b"cannot read the Kafka broker" in body:
                break
            time.sleep(0.2)
        assert status == 503 and body.startswith(b"not ready: cannot read the Kafka broker"), (status, body)
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200   # alive: it tries again
    finally:
        G.stop_process(proc, timeout=20)
    text = log.read_text()
    assert "SASL_PLAINTEXT, PLAIN as 'gw-user'" in text and "clear text" in text
    assert secret not in text and secret.encode() not in body


# -- live: through stunnel (mTLS) in front of the embedded broker ---------------------


class TLSGateway(G.Gateway):
    """``lapstream serve`` with its own environment (and no inherited LAPSTREAM_KAFKA_*)."""

    def __init__(self, bootstrap: str, tmp: Path, args=(), env: dict | None = None) -> None:
        super().__init__(bootstrap, tmp, args)
        self.env = env or {}

    def start(self) -> "TLSGateway":
        cmd = [sys.executable, "-m", "streams.cli", "serve", "--broker", f"kafka://{self.bootstrap}",
               "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=REPO, env=clean_env(**self.env))
        return self


@pytest.fixture(scope="module")
def mtls(tmp_path_factory):
    from streams.broker import ensure_topics

    b = TLSBroker(tmp_path_factory.mktemp("gwmtls"), require_client_cert=True).start()
    try:
        asyncio.run(ensure_topics(b.bootstrap, security=KafkaSecurity.from_env(b.env())))
        yield b
    finally:
        b.stop()


def replay_tls(bootstrap: str, lines, security: KafkaSecurity, speed):
    from streams.replay import replay

    def run():
        try:
            t.result = asyncio.run(replay(bootstrap, list(lines), speed=speed, security=security))
        except BaseException as exc:  # handed to the test
            t.result = exc

    t = threading.Thread(target=run, daemon=True)
    t.result = None
    t.start()
    return t


def wait_official(gw: G.Gateway, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, body = gw.get(f"/api/v1/races/{RACE}")
        if status == 200:
            d = orjson.loads(body)
            if d["status"] == "official" and d["result"]["revision"] == G.final_result_revision():
                return d
        time.sleep(0.3)
    raise AssertionError(f"the final A never became official on the gateway: {gw.log.read_text()[-2000:]}")


@pytest.mark.live
def test_gateways_serve_the_final_a_through_mtls(mtls, tmp_path):
    """Worker, replay and two gateways, every Kafka client through stunnel with
    client certificates: gateway 1 configured by flags, gateway 2 by a config
    file named in LAPSTREAM_KAFKA_CONFIG. An SSE client reads part of the race
    on gateway 1 and resumes with its Last-Event-ID on gateway 2: together
    exactly ``lapstream process``'s events. Both serve the official final A
    (the result ``lapstream process`` makes: Canada 2:53.44, Japan 3:04.47)."""
    lines = G.feed_lines(beijing.FINAL_A_FILE)
    want = L.offline(lines)
    env = mtls.env()
    c = mtls.certs
    sec = KafkaSecurity.from_env(env)
    w = L.Worker(mtls.bootstrap, tmp_path, "gwtls", env=env)
    flags = ["--kafka-security-protocol", "SSL", "--kafka-ssl-cafile", str(c.ca),
             "--kafka-ssl-certfile", str(c.client_cert), "--kafka-ssl-keyfile", str(c.client_key),
             "--kafka-ssl-key-password-file", env["LAPSTREAM_KAFKA_SSL_KEY_PASSWORD_FILE"]]
    cfg = tmp_path / "kafka.conf"
    cfg.write_text("security.protocol = SSL\n"
                   f"ssl.cafile = {c.ca}\nssl.certfile = {c.client_cert}\nssl.keyfile = {c.client_key}\n"
                   f"ssl.key.password = {c.client_key_password.decode()}\n")
    cfg.chmod(0o600)
    g1 = TLSGateway(mtls.bootstrap, tmp_path, flags)
    g2 = TLSGateway(mtls.bootstrap, tmp_path, env={"LAPSTREAM_KAFKA_CONFIG": str(cfg)})
    sse = None
    replay = None
    try:
        w.start()
        g1.start()
        g2.start()
        w.wait_ready(timeout=180)
        g1.wait_ready(timeout=180)
        g2.wait_ready(timeout=180)
        got: list[dict] = []
        ids: list[str] = []
        sse = G.SSE(g1.port, timeout=120)
        it = sse.events()
        first = next(it)
        assert first[1] == "snapshot"
        ids.append(first[0])
        replay = replay_tls(mtls.bootstrap, lines, sec, speed=20)
        for ident, event, data in it:
            ids.append(ident)
            if event in DERIVED_KINDS:
                got.append(orjson.loads(data))
            if len(got) >= len(want) // 2:
                break
        sse.close()
        assert 0 < len(got) < len(want)
        sse = G.SSE(g2.port, last_id=ids[-1], timeout=120)
        for ident, event, data in sse.events():
            assert event != "snapshot"
            if event in DERIVED_KINDS:
                got.append(orjson.loads(data))
            if len(got) >= len(want):
                break
        sse.close()
        sse = None
        replay.join(300)
        assert not isinstance(replay.result, BaseException), replay.result
        ev_ids = [e["event_id"] for e in got]
        assert len(ev_ids) == len(set(ev_ids)), "an event was sent twice"
        assert sorted(ev_ids) == sorted(e["event_id"] for e in want)
        assert L.per_key_sequences(got) == L.per_key_sequences(want)

        final = [e for e in want if e["kind"] == "result" and e["race_id"] == RACE][-1]
        d1, d2 = wait_official(g1), wait_official(g2)
        assert d1 == d2
        assert d1["result"] == final
        for g in (g1, g2):
            races = g.json("/api/v1/races")["races"]
            assert any(r["race_id"] == RACE and r["status"] == "official" for r in races)
            metrics = g.get("/metrics")[2].decode()
            assert "lapstream_gateway_ready 1.0" in metrics
        # no secret in any log (the key's password came from a file and a config file)
        for text in (g1.log.read_bytes(), g2.log.read_bytes(), w.log.read_bytes()):
            assert c.client_key_password not in text
        assert b"(SSL, CA " in g1.log.read_bytes() and b"client certificate" in g2.log.read_bytes()
    finally:
        if sse is not None:
            sse.close()
        if replay is not None:
            replay.join(60)
        g1.stop()
        g2.stop()
        w.stop()


@pytest.mark.live
def test_a_gateway_without_a_client_certificate_is_refused(mtls, tmp_path):
    """Same endpoint, CA but no client certificate: stunnel refuses it, the
    reader tries again and again (alive: /healthz 200), /readyz says why and never turns 200."""
    g = TLSGateway(mtls.bootstrap, tmp_path, env=mtls.env(client_cert=False)).start()
    try:
        deadline = time.monotonic() + 180
        status = None
        while time.monotonic() < deadline:
            assert g.proc.poll() is None, g.log.read_text()[-3000:]
            status, _, body = g.get("/readyz") if _port_open(g.port) else (None, None, b"")
            if status == 503 and b"cannot read the Kafka broker" in body:
                break
            time.sleep(0.3)
        assert status == 503 and body.startswith(b"not ready: cannot read the Kafka broker"), \
            (status, body, g.log.read_text()[-2000:])
        assert g.get("/healthz")[0] == 200
    finally:
        g.stop()


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
