"""Real parts for live tests: an embedded Kafka-protocol broker on loopback and
``lapstream worker`` subprocesses. No mocks of Kafka anywhere."""
from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.procs import stop_process
from streams import topics as T
from streams.broker import EmbeddedBroker, ensure_topics, free_port
from streams.replay import record, replay

BROKER_KIND = os.environ.get("LAPSTREAM_TEST_BROKER", "tansu")
REPO = Path(__file__).resolve().parents[1]


def start_broker(tmp: Path) -> EmbeddedBroker:
    b = EmbeddedBroker(BROKER_KIND, log_path=tmp / "broker.log")
    b.start()
    asyncio.run(ensure_topics(b.bootstrap))
    return b


class Worker:
    def __init__(self, bootstrap: str, tmp: Path, worker_id: str = "w1", env: dict | None = None) -> None:
        self.bootstrap = bootstrap
        self.env = env or {}
        self.port = free_port()
        self.log = tmp / f"worker-{worker_id}-{int(time.time() * 1000)}.log"
        self.worker_id = worker_id
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Worker":
        session = "2" if BROKER_KIND == "tansu" else "6"
        cmd = [sys.executable, "-m", "streams.cli", "worker", "--broker", f"kafka://{self.bootstrap}",
               "--http-port", str(self.port), "--worker-id", self.worker_id, "--no-create-topics",
               "--session-timeout", session, "--loglevel", "info"]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=REPO,
                                     env={**os.environ, "PYTHONPATH": str(REPO), **self.env})
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"worker exited: {self.log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(self.url("/readyz"), timeout=1) as r:
                    if r.status == 200:
                        return
            except Exception:
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker not ready in {timeout}s: {self.log.read_text()[-3000:]}")

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.url(path), timeout=5) as r:
            return r.read().decode()

    def readyz(self) -> dict:
        return orjson.loads(self.get("/readyz"))

    def snapshots_settled(self, taken: int = 0) -> dict | None:
        """The worker's snapshot counters once one at least is saved, ``taken``
        at least taken, and none is being written or waiting for its commit
        (else None: for ``wait_for``)."""
        s = self.readyz()["snapshots"]
        if s["saved"] >= 1 and s["taken"] >= taken and not s["unsaved"] and not s["in_child"]:
            return s
        return None

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=20)


@contextlib.contextmanager
def live_stack():
    """(broker, worker, tmp): a broker on loopback and ``worker(wid="w1",
    env=None)`` starting a worker on it; all stopped at the end."""
    tmp = tmpdir()
    broker = start_broker(tmp)
    workers: list[Worker] = []

    def worker(wid: str = "w1", env: dict | None = None) -> Worker:
        w = Worker(broker.bootstrap, tmp, wid, env=env).start()
        workers.append(w)
        return w

    try:
        yield broker, worker, tmp
    finally:
        for w in workers:
            w.stop()
        broker.stop()


def wait_for(cond, what: str, timeout: float = 120.0, every: float = 0.3):
    """``cond()`` once it is true (polled every ``every`` s), or AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"not seen in {timeout} s: {what}")


def committed(bootstrap: str, partition: int, group: str = "lapstream"):
    """The group's committed offset of a timing.raw partition (None: never)."""
    async def go():
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        await c.start()
        try:
            return await c.committed(TopicPartition(T.RAW.name, partition))
        finally:
            await c.stop()

    return asyncio.run(go())


def committed_total(bootstrap: str) -> int:
    """The group's committed offsets of every timing.raw partition, summed."""
    return sum(committed(bootstrap, p) or 0 for p in range(T.RAW.partitions))


def raw_count(lines) -> int:
    """The lines of a feed that go to timing.raw (record references do not)."""
    return sum(1 for ln in lines if b'"record_ref"' not in ln)


def replay_lines(bootstrap: str, lines, speed=None) -> dict:
    return asyncio.run(replay(bootstrap, list(lines), speed=speed))


def record_all(bootstrap: str, idle_s: float = 4.0, topics=None, expect: int | None = None,
               timeout: float = 120.0) -> list[dict]:
    """Everything on the derived topics (and dead letters) until nothing new for idle_s."""
    topics = topics or [t.name for t in T.DERIVED] + [T.DEADLETTER.name]

    async def go():
        buf = io.BytesIO()
        stop = asyncio.Event()
        count = {"n": 0, "last": time.monotonic()}

        def on_rec(topic, value):
            count["n"] += 1
            count["last"] = time.monotonic()

        task = asyncio.create_task(record(bootstrap, buf, topics, stop=stop, on_record=on_rec))
        start = time.monotonic()
        while True:
            await asyncio.sleep(0.2)
            idle = time.monotonic() - count["last"]
            if expect is not None and count["n"] >= expect and idle > 1.0:
                break
            if expect is None and idle > idle_s and count["n"] > 0:
                break
            if time.monotonic() - start > timeout:
                break
        stop.set()
        await task
        return buf.getvalue()

    data = asyncio.run(go())
    return [orjson.loads(line) for line in data.splitlines() if line]


def offline(lines) -> list[dict]:
    from streams.process import process_lines

    return list(process_lines(list(lines)))


def per_key_sequences(events) -> dict:
    """(topic kind group, key) -> ordered list of events: the order the contract promises."""
    from streams.topics import TOPIC_OF_KIND, key_of

    seqs: dict = {}
    for e in events:
        if e["kind"] == "deadletter":
            continue
        seqs.setdefault((TOPIC_OF_KIND[e["kind"]], key_of(e)), []).append(orjson.dumps(e, option=orjson.OPT_SORT_KEYS))
    return seqs


def tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="lapstream-test-"))
