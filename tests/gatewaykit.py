"""Real parts for gateway tests: ``lapstream serve`` as a subprocess, an SSE
reader on a plain socket, and a stack fixture helper (broker + worker +
gateway) built on tests/livekit.py."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from streams.broker import free_port  # noqa: F401  (tests use G.free_port)
from streams.procs import stop_process
from tests import livekit as L

REPO = Path(__file__).resolve().parents[1]


class Gateway:
    def __init__(self, bootstrap: str, tmp: Path, args=(), port: int | None = None) -> None:
        self.bootstrap = bootstrap
        self.port = port or free_port()
        self.args = list(args)
        self.log = tmp / f"gateway-{self.port}-{int(time.time() * 1000)}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Gateway":
        cmd = [sys.executable, "-m", "streams.cli", "serve", "--broker", f"kafka://{self.bootstrap}",
               "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=REPO,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})
        return self

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout: float = 90.0) -> "Gateway":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"gateway exited: {self.log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(self.url("/readyz"), timeout=1) as r:
                    if r.status == 200:
                        return self
            except Exception:
                pass
            time.sleep(0.2)
        raise AssertionError(f"gateway not ready in {timeout}s: {self.log.read_text()[-3000:]}")

    def get(self, path: str, headers: dict | None = None):
        """(status, headers, body bytes); HTTP errors are answers too."""
        req = urllib.request.Request(self.url(path), headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, path: str):
        status, _, body = self.get(path)
        assert status == 200, (path, status, body[:300])
        return orjson.loads(body)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=20)


class SSE:
    """A Server-Sent Events client on a plain socket: it can stop reading,
    disconnect at any moment, and resume with Last-Event-ID."""

    def __init__(self, port: int, path: str = "/api/v1/stream", last_id: str | None = None,
                 timeout: float = 60.0, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:   # a small window: a client that stops reading backs up at the gateway at once
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
        if last_id:
            head += f"Last-Event-ID: {last_id}\r\n"
        self.sock.sendall((head + "\r\n").encode())
        self.buf = b""
        self.status = None
        self.chunked = False
        self.body = b""
        self.closed = False

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            self.closed = True
            return False
        self.buf += data
        if self.status is None and b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            self.status = int(lines[0].split()[1])
            self.chunked = any(ln.lower().startswith(b"transfer-encoding: chunked") for ln in lines[1:])
        if self.status is not None:
            if self.chunked:
                while True:
                    if b"\r\n" not in self.buf:
                        break
                    size_line, rest = self.buf.split(b"\r\n", 1)
                    size = int(size_line.split(b";")[0], 16)
                    if size == 0:
                        self.closed = True
                        self.buf = b""
                        break
                    if len(rest) < size + 2:
                        break
                    self.body += rest[:size]
                    self.buf = rest[size + 2:]
            else:
                self.body += self.buf
                self.buf = b""
        return True

    def events(self):
        """Yield (id, event, data bytes) as they come; comments are skipped."""
        while True:
            while b"\n\n" in self.body:
                block, self.body = self.body.split(b"\n\n", 1)
                ident = event = None
                data = []
                for line in block.split(b"\n"):
                    if line.startswith(b":"):
                        continue
                    name, _, value = line.partition(b":")
                    value = value[1:] if value.startswith(b" ") else value
                    if name == b"id":
                        ident = value.decode()
                    elif name == b"event":
                        event = value.decode()
                    elif name == b"data":
                        data.append(value)
                if event or data:
                    yield ident, event or "message", b"\n".join(data)
            if self.closed or not self._fill():
                return

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def final_result_revision() -> int:
    """The revision of the Beijing final A's last (official) result, as
    ``lapstream process`` gives it (provisional results count revisions too)."""
    from streams import beijing
    from streams.process import process_lines

    return [e for e in process_lines(feed_lines(beijing.FINAL_A_FILE)) if e["kind"] == "result"][-1]["revision"]


def feed_lines(name: str) -> list[bytes]:
    from streams import beijing

    return (beijing.FEEDS_DIR / name).read_bytes().splitlines()


class Stack:
    """Broker + worker + gateway, cleaned up by ``close``."""

    def __init__(self, gateway_args=()) -> None:
        self.tmp = L.tmpdir()
        self.broker = L.start_broker(self.tmp)
        self.worker = L.Worker(self.broker.bootstrap, self.tmp).start()
        self.gateways: list[Gateway] = []
        self.gateway = self.new_gateway(gateway_args)
        self.worker.wait_ready()
        self.gateway.wait_ready()

    def new_gateway(self, args=(), port=None) -> Gateway:
        g = Gateway(self.broker.bootstrap, self.tmp, args, port=port).start()
        self.gateways.append(g)
        return g

    def close(self) -> None:
        for g in self.gateways:
            g.stop()
        self.worker.stop()
        self.broker.stop()


def replay_in_thread(bootstrap: str, lines, speed=None):
    """Replay on its own thread (Playwright's sync API holds this thread's loop).
    Returns the thread; ``thread.result`` holds the counts or the error."""
    import threading

    def run():
        try:
            t.result = L.replay_lines(bootstrap, lines, speed=speed)
        except BaseException as exc:  # handed to the test through the thread
            t.result = exc

    t = threading.Thread(target=run, daemon=True)
    t.result = None
    t.start()
    return t


def produce_in_thread(bootstrap: str, topic: str, events: list[dict], key: bytes) -> None:
    """Publish events straight to a derived topic (as a worker would), from a
    thread of its own (safe beside Playwright's sync API); returns when sent."""
    import asyncio
    import threading

    async def go():
        from aiokafka import AIOKafkaProducer

        p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        await p.start()
        try:
            for e in events:
                await p.send(topic, orjson.dumps(e), key=key)
            await p.flush()
        finally:
            await p.stop()

    errors = []
    t = threading.Thread(target=lambda: errors.append(asyncio.run(go())), daemon=True)
    t.start()
    t.join(60)
    assert errors == [None], errors


def http_get(url: str) -> tuple[int, str]:
    """(status, body text) of a GET; an HTTP error is an answer too."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
