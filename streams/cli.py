"""The one console command: ``lapstream``.

A user's mistake is answered with one line on stderr that says what is wrong
and what to do, never a traceback. Exit codes: 0 done; 2 the command line or
an input file is wrong (usage, unreadable feed, bad ``--broker``, an output
path that cannot be written); 1 a failure at run time (the broker cannot be
reached, a port is taken, the topics are wrong); 130 interrupted; 141 (no
message) stdout was closed by its reader, as in ``lapstream process F | head``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter

USAGE = 2      # the command line or an input is wrong
FAILURE = 1    # the world at run time: broker unreachable, port taken, ...
BROKEN_PIPE = 141   # stdout closed by its reader (| head): 128 + SIGPIPE, as a shell reports cat's


class CliError(Exception):
    """A mistake or a failure the user can act on: printed as one line, no traceback."""

    def __init__(self, message: str, code: int = USAGE) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong, where the help is), exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def port_type(free: bool, env: str | None = None):
    """argparse ``type`` of a TCP port option: 1-65535, and 0 too when ``free``
    (0: the command picks a free port). Anything else is a usage error in one
    line, not an OverflowError or a library's traceback later. A string
    default (the value of the environment variable ``env``) is checked the
    same way, and the message then names the variable."""
    low = 0 if free else 1

    def port(text: str) -> int:
        t = str(text).strip()
        n = int(t) if t.isascii() and t.isdigit() else -1
        if not low <= n <= 65535:
            zero = " (0: a free port)" if free else ""
            where = f" (the value of ${env})" if env is not None and os.environ.get(env) == text else ""
            raise argparse.ArgumentTypeError(f"a port is a whole number from {low} to 65535{zero}, "
                                             f"not {text!r}{where}")
        return n

    port.__name__ = "port"   # argparse names the type in some messages
    return port


class _OutputError(Exception):
    """Writing the events to stdout failed (not reading the feed)."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(exc)
        self.exc = exc


class _Output:
    """stdout's bytes, a write error told apart from a read error of the feed."""

    __slots__ = ("_write", "dead_letters")

    def __init__(self, buf) -> None:
        self._write = buf.write
        self.dead_letters: Counter = Counter()   # reason (without the kind's prefix) -> count

    def write(self, data: bytes) -> None:
        try:
            self._write(data)
        except OSError as exc:
            raise _OutputError(exc) from None


def _reason(error: str) -> str:
    """A dead letter's reason without the message kind it starts with
    ("passing: venue 'ZZZ' was never set up" -> "venue 'ZZZ' was never set up")."""
    head, sep, rest = error.partition(": ")
    return rest if sep and head.isidentifier() and head.islower() and rest else error


def _cmd_process(args: argparse.Namespace) -> int:
    import orjson

    from .process import Processor, open_feed, process_lines

    out = _Output(sys.stdout.buffer)
    proc = Processor()
    dumps, write, dead = orjson.dumps, out.write, out.dead_letters
    try:
        with open_feed(args.feed) as f:
            for ev in process_lines(f, proc, flush=not args.no_flush):
                if ev["kind"] == "deadletter":
                    dead[_reason(ev["error"])] += 1
                write(dumps(ev))
                write(b"\n")
        try:
            sys.stdout.flush()
        except OSError as exc:
            raise _OutputError(exc) from None
    except _OutputError as exc:
        if isinstance(exc.exc, BrokenPipeError):
            raise exc.exc from None     # the reader went away (| head): main() ends quietly
        raise CliError(f"cannot write the events to stdout: {exc.exc.strerror or exc.exc}", FAILURE) from None
    except (OSError, EOFError) as exc:   # EOFError: a gzip file cut short
        raise CliError(f"cannot read {args.feed}: {getattr(exc, 'strerror', None) or exc}") from None
    stats = proc.engine.stats
    if args.stats:
        for (kind, outcome), n in sorted(stats.items()):
            print(f"{kind}\t{outcome}\t{n}", file=sys.stderr)
    seen = sum(stats.values())
    if not seen:
        print(f"lapstream process: {args.feed} holds no message (it is empty): no events", file=sys.stderr)
    elif all(outcome == "deadlettered" for _, outcome in stats):
        total = sum(dead.values())
        if all(r.startswith(_NOT_A_MESSAGE) for r in dead):
            print(f"lapstream process: no line of {args.feed} is a v1 message ({total} dead letters): "
                  "a feed is JSON Lines, one JSON object a line (gzip is read as such)", file=sys.stderr)
        else:
            reason, n = dead.most_common(1)[0] if dead else ("?", 0)
            print(f"lapstream process: every message of {args.feed} was refused ({total} dead letters, "
                  f"on stdout); the commonest reason ({n} of {total}): {reason}", file=sys.stderr)
    return 0


# dead letters of lines that are no message at all (the file is not a feed)
_NOT_A_MESSAGE = ("not valid JSON", "a message must be a JSON object")


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
    except BrokenPipeError:   # stdout's reader went away (| head): end quietly, as cat does
        _drop_stdout()
        return BROKEN_PIPE
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


def _drop_stdout() -> None:
    """Point stdout at /dev/null: the interpreter's last flush at exit must not
    complain of the closed pipe ("Exception ignored ... BrokenPipeError")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):   # pragma: no cover - no stdout to speak of
        pass


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
