"""Real TLS in front of the embedded broker for the security tests.

Certificates are made here (python ``cryptography``): a CA, a server
certificate for ``localhost`` / ``127.0.0.1``, a client certificate signed by
the CA (mTLS), and a second, unrelated CA with its own client certificate
(must be refused). Debian's ``stunnel4`` terminates TLS in front of a tansu
broker that advertises stunnel's port, so every client (bootstrap and the
connections its metadata sends it to) goes through TLS.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from streams.broker import EmbeddedBroker, broker_binary, free_port


def stunnel_binary() -> str:
    path = shutil.which("stunnel4") or shutil.which("stunnel")
    if path is None:
        raise RuntimeError("stunnel4 is not installed: make deps (apt-get install stunnel4)")
    return path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key, path: Path, password: Optional[bytes] = None) -> None:
    enc = (serialization.BestAvailableEncryption(password) if password
           else serialization.NoEncryption())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8, enc))
    path.chmod(0o600)


def _cert(subject: str, issuer_name: x509.Name, issuer_key, key, *, ca: bool,
          sans=(), usage=None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(_name(subject)).issuer_name(issuer_name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                          content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False,
                                          encipher_only=False, decipher_only=False), critical=True)
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if usage is not None:
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Certs:
    dir: Path
    ca: Path               # the CA that signed the server and the client
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path       # encrypted with client_key_password
    client_key_password: bytes
    rogue_ca: Path         # another CA: its client certificate must be refused
    rogue_client_cert: Path
    rogue_client_key: Path


def make_certs(d: Path, server_names=("localhost",), server_ips=("127.0.0.1",)) -> Certs:
    d.mkdir(parents=True, exist_ok=True)

    def ca(cn):
        key = ec.generate_private_key(ec.SECP256R1())
        return key, _cert(cn, _name(cn), key, key, ca=True)

    ca_key, ca_cert = ca("lapstream test CA")
    rogue_key, rogue_cert = ca("somebody else's CA")
    (d / "ca.pem").write_bytes(_pem(ca_cert))
    (d / "rogue-ca.pem").write_bytes(_pem(rogue_cert))
    sans = [x509.DNSName(n) for n in server_names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in server_ips]
    skey = ec.generate_private_key(ec.SECP256R1())
    (d / "server.pem").write_bytes(_pem(_cert("localhost", ca_cert.subject, ca_key, skey, ca=False,
                                              sans=sans, usage=ExtendedKeyUsageOID.SERVER_AUTH)))
    _write_key(skey, d / "server.key")
    password = os.urandom(12).hex().encode()
    for prefix, issuer_cert, issuer_key in (("client", ca_cert, ca_key), ("rogue-client", rogue_cert, rogue_key)):
        ckey = ec.generate_private_key(ec.SECP256R1())
        (d / f"{prefix}.pem").write_bytes(_pem(_cert(f"lapstream {prefix}", issuer_cert.subject, issuer_key,
                                                     ckey, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH)))
        _write_key(ckey, d / f"{prefix}.key", password if prefix == "client" else None)
    return Certs(d, d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key",
                 password, d / "rogue-ca.pem", d / "rogue-client.pem", d / "rogue-client.key")


class Stunnel:
    """stunnel in server mode: TLS on ``port`` -> plain TCP to ``target``.
    ``require_client_cert``: mTLS (a client certificate signed by ``ca``)."""

    def __init__(self, d: Path, certs: Certs, target_port: int, *, port: Optional[int] = None,
                 require_client_cert: bool = True) -> None:
        self.dir = d
        self.certs = certs
        self.target_port = target_port
        self.port = port or free_port()
        self.require_client_cert = require_client_cert
        self.proc: Optional[subprocess.Popen] = None
        self.log = d / "stunnel.log"

    def start(self) -> "Stunnel":
        conf = self.dir / "stunnel.conf"
        lines = [
            "foreground = yes",
            f"output = {self.log}",
            "debug = notice",
            "syslog = no",
            "[kafka]",
            f"accept = 127.0.0.1:{self.port}",
            f"connect = 127.0.0.1:{self.target_port}",
            f"cert = {self.certs.server_cert}",
            f"key = {self.certs.server_key}",
            "sslVersionMin = TLSv1.2",
        ]
        if self.require_client_cert:
            lines += [f"CAfile = {self.certs.ca}", "verifyChain = yes", "requireCert = yes"]
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([stunnel_binary(), str(conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"stunnel exited: {self.log.read_text() if self.log.exists() else ''}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"stunnel not listening on {self.port}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


class TLSBroker:
    """tansu on a loopback port, advertising the port of stunnel in front of it."""

    def __init__(self, d: Path, *, require_client_cert: bool = True, authentication: bool = False) -> None:
        self.dir = d
        self.certs = make_certs(d / "certs")
        self.tls_port = free_port()
        self.authentication = authentication
        self.broker: Optional[EmbeddedBroker] = None
        self.raw: Optional[subprocess.Popen] = None
        self.plain_port: Optional[int] = None
        self.stunnel: Optional[Stunnel] = None
        self.require_client_cert = require_client_cert

    @property
    def bootstrap(self) -> str:
        return f"localhost:{self.tls_port}"

    def start(self) -> "TLSBroker":
        if not self.authentication:
            self.broker = EmbeddedBroker("tansu", advertised_port=self.tls_port,
                                         log_path=self.dir / "broker.log").start()
            self.plain_port = self.broker.port
        else:
            # tansu with --authentication (SASL required): EmbeddedBroker's
            # readiness probe cannot ask for metadata without a login, so the
            # process is started here and waited for by its port
            self.plain_port = free_port()
            url = f"tcp://127.0.0.1:{self.plain_port}"
            self.raw = subprocess.Popen(
                [str(broker_binary("tansu")), "broker", "--listener-url", url,
                 "--advertised-listener-url", f"tcp://localhost:{self.tls_port}",
                 "--storage-engine", "memory://tansu/", "--authentication"],
                stdin=subprocess.DEVNULL, stdout=open(self.dir / "broker.log", "ab"),
                stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "NO_COLOR": "1"})
            deadline = time.monotonic() + 30
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", self.plain_port), timeout=1):
                        break
                except OSError:
                    assert self.raw.poll() is None, "tansu exited"
                    assert time.monotonic() < deadline, "tansu not listening"
                    time.sleep(0.05)
        self.stunnel = Stunnel(self.dir, self.certs, self.plain_port, port=self.tls_port,
                               require_client_cert=self.require_client_cert).start()
        return self

    def stop(self) -> None:
        if self.stunnel is not None:
            self.stunnel.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.raw is not None and self.raw.poll() is None:
            os.killpg(self.raw.pid, signal.SIGTERM)
            try:
                self.raw.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.raw.pid, signal.SIGKILL)
                self.raw.wait()

    def env(self, client_cert: bool = True) -> dict:
        """LAPSTREAM_KAFKA_* for a client of this endpoint (key password in a file)."""
        pw = self.dir / "client-key-password"
        pw.write_bytes(self.certs.client_key_password + b"\n")
        pw.chmod(0o600)
        env = {"LAPSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
               "LAPSTREAM_KAFKA_SSL_CAFILE": str(self.certs.ca)}
        if client_cert:
            env.update({"LAPSTREAM_KAFKA_SSL_CERTFILE": str(self.certs.client_cert),
                        "LAPSTREAM_KAFKA_SSL_KEYFILE": str(self.certs.client_key),
                        "LAPSTREAM_KAFKA_SSL_KEY_PASSWORD_FILE": str(pw)})
        return env


def tls_handshake(port: int, ctx: ssl.SSLContext, host: str = "localhost") -> None:
    """A TLS handshake and one Kafka ApiVersions round trip through stunnel
    (stunnel in TLS 1.3 reports a refused client certificate only when the
    client reads)."""
    import struct

    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            client = b"probe"
            payload = struct.pack(">hhih", 18, 0, 1, len(client)) + client
            s.sendall(struct.pack(">i", len(payload)) + payload)
            head = s.recv(4)
            if len(head) < 4:
                raise ConnectionError("connection closed")


class SaslBroker:
    """tansu behind the SASL-checking front of ``tests/saslproxy.py``
    (SASL_PLAINTEXT), or behind stunnel and then that front (``tls=True``:
    SASL_SSL, no client certificate). tansu advertises the outermost port,
    so every connection a client makes logs in."""

    def __init__(self, d: Path, users: dict, *, tls: bool = False) -> None:
        self.dir = d
        self.users = dict(users)
        self.tls = tls
        self.front_port = free_port()          # what clients connect to
        self.certs: Optional[Certs] = make_certs(d / "certs") if tls else None
        self.broker: Optional[EmbeddedBroker] = None
        self.proxy = None
        self.stunnel: Optional[Stunnel] = None
        self.proxy_log = d / "sasl-proxy.log"

    @property
    def bootstrap(self) -> str:
        return f"localhost:{self.front_port}"

    def start(self) -> "SaslBroker":
        from tests.saslproxy import SaslProxy

        self.broker = EmbeddedBroker("tansu", advertised_port=self.front_port,
                                     log_path=self.dir / "broker.log").start()
        proxy_port = free_port() if self.tls else self.front_port
        self.proxy = SaslProxy(self.broker.port, self.users, port=proxy_port, log_path=self.proxy_log).start()
        if self.tls:
            self.stunnel = Stunnel(self.dir, self.certs, proxy_port, port=self.front_port,
                                   require_client_cert=False).start()
        return self

    def stop(self) -> None:
        if self.stunnel is not None:
            self.stunnel.stop()
        if self.proxy is not None:
            self.proxy.stop()
        if self.broker is not None:
            self.broker.stop()

    def env(self, mechanism: str, user: str, password_file: Path) -> dict:
        """LAPSTREAM_KAFKA_* for a client of this endpoint (password from a file)."""
        env = {"LAPSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL" if self.tls else "SASL_PLAINTEXT",
               "LAPSTREAM_KAFKA_SASL_MECHANISM": mechanism,
               "LAPSTREAM_KAFKA_SASL_USERNAME": user,
               "LAPSTREAM_KAFKA_SASL_PASSWORD_FILE": str(password_file)}
        if self.tls:
            env["LAPSTREAM_KAFKA_SSL_CAFILE"] = str(self.certs.ca)
        return env
