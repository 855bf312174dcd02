"""``lapstream demo``: embedded broker + worker + replay, the race live in the terminal."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib import resources
from pathlib import Path

import orjson

from streams import topics as T

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


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return True
        except Exception:
            pass
        time.sleep(0.2)
    return False


def start_worker(bootstrap: str, http_port: int, worker_id: str = "demo-1", log_path: str | None = None,
                 session_timeout: float = 2.0, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "streams.cli", "worker", "--broker", f"kafka://{bootstrap}",
           "--http-port", str(http_port), "--worker-id", worker_id, "--no-create-topics",
           "--session-timeout", str(session_timeout)]
    from streams.broker import die_with_parent

    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=die_with_parent, env={**os.environ, **(env or {})})


def start_gateway(bootstrap: str, port: int, log_path: str | None = None,
                  host: str = "127.0.0.1") -> subprocess.Popen:
    """``lapstream serve`` for ``demo --web``: the scoreboard page and the API."""
    cmd = [sys.executable, "-m", "streams.cli", "serve", "--broker", f"kafka://{bootstrap}",
           "--host", host, "--port", str(port)]
    from streams.broker import die_with_parent

    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=die_with_parent)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_demo(args) -> int:
    from rich.console import Console

    from streams.broker import EmbeddedBroker, ensure_topics, free_port, parse_broker_setting

    console = Console(stderr=False)

    def _interrupt(signum, frame):   # a closed terminal or a kill: clean up like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    path = feed_path(args.feed)
    if not path.exists():
        console.print(f"[red]lapstream demo: no feed {path}[/red]")
        return 2
    kind, boot = parse_broker_setting(args.broker)
    broker = None
    worker = None
    gateway = None
    workdir = tempfile.mkdtemp(prefix="lapstream-demo-")
    http_port = args.http_port or free_port()
    try:
        if boot is None:
            broker = EmbeddedBroker(kind, log_path=os.path.join(workdir, "broker.log"))
            broker.start()
            boot = broker.bootstrap
            console.print(f"embedded {broker.kind} broker on [bold]{boot}[/bold]")
        asyncio.run(ensure_topics(boot))
        worker = start_worker(boot, http_port, log_path=os.path.join(workdir, "worker.log"),
                              session_timeout=2.0 if broker is not None and broker.kind == "tansu" else 6.0)
        metrics_url = f"http://127.0.0.1:{http_port}/metrics"
        console.print(f"worker metrics: [bold]{metrics_url}[/bold]  (health: /healthz, /readyz)")
        if not wait_http(f"http://127.0.0.1:{http_port}/readyz", 90, worker):
            console.print(f"[red]the worker did not become ready; log: {workdir}/worker.log[/red]")
            return 1
        if getattr(args, "web", False):
            web_port = args.web_port or free_port()
            gateway = start_gateway(boot, web_port, log_path=os.path.join(workdir, "gateway.log"))
            if not wait_http(f"http://127.0.0.1:{web_port}/readyz", 90, gateway):
                console.print(f"[red]the gateway did not become ready; log: {workdir}/gateway.log[/red]")
                return 1
            console.print(f"scoreboard: [bold]http://127.0.0.1:{web_port}/[/bold]  "
                          f"(API /api/v1/races, stream /api/v1/stream, /openapi.yaml)")
        console.print(f"replaying {path.name} at {'max' if args.speed is None else args.speed}x "
                      "(Ctrl-C stops)")
        return asyncio.run(_live(console, boot, path, args, metrics_url))
    except KeyboardInterrupt:
        console.print("stopped")
        return 130
    finally:
        if gateway is not None:
            stop_process(gateway)
        if worker is not None:
            stop_process(worker)
        if broker is not None:
            broker.stop()


async def _live(console, boot: str, path: Path, args, metrics_url: str) -> int:
    from rich.live import Live

    from streams.board import Board
    from streams.replay import record, replay

    board = Board()
    stop = asyncio.Event()
    done = {"replayed": False, "last": time.monotonic()}
    lines = path.read_bytes().splitlines()

    class Sink:
        def write(self, b: bytes) -> None:
            pass

        def flush(self) -> None:
            pass

    def on_record(topic: str, value: bytes) -> None:
        done["last"] = time.monotonic()
        if topic == T.DEADLETTER.name:
            ev = {"kind": "deadletter", "error": "bad input"}
        else:
            ev = orjson.loads(value)
        board.apply(ev)
        if args.plain:
            console.print(_line(ev))

    async def run_replay() -> None:
        await replay(boot, lines, speed=args.speed, skip_idle=not args.no_skip_idle)
        done["replayed"] = True

    rec_task = asyncio.create_task(record(boot, Sink(), [t.name for t in T.DERIVED] + [T.DEADLETTER.name],
                                          stop=stop, on_record=on_record))
    rep_task = asyncio.create_task(run_replay())
    try:
        if args.plain:
            while not _finished(board, done, args):
                await asyncio.sleep(0.25)
        else:
            with Live(board.render(), console=console, refresh_per_second=4) as live:
                while not _finished(board, done, args):
                    live.update(board.render())
                    await asyncio.sleep(0.25)
                live.update(board.render())
    finally:
        stop.set()
        rep_task.cancel()
        await asyncio.gather(rec_task, rep_task, return_exceptions=True)
    console.print(f"metrics were at {metrics_url}")
    return 0


def _finished(board, done, args) -> bool:
    if not args.exit_when_done or not done["replayed"]:
        return False
    quiet = time.monotonic() - done["last"] > 3.0
    cur = board.current
    return quiet and (cur is None or cur.status in ("official", "void"))


def _line(ev: dict) -> str:
    k = ev["kind"]
    if k == "split":
        who = ev["skater_id"] or f"{ev['competitor_id']} (team)"
        return f"split    {ev['race_id']} {who:<14} {ev['distance_m']:>5} m {ev['time']:>8} rank {ev['rank']} +{ev['behind_ms']} ms"
    if k == "finish":
        return f"FINISH   {ev['race_id']} {ev['competitor_id']:<14} {ev['time']:>8} rank {ev['rank']} ({ev['source']}, rev {ev['revision']})"
    if k == "incident":
        return f"INCIDENT {ev['race_id']} {ev['type']} {ev['status']} {ev['skater_id'] or ev['competitor_id']} at {ev['at_m']} m"
    if k == "record":
        return f"RECORD   {ev['race_id']} {ev['record']} {ev['time']} {ev['competitor_id']} (was {ev['previous_time']})"
    if k == "result":
        top = ", ".join(f"{e['rank'] or e['irm']}. {e['competitor_id']} {e['time'] or ''}" for e in ev["ranking"])
        return f"result   {ev['race_id']} [{ev['status']}] {top}"
    if k == "classification":
        return "classification " + ", ".join(f"{r['place']}. {r['competitor_id']}" for r in ev["ranking"])
    if k == "standings":
        return f"standings {ev['group']} ({len(ev['ranking'])} ranked)"
    return f"{k} {ev.get('error', '')}"
