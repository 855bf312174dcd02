"""The one console command: ``lapstream``."""
from __future__ import annotations

import argparse
import sys


def _cmd_process(args: argparse.Namespace) -> int:
    from .process import process_file

    try:
        proc = process_file(args.feed, sys.stdout.buffer, flush=not args.no_flush)
    except OSError as exc:
        print(f"lapstream process: cannot read {args.feed}: {exc}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    if args.stats:
        for (kind, outcome), n in sorted(proc.engine.stats.items()):
            print(f"{kind}\t{outcome}\t{n}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lapstream", description="Real-time speed-skating timing pipeline.")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("process", help="run the timing core over a recorded feed (JSON Lines) and print derived events")
    sp.add_argument("feed", help="recorded feed, one v1 message per line")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
