"""``lapstream demo``: embedded broker + worker + replay, the race live in the terminal."""
from __future__ import annotations

import asyncio
import heapq
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from importlib import resources
from pathlib import Path

import orjson

from streams import defaults as D
from streams import topics as T
from streams.procs import start_gateway, start_worker, stop_process, wait_http

FEEDS = {
    None: "beijing2022-tpw-final-a.jsonl",
    "final-a": "beijing2022-tpw-final-a.jsonl",
    "women": "beijing2022-tp-women.jsonl",
    "men": "beijing2022-tp-men.jsonl",
}


def feed_path(name: str | None) -> Path:
    if name in FEEDS:
        p = resources.files("streams") / "feeds" / FEEDS[name]
        return Path(str(p))
    return Path(name)


def run_demo(args) -> int:
    from rich.console import Console

    from streams.broker import EmbeddedBroker, ensure_topics, free_port, parse_broker_setting
    from streams.cli import FAILURE, USAGE, CliError
    from streams.cli_live import check_port_free

    try:   # a pipe or a file: each line goes out when it is printed, not at the end
        sys.stdout.reconfigure(line_buffering=True)
    except (AttributeError, ValueError):
        pass
    console = Console(stderr=False, soft_wrap=True)   # in a pipe: a message is one line, not wrapped at 80

    def _interrupt(signum, frame):   # a closed terminal or a kill: clean up like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    stopped = False
    path = feed_path(args.feed)
    if not path.is_file():
        raise CliError(f"no feed {path}: give a feed file, or 'women' / 'men' (see --feed)", USAGE)
    try:
        kind, boot = parse_broker_setting(args.broker)
    except ValueError as exc:
        raise CliError(f"--broker: {exc}", USAGE) from None
    from streams.kafka_security import ENV_PREFIX, KafkaSecurity, KafkaSecurityError

    try:   # a Kafka cluster: LAPSTREAM_KAFKA_* (TLS/SASL); the embedded broker: loopback plaintext
        security = KafkaSecurity.from_env() if boot is not None else None
    except KafkaSecurityError as exc:
        raise CliError(str(exc), USAGE) from None
    plain_env = None if security is not None else {
        k: "" for k in os.environ if k.startswith(ENV_PREFIX)}   # the worker and the gateway too
    http_port = args.http_port or free_port()
    check_port_free(D.HTTP_HOST, http_port)   # the worker's: say so now, not "not ready" later
    broker = None
    children: list[tuple[str, subprocess.Popen, str]] = []   # (name, Popen, log path) of what this demo started
    # logs and the worker's data: removed on every way out (the end, Ctrl-C, SIGTERM/SIGHUP, an error)
    workdir = tempfile.mkdtemp(prefix="lapstream-demo-")
    try:
        if boot is None:
            broker = EmbeddedBroker(kind, log_path=os.path.join(workdir, "broker.log"), tmp_parent=workdir)
            broker.start()
            boot = broker.bootstrap
            console.print(f"embedded {broker.kind} broker on [bold]{boot}[/bold]")
        asyncio.run(ensure_topics(boot, security=security))
        worker_log = os.path.join(workdir, "worker.log")
        worker = start_worker(boot, http_port, log_path=worker_log,
                              session_timeout=2.0 if broker is not None and broker.kind == "tansu" else 6.0,
                              env=plain_env, data_dir=os.path.join(workdir, "worker-data"))
        children.append(("worker", worker, worker_log))
        metrics_url = f"http://127.0.0.1:{http_port}/metrics"
        console.print(f"worker metrics: [bold]{metrics_url}[/bold]  (health: /healthz, /readyz)")
        if not wait_http(f"http://127.0.0.1:{http_port}/readyz", 90, worker):
            raise CliError(f"the worker did not become ready: {_last_line(worker_log) or 'no output'}",
                           FAILURE)
        page = None
        if getattr(args, "web", False):
            web_port = args.web_port or free_port()
            check_port_free("127.0.0.1", web_port, "--web-port")   # the gateway's: one line now
            gateway_log = os.path.join(workdir, "gateway.log")
            gateway = start_gateway(boot, web_port, log_path=gateway_log, env=plain_env)
            children.append(("gateway", gateway, gateway_log))
            if not wait_http(f"http://127.0.0.1:{web_port}/readyz", 90, gateway):
                raise CliError(f"the gateway did not become ready: {_last_line(gateway_log) or 'no output'}",
                               FAILURE)
            page = f"http://127.0.0.1:{web_port}/"
            console.print(f"scoreboard: [bold]{page}[/bold]  "
                          f"(API /api/v1/races, stream /api/v1/stream, /openapi.yaml)")
        ends = exits_when_done(args)
        console.print(f"replaying {path.name} {pace_text(args.speed)} "
                      f"({'ends once the races are official; ' if ends else ''}Ctrl-C stops)")
        return asyncio.run(_live(console, boot, path, args, metrics_url, security,
                                 children=children, broker=broker, page=page))
    except KeyboardInterrupt:
        stopped = True
        return 130
    finally:
        _cleanup(children, broker, workdir)
        # nothing is left to stop: a further SIGTERM/SIGHUP (a supervisor repeating
        # itself) must not end the exit in a KeyboardInterrupt traceback
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if stopped:
            console.print("stopped")   # (last: everything it started is gone)


def exits_when_done(args) -> bool:
    """The demo ends by itself once the feed is replayed and its races are official,
    unless asked to stay (--stay) or serving the page (--web, unless --exit-when-done)."""
    if getattr(args, "stay", False):
        return False
    return bool(getattr(args, "exit_when_done", False)) or not getattr(args, "web", False)


def _cleanup(children, broker, workdir: str) -> None:
    """Stop what the demo started and remove its work directory; a second Ctrl-C or a
    SIGTERM meanwhile does not cut this short (each stop is bounded by its timeout).

    The directory goes first too: a supervisor's SIGKILL may follow its SIGTERM
    within seconds (script(1): 2 s; docker stop: 10 s) while the worker still
    shuts down; the children then get SIGTERM from the kernel (die_with_parent).
    It goes again at the end, in case a process wrote there while stopping."""
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            old[sig] = signal.signal(sig, signal.SIG_IGN)
        except (ValueError, OSError):   # pragma: no cover - not the main thread
            pass
    try:
        for _, proc, _ in children:     # all at once: their shutdowns overlap
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
        shutil.rmtree(workdir, ignore_errors=True)
        for _, proc, _ in reversed(children):
            try:
                stop_process(proc)
            except Exception:   # pragma: no cover - keep stopping the rest
                pass
        if broker is not None:
            try:
                broker.stop()
            except Exception:   # pragma: no cover
                pass
        shutil.rmtree(workdir, ignore_errors=True)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def pace_text(speed: float | None) -> str:
    return "as fast as possible" if speed is None else f"at {speed:g}x real time"


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as f:
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


QUIET_S = 3.0        # no new event for this long after the replay: the output has settled
GIVE_UP_S = 20.0     # ... for this long, even if a race the feed made official is not (yet) shown so
HOLD_S = 1.0         # line output: how long an event may wait for one with an earlier t_us


def expected_official(lines: list[bytes]) -> set[str]:
    """Races the demo waits to see official (or void) on the board: those the feed
    makes official or void, and those it sets up (``race``) and starts (``start``),
    so that a feed that never makes a race official ends after ``GIVE_UP_S``
    naming it, instead of passing for done."""
    decided, set_up, started = set(), set(), set()
    for ln in lines:
        if b'"decision"' not in ln and b'"race"' not in ln and b'"start"' not in ln:
            continue
        try:
            msg = orjson.loads(ln)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(msg, dict) or not isinstance(msg.get("race_id"), str):
            continue
        kind = msg.get("kind")
        if kind == "decision" and msg.get("code") in ("OFFICIAL", "VOID"):
            decided.add(msg["race_id"])
        elif kind == "race":
            set_up.add(msg["race_id"])
        elif kind == "start":
            started.add(msg["race_id"])
    return decided | (set_up & started)


def _hashable(v):
    """A key part from any JSON value (an event this demo cannot read still gets a place)."""
    return v if isinstance(v, (str, int, float, type(None))) else repr(v)


class TimeOrder:
    """Line output in the order of the events' ``t_us`` as far as their arrival allows.

    The demo reads several topics; the consumer hands them over topic by topic
    (at ``--speed max`` every split before any result). An event waits here up to
    ``hold_s`` for one with an earlier ``t_us`` from another topic. Events of one
    key (a race, a group, an event) keep the order they came in, whatever their
    ``t_us`` (a revision may carry an earlier one): that order is the contract's.
    """

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self.heap: list = []
        self.arrived: deque = deque()      # (arrival, seq), in arrival order
        self.released: set[int] = set()
        self.floor: dict[tuple, int] = {}  # key -> the latest t given to an event of it
        self.latest = 0                    # for events without t_us (dead letters): now
        self.seq = 0

    def add(self, ev: dict, now: float) -> None:
        key = (_hashable(ev.get("kind")), _hashable(ev.get("race_id") or ev.get("group") or ev.get("event")))
        t = ev.get("t_us") if isinstance(ev.get("t_us"), int) else self.latest
        t = max(t, self.floor.get(key, t))
        self.floor[key] = t
        self.latest = max(self.latest, t)
        heapq.heappush(self.heap, (t, self.seq, ev))
        self.arrived.append((now, self.seq))
        self.seq += 1

    def due(self, now: float, flush: bool = False) -> list[dict]:
        """Events to print now: while one has waited ``hold_s``, the earliest in t order."""
        out = []
        while self.heap:
            while self.arrived and self.arrived[0][1] in self.released:
                self.released.discard(self.arrived.popleft()[1])
            if not flush and (not self.arrived or now - self.arrived[0][0] < self.hold_s):
                break
            _, seq, ev = heapq.heappop(self.heap)
            self.released.add(seq)
            out.append(ev)
        return out


async def _live(console, boot: str, path: Path, args, metrics_url: str, security=None,
                children=(), broker=None, page: str | None = None) -> int:
    from streams.board import Board
    from streams.cli import FAILURE, CliError
    from streams.process import open_feed
    from streams.replay import record, replay

    board = Board()
    stop = asyncio.Event()
    done = {"replayed": False, "last": time.monotonic()}
    with open_feed(str(path)) as f:     # gzip-compressed too, as process and replay
        lines = f.read().splitlines()
    races = expected_official(lines)
    ends = exits_when_done(args)
    # the live view redraws a terminal; elsewhere (a pipe, a file, CI) it would show
    # nothing until the end: print lines there, as --plain does, and the board at the end
    live_view = not args.plain and console.is_terminal and not console.is_dumb_terminal
    order = None if live_view else TimeOrder(HOLD_S)

    class Sink:
        def write(self, b: bytes) -> None:
            pass

        def flush(self) -> None:
            pass

    def show(ev: dict) -> None:
        change = board.apply(ev)
        if order is not None and change is not None:
            # "[official]" is text, not markup; a long line is one line in a pipe
            console.print(_line(ev, change), markup=False, highlight=False, soft_wrap=True)

    def on_record(topic: str, value: bytes) -> None:
        done["last"] = time.monotonic()
        if topic == T.DEADLETTER.name:
            ev = {"kind": "deadletter", "error": "bad input"}
        else:
            try:
                ev = orjson.loads(value)
            except orjson.JSONDecodeError:   # not from a lapstream worker: say so, go on
                ev = {"kind": "unreadable", "error": f"{topic}: not JSON"}
            if not isinstance(ev, dict):
                ev = {"kind": "unreadable", "error": f"{topic}: not a JSON object"}
        if order is None:
            show(ev)
        else:
            order.add(ev, done["last"])

    async def run_replay() -> None:
        await replay(boot, lines, speed=args.speed, skip_idle=not args.no_skip_idle, security=security)
        done["replayed"] = True

    def check() -> None:
        """A task or a process of the demo that ended before its time is an error, not a hang."""
        for task in (rec_task, rep_task):
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()
        if rec_task.done():
            raise CliError("the demo stopped reading the derived topics", FAILURE)
        for name, proc, log in children:
            if proc.poll() is not None:
                raise CliError(f"the {name} stopped (exit code {proc.returncode}): "
                               f"{_last_line(log) or 'no output'}", FAILURE)
        if broker is not None and not broker.is_running:
            raise CliError("the embedded broker stopped", FAILURE)

    rec_task = asyncio.create_task(record(boot, Sink(), [t.name for t in T.DERIVED] + [T.DEADLETTER.name],
                                          stop=stop, on_record=on_record, security=security))
    rep_task = asyncio.create_task(run_replay())
    said = False

    def tick() -> bool:
        """One look: print what is due; True when the demo should end."""
        nonlocal said
        if order is not None:
            for ev in order.due(time.monotonic()):
                show(ev)
        check()
        state = settled(board, done, races, time.monotonic())
        if state is None:
            return False
        if ends:
            return True
        if not said:
            said = True
            where = f"; the scoreboard page stays up at {page}" if page else ""
            console.print(f"the feed is replayed and the output has settled{where} (Ctrl-C stops)")
        return False

    try:
        if live_view:
            from rich.live import Live

            with Live(board.render(), console=console, refresh_per_second=4) as live:
                while not tick():
                    live.update(board.render())
                    await asyncio.sleep(0.25)
                live.update(board.render())
        else:
            while not tick():
                await asyncio.sleep(0.25)
    finally:
        stop.set()
        rep_task.cancel()
        await asyncio.gather(rec_task, rep_task, return_exceptions=True)
        if order is not None:
            for ev in order.due(time.monotonic(), flush=True):
                show(ev)
    if order is not None and not args.plain:
        console.print(board.render())   # the view a terminal would have shown, once
    missing = sorted(r for r in races if not _is_over(board, r))
    if missing:
        console.print(f"not shown as official (nothing came for {GIVE_UP_S:g} s): {', '.join(missing)}")
    console.print(f"metrics were at {metrics_url}")
    return 0


def _is_over(board, race_id: str) -> bool:
    rv = board.races.get(race_id)
    return rv is not None and rv.status in ("official", "void")


def settled(board, done, races: set[str], now: float) -> str | None:
    """None while the demo has more to show; "official" once the feed is replayed, every
    race of ``races`` (expected_official: made official or void, or set up and started)
    is shown official or void and nothing came for QUIET_S; "quiet" once nothing came
    for GIVE_UP_S after the replay (a race never made official: the demo names it)."""
    if not done["replayed"]:
        return None
    quiet = now - done["last"]
    if quiet >= QUIET_S and races and all(_is_over(board, r) for r in races):
        return "official"
    if quiet >= GIVE_UP_S:
        return "quiet"
    return None


def _line(ev: dict, change: str | None = None) -> str:
    """One line for an event ``Board.apply`` found news of: ``change`` is "new",
    "revised" (a value a viewer sees changed), "withdrawn" (a split, finish,
    incident or record taken back) or "unreadable". Any JSON object gives a line:
    one the board cannot read gives "unreadable event: <why>"."""
    from streams.board import REVISED, WITHDRAWN, problem

    why = problem(ev)
    if why is not None:
        return f"unreadable event: {why}"
    k = ev["kind"]
    rev = " (revised)" if change == REVISED else ""
    if change == WITHDRAWN and k in ("split", "finish"):
        rev = " withdrawn"
    if k == "split":
        who = ev["skater_id"] or f"{ev['competitor_id']} (team)"
        return (f"split    {ev['race_id']} {who:<14} {ev['distance_m']:>5} m {ev['time']:>8} rank {ev['rank']} "
                f"+{ev['behind_ms']} ms{rev}")
    if k == "finish":
        return f"FINISH   {ev['race_id']} {ev['competitor_id']:<14} {ev['time']:>8} rank {ev['rank']} ({ev['source']}){rev}"
    if k == "incident":
        back = " taken back" if change == WITHDRAWN else ""
        return (f"INCIDENT {ev['race_id']} {ev['type']} {ev['status']} {ev['skater_id'] or ev['competitor_id']} "
                f"at {ev['at_m']} m{back}")
    if k == "record":
        if change == WITHDRAWN:
            return f"RECORD   {ev['race_id']} {ev['record']} {ev['time']} {ev['competitor_id']} taken back"
        return f"RECORD   {ev['race_id']} {ev['record']} {ev['time']} {ev['competitor_id']} (was {ev['previous_time']}){rev}"
    if k == "result":
        top = ", ".join(f"{e['rank'] or e['irm']}. {e['competitor_id']} {e['time'] or ''}" for e in ev["ranking"])
        return f"result   {ev['race_id']} [{ev['status']}] {top}"
    if k == "classification":
        done = " (complete)" if ev.get("complete") else ""
        return "classification " + ", ".join(f"{r['place']}. {r['competitor_id']}" for r in ev["ranking"]) + done
    if k == "standings":
        done = ", complete" if ev.get("complete") else ""
        return f"standings {ev['group']} ({len(ev['ranking'])} ranked{done})"
    return f"{k} {ev.get('error', '')}"[:500]
