"""The gateway's fan-out to direct SSE clients (streams/gateway.py), without
sockets or Kafka: clients grouped in cohorts (same filter, same position)
get exactly the bytes each would get alone, ids included; the latency
histogram filled per bucket equals one observation per write and event; a
slow or closed client in a cohort is dropped alone."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st
from prometheus_client import CollectorRegistry, Histogram

from streams.gateway import Client, Gateway, GatewaySettings, _Latencies, sse_frame
from streams.gateway_state import Filter, Item, encode_position


class FakeTransport:
    """What the fan-out uses of an asyncio transport."""

    def __init__(self, unread: int = 0, closing: bool = False) -> None:
        self.data = bytearray()
        self.unread = unread
        self.closing = closing

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.unread


FILTERS = [Filter(), Filter(races=["A"]), Filter(kinds=["result"]), Filter(races=["B"], kinds=["split"])]


def make_item(topic, partition, offset, kind, race):
    data = b'{"kind":"%s","race_id":"%s","event_id":"%024d"}' % (kind.encode(), race.encode(), offset)
    return Item(topic, partition, offset, kind, {}, data, 0.0, race, race, None, None)


def expected(pos: dict, flt: Filter, batches, state, chunked: bool) -> bytes:
    """What one client alone must be sent: per batch one chunk of its frames,
    each frame's id its whole position after it."""
    pos = dict(pos)
    out = b""
    for items in batches:
        frames = b""
        for it in items:
            if flt.match(it, state):
                pos[(it.topic, it.partition)] = it.offset + 1
                frames += sse_frame(it, encode_position(pos))
        if frames:
            out += b"%x\r\n%b\r\n" % (len(frames), frames) if chunked else frames
    return out


client_spec = st.tuples(st.integers(0, len(FILTERS) - 1),      # filter
                        st.integers(0, 2),                     # which start position
                        st.booleans())                         # chunked (HTTP/1.1) or not
event_spec = st.tuples(st.integers(0, 1), st.integers(0, 2), st.sampled_from(["split", "result"]),
                       st.sampled_from(["A", "B"]))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clients=st.lists(client_spec, min_size=1, max_size=12),
       batches=st.lists(st.lists(event_spec, min_size=1, max_size=5), min_size=1, max_size=6))
def test_cohorts_send_each_client_what_it_would_get_alone(clients, batches):
    gw = Gateway(GatewaySettings(bootstrap="unused"))
    starts = [{(0, 0): 0, (0, 1): 0, (1, 0): 0, (1, 1): 0, (1, 2): 0},
              {(0, 0): 0, (1, 0): 0},
              {(0, 0): 0, (0, 1): 0, (0, 2): 0, (1, 0): 0, (1, 1): 0, (1, 2): 0}]
    gw.state.position = dict(starts[0])
    made = []
    for f, p, chunked in clients:
        c = Client("sse", FILTERS[f], dict(starts[p]), 1024)
        c.direct, c.sock, c.chunked = True, FakeTransport(), chunked
        gw.clients.add(c)
        made.append((c, FILTERS[f], starts[p], chunked))
    offsets: dict = {}
    made_batches = []
    for spec in batches:
        items = []
        for t, p, kind, race in spec:
            off = offsets.get((t, p), 0)
            offsets[(t, p)] = off + 1
            items.append(make_item(t, p, off, kind, race))
            gw.state.position[(t, p)] = off + 1
        made_batches.append(items)
        gw._fan_out(items)
    for c, flt, start, chunked in made:
        assert c.dropped is None
        assert bytes(c.sock.data) == expected(start, flt, made_batches, gw.state, chunked)
    # the positions the clients now share are their own (an advance copies)
    c0 = made[0][0]
    before = [dict(c.pos) for c, *_ in made]
    c0.advance(make_item(0, 0, 99, "split", "A"))
    assert [dict(c.pos) for c, *_ in made][1:] == before[1:]


def test_a_slow_or_closed_client_is_dropped_alone_and_counted():
    gw = Gateway(GatewaySettings(bootstrap="unused", send_buffer=1000))
    pos = {(0, 0): 0}
    gw.state.position = dict(pos)
    ok, slow, gone = FakeTransport(), FakeTransport(unread=1001), FakeTransport(closing=True)
    clients = []
    for tr in (ok, slow, gone):
        c = Client("sse", Filter(), dict(pos), 1024)
        c.direct, c.sock = True, tr
        gw.clients.add(c)
        clients.append(c)
    gw.state.position[(0, 0)] = 1
    gw._fan_out([make_item(0, 0, 0, "split", "A")])
    assert clients[0].dropped is None and b"id: 0.0.1\n" in ok.data
    assert clients[1].dropped.startswith("slow client: more than 1000 bytes") and not slow.data
    assert clients[2].dropped == "connection closed" and not gone.data
    assert gw._m_dropped.labels("sse")._value.get() == 1
    assert gw._m_fanned_sse._value.get() == 1


@settings(max_examples=200, deadline=None)
@given(times=st.lists(st.floats(0, 2.0, allow_nan=False), min_size=1, max_size=40),
       arrivals=st.lists(st.floats(-1.0, 0.0, allow_nan=False), min_size=1, max_size=6))
def test_latencies_per_bucket_equal_one_observation_per_write_and_event(times, arrivals):
    times = sorted(times)
    reg_a, reg_b = CollectorRegistry(), CollectorRegistry()
    buckets = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
    bulk = Histogram("lat", "x", buckets=buckets, registry=reg_a)
    each = Histogram("lat", "x", buckets=buckets, registry=reg_b)
    lat = _Latencies(bulk)
    assert lat.bulk
    lat.add_writes(times, arrivals)
    lat.flush()
    for a in arrivals:
        for t in times:
            each.observe(t - a)

    def sample(reg):
        out = {}
        for m in reg.collect():
            for s in m.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out
    a, b = sample(reg_a), sample(reg_b)
    assert {k: v for k, v in a.items() if not k[0].endswith("_sum") and not k[0].endswith("_created")} == \
        {k: v for k, v in b.items() if not k[0].endswith("_sum") and not k[0].endswith("_created")}
    sa = next(v for k, v in a.items() if k[0].endswith("_sum"))
    sb = next(v for k, v in b.items() if k[0].endswith("_sum"))
    assert abs(sa - sb) <= 1e-9 * max(1.0, abs(sb))


def test_a_direct_client_ahead_of_this_gateway_gets_no_event_twice_then_joins_the_others():
    """An SSE client that resumed with an id from a gateway that had read
    further is sent only what it has not seen, then shares the others' writes."""
    gw = Gateway(GatewaySettings(bootstrap="unused"))
    gw.state.position = {(0, 0): 2}
    behind = Client("sse", Filter(), {(0, 0): 2}, 1024)
    ahead = Client("sse", Filter(), {(0, 0): 4}, 1024)
    ahead.ahead = True
    for c in (behind, ahead):
        c.direct, c.sock = True, FakeTransport()
        gw.clients.add(c)
    for off in range(2, 7):
        gw.state.position[(0, 0)] = off + 1
        gw._fan_out([make_item(0, 0, off, "split", "A")])
    ids = [line for line in bytes(ahead.sock.data).split(b"\n") if line.startswith(b"id: ")]
    assert ids == [b"id: 0.0.5", b"id: 0.0.6", b"id: 0.0.7"]
    assert not ahead.ahead and ahead.pos is behind.pos   # one cohort again
    assert bytes(behind.sock.data).endswith(bytes(ahead.sock.data)[-60:])
