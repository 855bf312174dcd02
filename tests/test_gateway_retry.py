"""The gateway's Kafka reader never stops for good: a broker it cannot reach is
tried again with a backoff, /readyz is 503 and says why meanwhile, and a reader
that lost the broker goes on from the offsets it had reached (nothing twice,
nothing missed). A stand-in consumer plays the broker."""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import beijing
from tests.gatewaykit import http_get as _get
from streams import gateway as G
from streams.gateway import Gateway, GatewaySettings
from streams.gateway_state import TOPIC_NAMES
from streams.process import process_lines
from streams.topics import RAW, TOPIC_OF_KIND

FINAL_A = beijing.FEEDS_DIR / beijing.FINAL_A_FILE


def _topics() -> dict:
    """topic -> the records a worker would have produced (one partition each)."""
    lines = FINAL_A.read_bytes().splitlines()
    out: dict = {n: [] for n in TOPIC_NAMES}
    out[RAW.name] = [ln for ln in lines if b'"record_ref"' not in ln]
    for ev in process_lines(lines):
        if ev["kind"] != "deadletter":
            out[TOPIC_OF_KIND[ev["kind"]]].append(orjson.dumps(ev))
    return out


TOPICS = _topics()


class Broker:
    """What the stand-in consumers read; ``plan`` says what each new consumer does:
    "down" (start fails), or N (serve N records, then fail as a lost broker)."""

    def __init__(self, plan: list) -> None:
        self.plan = list(plan)
        self.consumers: list = []


def stand_in(broker: Broker):
    from aiokafka import TopicPartition

    class Consumer:
        def __init__(self, **kw) -> None:
            self.kw = kw
            self.what = broker.plan.pop(0) if broker.plan else None   # None: serve for good
            self.pos: dict = {}
            self.seeks: dict = {}
            self.served = 0
            broker.consumers.append(self)

        async def start(self):
            if self.what == "down":
                raise ConnectionError("the test's broker is down")

        async def stop(self):
            pass

        async def topics(self):
            return set(TOPICS)

        def partitions_for_topic(self, name):
            return {0}

        def assign(self, tps):
            self.tps = list(tps)

        async def seek_to_beginning(self, *tps):
            for tp in tps:
                self.pos[tp] = 0

        def seek(self, tp, offset):
            self.pos[tp] = offset
            self.seeks[tp] = offset

        async def end_offsets(self, tps):
            return {tp: len(TOPICS[tp.topic]) for tp in tps}

        async def position(self, tp):
            return self.pos[tp]

        async def getmany(self, timeout_ms=0, max_records=None):
            batch = {}
            if isinstance(self.what, int) and (self.served >= self.what or all(
                    self.pos[tp] >= len(TOPICS[tp.topic]) for tp in self.tps)):
                raise ConnectionError("the test's broker went away")
            for tp in self.tps:
                start = self.pos[tp]
                recs = TOPICS[tp.topic][start:start + 7]
                if isinstance(self.what, int):
                    recs = recs[:self.what - self.served]
                if recs:
                    batch[tp] = [SimpleNamespace(value=v, offset=start + i) for i, v in enumerate(recs)]
                    self.pos[tp] = start + len(recs)
                    self.served += len(recs)
            if not batch:
                await asyncio.sleep(timeout_ms / 1000)
            return batch

    return Consumer, TopicPartition




async def _run(plan: list, monkeypatch) -> tuple:
    import aiokafka

    broker = Broker(plan)
    consumer, _ = stand_in(broker)
    monkeypatch.setattr(aiokafka, "AIOKafkaConsumer", consumer)
    monkeypatch.setattr(G, "RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(G, "RETRY_MAX_S", 0.05)
    gw = Gateway(GatewaySettings(bootstrap="127.0.0.1:1", port=0))
    await gw.start()
    loop = asyncio.get_running_loop()
    seen_503 = []
    try:
        deadline = time.monotonic() + 120
        while True:
            status, body = await loop.run_in_executor(None, _get, f"http://127.0.0.1:{gw.port}/readyz")
            if status == 200 and not broker.plan and broker.consumers[-1].what is None:
                break
            if status != 200:
                seen_503.append(body)
            assert time.monotonic() < deadline and not gw.reader_task.done(), body
            await asyncio.sleep(0.01)
        health = (await loop.run_in_executor(None, _get, f"http://127.0.0.1:{gw.port}/healthz"))[0]
        return gw, broker, seen_503, health
    finally:
        await gw.stop()


def _log_ids(gw) -> list:
    return [(it.topic, it.partition, it.offset) for it in gw.state.log]


WANT: list = []


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(st.one_of(st.just("down"), st.integers(min_value=1, max_value=400)), min_size=1,
                     max_size=4))
def test_the_reader_tries_again_and_resumes_where_it_was(plan, monkeypatch):
    gw, broker, not_ready, health = asyncio.run(_run(plan, monkeypatch))
    if not WANT:                                         # a broker there all along
        WANT.append(asyncio.run(_run([], monkeypatch))[0])
    want = WANT[0]
    got = _log_ids(gw)
    assert len(got) > 400
    assert sorted(got) == sorted(_log_ids(want))          # nothing twice, nothing missed
    for tp in {(t, p) for t, p, _ in got}:               # each partition in its order
        offs = [o for t, p, o in got if (t, p) == tp]
        assert offs == sorted(offs)
    assert health == 200
    assert len(broker.consumers) == len(plan) + 1         # one new consumer a try, never given up
    if "down" in plan:
        assert any(b.startswith("not ready: cannot read the Kafka broker at 127.0.0.1:1") for b in not_ready)
    reached: dict = {}
    for c in broker.consumers:                           # each reconnection seeks where the last one was
        for tp, off in c.seeks.items():
            assert off == reached.get(tp), (tp, off, reached)
        if c.what != "down":
            reached.update({tp: p for tp, p in c.pos.items() if p})
