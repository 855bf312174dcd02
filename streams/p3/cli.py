"""``lapstream ingest p3`` and ``lapstream sim-decoder``."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys

from streams.cli import FAILURE, USAGE, CliError, port_type


def _load_map(path: str):
    """The decoder map, or one line saying what is wrong with the file (exit 2)."""
    from .mapping import DecoderMap

    try:
        return DecoderMap.load(path)
    except OSError as exc:
        raise CliError(f"cannot read --map {path}: {exc.strerror or exc}", USAGE) from None
    except json.JSONDecodeError as exc:
        raise CliError(f"--map {path} is not valid JSON ({exc})", USAGE) from None
    except Exception as exc:   # not YAML, not UTF-8, not a map (MapError), a YAML parser's error
        raise CliError(f"--map {path}: {' '.join(str(exc).split()) or type(exc).__name__}", USAGE) from None


def _read_sim_feed(path: str) -> list[bytes]:
    """The feed's lines; a file that cannot be read, or a line that is not a JSON
    object, is one line on stderr (exit 2)."""
    import orjson

    from streams.process import open_feed

    try:
        with open_feed(path) as f:
            lines = f.read().splitlines()
    except (OSError, EOFError) as exc:
        raise CliError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}", USAGE) from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise CliError(f"{path} line {n} is not valid JSON ({exc}): a feed is JSON Lines, one v1 "
                           "message a line", USAGE) from None
        if not isinstance(msg, dict):
            raise CliError(f"{path} line {n} is not a JSON object: a feed is JSON Lines, one v1 message "
                           "a line", USAGE)
    return lines


def _cmd_ingest_p3(args) -> int:
    if args.dump:
        if not args.file:
            print("lapstream ingest p3: --dump reads a capture (--file)", file=sys.stderr)
            return 2
        from .offline import dump

        try:
            with open(args.file, "rb") as f:
                stats = dump(f, sys.stdout.buffer)
        except OSError as exc:
            raise CliError(f"cannot read --file {args.file}: {exc.strerror or exc}", USAGE) from None
        sys.stdout.flush()
        print("frames " + " ".join(f"{k}={v}" for k, v in stats.items()), file=sys.stderr)
        return 0
    if not args.map:
        print("lapstream ingest p3: --map FILE is required", file=sys.stderr)
        return 2
    dmap = _load_map(args.map)
    if args.file:
        from .offline import capture_to_feed

        try:
            out = open(args.out, "wb") if args.out and args.out != "-" else sys.stdout.buffer
        except OSError as exc:
            raise CliError(f"cannot write --out {args.out}: {exc.strerror or exc}", USAGE) from None
        try:
            with open(args.file, "rb") as f:
                n, stats, conv = capture_to_feed(f, dmap, out, address=args.address)
        except OSError as exc:
            print(f"lapstream ingest p3: {exc}", file=sys.stderr)
            return 2
        finally:
            if out is not sys.stdout.buffer:
                out.close()
        print(f"lapstream ingest p3: {n} messages; frames " + " ".join(f"{k}={v}" for k, v in stats.items()),
              file=sys.stderr)
        for (who, what), c in sorted(conv.stats.items()):
            print(f"  {who}\t{what}\t{c}", file=sys.stderr)
        return 0
    if not args.decoder:   # a container's setting (deploy/): LAPSTREAM_P3_DECODERS=HOST:PORT,HOST:PORT
        args.decoder = [d.strip() for d in os.environ.get("LAPSTREAM_P3_DECODERS", "").split(",") if d.strip()]
    if not args.decoder:
        print("lapstream ingest p3: give --decoder HOST:PORT (live) or --file CAPTURE (offline)", file=sys.stderr)
        return 2
    from streams.cli_live import _bootstrap, _security

    from .ingest import IngestSettings, P3Ingest, parse_address

    for d in args.decoder:
        try:
            parse_address(d)
        except ValueError as exc:
            print(f"lapstream ingest p3: {exc}", file=sys.stderr)
            return 2
    logging.basicConfig(level=getattr(logging, args.loglevel.upper(), logging.INFO),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from streams.cli_live import check_port_free

    http_port = args.http_port
    check_port_free(args.http_host, http_port)
    settings = IngestSettings(decoders=list(args.decoder), bootstrap=_bootstrap(args.broker),
                              idempotence=args.idempotence, resend=not args.no_resend,
                              http_host=args.http_host, http_port=http_port,
                              clock_step_us=int(args.clock_step * 1e6), idle_timeout_s=args.idle_timeout,
                              heartbeat_fill_s=args.heartbeat_fill, security=_security(args))

    async def main() -> None:
        ing = P3Ingest(settings, dmap)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, ing._stop.set)
        print(f"lapstream ingest p3: {len(settings.decoders)} decoder(s) -> {settings.topic} on "
              f"{settings.bootstrap}; http://{settings.http_host}:{settings.http_port}/readyz",
              file=sys.stderr, flush=True)
        await ing.run_forever()

    asyncio.run(main())
    return 0


def _cmd_sim_decoder(args) -> int:
    from .simdecoder import DecoderServer, plan

    dmap = _load_map(args.map)
    lines = _read_sim_feed(args.feed)
    try:
        steps = plan(lines, dmap)
    except KeyError as exc:
        raise CliError(f"{args.feed}: a message lacks the field {exc}", USAGE) from None
    except (ValueError, TypeError, AttributeError) as exc:   # no decoder for a loop, a bad value
        raise CliError(f"{args.feed}: {' '.join(str(exc).split())}", USAGE) from None
    if args.port_base and args.port_base + len(dmap.targets) - 1 > 65535:
        raise CliError(f"--port-base {args.port_base}: the map's {len(dmap.targets)} decoders need ports up "
                       f"to {args.port_base + len(dmap.targets) - 1}, beyond 65535", USAGE)

    async def main() -> None:
        servers = {}
        port = args.port_base
        for tg in dmap.targets:
            try:
                servers[tg] = await DecoderServer(tg, "127.0.0.1", port if port else 0).start()
            except OSError as exc:
                for s in servers.values():
                    await s.stop()
                raise CliError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}): choose another "
                               "--port-base, or 0 for free ports", FAILURE) from None
            if port:
                port += 1
        for tg, s in servers.items():
            print(f"--decoder {s.address}  # decoder {tg.decoder_id}: {tg.venue} {tg.source} {tg.loop}", flush=True)
        producer = None
        if args.broker:
            from streams.cli_live import _bootstrap
            from streams.replay import route

            from .ingest import start_producer

            producer, _ = await start_producer(_bootstrap(args.broker), "auto")
        if args.wait_clients:
            while not all(s.clients for s in servers.values()):
                await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()
        t0 = w0 = None
        race_venue: dict = {}
        last_venue = None
        for st in steps:
            if args.speed and st.t_us:
                if t0 is None:
                    t0, w0 = st.t_us, loop.time()
                delay = w0 + (st.t_us - t0) / 1e6 / args.speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            if st.target is not None:
                await servers[st.target].emit(st.record)
            elif producer is not None:
                topic, key, _ = route(st.line, race_venue, last_venue)
                if key is not None and topic == "timing.raw":
                    last_venue = key.decode()
                await producer.send_and_wait(topic, value=st.line, key=key)
        if producer is not None:
            await producer.stop()
        print("lapstream sim-decoder: feed done; Ctrl-C stops the decoders", file=sys.stderr, flush=True)
        if not args.exit_when_done:
            stop = asyncio.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        for s in servers.values():
            await s.stop()

    asyncio.run(main())
    return 0


def add_commands(sub, broker_arg) -> None:
    from streams.cli_live import _speed   # the one parser of --speed (replay, demo, sim-decoder)

    p = sub.add_parser("ingest", help="bridge timing hardware into timing.raw")
    isub = p.add_subparsers(dest="protocol", required=True, help="the decoders' protocol (p3: MYLAPS P3)")
    p = isub.add_parser("p3", help="MYLAPS / AMB P3 decoders over TCP (or a byte capture) -> v1 passings and heartbeats")
    p.add_argument("--decoder", action="append", default=[], metavar="HOST:PORT",
                   help="a decoder to connect to (repeatable; P3 decoders listen on 5403; default: "
                        "$LAPSTREAM_P3_DECODERS, comma-separated)")
    p.add_argument("--map", default=os.environ.get("LAPSTREAM_P3_MAP") or None,
                   help="JSON (or YAML) mapping decoder id / address -> venue, source, loop "
                        "(default: $LAPSTREAM_P3_MAP)")
    broker_arg(p)
    p.add_argument("--file", help="offline: a raw byte capture of a decoder's TCP stream")
    p.add_argument("--out", default="-", help="offline: the v1 feed to write (default stdout)")
    p.add_argument("--address", default=None, help="offline: the HOST:PORT the capture came from (for the map)")
    p.add_argument("--dump", action="store_true", help="print the capture's decoded frames as JSON (with --file)")
    p.add_argument("--http-host", default=os.environ.get("LAPSTREAM_HTTP_HOST", "127.0.0.1"))
    p.add_argument("--http-port", type=port_type(free=False, env="LAPSTREAM_P3_HTTP_PORT"),
                   default=os.environ.get("LAPSTREAM_P3_HTTP_PORT", "9310"),
                   help="/metrics /healthz /readyz (default: $LAPSTREAM_P3_HTTP_PORT or 9310)")
    p.add_argument("--idempotence", choices=("auto", "on", "off"), default="auto",
                   help="idempotent producer: auto (if the broker supports it), on, off")
    p.add_argument("--no-resend", action="store_true", help="never send RESEND requests to the decoders")
    p.add_argument("--clock-step", type=float, default=2.0, metavar="S",
                   help="a decoder clock moving by more than S seconds is a step (default %(default)s)")
    p.add_argument("--idle-timeout", type=float, default=15.0, metavar="S",
                   help="a decoder silent for S seconds is reconnected (0: never; default %(default)s)")
    p.add_argument("--heartbeat-fill", type=float, default=1.0, metavar="S",
                   help="while a source's decoders are heard, a heartbeat at least every S seconds even if "
                        "their STATUS records come less often (0: only from STATUS; default %(default)s)")
    p.add_argument("--loglevel", default="info")
    p.set_defaults(func=_cmd_ingest_p3)

    p = sub.add_parser("sim-decoder", help="simulated P3 decoders on loopback, driven by a v1 feed")
    p.add_argument("feed", help="a v1 feed (its passings and heartbeats become P3 records)")
    p.add_argument("--map", required=True, help="the mapping (decoder ids, venue, source, loop)")
    p.add_argument("--port-base", type=port_type(free=True), default=0,
                   help="first TCP port, one more per decoder (default 0: free ports)")
    p.add_argument("--speed", type=_speed, default=1.0, help="N times real time, or 'max'")
    p.add_argument("--broker", default=None, help="also produce the feed's other lines (races, gun, referee) here")
    p.add_argument("--wait-clients", action="store_true", help="start the feed once every decoder has a client")
    p.add_argument("--exit-when-done", action="store_true", help="stop once the whole feed is sent")
    p.set_defaults(func=_cmd_sim_decoder)
