#!/usr/bin/env python3
"""A lapstream subscriber on the gateway's Server-Sent Events stream, with the
Python standard library only (docs/subscribers.md).

It starts from the snapshot, applies every change (newest revision wins),
and when the connection drops or the gateway closes it (too slow), it
reconnects with ``Last-Event-ID``: nothing is lost, nothing repeated.

    python examples/sse_client.py http://127.0.0.1:8000 [--race OWG2022-TPW-FA] [--until-official]
"""
from __future__ import annotations

import argparse
import http.client
import json
import time
import urllib.parse


def events(base: str, query: str, last_id: str | None):
    """Yield (id, event, data) from one connection until it ends."""
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=60)
    headers = {"Accept": "text/event-stream"}
    if last_id:
        headers["Last-Event-ID"] = last_id
    conn.request("GET", "/api/v1/stream" + (("?" + query) if query else ""), headers=headers)
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    ident, event, data = None, None, []
    try:
        while True:
            line = resp.readline()
            if not line:
                return
            line = line.rstrip(b"\r\n").decode()
            if line == "":
                if data or event:
                    yield ident, event or "message", "\n".join(data)
                ident, event, data = None, None, []   # (the id is kept by the caller)
            elif line.startswith(":"):
                continue                               # heartbeat
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "id":
                    ident = value
                elif name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
    finally:
        conn.close()


def line(result: dict) -> str:
    return f"{result['race_id']} {result['status']} rev {result['revision']}: " + ", ".join(
        f"{e['competitor_id']} {e['time'] or e['irm']}" for e in result["ranking"])


def follow(base: str, race: str | None = None, until_official: bool = False, out=print,
           max_reconnects: int = 100) -> dict:
    """Follow the stream; returns the current results by race."""
    query = urllib.parse.urlencode({"race": race}) if race else ""
    results: dict = {}
    last_id = None
    for _ in range(max_reconnects):
        try:
            for ident, event, data in events(base, query, last_id):
                if ident:
                    last_id = ident
                if event == "snapshot":              # the state now
                    for r in json.loads(data)["races"]:
                        if r["result"]:
                            results[r["race_id"]] = r["result"]
                            out(line(r["result"]))
                elif event == "result":              # a change
                    ev = json.loads(data)
                    cur = results.get(ev["race_id"])
                    if cur is None or ev["revision"] >= cur["revision"]:
                        results[ev["race_id"]] = ev
                        out(line(ev))
                elif event == "close":
                    out("closed by the gateway: " + json.loads(data)["reason"])
                    break
                if until_official and results and all(r["status"] in ("official", "void")
                                                      for r in results.values()):
                    return results
        except (OSError, http.client.HTTPException) as exc:
            out(f"connection lost ({exc}); resuming from {last_id}")
        time.sleep(1)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--race")
    ap.add_argument("--until-official", action="store_true")
    args = ap.parse_args()
    follow(args.url, args.race, args.until_official)


if __name__ == "__main__":
    main()
