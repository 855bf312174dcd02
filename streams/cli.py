"""The one console command: ``lapstream``.

A user's mistake is answered with one line on stderr that says what is wrong
and what to do, never a traceback. Exit codes: 0 done; 2 the command line or
an input file is wrong (usage, unreadable feed, bad ``--broker``, an output
path that cannot be written); 1 a failure at run time (the broker cannot be
reached, a port is taken, the topics are wrong); 130 interrupted.
"""
from __future__ import annotations

import argparse
import logging
import sys

USAGE = 2      # the command line or an input is wrong
FAILURE = 1    # the world at run time: broker unreachable, port taken, ...


class CliError(Exception):
    """A mistake or a failure the user can act on: printed as one line, no traceback."""

    def __init__(self, message: str, code: int = USAGE) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong, where the help is), exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _cmd_process(args: argparse.Namespace) -> int:
    from .process import process_file

    try:
        proc = process_file(args.feed, sys.stdout.buffer, flush=not args.no_flush)
    except (OSError, EOFError) as exc:   # EOFError: a gzip file cut short
        raise CliError(f"cannot read {args.feed}: {getattr(exc, 'strerror', None) or exc}") from None
    sys.stdout.flush()
    stats = proc.engine.stats
    if args.stats:
        for (kind, outcome), n in sorted(stats.items()):
            print(f"{kind}\t{outcome}\t{n}", file=sys.stderr)
    seen = sum(stats.values())
    if not seen:
        print(f"lapstream process: {args.feed} holds no message (it is empty): no events", file=sys.stderr)
    elif all(outcome == "deadlettered" for _, outcome in stats):
        print(f"lapstream process: no line of {args.feed} is a v1 message ({seen} dead letters): "
              "a feed is JSON Lines, one JSON object a line (gzip is read as such)", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="lapstream", description="Real-time speed-skating timing pipeline.")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("process", help="run the timing core over a recorded feed (JSON Lines) and print derived events")
    sp.add_argument("feed", help="recorded feed, one v1 message per line (gzip-compressed is read too)")
    sp.add_argument("--no-flush", action="store_true",
                    help="do not close crossings still pending at the end of the file")
    sp.add_argument("--stats", action="store_true", help="print message counts by kind and outcome to stderr")
    sp.set_defaults(func=_cmd_process)

    try:
        from . import cli_live
    except ImportError:  # pragma: no cover - live commands need the Kafka extras
        cli_live = None
    if cli_live is not None:
        cli_live.add_commands(sub)
    return p


def _kafka_unreachable(exc: BaseException) -> bool:
    try:
        from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, (KafkaConnectionError, KafkaTimeoutError))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prog = f"lapstream {args.command}"
    # aiokafka logs each failed connection attempt (Python's last-resort handler prints
    # it); the one line below says it better. The worker turns its logs back on.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    from .kafka_security import watch_login_refusals

    refusals = watch_login_refusals()   # (quiet too: remembers a refused SASL login, prints nothing)
    try:
        return args.func(args) or 0
    except CliError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if _kafka_unreachable(exc) and refusals.seen:
            where = getattr(args, "broker", None)
            print(f"{prog}: the Kafka broker{f' at {where}' if where else ''} refused the SASL login "
                  f"({refusals.seen}): check the user, password and mechanism "
                  "(LAPSTREAM_KAFKA_SASL_* or --kafka-sasl-*)", file=sys.stderr)
            return FAILURE
        if _kafka_unreachable(exc):
            where = getattr(args, "broker", None)
            print(f"{prog}: cannot reach the Kafka broker{f' at {where}' if where else ''} "
                  f"({type(exc).__name__}): is it running? Set --broker or LAPSTREAM_BROKER",
                  file=sys.stderr)
            return FAILURE
        from .broker import BrokerError, TopicLayoutError

        if isinstance(exc, (BrokerError, TopicLayoutError)):
            print(f"{prog}: {' '.join(str(exc).split())}", file=sys.stderr)
            return FAILURE
        if _raised_in_kafka_client(exc):   # e.g. a refused SASL login that aiokafka cannot parse
            where = getattr(args, "broker", None)
            print(f"{prog}: the Kafka client failed talking to the broker{f' at {where}' if where else ''} "
                  f"({type(exc).__name__}; a refused login or an incompatible broker): check the "
                  "LAPSTREAM_KAFKA_* settings", file=sys.stderr)
            return FAILURE
        raise


def _raised_in_kafka_client(exc: BaseException) -> bool:
    """True when the exception was raised inside aiokafka (not in lapstream's code)."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return last is not None and "aiokafka" in (last.tb_frame.f_code.co_filename or "")


if __name__ == "__main__":
    # run as ``python -m streams.cli``: use the module's own copy, so that CliError
    # raised by streams.cli_live is the class main() catches
    from streams.cli import main as _main

    sys.exit(_main())
