#!/usr/bin/env python3
"""Init container of the Kubernetes workers: wait until the topics exist.

The workers run ``lapstream worker --no-create-topics`` (their Kafka user has
no Create ACL: an admin job creates the topics, deploy/README.md "How topics
are created"), and such a worker stops at once when a topic is missing. This
script runs before it in the same pod, with the same image, settings and
Kafka user (``LAPSTREAM_BROKER``, ``LAPSTREAM_KAFKA_*``): it looks (Metadata
only, never CreateTopics) every INTERVAL seconds until every topic of
``streams/topics.py`` exists with its partition count, then exits 0 and the
worker starts. It exits 1 after TIMEOUT seconds (the pod restarts and tries
again) and 2 on a setting error or a topic with another partition count
(waiting would not help). No secret is printed.

    lapstream-wait-topics [--interval 5] [--timeout 600]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time


def missing_and_wrong(layout, specs) -> tuple[list[str], list[str]]:
    """Names of the topics absent, and ``name have/want`` of those with
    another partition count, from a ``describe_topics`` answer."""
    missing, wrong = [], []
    for spec in specs:
        have = layout[spec.name].partitions if spec.name in layout else None
        if have is None:
            missing.append(spec.name)
        elif have != spec.partitions:
            wrong.append(f"{spec.name} {have}/{spec.partitions}")
    return missing, wrong


def main(argv: list[str] | None = None, *, describe=None, sleep=time.sleep,
         clock=time.monotonic, env=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between looks (default 5)")
    ap.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds (default 600)")
    args = ap.parse_args(argv)
    env = os.environ if env is None else env

    from streams import topics as T
    from streams.broker import describe_topics, parse_broker_setting
    from streams.kafka_security import KafkaSecurity, KafkaSecurityError

    prog = "lapstream-wait-topics"
    try:
        kind, boot = parse_broker_setting(env.get("LAPSTREAM_BROKER", ""))
        security = KafkaSecurity.from_env(env)
    except (ValueError, KafkaSecurityError) as exc:   # messages carry no secret
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    if boot is None:
        print(f"{prog}: LAPSTREAM_BROKER must name a Kafka cluster (kafka://host:port,...)", file=sys.stderr)
        return 2
    if describe is None:
        def describe(names):
            return asyncio.run(describe_topics(boot, names, timeout=10.0, security=security))

    names = [t.name for t in T.ALL]
    deadline = clock() + args.timeout
    said = None
    while True:
        try:
            missing, wrong = missing_and_wrong(describe(names), T.ALL)
            why = f"no topic {', '.join(missing)}" if missing else None
        except Exception as exc:   # broker not reachable yet, login refused, ...
            wrong, why = [], f"broker {boot}: {type(exc).__name__}: {exc}"
        if wrong:
            print(f"{prog}: topics with other partition counts than streams/topics.py (have/want): "
                  + ", ".join(wrong), file=sys.stderr)
            return 2
        if why is None:
            print(f"{prog}: every topic is there ({security.describe()})", file=sys.stderr)
            return 0
        if why != said:
            print(f"{prog}: waiting: {why}", file=sys.stderr, flush=True)
            said = why
        if clock() >= deadline:
            print(f"{prog}: gave up after {args.timeout:g} s: {why}", file=sys.stderr)
            return 1
        sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
