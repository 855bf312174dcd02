"""``lapstream demo``: embedded broker + worker + replay, the race live in the terminal."""
from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
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

    console = Console(stderr=False)

    def _interrupt(signum, frame):   # a closed terminal or a kill: clean up like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
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
    worker = None
    gateway = None
    workdir = tempfile.mkdtemp(prefix="lapstream-demo-")
    try:
        if boot is None:
            broker = EmbeddedBroker(kind, log_path=os.path.join(workdir, "broker.log"))
            broker.start()
            boot = broker.bootstrap
            console.print(f"embedded {broker.kind} broker on [bold]{boot}[/bold]")
        asyncio.run(ensure_topics(boot, security=security))
        worker = start_worker(boot, http_port, log_path=os.path.join(workdir, "worker.log"),
                              session_timeout=2.0 if broker is not None and broker.kind == "tansu" else 6.0,
                              env=plain_env)
        metrics_url = f"http://127.0.0.1:{http_port}/metrics"
        console.print(f"worker metrics: [bold]{metrics_url}[/bold]  (health: /healthz, /readyz)")
        if not wait_http(f"http://127.0.0.1:{http_port}/readyz", 90, worker):
            log = os.path.join(workdir, "worker.log")
            raise CliError(f"the worker did not become ready: {_last_line(log) or 'no output'} (log: {log})",
                           FAILURE)
        if getattr(args, "web", False):
            web_port = args.web_port or free_port()
            gateway = start_gateway(boot, web_port, log_path=os.path.join(workdir, "gateway.log"),
                                    env=plain_env)
            if not wait_http(f"http://127.0.0.1:{web_port}/readyz", 90, gateway):
                log = os.path.join(workdir, "gateway.log")
                raise CliError(f"the gateway did not become ready: {_last_line(log) or 'no output'} "
                               f"(log: {log})", FAILURE)
            console.print(f"scoreboard: [bold]http://127.0.0.1:{web_port}/[/bold]  "
                          f"(API /api/v1/races, stream /api/v1/stream, /openapi.yaml)")
        console.print(f"replaying {path.name} {pace_text(args.speed)} (Ctrl-C stops)")
        return asyncio.run(_live(console, boot, path, args, metrics_url, security))
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


def pace_text(speed: float | None) -> str:
    return "as fast as possible" if speed is None else f"at {speed:g}x real time"


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as f:
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


async def _live(console, boot: str, path: Path, args, metrics_url: str, security=None) -> int:
    from rich.live import Live

    from streams.board import Board
    from streams.process import open_feed
    from streams.replay import record, replay

    board = Board()
    stop = asyncio.Event()
    done = {"replayed": False, "last": time.monotonic()}
    with open_feed(str(path)) as f:     # gzip-compressed too, as process and replay
        lines = f.read().splitlines()

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
            console.print(_line(ev), markup=False, highlight=False)   # "[official]" is text, not markup

    async def run_replay() -> None:
        await replay(boot, lines, speed=args.speed, skip_idle=not args.no_skip_idle, security=security)
        done["replayed"] = True

    rec_task = asyncio.create_task(record(boot, Sink(), [t.name for t in T.DERIVED] + [T.DEADLETTER.name],
                                          stop=stop, on_record=on_record, security=security))
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
