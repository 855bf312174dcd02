"""The worker's changes to Faust (streams.app): eager hand-over of records,
the raw schema, the delivery guard, the root logger. The end-to-end proof is
tests/test_live.py (a real broker and worker); these pin each piece down."""
from __future__ import annotations

import asyncio
import logging
import warnings

import pytest
from faust.types import Message

from streams import app as A
from streams.app import SendGuard, Settings, create_app, start_eagerly


def run(coro):
    return asyncio.run(coro)


# -- start_eagerly: a callback that does not wait runs in place ----------------

def test_a_coroutine_that_does_not_wait_finishes_in_its_first_step():
    steps = []

    async def callback():
        steps.append("ran")
        return 42

    async def main():
        other = asyncio.sleep(10)           # what it raced against: closed, never awaited
        with warnings.catch_warnings():
            warnings.simplefilter("error")   # a "never awaited" warning would fail here
            done, value = start_eagerly(callback(), (other,))
        return done, value, other.cr_frame

    done, value, frame = run(main())
    assert (done, value, steps) == (True, 42, ["ran"])
    assert frame is None                     # closed


def test_a_coroutine_that_waits_is_finished_by_the_returned_coroutine_with_its_result():
    order = []

    async def callback(ev: asyncio.Event):
        order.append("first step")
        await ev.wait()
        order.append("after the wait")
        await asyncio.sleep(0)
        return "value"

    async def main():
        ev = asyncio.Event()
        done, rest = start_eagerly(callback(ev))
        assert done is False and order == ["first step"]
        task = asyncio.ensure_future(rest)
        await asyncio.sleep(0)
        assert not task.done()
        ev.set()
        return await task

    assert run(main()) == "value"
    assert order == ["first step", "after the wait"]


def test_an_error_of_the_first_step_propagates_and_the_others_are_closed():
    async def callback():
        raise ValueError("bad record")

    async def main():
        other = asyncio.sleep(10)
        with pytest.raises(ValueError, match="bad record"):
            start_eagerly(callback(), (other,))
        return other.cr_frame

    assert run(main()) is None


def test_an_error_after_a_wait_reaches_the_awaiting_task():
    async def callback():
        await asyncio.sleep(0)
        raise KeyError("later")

    async def main():
        done, rest = start_eagerly(callback())
        assert not done
        with pytest.raises(KeyError):
            await rest

    run(main())


def test_cancelling_the_continuation_cancels_the_callback_where_it_waits():
    seen = []

    async def callback(ev):
        try:
            await ev.wait()
        except asyncio.CancelledError:
            seen.append("cancelled inside")
            raise
        finally:
            seen.append("cleanup")

    async def main():
        ev = asyncio.Event()
        done, rest = start_eagerly(callback(ev))
        task = asyncio.ensure_future(rest)
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert seen == ["cancelled inside", "cleanup"]


def test_a_cancellation_before_the_tasks_first_step_still_reaches_the_callback():
    seen = []

    async def callback(ev):
        try:
            await ev.wait()
        finally:
            seen.append("cleanup")

    async def main():
        done, rest = start_eagerly(callback(asyncio.Event()))
        task = asyncio.ensure_future(rest)
        task.cancel()                      # before the task ever ran
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert seen == ["cleanup"]


def test_the_continuation_is_a_coroutine_a_task_accepts():
    async def callback():
        await asyncio.sleep(0)
        return "ok"

    async def main():
        done, rest = start_eagerly(callback())
        assert asyncio.iscoroutine(rest)
        return await asyncio.create_task(rest)

    assert run(main()) == "ok"


def test_a_callback_can_catch_a_cancellation_and_return():
    async def callback(ev):
        try:
            await ev.wait()
        except asyncio.CancelledError:
            return "handled"

    async def main():
        done, rest = start_eagerly(callback(asyncio.Event()))
        task = asyncio.ensure_future(rest)
        await asyncio.sleep(0)
        task.cancel()
        return await task

    assert run(main()) == "handled"


def test_the_continuation_waits_on_several_futures_in_turn():
    async def callback(futs):
        total = 0
        for f in futs:
            total += await f
        return total

    async def main():
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in range(5)]
        done, rest = start_eagerly(callback(futs))
        task = asyncio.ensure_future(rest)
        for i, f in enumerate(futs):
            await asyncio.sleep(0)
            f.set_result(i + 1)
        return await task

    assert run(main()) == 15


# -- the worker's consumer: eager only while the flow runs ---------------------

class _Flag:
    def __init__(self, on=False):
        self.on = on

    def is_set(self):
        return self.on


def _consumer_class():
    app = create_app(Settings(bootstrap="127.0.0.1:1", http_port=1))
    return app, app.transport.Consumer


def test_the_consumer_hands_a_record_over_in_place_while_the_flow_runs():
    _, Consumer = _consumer_class()
    ran = []

    async def callback():
        ran.append(asyncio.current_task())
        return "delivered"

    class Fake:
        suspend_flow = _Flag(False)
        _stopped = _Flag(False)
        _crashed = _Flag(False)

    async def main():
        me = asyncio.current_task()
        res = await Consumer.wait_first(Fake(), callback(), asyncio.sleep(10))
        return me, res

    me, res = run(main())
    assert ran == [me]                        # no task of its own
    assert res.results == ["delivered"] and not res.stopped


@pytest.mark.parametrize("flag", ["suspend_flow", "_stopped", "_crashed"])
def test_the_consumer_leaves_it_to_faust_when_the_flow_is_suspended_or_stopping(flag, monkeypatch):
    _, Consumer = _consumer_class()
    owner = next(c for c in Consumer.__mro__[1:] if "wait_first" in c.__dict__)
    seen = []

    async def fausts_wait_first(self, *coros, timeout=None):
        seen.append([c.cr_frame.f_lasti if asyncio.iscoroutine(c) else None for c in coros])
        for c in coros:
            c.close()
        return "faust's"

    monkeypatch.setattr(owner, "wait_first", fausts_wait_first)
    obj = Consumer.__new__(Consumer)
    for f in ("suspend_flow", "_stopped", "_crashed"):
        obj.__dict__[f] = _Flag(f == flag)
    started = []

    async def callback():
        started.append(1)

    async def main():
        return await obj.wait_first(callback(), asyncio.sleep(10))

    assert run(main()) == "faust's"
    assert started == []          # nothing of the callback ran before Faust's wait_first
    assert len(seen) == 1 and len(seen[0]) == 2


def test_a_callback_that_waits_continues_under_fausts_wait_first(monkeypatch):
    _, Consumer = _consumer_class()
    owner = next(c for c in Consumer.__mro__[1:] if "wait_first" in c.__dict__)

    async def fausts_wait_first(self, *coros, timeout=None):
        return [await c for c in coros[:1]]

    monkeypatch.setattr(owner, "wait_first", fausts_wait_first)
    obj = Consumer.__new__(Consumer)
    for f in ("suspend_flow", "_stopped", "_crashed"):
        obj.__dict__[f] = _Flag(False)
    steps = []

    async def callback(ev):
        steps.append("before")
        await ev.wait()
        steps.append("after")
        return "delivered"

    async def main():
        ev = asyncio.Event()
        asyncio.get_running_loop().call_soon(ev.set)
        return await obj.wait_first(callback(ev))

    assert run(main()) == ["delivered"]
    assert steps == ["before", "after"]


# -- delivery guard ------------------------------------------------------------

def test_the_send_guard_counts_deliveries_and_keeps_the_first_failure():
    async def main():
        loop = asyncio.get_running_loop()
        g = SendGuard()
        ok, bad, bad2, cancelled = (loop.create_future() for _ in range(4))
        for f in (ok, bad, bad2, cancelled):
            f.add_done_callback(g.on_done)
        ok.set_result("meta")
        bad.set_exception(RuntimeError("broker gone"))
        bad2.set_exception(RuntimeError("second"))
        cancelled.cancel()
        await asyncio.sleep(0)
        return g

    g = run(main())
    assert g.sent == 1
    assert isinstance(g.failed, RuntimeError) and str(g.failed) == "broker gone"


def test_no_offset_is_committed_after_a_failed_delivery():
    app, Consumer = _consumer_class()
    app.lapstream_sends.failed = RuntimeError("broker gone")
    crashed = []

    class Fake:
        def __init__(self):
            self.app = app

        async def crash(self, exc):
            crashed.append(exc)

    assert run(Consumer._commit(Fake(), {("timing.raw", 0): 10})) is False
    assert crashed == [app.lapstream_sends.failed]


# -- raw schema, settings, logging -----------------------------------------------

def test_raw_records_reach_the_agent_as_bytes_with_their_headers():
    app = create_app(Settings(bootstrap="127.0.0.1:1", http_port=1))
    import faust

    fast = A.RawSchema().compile(app)
    fausts = faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw",
                          value_serializer="raw").compile(app)
    msg = Message("timing.raw", 3, 17, 0.0, 0, [("h", b"v")], b"NSO", b'{"kind":"x"}', None)
    ev, ref = run(fast(msg)), run(fausts(msg))
    assert (ev.key, ev.value, ev.message) == (b"NSO", b'{"kind":"x"}', msg)
    assert (ev.key, ev.value, ev.headers, ev.message) == (ref.key, ref.value, ref.headers, ref.message)
    assert type(ev) is type(ref)


def test_the_stream_buffer_holds_more_than_a_second_of_catch_up():
    # Faust's fetcher sleeps 1 s once the buffer is 80% full, and resumes at 40%
    app = create_app(Settings(bootstrap="127.0.0.1:1", http_port=1))
    assert app.conf.stream_buffer_maxsize * 0.4 >= 20_000


def test_the_worker_keeps_the_root_logger_at_its_level():
    app = create_app(Settings(bootstrap="127.0.0.1:1", http_port=1))
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        w = A.QuietWorker(app, loglevel="warning", quiet=True, redirect_stdouts=False)
        w._setup_logging()
        assert root.level == logging.WARNING
        assert not logging.getLogger("aiokafka.conn").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
