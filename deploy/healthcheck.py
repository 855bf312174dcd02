#!/usr/bin/env python3
"""Container HEALTHCHECK for lapstream: exit 0 iff GET PATH is 2xx.

Uses only the standard library (the slim image has no curl). The port is the
second argument, else LAPSTREAM_HTTP_PORT (default 9300, the worker's); the
worker and the gateway listen on 0.0.0.0 in a container, so the loopback
address reaches them. Usage: healthcheck.py [PATH [PORT]] (default /healthz;
/readyz checks readiness instead). The gateway (lapstream serve, port 8000 in
the deploy files): healthcheck.py /readyz 8000.
"""
from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/healthz"
    port = argv[2] if len(argv) > 2 else os.environ.get("LAPSTREAM_HTTP_PORT", "9300")
    if not port.isdigit():
        print(f"port must be a number, not {port!r}", file=sys.stderr)
        return 2
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            ok = 200 <= resp.status < 300
    except (urllib.error.URLError, OSError) as exc:  # HTTPError is a URLError
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
