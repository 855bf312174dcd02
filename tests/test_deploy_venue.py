"""The race office's host command of deploy/README.md ("Sending the venue
feed"), run for real with the files deploy/gen_secrets.sh makes.

The command is taken verbatim from the README (the code block after the
``venue-replay`` marker); only ``deploy/secrets/`` is pointed at a fresh
gen_secrets.sh directory and the broker list at a local SASL_SSL endpoint:
stunnel presenting kafka-1's certificate and key from that directory (the
key decrypted with the key password gen_secrets.sh wrote), then the
SASL-checking front of tests/saslproxy.py knowing the users and passwords of
the brokers' JAAS file, then an embedded broker. So the CA file, the host
name check (``localhost``), the password file and the JAAS password are
checked together; the ACLs are not (no authorizer here: tests/test_deploy.py
checks the ACL rows)."""
from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from streams import beijing
from streams import topics as T
from streams.broker import ensure_topics

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
FEED = beijing.FEEDS_DIR / beijing.FINAL_A_FILE
MARKER = "<!-- venue-replay:"


def documented_command() -> list[str]:
    text = (DEPLOY / "README.md").read_text()
    after = text[text.index(MARKER):]
    block = after[after.index("```sh\n") + len("```sh\n"):]
    block = block[:block.index("```")]
    return shlex.split(block.replace("\\\n", " "))


def replay_help() -> str:
    r = subprocess.run([sys.executable, "-m", "streams.cli", "replay", "--help"], capture_output=True,
                       text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_the_documented_command_uses_only_flags_lapstream_replay_has():
    cmd = documented_command()
    assert cmd[:2] == ["lapstream", "replay"]
    helptext = replay_help()
    flags = [a for a in cmd if a.startswith("--")]
    assert {"--kafka-sasl-password-file", "--kafka-ssl-cafile", "--kafka-sasl-username"} <= set(flags)
    for flag in flags:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helptext), f"{flag} not in replay --help"
    args = dict(zip(cmd, cmd[1:]))
    assert args["--kafka-sasl-username"] == "venue"
    assert args["--kafka-sasl-password-file"] == "deploy/secrets/venue-kafka-password"
    assert args["--kafka-ssl-cafile"] == "deploy/secrets/ca.pem"
    # the brokers' EXTERNAL listeners as the compose file publishes them
    assert args["--broker"] == "kafka://localhost:19092,localhost:29092,localhost:39092"


@pytest.fixture(scope="module")
def secrets(tmp_path_factory) -> Path:
    if shutil.which("openssl") is None:
        pytest.fail("openssl not found: deploy/gen_secrets.sh needs it")
    out = tmp_path_factory.mktemp("venue") / "secrets"
    r = subprocess.run(["sh", str(DEPLOY / "gen_secrets.sh"), str(out)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return out


def test_gen_secrets_host_files_are_private(secrets):
    for name in ("venue-kafka-password", "venue-kafka.conf", "ca.key"):
        assert stat.S_IMODE((secrets / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    # the config names the password file and the CA by absolute path, holds no password itself
    conf = (secrets / "venue-kafka.conf").read_text()
    assert f"sasl_password_file = {secrets.resolve()}/venue-kafka-password" in conf
    assert f"ssl_cafile = {secrets.resolve()}/ca.pem" in conf
    assert (secrets / "venue-kafka-password").read_text().strip() not in conf


@pytest.mark.live
@pytest.mark.timeout(600)
def test_the_documented_venue_replay_runs_against_sasl_ssl(secrets, tmp_path, monkeypatch):
    from streams.broker import EmbeddedBroker
    from tests import securitykit
    from tests.securitykit import SaslBroker

    class LocalhostBroker(EmbeddedBroker):
        """Advertises ``localhost`` (as the compose brokers' EXTERNAL listeners
        do, and as their certificates name), not 127.0.0.1."""

        def _command(self, binary, port):
            cmd = super()._command(binary, port)
            i = cmd.index("--advertised-listener-url") + 1
            cmd[i] = cmd[i].replace(f"//{self.host}:", "//localhost:")
            return cmd

    monkeypatch.setattr(securitykit, "EmbeddedBroker", LocalhostBroker)

    key_password = re.search(r"^key\.password=(.+)$", (secrets / "kafka-ssl.properties").read_text(),
                             re.M).group(1)
    pw = tmp_path / "keypw"
    pw.write_text(key_password)
    pw.chmod(0o600)
    key = tmp_path / "kafka-1.key"
    r = subprocess.run(["openssl", "pkey", "-in", str(secrets / "kafka-1.keystore.pem"),
                        "-passin", f"file:{pw}", "-out", str(key)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    jaas = (secrets / "kafka_server_jaas.conf").read_text()
    users = dict(re.findall(r'user_(\w+)="([^"]+)"', jaas))
    assert "venue" in users

    d = tmp_path / "broker"
    d.mkdir()
    b = SaslBroker(d, users, tls=True)
    # TLS as a compose broker presents it: kafka-1's certificate (SAN kafka-1,
    # localhost) and key from gen_secrets.sh, its CA
    b.certs = SimpleNamespace(server_cert=secrets / "kafka-1.keystore.pem", server_key=key,
                              ca=secrets / "ca.pem")
    b.start()
    try:
        from streams.kafka_security import KafkaSecurity

        admin = KafkaSecurity.from_values({
            "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "admin",
            "sasl_password": users["admin"], "ssl_cafile": str(secrets / "ca.pem")})
        asyncio.run(ensure_topics(b.bootstrap, security=admin))
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAPSTREAM_KAFKA_")}
        env["PYTHONPATH"] = str(REPO)

        def run(cmd: list[str]) -> subprocess.CompletedProcess:
            cmd = [str(secrets / a.removeprefix("deploy/secrets/")) if a.startswith("deploy/secrets/") else a
                   for a in cmd]
            cmd[cmd.index("--broker") + 1] = f"kafka://{b.bootstrap}"
            cmd[cmd.index("race-office.jsonl")] = str(FEED)
            cmd[cmd.index("--speed") + 1] = "max"
            assert cmd[:2] == ["lapstream", "replay"]
            return subprocess.run([sys.executable, "-m", "streams.cli", *cmd[1:], "--quiet"], env=env,
                                  capture_output=True, text=True, timeout=300, cwd=REPO)

        cmd = documented_command()
        rep = run(cmd)
        assert rep.returncode == 0, rep.stderr[-3000:]
        lines = [x for x in FEED.read_bytes().splitlines() if x.strip()]
        refs = sum(b'"record_ref"' in x for x in lines)
        assert refs > 0
        assert f"{len(lines) - refs} to {T.RAW.name}, {refs} to {T.RECORDS_REF.name}" in rep.stderr
        # the --kafka-config variant: the generated venue-kafka.conf instead of the five flags
        i = cmd.index("--kafka-security-protocol")
        short = cmd[:i] + ["--kafka-config", "deploy/secrets/venue-kafka.conf"]
        rep2 = run(short)
        assert rep2.returncode == 0, rep2.stderr[-3000:]
        for text in (rep.stdout, rep.stderr, rep2.stdout, rep2.stderr):
            assert users["venue"] not in text
        logins = set(b.proxy.logins)
        assert ("venue", "PLAIN", "ok") in logins
        assert all(outcome == "ok" for _, _, outcome in logins), logins
        # a wrong password is refused (the front really checks the JAAS password)
        bad = tmp_path / "bad-pw"
        bad.write_text("not-the-venue-password\n")
        bad.chmod(0o600)
        wrong = list(cmd)
        wrong[wrong.index("--kafka-sasl-password-file") + 1] = str(bad)
        rep3 = run(wrong)
        assert rep3.returncode != 0
    finally:
        b.stop()
