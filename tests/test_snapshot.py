"""Snapshots of the core's state (agents/core/snapshot.py) and the live
adapter's rebuild from them (agents/live.py), in memory.

The promise: processing a feed's first k lines, saving the state, loading it
(in a fresh processor) and processing the rest gives byte for byte the
derived events of processing the whole feed at once; and a snapshot that is
corrupt, truncated, foreign or of another configuration is never loaded and
never raises anything but ``SnapshotError`` (the worker rebuilds from the
log). tests/test_live.py shows the same with a real broker and worker.
"""
from __future__ import annotations

import asyncio
import zlib
from functools import lru_cache

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from agents.core import snapshot as snap
from agents.core.config import CoreConfig
from agents.core.engine import Engine
from agents.live import LiveAdapter, RefLog, load_processor, refs_onto_snapshot, snapshot_processor
from streams import beijing
from streams.process import Processor, process_lines
from streams.topics import DEADLETTER, RECORDS_REF
from tests.msgs import by_id
from tests.paths import DATA
from tests.test_properties import base_feed   # the simulator's feeds (imported here, not inside a test)

PROFILE = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SHIPPED = {
    "final-a": beijing.FEEDS_DIR / beijing.FINAL_A_FILE,
    "women": beijing.FEEDS_DIR / beijing.WOMEN_FILE,
    "men": beijing.FEEDS_DIR / beijing.MEN_FILE,
    "m500": DATA / "m500-pair.jsonl",
}


@lru_cache(maxsize=None)
def feed(name: str) -> tuple[bytes, ...]:
    if name in SHIPPED:
        return tuple(ln for ln in SHIPPED[name].read_bytes().splitlines() if ln.strip())
    kind, seed = name.split("-")
    return base_feed(kind, int(seed))[0]


FEEDS = sorted(SHIPPED) + ["pair-0", "pair-1", "team-0", "team-2", "mass-0", "mass-3"]


@lru_cache(maxsize=None)
def whole(name: str) -> tuple[bytes, ...]:
    return tuple(orjson.dumps(e) for e in process_lines(list(feed(name))))


def cut_and_resume(lines, cuts) -> list[bytes]:
    """Process ``lines``, saving and loading the state at each cut (a new
    processor each time); the derived events (and dead letters) as bytes."""
    out: list[bytes] = []
    proc = Processor()
    prev = 0
    for k in sorted(cuts):
        out.extend(orjson.dumps(e) for e in process_lines(lines[prev:k], proc, flush=False))
        data = snapshot_processor(proc, {"offset": k})
        meta, proc = load_processor(data)
        assert meta == {"offset": k}
        prev = k
    out.extend(orjson.dumps(e) for e in process_lines(lines[prev:], proc))
    return out


@PROFILE
@given(name=st.sampled_from(FEEDS), data=st.data())
def test_a_snapshot_anywhere_changes_no_byte_of_the_output(name, data):
    lines = list(feed(name))
    cuts = data.draw(st.lists(st.integers(0, len(lines)), min_size=1, max_size=3))
    got = cut_and_resume(lines, cuts)
    # (dead-letter lines carry the line number within the slice processed)
    want = list(whole(name))
    assert [g for g in got if b'"deadletter"' not in g] == [w for w in want if b'"deadletter"' not in w]
    assert len(got) == len(want)


def test_every_cut_of_a_short_feed():
    lines = list(feed("m500"))
    want = list(whole("m500"))
    for k in range(0, len(lines) + 1, max(1, len(lines) // 150)):
        assert cut_and_resume(lines, [k]) == want, k


def test_a_held_message_survives_a_snapshot():
    """The clock guard's held messages (raw bytes and tags included) are state too."""
    lines = list(feed("final-a"))
    msgs = [orjson.loads(ln) for ln in lines]
    i = next(i for i, m in enumerate(msgs) if m["kind"] == "heartbeat" and i > 200)
    ahead = dict(msgs[i], t_us=msgs[i]["t_us"] + 20_000_000, source="X9")
    lines = lines[:i] + [orjson.dumps(ahead)] + lines[i:]
    proc = Processor()
    list(process_lines(lines[:i + 1], proc, flush=False))
    assert proc.guard.held, "the leap is held"
    want = [orjson.dumps(e) for e in process_lines(lines)]
    assert cut_and_resume(lines, [i + 1]) == want


# -- what is never loaded ------------------------------------------------------------


def _state_bytes(n: int = 400) -> bytes:
    proc = Processor()
    list(process_lines(list(feed("final-a"))[:n], proc, flush=False))
    return snapshot_processor(proc, {"offset": n})


GOOD = _state_bytes()


def _mutate(data: bytes, how: str, pos: int, val: int) -> bytes:
    pos %= len(data)
    if how == "truncate":
        return data[:pos]
    if how == "flip":
        return data[:pos] + bytes([data[pos] ^ (val or 1)]) + data[pos + 1:]
    if how == "insert":
        return data[:pos] + bytes([val]) + data[pos:]
    return data[:pos] + data[pos + 1:]


@PROFILE
@given(how=st.sampled_from(["truncate", "flip", "insert", "delete"]), pos=st.integers(0, 10**9),
       val=st.integers(0, 255))
def test_a_damaged_snapshot_is_refused_never_loaded_or_raised(how, pos, val):
    bad = _mutate(GOOD, how, pos, val)
    if bad == GOOD:
        return
    with pytest.raises(snap.SnapshotError):
        load_processor(bad)


@PROFILE
@given(junk=st.one_of(st.binary(max_size=300), st.builds(lambda b: snap.MAGIC + b"\n" + b, st.binary(max_size=300))))
def test_arbitrary_bytes_are_refused(junk):
    with pytest.raises(snap.SnapshotError):
        load_processor(junk)


def _repack(tree, fp=None, meta=None) -> bytes:
    """A well-formed snapshot (right checksum, this fingerprint) of ``tree``."""
    import hashlib
    import json

    body = zlib.compress(json.dumps(tree).encode())     # (stdlib: integers beyond 64 bits too)

    fp = fp or snap.header_of(GOOD)["fp"]
    meta = meta or {}
    h = hashlib.blake2b(digest_size=16)
    h.update(orjson.dumps([fp, meta]) + b"\n" + body)
    header = {"format": snap.FORMAT, "fp": fp, "meta": meta, "size": len(body), "sum": h.hexdigest()}
    return snap.MAGIC + b"\n" + orjson.dumps(header) + b"\n" + body


def _tree():
    body = GOOD.split(b"\n", 2)[2]
    return orjson.loads(zlib.decompress(body))


@pytest.mark.parametrize("name", ["os:system", "builtins:eval", "subprocess:Popen", "agents.live:LiveAdapter",
                                  "agents.core.snapshot:__builtins__", "agents.core.engine:Engine.__init__.__globals__"])
def test_a_snapshot_naming_anything_outside_the_core_is_refused(name):
    tree = _tree()
    tree["classes"][0][0] = name
    with pytest.raises(snap.SnapshotError):
        load_processor(_repack(tree))
    for node in (["g", name], ["e", name, "x"], ["x", 10**6, name, []]):
        with pytest.raises(snap.SnapshotError):
            snap.decode({"classes": [], "root": node})


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                     st.text(max_size=8)),
                           lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=4), c, max_size=4)),
                           max_leaves=20)


@PROFILE
@given(root=json_values, classes=st.one_of(st.just([]), json_values))
def test_any_json_tree_loads_or_is_refused(root, classes):
    """A well-formed, checksummed snapshot of nonsense: SnapshotError, never another exception."""
    try:
        load_processor(_repack({"classes": classes, "root": root}))
    except snap.SnapshotError:
        pass


def test_another_configuration_or_version_is_refused():
    with pytest.raises(snap.SnapshotError, match="fingerprint"):
        load_processor(GOOD, CoreConfig(reorder_us=2_000_000))
    other = GOOD.replace(b'"format":1', b'"format":2', 1)
    with pytest.raises(snap.SnapshotError, match="format"):
        load_processor(other)
    with pytest.raises(snap.SnapshotError, match="fingerprint"):
        load_processor(_repack(_tree(), fp="0" * 24))


def test_a_state_holding_something_unknown_is_not_saved():
    proc = Processor()
    proc.engine.races["x"] = open          # (a builtin: not the core's)
    with pytest.raises(snap.SnapshotError):
        snapshot_processor(proc, {})


def test_round_trip_of_the_value_kinds():
    from agents.core.model import Outcome
    from agents.core.model_records import RecordStatus
    from agents.core.timefmt import id_prefix, split_id
    import collections

    shared = [1, 2]
    obj = {"big": 2**80, "neg": -2**70, "inf": float("inf"), "ninf": float("-inf"), "f": 0.1 + 0.2,
           "b": b"\x00\xff", "t": (1, "a", None, (2.5, True)), "s": {("a", 1), ("b", 2)},
           "fs": frozenset({1, 2}), "q": collections.deque([1, 2], maxlen=5), "e": [Outcome.DUPLICATE, RecordStatus.BROKEN],
           "k": {(1, "x"): shared, Outcome.APPLIED: shared, 3: "int key"}, "p": id_prefix("split", "R", 1)}
    obj["self"] = obj
    back = snap.decode(orjson.loads(orjson.dumps(snap.encode(obj))))
    assert back["self"] is back
    assert back["k"][(1, "x")] is back["k"]["applied"] and back["k"][(1, "x")] == [1, 2]
    assert back["k"][Outcome.APPLIED] is back["k"][(1, "x")]
    for k in ("big", "neg", "inf", "ninf", "f", "b", "t", "s", "fs", "e"):
        assert back[k] == obj[k] and type(back[k]) is type(obj[k]), k
    assert back["q"] == obj["q"] and back["q"].maxlen == 5
    assert split_id(back["p"], "C", "S", 100, 0) == split_id(obj["p"], "C", "S", 100, 0)
    nan = snap.decode(orjson.loads(orjson.dumps(snap.encode(float("nan")))))
    assert nan != nan


# -- record references: one per key -------------------------------------------------


ref_msgs = st.builds(
    lambda rec, holder, race, t, hund, own, withdrawn: {
        "kind": "record_ref", "v": 1, "t_us": 1_644_000_000_000_000 + t, "record": rec,
        "format": "team_pursuit", "gender": "W", "distance_m": 2400, "scope": "OWG" if rec == "OR" else None,
        "time": f"2:5{hund // 100}.{hund % 100:02d}", "holder": holder, "set_on": "2022-02-15", "venue": "XYZ",
        **({"origin": "lapstream", "race_id": race, "withdrawn": withdrawn} if own else {})},
    st.sampled_from(["WR", "OR"]), st.sampled_from(["CAN", "JPN"]), st.sampled_from(["R1", "R2"]),
    st.integers(0, 3), st.integers(0, 3), st.booleans(), st.booleans())


def _refs_state(eng: Engine) -> bytes:
    """The references as the core reads them: per identity (looked up, so the
    order of identities does not matter; an empty entry is none), the book's
    history and the claims in their order (the first of equal times stands)."""
    book = sorted((repr(k), v) for k, v in eng.book.items() if v)
    foreign = sorted((repr(k), v) for k, v in eng.foreign.items() if v)
    return orjson.dumps(snap.encode([book, foreign]))


@PROFILE
@given(msgs=st.lists(ref_msgs, max_size=25), split=st.integers(0, 25))
def test_the_reference_log_gives_the_core_what_every_reference_gave(msgs, split):
    raws = [orjson.dumps(m) for m in msgs]
    full = Processor()
    for r in raws:
        full.handle(r)
    log = RefLog()
    for r, m in zip(raws, msgs):
        log.add(r, m)
    assert len(log) <= len(raws)
    fresh = Processor()
    for r in log:
        fresh.handle(r)
    assert _refs_state(fresh.engine) == _refs_state(full.engine)
    # a processor loaded from a snapshot taken after some of them gets the rest
    part = Processor()
    for r in raws[:split]:
        part.handle(r)
    _, loaded = load_processor(snapshot_processor(part, {}))
    refs_onto_snapshot(loaded, log)
    assert _refs_state(loaded.engine) == _refs_state(full.engine)


# -- the live adapter, in memory ----------------------------------------------------

FEED = list(feed("final-a"))
REFS = [ln for ln in FEED if b'"record_ref"' in ln]
RAW = [ln for ln in FEED if b'"record_ref"' not in ln]
CLEAN = list(process_lines(FEED))


class Log:
    def __init__(self, records):
        self.records = records
        self.sent: list = []
        self.read = 0

    async def send(self, topic, key, value, headers):
        self.sent.append((topic, key, value, headers))

    async def rebuild(self, partition, start, end):
        for off in range(start, min(end, len(self.records))):
            self.read += 1
            yield off, b"NSO", self.records[off]


class MemStore:
    def __init__(self):
        self.saved: dict[int, list] = {}
        self.junk: list[bytes] = []        # served before the real ones (newest first)

    async def candidates(self, partition, upto):
        for data in self.junk:
            yield data
        for off, data in sorted(self.saved.get(partition, []), key=lambda x: -x[0]):
            if off <= upto:
                yield data

    async def save(self, partition, offset, data):
        self.saved.setdefault(partition, []).append((offset, data))


def derived(log):
    return [orjson.loads(v) for t, _, v, _ in log.sent if t not in (DEADLETTER.name, RECORDS_REF.name)]


def adapter(log, store, commits, **kw):
    a = LiveAdapter(log.send, log.rebuild, snapshots=store, committed_now=lambda p: commits.get(p),
                    snapshot_every=kw.pop("every", 150), snapshot_min=kw.pop("min", 100), **kw)
    for r in REFS:
        a.on_ref(r)
    return a


def run_with_crash(crash_at, redo, store=None, records=None, after=None):
    """A worker handles records [0, crash_at) (committing each, saving
    snapshots), is killed; a new one is assigned the partition at the
    committed offset crash_at - redo and handles the rest."""
    records = records or RAW
    log = Log(records)
    store = store if store is not None else MemStore()
    commits: dict = {}

    async def go():
        a = adapter(log, store, commits)
        for off in range(crash_at):
            await a.on_raw(0, off, b"NSO", records[off])
            if off % 50 == 0:
                commits[0] = max(0, off - redo)          # commits trail the records handled
                await a.save_snapshots()
        top = commits.get(0, 0)            # the highest offset the group committed
        c = max(0, crash_at - redo)
        if after is not None:
            log.records = after
        log.read = 0
        b = adapter(log, store, commits)

        async def committed(p):
            return c
        b.assign([0], committed)
        for off in range(c, len(log.records)):
            await b.on_raw(0, off, b"NSO", log.records[off])
        b.committed_top = top
        return a, b
    a, b = asyncio.run(go())
    return log, store, a, b


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(crash_at=st.integers(1, len(RAW) - 1), redo=st.integers(0, 60))
def test_a_restart_loads_the_newest_committed_snapshot_and_loses_nothing(crash_at, redo):
    log, store, a, b = run_with_crash(crash_at, redo)
    assert by_id(derived(log)) == by_id(CLEAN)
    saved = [off for off, _ in store.saved.get(0, [])]
    c = max(0, crash_at - redo)
    # nothing saved beyond what the group had committed when it was saved
    assert all(off <= b.committed_top for off in saved)
    usable = [off for off in saved if off <= c]
    if usable:
        assert b.snapshot_loads["loaded"] == 1 and b.snapshot_offset[0] == max(usable)
        assert b.rebuilt_messages == c - max(usable)
    else:
        assert b.rebuilt_messages == c


def test_snapshots_are_saved_only_once_committed():
    log = Log(RAW)
    store = MemStore()
    commits: dict = {}

    async def go():
        a = adapter(log, store, commits)
        for off in range(400):
            await a.on_raw(0, off, b"NSO", RAW[off])
        assert a.unsaved and await a.save_snapshots() == 0 and not store.saved   # nothing committed
        commits[0] = a.unsaved[0][0] - 1
        assert await a.save_snapshots() == 0
        commits[0] = a.unsaved[0][0]
        assert await a.save_snapshots() == 1 and not a.unsaved
    asyncio.run(go())


def test_a_restart_reads_few_records_and_gives_the_same_output():
    log, store, a, b = run_with_crash(len(RAW) - 100, 10)
    assert b.snapshot_loads["loaded"] == 1
    assert b.rebuilt_messages < 200 and log.read < 200 + 2048
    assert by_id(derived(log)) == by_id(CLEAN)


@pytest.mark.parametrize("junk", [b"", b"not a snapshot", GOOD, GOOD[:-10],
                                  _repack(_tree(), meta={"partition": 0, "offset": 10**9, "last": "x"}),
                                  _repack(_tree(), meta={"partition": 5, "offset": 300, "last": "x"})])
def test_unusable_snapshots_are_skipped_for_the_next_or_the_log(junk):
    store = MemStore()
    store.junk.append(junk)
    log, store, a, b = run_with_crash(len(RAW) - 100, 10, store=store)
    assert b.snapshot_loads["loaded"] == 1      # the good one after the junk
    assert by_id(derived(log)) == by_id(CLEAN)
    store = MemStore()
    store.junk.append(junk)
    log, store, a, b = run_with_crash(120, 10, store=store)    # none good: the whole log
    assert b.snapshot_loads["rejected"] == 1 and b.rebuilt_messages == 110
    assert by_id(derived(log)) == by_id(CLEAN)


def test_a_snapshot_of_records_the_broker_lost_is_not_loaded():
    """Snapshots at offsets the log no longer holds as they were (the broker
    lost its tail, later records reused the offsets) are ignored: the state is
    rebuilt from what the log holds."""
    n, k = 700, 200
    after = RAW[:n - k] + RAW[n:]
    log, store, a, b = run_with_crash(n, 0, after=after)
    saved = sorted(off for off, _ in store.saved[0])
    assert any(off > n - k for off in saved)
    assert b.snapshot_loads["rejected"] >= 1
    loaded = b.snapshot_offset.get(0)
    assert loaded is None or loaded <= n - k


def test_a_snapshot_taken_in_a_forked_child_is_the_state_at_the_fork():
    """The worker serialises in a forked child (a copy of the state at that
    record) and goes on; the bytes are the same as taken in place."""
    log = Log(RAW)
    store = MemStore()

    async def go():
        a = adapter(log, store, {}, snapshot_fork=True)
        b = adapter(Log(RAW), MemStore(), {})
        for off in range(400):
            await a.on_raw(0, off, b"NSO", RAW[off])
            await b.on_raw(0, off, b"NSO", RAW[off])
            if a.forking is not None:
                fork_at = a.snap_at[0][0]
                # the parent goes on at once; the child's copy is of offset fork_at
                await a.on_raw(0, off + 1, b"NSO", RAW[off + 1])
                await a.forking
                assert a.unsaved[0][0] == fork_at == b.unsaved[0][0]
                assert a.unsaved[0][1] == b.unsaved[0][1]
                return
        raise AssertionError("no snapshot taken")
    asyncio.run(go())


def test_catching_up_takes_a_snapshot_at_most_once_a_minute():
    """A replay or a backlog runs through records and event time fast: one
    snapshot per partition per ``snapshot_min_wall_s`` of the worker's clock."""
    now = [1000.0]
    log = Log(RAW)

    async def go():
        a = adapter(log, MemStore(), {}, clock=lambda: now[0], snapshot_min_wall_s=60.0, every=256, min=256)
        for off in range(1200):
            await a.on_raw(0, off, b"NSO", RAW[off])
        assert a.snapshots_taken == 1
        now[0] += 61
        for off in range(1200, 1300):
            await a.on_raw(0, off, b"NSO", RAW[off])
        assert a.snapshots_taken == 2
    asyncio.run(go())
