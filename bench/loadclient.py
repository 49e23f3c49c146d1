"""Load client for bench/: many raw asyncio XMPP c2s connections, one process, one core.

Negotiation (STARTTLS, SASL SCRAM-SHA-1, resource binding) goes through an lxml pull parser; once a
stream is established the parser is dropped and received bytes go to a scenario callback that does
the least work possible (``bytes.count(b"</message>")`` for throughput, one regex for latency).
Senders write pre-built batches of stanzas, one TLS record and one write each, and TLS decrypts
into one shared buffer, so the client can drive far more traffic than the servers under test can
route (``xmppbench.py --server null`` measures its ceiling against ``nullserver.py``).

Scenarios (each prints one JSON object on stdout):
- ``throughput``: pairs of clients message each other with a window of outstanding messages.
- ``latency``: a fixed offered rate of timestamped messages; percentiles of delivery latency.
- ``memory``: N idle authenticated TLS connections; server RSS before/after (``--pid``), then a
  ping on every connection and the RSS once they are closed.
- ``hold``: the same, held for ``--hold`` seconds before the pings (the 19,000 x 300 s run).
- ``logins``: concurrent workers loop connect, STARTTLS, SCRAM-SHA-1, bind, close.
- ``afterload``: throughput on a fresh server, an idle storm (N sessions opened, then closed),
  throughput again: the ratio, and whether RSS returns to its pre-storm value.
- ``slowreader``: one client stops reading, a second floods it, a third pings the server every
  10 ms: server RSS growth, the pinger's round trips, what happened to the reader and the flooder.

Usage: ``loadclient.py --port 5222 [--password PW] SCENARIO [scenario options]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import math
import os
import re
import resource
import secrets
import socket
import ssl
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from lxml import etree

NS_STREAMS = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_SM = "urn:xmpp:sm:3"
SM_REQUEST = b"<r xmlns='urn:xmpp:sm:3'/>"
# the server's <r/>, as xmppd and Prosody serialise it (either quote style)
SM_R_TAGS = (b'<r xmlns="urn:xmpp:sm:3"/>', b"<r xmlns='urn:xmpp:sm:3'/>")

MESSAGE_END = b"</message>"
TAIL = len(MESSAGE_END) - 1  # bytes kept from one read to find an end tag split across reads
SM_TAIL = 30  # longer than any tag SmAcker looks for, minus one
STAMP = re.compile(rb"<body>(\d+)</body>")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
READ_SIZE = 256 * 1024  # one plaintext buffer shared by every connection (single thread)
READ_VIEW = memoryview(bytearray(READ_SIZE))
# Linux: bind() to a source address without choosing the port yet; connect() then picks a port
# unique for the 4-tuple, so each source address is not limited to one ephemeral range in total.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class LoginError(Exception):
    """The server refused or broke off stream negotiation."""


# --- SASL SCRAM-SHA-1 (RFC 5802), client side -----------------------------------------------


class ScramKeys:
    """Salted-password derivatives, cached per (password, salt, iterations).

    PBKDF2 is the client's most expensive step by far; caching it means a login loop over the same
    accounts measures the server, not the client.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[bytes, bytes, int], tuple[bytes, bytes, bytes]] = {}

    def get(self, password: bytes, salt: bytes, iterations: int) -> tuple[bytes, bytes, bytes]:
        """Return (ClientKey, StoredKey, ServerKey)."""
        key = (password, salt, iterations)
        keys = self._cache.get(key)
        if keys is None:
            salted = hashlib.pbkdf2_hmac("sha1", password, salt, iterations)
            client_key = hmac.digest(salted, b"Client Key", "sha1")
            server_key = hmac.digest(salted, b"Server Key", "sha1")
            keys = (client_key, hashlib.sha1(client_key).digest(), server_key)
            self._cache[key] = keys
        return keys


class ScramSha1:
    """One SCRAM-SHA-1 exchange without channel binding (gs2 header ``n,,``)."""

    def __init__(self, username: str, password: str, keys: ScramKeys) -> None:
        name = username.replace("=", "=3D").replace(",", "=2C")
        self._nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self._first_bare = f"n={name},r={self._nonce}".encode()
        self._password = password.encode()  # ASCII bench passwords: SASLprep is the identity
        self._keys = keys
        self._server_signature = b""

    def initial(self) -> bytes:
        """client-first-message."""
        return b"n,," + self._first_bare

    def respond(self, server_first: bytes) -> bytes:
        """client-final-message for the server-first-message."""
        attrs = dict(part.split(b"=", 1) for part in server_first.split(b","))
        nonce, salt, iterations = attrs[b"r"], base64.b64decode(attrs[b"s"]), int(attrs[b"i"])
        if not nonce.startswith(self._nonce.encode()):
            raise LoginError("SCRAM: server nonce does not extend ours")
        client_key, stored_key, server_key = self._keys.get(self._password, salt, iterations)
        without_proof = b"c=biws,r=" + nonce
        auth_message = self._first_bare + b"," + server_first + b"," + without_proof
        signature = hmac.digest(stored_key, auth_message, "sha1")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = hmac.digest(server_key, auth_message, "sha1")
        return without_proof + b",p=" + base64.b64encode(proof)

    def verify(self, server_final: bytes) -> None:
        """Check the server's proof of knowing the password (``v=``)."""
        if server_final != b"v=" + base64.b64encode(self._server_signature):
            raise LoginError("SCRAM: bad server signature")


# --- one c2s connection -----------------------------------------------------------------------


@dataclass
class Target:
    """Where and how to log in."""

    host: str
    port: int
    domain: str
    password: str
    timeout: float = 30.0
    keys: ScramKeys = field(default_factory=ScramKeys)
    tls: ssl.SSLContext = field(default_factory=lambda: client_tls_context())


def client_tls_context() -> ssl.SSLContext:
    """TLS client context accepting the servers' self-signed certificates."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class XmppConnection(asyncio.Protocol):
    """A c2s stream over a plain TCP transport, with its own TLS layer once STARTTLS is done.

    TLS runs through ``ssl.MemoryBIO`` and ``SSLObject.read`` into one shared buffer: asyncio's and
    uvloop's TLS transports allocate a fresh 256 KiB buffer per record read, which costs ~12 us per
    received record and made the client, not the server, the bottleneck.

    While negotiating, plaintext feeds an lxml pull parser and top-level elements queue up for
    ``receive()``. Once established the parser is dropped and plaintext goes to ``handler``.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.jid = ""
        self.handler: Callable[[bytes], None] | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tls: ssl.SSLObject | None = None
        self._tls_in = ssl.MemoryBIO()
        self._tls_out = ssl.MemoryBIO()
        self._handshake: asyncio.Future[None] | None = None
        self._parser: etree.XMLPullParser | None = None
        self._depth = 0
        self._inbox: deque[etree._Element] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._resumed: asyncio.Future[None] | None = None  # set while the transport is full

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, but implement it
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._tls is None:
            self._plaintext(data)
            return
        self._tls_in.write(data)
        if self._handshake is not None and not self._continue_handshake():
            return
        view, size, filled = READ_VIEW, READ_SIZE, 0
        try:
            while True:
                # with a buffer, read() returns the byte count (typeshed only knows the bytes form)
                count = cast(int, self._tls.read(size - filled, view[filled:]))
                if not count:  # close_notify
                    break
                filled += count
                if filled == size:
                    self._plaintext(bytes(view))
                    filled = 0
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            self._fail(exc)
            self.abort()
        if filled:
            self._plaintext(bytes(view[:filled]))
        if self._tls_out.pending:  # e.g. a KeyUpdate answer
            self._flush()

    def eof_received(self) -> bool:
        self._fail(LoginError("server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("connection lost"))
        self.resume_writing()
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(LoginError("connection lost during TLS handshake"))
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        # the transport's buffer passed its high-water mark: the peer is not reading fast enough
        if self._resumed is None:
            self._resumed = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._resumed is not None:
            if not self._resumed.done():
                self._resumed.set_result(None)
            self._resumed = None

    @property
    def writing_paused(self) -> bool:
        """True while the transport's write buffer is above its high-water mark."""
        return self._resumed is not None

    async def drain(self) -> None:
        """Wait until the transport takes writes again (or the connection is lost)."""
        if self._resumed is not None:
            await asyncio.shield(self._resumed)

    def write_buffer_size(self) -> int:
        """Bytes written but not yet handed to the kernel."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    # TLS

    def _flush(self) -> None:
        assert self.transport is not None
        self.transport.write(self._tls_out.read())

    def _continue_handshake(self) -> bool:
        """One handshake step; True once it is complete."""
        assert self._tls is not None
        assert self._handshake is not None
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except ssl.SSLError as exc:
            if not self._handshake.done():
                self._handshake.set_exception(LoginError(f"TLS handshake failed: {exc}"))
            self.abort()
            return False
        self._flush()
        if not self._handshake.done():
            self._handshake.set_result(None)
        self._handshake = None
        return True

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        """Switch to TLS after <proceed/> and wait for the handshake."""
        self._parser = None
        self._tls = context.wrap_bio(self._tls_in, self._tls_out, server_hostname=server_hostname)
        self._handshake = asyncio.get_running_loop().create_future()
        handshake = self._handshake
        self._continue_handshake()
        await handshake

    def tls_version(self) -> str:
        """Negotiated protocol and cipher, for the report."""
        if self._tls is None:
            return "none"
        cipher = self._tls.cipher()
        return f"{self._tls.version()} {cipher[0] if cipher else '?'}"

    # XMPP

    def send(self, data: bytes) -> None:
        """Write bytes to the stream (encrypted once TLS is up)."""
        assert self.transport is not None
        if self._tls is None:
            self.transport.write(data)
        else:
            self._tls.write(data)
            self.transport.write(self._tls_out.read())

    def _plaintext(self, data: bytes) -> None:
        handler = self.handler
        if handler is not None:
            handler(data)
        elif self._parser is not None:
            self._parse(data)

    def _parse(self, data: bytes) -> None:
        assert self._parser is not None
        try:
            self._parser.feed(data)
            for event, element in self._parser.read_events():
                if event == "start":
                    self._depth += 1
                    continue
                self._depth -= 1
                if self._depth == 1:
                    self._inbox.append(element)
                elif self._depth == 0:
                    self._fail(LoginError("server closed the stream"))
        except etree.XMLSyntaxError as exc:
            self._fail(LoginError(f"bad XML from server: {exc}"))
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def open_stream(self, domain: str) -> None:
        """Send a stream header with a fresh parser (initial stream and every restart)."""
        self._parser = etree.XMLPullParser(
            events=("start", "end"), resolve_entities=False, no_network=True
        )
        self._depth = 0
        self._inbox.clear()
        self.send(
            b"<?xml version='1.0'?><stream:stream xmlns='jabber:client'"
            b" xmlns:stream='http://etherx.jabber.org/streams' to='"
            + domain.encode()
            + b"' version='1.0'>"
        )

    async def receive(self) -> etree._Element:
        """Wait for the next top-level element; stream errors become LoginError."""
        while not self._inbox:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        element = self._inbox.popleft()
        if element.tag == f"{{{NS_STREAMS}}}error":
            raise LoginError(f"stream error: {_children(element)}")
        return element

    def established(self, jid: str) -> None:
        """Drop the negotiation parser: from now on bytes go to ``handler`` (or nowhere)."""
        self.jid = jid
        self._parser = None
        self._inbox.clear()

    @property
    def alive(self) -> bool:
        """True until the connection is lost."""
        return not self.lost.done()

    def close(self) -> None:
        """Close the stream, then TLS (close_notify), then TCP: one write."""
        if self.transport is None or self.transport.is_closing():
            return
        if self._tls is None:
            self.transport.write(b"</stream:stream>")
        else:
            self._tls.write(b"</stream:stream>")
            with contextlib.suppress(ssl.SSLError):  # WantRead: no wait for the peer's reply
                self._tls.unwrap()
            self._flush()
        self.transport.close()

    def abort(self) -> None:
        """Drop the connection."""
        if self.transport is not None:
            self.transport.abort()


def _children(element: etree._Element) -> str:
    return ",".join(etree.QName(child).localname for child in element) or "?"


async def open_socket(
    host: str, port: int, source: str | None = None, rcvbuf: int = 0
) -> socket.socket:
    """A connected non-blocking TCP socket from ``source`` (any port) with an optional SO_RCVBUF."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if rcvbuf:  # before connect(), so the window scale matches the small buffer
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def login(
    target: Target,
    username: str,
    *,
    presence: bool,
    source: str | None = None,
    rcvbuf: int = 0,
    sm: bool = False,
) -> XmppConnection:
    """Connect, STARTTLS, SCRAM-SHA-1, bind (server-chosen resource), optional initial presence.

    Raises:
        LoginError: the server refused a step.
        OSError, TimeoutError: connection failures and timeouts.
    """
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(target.timeout):
        if source or rcvbuf:
            sock = await open_socket(target.host, target.port, source, rcvbuf)
            try:
                _, conn = await loop.create_connection(XmppConnection, sock=sock)
            except BaseException:
                sock.close()
                raise
        else:
            _, conn = await loop.create_connection(XmppConnection, target.host, target.port)
    try:
        async with asyncio.timeout(target.timeout):
            await _negotiate(conn, target, username, sm)
    except BaseException:
        conn.abort()
        raise
    if presence:
        conn.send(b"<presence/>")
    return conn


async def _negotiate(conn: XmppConnection, target: Target, username: str, sm: bool) -> None:
    conn.open_stream(target.domain)
    features = await conn.receive()
    if features.find(f"{{{NS_TLS}}}starttls") is None:
        raise LoginError("no STARTTLS offered")
    conn.send(f"<starttls xmlns='{NS_TLS}'/>".encode())
    reply = await conn.receive()
    if reply.tag != f"{{{NS_TLS}}}proceed":
        raise LoginError(f"STARTTLS refused: {etree.QName(reply).localname}")
    await conn.start_tls(target.tls, target.domain)

    # RFC 6120 §6: SASL
    conn.open_stream(target.domain)
    features = await conn.receive()
    mechanisms = features.findall(f"{{{NS_SASL}}}mechanisms/{{{NS_SASL}}}mechanism")
    if "SCRAM-SHA-1" not in {m.text for m in mechanisms}:
        raise LoginError("SCRAM-SHA-1 not offered")
    scram = ScramSha1(username, target.password, target.keys)
    conn.send(
        f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-1'>".encode()
        + base64.b64encode(scram.initial())
        + b"</auth>"
    )
    reply = await conn.receive()
    if reply.tag != f"{{{NS_SASL}}}challenge":
        raise LoginError(f"SASL failed: {_children(reply)}")
    response = scram.respond(base64.b64decode(reply.text or ""))
    conn.send(
        f"<response xmlns='{NS_SASL}'>".encode() + base64.b64encode(response) + b"</response>"
    )
    reply = await conn.receive()
    if reply.tag == f"{{{NS_SASL}}}challenge":  # RFC 6120 §6.4.6: additional data as a challenge
        scram.verify(base64.b64decode(reply.text or ""))
        conn.send(f"<response xmlns='{NS_SASL}'/>".encode())
        reply = await conn.receive()
    elif reply.tag == f"{{{NS_SASL}}}success" and reply.text:
        scram.verify(base64.b64decode(reply.text))
    if reply.tag != f"{{{NS_SASL}}}success":
        raise LoginError(f"SASL failed: {_children(reply)}")

    # RFC 6120 §7: resource binding (server-generated resource)
    conn.open_stream(target.domain)
    features = await conn.receive()
    if features.find(f"{{{NS_BIND}}}bind") is None:
        raise LoginError("no resource binding offered")
    conn.send(f"<iq type='set' id='b'><bind xmlns='{NS_BIND}'/></iq>".encode())
    reply = await conn.receive()
    jid = reply.findtext(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid")
    if reply.get("type") != "result" or not jid:
        raise LoginError(f"bind failed: {etree.tostring(reply)!r}")
    # RFC 3921 session establishment, only where the server says it is not optional
    session = features.find(f"{{{NS_SESSION}}}session")
    if session is not None and session.find(f"{{{NS_SESSION}}}optional") is None:
        conn.send(f"<iq type='set' id='s'><session xmlns='{NS_SESSION}'/></iq>".encode())
        reply = await conn.receive()
        if reply.get("type") != "result":
            raise LoginError("session establishment failed")
    if sm:  # XEP-0198, resumable, as mobile clients enable it
        if features.find(f"{{{NS_SM}}}sm") is None:
            raise LoginError("no stream management offered")
        conn.send(f"<enable xmlns='{NS_SM}' resume='true'/>".encode())
        reply = await conn.receive()
        if reply.tag != f"{{{NS_SM}}}enabled":
            raise LoginError(f"stream management refused: {etree.tostring(reply)!r}")
    conn.established(jid)


async def login_many(
    target: Target,
    usernames: Sequence[str],
    *,
    presence: bool,
    concurrency: int,
    sources: Sequence[str] = (),
    sm: bool = False,
) -> tuple[list[XmppConnection], list[str]]:
    """Log in every user with bounded concurrency; returns (connections, error descriptions)."""
    semaphore = asyncio.Semaphore(concurrency)
    conns: list[XmppConnection] = []
    errors: list[str] = []

    async def one(index: int, username: str) -> None:
        source = sources[index % len(sources)] if sources else None
        async with semaphore:
            try:
                conns.append(await login(target, username, presence=presence, source=source, sm=sm))
            except (LoginError, OSError, TimeoutError) as exc:
                errors.append(f"{username}: {type(exc).__name__}: {exc}")

    await asyncio.gather(*(one(i, name) for i, name in enumerate(usernames)))
    return conns, errors


async def close_all(conns: Sequence[XmppConnection], timeout: float = 10.0) -> None:
    """Close every stream, wait for the connections to go, then drop stragglers."""
    for conn in conns:
        conn.close()
    pending = [conn.lost for conn in conns if not conn.lost.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
    for conn in conns:
        if conn.alive:
            conn.abort()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_s() -> float:
    """CPU seconds all CPUs spent not idle since boot, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLOCK_TICKS  # minus idle and iowait


class CpuMeter:
    """Cores used over an interval by this client, the server, and everything else.

    ``other_cpu`` is the noise indicator: the machine is shared, and anything else running
    competes with the pinned server and client.
    """

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.wall = time.perf_counter()
        self._client = time.process_time()
        self._server = self._server_cpu()
        self._machine = machine_busy_s()

    def _server_cpu(self) -> float:
        if self.server_pid is None:
            return 0.0
        try:
            return process_cpu_s(self.server_pid)
        except OSError:
            return 0.0

    def read(self) -> dict[str, float | None]:
        """client_cpu, server_cpu and other_cpu in cores (1.0 = one CPU busy) since creation."""
        wall = max(time.perf_counter() - self.wall, 1e-9)
        client = (time.process_time() - self._client) / wall
        server = (self._server_cpu() - self._server) / wall
        machine = (machine_busy_s() - self._machine) / wall
        return {
            "client_cpu": round(client, 3),
            "server_cpu": round(server, 3) if self.server_pid is not None else None,
            "other_cpu": round(max(0.0, machine - client - server), 3),
        }


def server_cost(
    usage: dict[str, float | None], seconds: float, units: int, scale: float
) -> float | None:
    """Server CPU time per unit of work (per message, connection, login), times ``scale``.

    Unlike a rate, this holds when the client or another process is the bottleneck.
    """
    server = usage.get("server_cpu")
    if server is None or units <= 0:
        return None
    return round(server * seconds / units * scale, 3)


def client_bound(usage: dict[str, float | None]) -> bool:
    """True when the client used (nearly) its whole core: the figure is a client limit."""
    return (usage.get("client_cpu") or 0.0) >= 0.9


def usernames(prefix: str, count: int, start: int = 0) -> list[str]:
    """The bench accounts: prefix0, prefix1, ..."""
    return [f"{prefix}{i}" for i in range(start, start + count)]


def percentile(ordered: Sequence[float], q: float, digits: int = 3) -> float | None:
    """Nearest-rank percentile of sorted values, rounded; None when there are none."""
    if not ordered:
        return None
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return round(ordered[rank], digits)


# --- throughput ---------------------------------------------------------------------------------


class Totals:
    """Counters shared by all receivers."""

    __slots__ = ("delivered", "errors")

    def __init__(self) -> None:
        self.delivered = 0
        self.errors = 0


class Flow:
    """One direction of a pair: a sender keeping ``window`` messages in flight to its partner."""

    __slots__ = ("batch", "batch_size", "delivered", "low_water", "running", "send", "sent")

    def __init__(self, sender: XmppConnection, to: str, window: int, ack_request: bool) -> None:
        self.send = sender.send
        self.batch_size = max(1, window // 2)
        self.low_water = window - self.batch_size
        message = f"<message to='{to}' type='chat'><body>bench payload 0123456789</body></message>"
        # with stream management, the sender asks for an ack after each message, as mobile
        # clients such as Conversations do
        self.batch = (message.encode() + (SM_REQUEST if ack_request else b"")) * self.batch_size
        self.sent = 0
        self.delivered = 0
        self.running = False

    def refill(self) -> None:
        """Top the window up in whole batches: one write per batch."""
        while self.running and self.sent - self.delivered <= self.low_water:
            self.send(self.batch)
            self.sent += self.batch_size


class CountingReceiver:
    """Counts ``</message>`` end tags in the raw stream and credits the flow it terminates."""

    __slots__ = ("flow", "tail", "totals")

    def __init__(self, flow: Flow, totals: Totals) -> None:
        self.flow = flow
        self.totals = totals
        self.tail = b""

    def __call__(self, data: bytes) -> None:
        count = data.count(MESSAGE_END)
        if self.tail:  # an end tag split across two reads: counted once, here
            count += (self.tail + data[:TAIL]).count(MESSAGE_END)
        self.tail = data[-TAIL:] if len(data) >= TAIL else (self.tail + data)[-TAIL:]
        if b"error" in data:
            self.totals.errors += data.count(b"type='error'") + data.count(b'type="error"')
        if count:
            flow = self.flow
            flow.delivered += count
            self.totals.delivered += count
            flow.refill()


class SmAcker:
    """XEP-0198 on the receiving side: counts received messages and answers the server's <r/>
    with that count, then hands the bytes on. An end tag or <r/> split across two reads is
    found with the kept tail. Presence and other stanzas are not counted: an h below the true
    count is safe (the server keeps those few stanzas queued), one above it would not be."""

    __slots__ = ("handled", "inner", "send", "tail")

    def __init__(self, inner: Callable[[bytes], None], send: Callable[[bytes], None]) -> None:
        self.inner = inner
        self.send = send
        self.handled = 0
        self.tail = b""

    def __call__(self, data: bytes) -> None:
        joined = self.tail + data
        self.handled += joined.count(MESSAGE_END) - self.tail.count(MESSAGE_END)
        requests = sum(joined.count(tag) for tag in SM_R_TAGS)
        requests -= sum(self.tail.count(tag) for tag in SM_R_TAGS)
        self.tail = joined[-SM_TAIL:]
        if requests:
            self.send(b"<a xmlns='urn:xmpp:sm:3' h='%d'/>" % (self.handled % 2**32))
        self.inner(data)


def with_sm(conn: XmppConnection, handler: Callable[[bytes], None], sm: bool) -> None:
    """Install `handler` on `conn`, behind an `SmAcker` when stream management is on."""
    conn.handler = SmAcker(handler, conn.send) if sm else handler


async def run_throughput(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """Pairs message each other as fast as the window allows; delivered messages per second."""
    return await throughput_phase(target, args)


async def throughput_phase(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """One throughput measurement: log the pairs in, message, drain, close (also for afterload)."""
    names = usernames(args.prefix, 2 * args.pairs)
    setup = time.perf_counter()
    conns, errors = await login_many(
        target, names, presence=True, concurrency=args.concurrency, sm=args.sm
    )
    result: dict[str, Any] = {
        "pairs": args.pairs,
        "window": args.window,
        "bare": args.bare,
        "sm": args.sm,
    }
    if errors:
        await close_all(conns)
        return result | {"ok": False, "login_errors": len(errors), "first_error": errors[0]}
    conns.sort(key=lambda conn: int(conn.jid.split("@")[0].removeprefix(args.prefix)))
    result["setup_s"] = round(time.perf_counter() - setup, 2)
    result["tls"] = conns[0].tls_version()
    await asyncio.sleep(0.5)  # let initial presence settle before traffic starts

    totals = Totals()
    flows: list[Flow] = []
    for a, b in zip(conns[0::2], conns[1::2], strict=True):
        for sender, receiver in ((a, b), (b, a)):
            to = receiver.jid.split("/")[0] if args.bare else receiver.jid
            flow = Flow(sender, to, args.window, ack_request=args.sm)
            with_sm(receiver, CountingReceiver(flow, totals), args.sm)
            flows.append(flow)
    for flow in flows:
        flow.running = True
        flow.refill()

    samples, delivered, elapsed, usage = await measure(totals, args)

    for flow in flows:
        flow.running = False
    drained = await _wait_for(lambda: all(f.delivered >= f.sent for f in flows), 10.0)
    lost = sum(max(0, f.sent - f.delivered) for f in flows)
    alive = sum(conn.alive for conn in conns)
    await close_all(conns)
    return result | {
        "ok": drained and totals.errors == 0 and alive == len(conns) and delivered > 0,
        "msg_per_s": round(slope(samples)),
        "server_us_per_msg": server_cost(usage, elapsed, delivered, 1e6),
        "client_bound": client_bound(usage),
        "delivered": delivered,
        "duration_s": round(elapsed, 2),
        "undelivered": lost,
        "errors": totals.errors,
        "connections_lost": len(conns) - alive,
        **usage,
    }


async def measure(
    totals: Totals, args: argparse.Namespace
) -> tuple[list[tuple[float, int]], int, float, dict[str, float | None]]:
    """Warm up, then sample the delivered counter for ``args.duration`` seconds: (samples,
    deliveries in the window, window seconds, CPU use over the window)."""
    await asyncio.sleep(args.warmup)
    start, meter = totals.delivered, CpuMeter(args.pid)
    samples = await sample_counter(totals, args.duration)
    return samples, totals.delivered - start, time.perf_counter() - meter.wall, meter.read()


async def sample_counter(totals: Totals, duration: float) -> list[tuple[float, int]]:
    """(time, delivered so far) every 10 ms for ``duration`` seconds."""
    samples = []
    end = time.perf_counter() + duration
    while (now := time.perf_counter()) < end:
        samples.append((now, totals.delivered))
        await asyncio.sleep(0.01)
    return samples


def slope(samples: Sequence[tuple[float, int]]) -> float:
    """Least-squares rate of a counter.

    Windowed senders tend to move in convoys (every flow refills at about the same time), so the
    delivered count grows in steps; a fitted slope is steadier than first-to-last difference.
    """
    n = len(samples)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / n
    mean_c = sum(c for _, c in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    cov = sum((t - mean_t) * (c - mean_c) for t, c in samples)
    return cov / var if var else 0.0


async def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


# --- latency ------------------------------------------------------------------------------------


class LatencyWindow:
    """Samples of messages sent inside the measurement window [start_ns, stop_ns)."""

    __slots__ = ("received", "samples", "sent", "start_ns", "stop_ns")

    def __init__(self) -> None:
        self.start_ns = 1 << 62  # nothing is in the window until the warm-up is over
        self.stop_ns = 1 << 62
        self.samples: list[int] = []
        self.sent = 0
        self.received = 0


class StampReceiver:
    """Parses ``<body>send-time-ns</body>`` out of complete messages; latency = now - stamp."""

    __slots__ = ("buffer", "window")

    def __init__(self, window: LatencyWindow) -> None:
        self.window = window
        self.buffer = b""

    def __call__(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        buffer = self.buffer + data
        end = buffer.rfind(MESSAGE_END)
        if end < 0:
            self.buffer = buffer
            return
        end += len(MESSAGE_END)
        window = self.window
        for match in STAMP.finditer(buffer, 0, end):
            stamp = int(match.group(1))
            if window.start_ns <= stamp < window.stop_ns:
                window.samples.append(now - stamp)
                window.received += 1
        self.buffer = buffer[end:]


async def run_latency(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """A fixed offered rate spread round-robin over all senders; latency percentiles in ms."""
    names = usernames(args.prefix, 2 * args.pairs)
    conns, errors = await login_many(
        target, names, presence=True, concurrency=args.concurrency, sm=args.sm
    )
    result: dict[str, Any] = {"pairs": args.pairs, "rate": args.rate, "sm": args.sm}
    if errors:
        await close_all(conns)
        return result | {"ok": False, "login_errors": len(errors), "first_error": errors[0]}
    conns.sort(key=lambda conn: int(conn.jid.split("@")[0].removeprefix(args.prefix)))
    await asyncio.sleep(0.5)

    window = LatencyWindow()
    senders: list[tuple[Callable[[bytes], None], bytes]] = []
    for a, b in zip(conns[0::2], conns[1::2], strict=True):
        for sender, receiver in ((a, b), (b, a)):
            senders.append((sender.send, f"<message to='{receiver.jid}' type='chat'>".encode()))
            with_sm(receiver, StampReceiver(window), args.sm)
    # with stream management, every message is followed by an ack request (as Conversations
    # does), so each is acknowledged only once it is durable
    tail = b"</body></message>" + (SM_REQUEST if args.sm else b"")

    loop_start = time.perf_counter_ns()
    window.start_ns = loop_start + int(args.warmup * 1e9)
    window.stop_ns = window.start_ns + int(args.duration * 1e9)
    meter: CpuMeter | None = None
    sent, count, per_second = 0, len(senders), args.rate
    while (now := time.perf_counter_ns()) < window.stop_ns:
        if meter is None and now >= window.start_ns:
            meter = CpuMeter(args.pid)
        due = (now - loop_start) * per_second // 1_000_000_000
        while sent < due:
            send, head = senders[sent % count]
            stamp = time.perf_counter_ns()
            send(head + b"<body>%d" % stamp + tail)
            if window.start_ns <= stamp < window.stop_ns:
                window.sent += 1
            sent += 1
        await asyncio.sleep(0.001)  # the loop's timer resolution: ~2 messages a tick at 2000/s
    usage = meter.read() if meter else {}
    drained = await _wait_for(lambda: window.received >= window.sent, 5.0)
    alive = sum(conn.alive for conn in conns)
    await close_all(conns)

    samples = sorted(window.samples)
    ms = [s / 1e6 for s in samples]
    return result | {
        "ok": drained and alive == len(conns) and bool(samples),
        "p50_ms": percentile(ms, 0.50),
        "p90_ms": percentile(ms, 0.90),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": round(ms[-1], 3) if ms else None,
        "samples": len(samples),
        "achieved_rate": round(window.sent / args.duration),
        "undelivered": window.sent - window.received,
        "connections_lost": len(conns) - alive,
        **usage,
    }


# --- server probes and targets ------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status VmRSS."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise LookupError(f"no VmRSS for pid {pid}")


class ServerProbe:
    """The server process through /proc: resident memory and open file descriptors.

    Reads return None once the process is gone, so a crashed server shows up in the result (as
    ``null`` figures and ``server_alive: false``) rather than as a traceback in the client.
    """

    FD_SLACK = 5  # descriptors a server may open or close on its own (logs, database journal)

    def __init__(self, pid: int | None) -> None:
        self.pid = pid

    def rss(self) -> int | None:
        """VmRSS in KiB."""
        if self.pid is None:
            return None
        try:
            return rss_kib(self.pid)
        except (OSError, LookupError, ValueError):
            return None

    def fds(self) -> int | None:
        """Open file descriptors, sockets included."""
        if self.pid is None:
            return None
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return None

    async def wait_closed(self, baseline: int | None, timeout: float) -> float | None:
        """Wait until the server holds no more descriptors than before the connections came.

        Returns the seconds it took, or None when it did not happen within ``timeout``.
        """
        began = time.perf_counter()
        if baseline is None:
            return None
        done = await _wait_for(lambda: (self.fds() or 0) <= baseline + self.FD_SLACK, timeout)
        return round(time.perf_counter() - began, 2) if done else None


async def wait_reclaim(
    probe: ServerProbe, baseline: int | None, timeout: float
) -> tuple[int | None, float]:
    """Sample the server's RSS once a second until it is within 10 % of `baseline` or
    `timeout` seconds passed (caches with a TTL, deferred collections): (last RSS, seconds)."""
    start = time.perf_counter()
    rss = probe.rss()
    while (
        rss is not None
        and baseline is not None
        and rss > baseline * 1.10
        and (waited := time.perf_counter() - start) < timeout
    ):
        await asyncio.sleep(min(1.0, timeout - waited))
        rss = probe.rss()
    return rss, round(time.perf_counter() - start, 1)


def ratio(numerator: float | None, denominator: float | None, digits: int = 3) -> float | None:
    """numerator / denominator, rounded; None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, digits)


def check(name: str, value: float | None, op: str, limit: float) -> list[Any]:
    """One target of the issue as ``[description, value, met]`` (``met`` is False without value)."""
    tests: dict[str, Callable[[float, float], bool]] = {
        "<": lambda v, lim: v < lim,
        "<=": lambda v, lim: v <= lim,
        ">=": lambda v, lim: v >= lim,
        "==": lambda v, lim: v == lim,
    }
    return [f"{name} {op} {limit:g}", value, value is not None and tests[op](value, limit)]


def with_checks(result: dict[str, Any], checks: list[list[Any]]) -> dict[str, Any]:
    """Attach the target checks and their verdict (which does not change ``ok``)."""
    return result | {"checks": checks, "target_met": all(met for _, _, met in checks)}


IQ_TAG = re.compile(rb"<iq\b[^>]*>")
IQ_ERROR = re.compile(rb"""\btype=['"]error['"]""")


# --- memory and hold ----------------------------------------------------------------------------

IDLE_PING_ID = b"idle-ping"


class PingTally:
    """Answers to the one ping every held connection sends at the end."""

    __slots__ = ("answered", "errors", "rtts_ns")

    def __init__(self) -> None:
        self.answered = 0
        self.errors = 0
        self.rtts_ns: list[int] = []


class IdlePingReceiver:
    """Waits for the reply to a held connection's ping (any other bytes are ignored)."""

    __slots__ = ("done", "sent_ns", "tail", "tally")

    def __init__(self, tally: PingTally, sent_ns: int) -> None:
        self.tally = tally
        self.sent_ns = sent_ns
        self.tail = b""
        self.done = False

    def __call__(self, data: bytes) -> None:
        if self.done:
            return
        now = time.perf_counter_ns()
        buffer = self.tail + data
        for match in IQ_TAG.finditer(buffer):
            tag = match.group()
            if IDLE_PING_ID not in tag:
                continue
            self.done = True
            if IQ_ERROR.search(tag):
                self.tally.errors += 1
            else:
                self.tally.answered += 1
                self.tally.rtts_ns.append(now - self.sent_ns)
            return
        self.tail = buffer[-1024:]  # a tag split across two reads


async def ping_all(
    conns: Sequence[XmppConnection], domain: str, rate: int, timeout: float
) -> dict[str, Any]:
    """XEP-0199: every live connection pings the server once, ``rate`` a second; count results.

    Paced so that the round trips show each connection's wake-up cost rather than the queue of a
    burst; ``ping_all_s`` is the time until the last answer.
    """
    tally = PingTally()
    stanza = (
        b"<iq type='get' id='" + IDLE_PING_ID + b"' to='" + domain.encode() + b"'>"
        b"<ping xmlns='urn:xmpp:ping'/></iq>"
    )
    live = [conn for conn in conns if conn.alive]
    began = time.perf_counter()
    chunk = max(1, rate // 100)  # one chunk every 10 ms
    for start in range(0, len(live), chunk):
        for conn in live[start : start + chunk]:
            conn.handler = IdlePingReceiver(tally, time.perf_counter_ns())
            conn.send(stanza)
        due = began + (start + chunk) / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
    await _wait_for(lambda: tally.answered + tally.errors >= len(live), timeout)
    took = time.perf_counter() - began
    rtts = sorted(ns / 1e6 for ns in tally.rtts_ns)
    return {
        "pings_sent": len(live),
        "pings_answered": tally.answered,
        "ping_errors": tally.errors,
        "ping_p50_ms": percentile(rtts, 0.5, 1),
        "ping_p99_ms": percentile(rtts, 0.99, 1),
        "ping_max_ms": round(rtts[-1], 1) if rtts else None,
        "ping_all_s": round(took, 2),
    }


async def run_idle(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """N idle, authenticated, available TLS sessions: RSS per connection, held, pinged, closed.

    ``memory`` holds them only for the settle time, ``hold`` for ``--hold`` seconds. Then every
    connection pings the server (XEP-0199) and must get the result; then all are closed and the
    server's RSS is compared with its value before the connections came.
    """
    if args.pid is None:
        raise SystemExit(f"{args.scenario} scenario needs --pid of the server process")
    probe = ServerProbe(args.pid)
    sources = [f"127.0.0.{2 + i}" for i in range(args.sources)]
    result: dict[str, Any] = {
        "connections": args.count,
        "concurrency": args.concurrency,
        "sources": len(sources),
        "hold_s": args.hold,
    }
    fds_start = probe.fds()

    # Warm-up: touch every code path once (TLS, SASL, roster load) so one-off allocations
    # do not count as per-connection memory.
    warm, errors = await login_many(
        target,
        usernames(args.prefix, min(100, args.count)),
        presence=True,
        concurrency=args.concurrency,
    )
    await close_all(warm)
    if errors:
        return result | {"ok": False, "login_errors": len(errors), "first_error": errors[0]}
    await probe.wait_closed(fds_start, 30.0)
    await asyncio.sleep(args.settle)
    before = probe.rss()

    meter = CpuMeter(args.pid)
    conns, errors = await login_many(
        target,
        usernames(args.prefix, args.count),
        presence=True,
        concurrency=args.concurrency,
        sources=sources,
    )
    setup_s, usage = time.perf_counter() - meter.wall, meter.read()
    await asyncio.sleep(args.settle)
    after = probe.rss()
    alive = sum(conn.alive for conn in conns)
    tls = conns[0].tls_version() if conns else "none"

    # Hold: nothing is sent; RSS sampled once a second (an idle-parser sweep shows up here).
    held, held_max = after, after
    hold_end = time.perf_counter() + args.hold
    while (now := time.perf_counter()) < hold_end:
        await asyncio.sleep(min(1.0, hold_end - now))
        held = probe.rss()
        if held is not None and (held_max is None or held > held_max):
            held_max = held
    alive_held = sum(conn.alive for conn in conns)

    pings = await ping_all(conns, target.domain, args.ping_rate, timeout=30.0)
    alive_end = sum(conn.alive for conn in conns)
    await close_all(conns, timeout=60.0)
    close_s = await probe.wait_closed(fds_start, 60.0)
    await asyncio.sleep(args.settle)
    closed = probe.rss()
    reclaimed, reclaim_s = await wait_reclaim(probe, before, args.reclaim)

    growth = None if after is None or before is None else after - before
    held_growth = None if held is None or before is None else held - before
    result |= {
        "ok": not errors
        and alive_end == args.count
        and pings["pings_answered"] == args.count
        and closed is not None,
        "kib_per_conn": round(growth / max(1, alive), 1) if growth is not None else None,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "established": alive,
        "setup_conn_per_s": round(len(conns) / setup_s, 1),
        "server_ms_per_conn": server_cost(usage, setup_s, len(conns), 1e3),
        "client_bound": client_bound(usage),
        "setup_s": round(setup_s, 2),
        "tls": tls,
        "rss_held_kib": held,
        "rss_held_max_kib": held_max,
        "kib_per_conn_held": (
            round(held_growth / max(1, alive_held), 1) if held_growth is not None else None
        ),
        "lost_while_held": alive - alive_held,
        **pings,
        "rss_closed_kib": closed,
        "rss_close_ratio": ratio(closed, before),
        "rss_reclaimed_kib": reclaimed,
        "rss_reclaim_ratio": ratio(reclaimed, before),
        "reclaim_s": reclaim_s,
        "close_s": close_s,
        "server_fds_closed": probe.fds(),
        "server_alive": closed is not None,
        **usage,
    }
    if errors:
        result |= {"login_errors": len(errors), "first_error": errors[0]}
    if args.scenario == "memory":
        checks = [check("kib_per_conn", result["kib_per_conn"], "<=", 24)]
    else:
        checks = [
            check("established", alive, "==", args.count),
            check("pings_answered", pings["pings_answered"], "==", args.count),
            check("rss_reclaim_ratio", result["rss_reclaim_ratio"], "<=", 1.10),
        ]
    return with_checks(result, checks)


# --- logins -------------------------------------------------------------------------------------


async def run_logins(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """Workers loop connect, STARTTLS, SCRAM-SHA-1, bind, close; logins per second."""
    stop = asyncio.Event()
    done: list[tuple[float, float]] = []  # (finished at, seconds taken)
    errors: list[str] = []

    async def worker(username: str) -> None:
        while not stop.is_set():
            began = time.perf_counter()
            try:
                conn = await login(target, username, presence=False)
            except (LoginError, OSError, TimeoutError) as exc:
                errors.append(f"{username}: {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.1)
                continue
            finished = time.perf_counter()
            done.append((finished, finished - began))
            conn.close()

    workers = [asyncio.create_task(worker(name)) for name in usernames(args.prefix, args.workers)]
    await asyncio.sleep(args.warmup)
    meter = CpuMeter(args.pid)
    await asyncio.sleep(args.duration)
    end, usage = time.perf_counter(), meter.read()
    stop.set()
    await asyncio.wait(workers, timeout=30.0)
    for task in workers:
        if task.done() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]  # a bug in the client: surface it
        task.cancel()
    await asyncio.sleep(0.5)  # let the last closes go out

    timed = sorted(took * 1000 for at, took in done if meter.wall <= at < end)
    return {
        "ok": not errors and bool(timed),
        "workers": args.workers,
        "logins_per_s": round(len(timed) / (end - meter.wall), 1),
        "server_ms_per_login": server_cost(usage, end - meter.wall, len(timed), 1e3),
        "client_bound": client_bound(usage),
        "logins": len(timed),
        "login_p50_ms": percentile(timed, 0.5, 2),
        "login_p99_ms": percentile(timed, 0.99, 2),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        **usage,
    }


# --- afterload ----------------------------------------------------------------------------------


async def run_afterload(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """Throughput on a fresh server, an idle storm (N sessions opened, closed), throughput again.

    The storm is the memory scenario's: N authenticated TLS sessions with initial presence from
    several source addresses, all closed once established. The second throughput phase starts as
    soon as the server has released every connection (its descriptor count is back) and the
    settle time has passed.
    """
    if args.pid is None:
        raise SystemExit("afterload scenario needs --pid of the server process")
    probe = ServerProbe(args.pid)
    sources = [f"127.0.0.{2 + i}" for i in range(args.sources)]
    fds_start, rss_start = probe.fds(), probe.rss()
    result: dict[str, Any] = {"pairs": args.pairs, "window": args.window, "storm": args.count}

    fresh = await throughput_phase(target, args)
    await probe.wait_closed(fds_start, 60.0)
    await asyncio.sleep(args.settle)
    pre = probe.rss()

    meter = CpuMeter(args.pid)
    conns, errors = await login_many(
        target,
        usernames(args.prefix, args.count),
        presence=True,
        concurrency=args.storm_concurrency,
        sources=sources,
    )
    setup_s, storm_usage = time.perf_counter() - meter.wall, meter.read()
    await asyncio.sleep(args.settle)
    peak = probe.rss()
    established = sum(conn.alive for conn in conns)
    await close_all(conns, timeout=60.0)
    storm_size = len(conns)
    del conns  # the client keeps nothing of the storm into the second phase
    close_s = await probe.wait_closed(fds_start, 60.0)
    await asyncio.sleep(args.settle)
    closed = probe.rss()

    after = await throughput_phase(target, args)
    await probe.wait_closed(fds_start, 30.0)
    end = probe.rss()
    reclaimed, reclaim_s = await wait_reclaim(probe, pre, args.reclaim)

    usage_keys = ("client_cpu", "server_cpu", "other_cpu")
    result |= {
        "ok": bool(fresh.get("ok"))
        and bool(after.get("ok"))
        and not errors
        and established == args.count,
        "fresh_msg_per_s": fresh.get("msg_per_s"),
        "after_msg_per_s": after.get("msg_per_s"),
        "after_fresh_ratio": ratio(after.get("msg_per_s"), fresh.get("msg_per_s")),
        "fresh_server_us_per_msg": fresh.get("server_us_per_msg"),
        "after_server_us_per_msg": after.get("server_us_per_msg"),
        "rss_start_kib": rss_start,
        "rss_pre_kib": pre,
        "rss_peak_kib": peak,
        "rss_closed_kib": closed,
        "rss_end_kib": end,
        "rss_close_ratio": ratio(closed, pre),
        "rss_reclaimed_kib": reclaimed,
        "rss_reclaim_ratio": ratio(reclaimed, pre),
        "reclaim_s": reclaim_s,
        "storm_established": established,
        "storm_setup_conn_per_s": round(storm_size / setup_s, 1),
        "storm_kib_per_conn": (
            round((peak - pre) / max(1, established), 1)
            if peak is not None and pre is not None
            else None
        ),
        "storm_server_ms_per_conn": server_cost(storm_usage, setup_s, storm_size, 1e3),
        "close_s": close_s,
        "server_alive": end is not None,
        "client_bound": bool(fresh.get("client_bound") or after.get("client_bound")),
        **{f"fresh_{key}": fresh.get(key) for key in usage_keys},
        **{f"after_{key}": after.get(key) for key in usage_keys},
        **{key: after.get(key) for key in usage_keys},
    }
    for name, phase in (("fresh", fresh), ("after", after)):
        for key in ("undelivered", "errors", "connections_lost", "login_errors", "first_error"):
            if phase.get(key):
                result[f"{name}_{key}"] = phase[key]
    if errors:
        result |= {"storm_login_errors": len(errors), "first_error": errors[0]}
    return with_checks(
        result,
        [
            check("after_fresh_ratio", result["after_fresh_ratio"], ">=", 0.9),
            check("rss_reclaim_ratio", result["rss_reclaim_ratio"], "<=", 1.10),
        ],
    )


# --- slowreader ---------------------------------------------------------------------------------

PING_ID = re.compile(rb"""\bid=['"]p(\d+)['"]""")
STREAM_ERROR = re.compile(rb"<stream:error[^>]*>\s*<([A-Za-z-]+)")
TCP_STATES = {1: "ESTABLISHED", 4: "FIN_WAIT1", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK"}
TCP_INFO_SIZE = 136  # struct tcp_info up to tcpi_bytes_acked (Linux 4.1+) at offset 120


class PingMeter:
    """The pinger's round trips: (send time, round trip) per answered ping, in ns."""

    __slots__ = ("errors", "samples", "sent", "tail")

    def __init__(self) -> None:
        self.sent: dict[int, int] = {}  # outstanding: ping number -> send time
        self.samples: list[tuple[int, int]] = []
        self.errors = 0
        self.tail = b""

    def __call__(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        buffer = self.tail + data
        end = 0
        for match in IQ_TAG.finditer(buffer):
            end = match.end()
            tag = match.group()
            number = PING_ID.search(tag)
            sent = self.sent.pop(int(number.group(1)), None) if number else None
            if sent is None:
                continue
            if IQ_ERROR.search(tag):
                self.errors += 1
            else:
                self.samples.append((sent, now - sent))
        self.tail = buffer[end:][-1024:]


class StreamWatcher:
    """What a client received: bytes, messages, error stanzas, a stream error, the stream's end."""

    __slots__ = ("bytes", "ended", "errors", "last", "messages", "stream_error", "tail")

    def __init__(self) -> None:
        self.bytes = 0
        self.messages = 0
        self.errors = 0
        self.stream_error: str | None = None
        self.ended = False
        self.last = time.perf_counter()
        self.tail = b""

    def __call__(self, data: bytes) -> None:
        self.bytes += len(data)
        self.last = time.perf_counter()
        buffer = self.tail + data
        # the kept tail is shorter than each pattern, so nothing is counted twice
        self.messages += buffer.count(MESSAGE_END)
        self.errors += buffer.count(b"type='error'") + buffer.count(b'type="error"')
        if self.stream_error is None and b"stream:error" in buffer:
            found = STREAM_ERROR.search(buffer)
            if found:
                self.stream_error = found.group(1).decode()
        self.ended = self.ended or b"</stream:stream>" in buffer
        self.tail = buffer[-(TAIL):]


class FloodStats:
    """The flooder's side: what it wrote and how long its transport made it wait."""

    __slots__ = ("bytes", "longest_pause_s", "messages", "paused_s", "pauses", "stopped_by")

    def __init__(self) -> None:
        self.bytes = 0
        self.messages = 0
        self.pauses = 0
        self.paused_s = 0.0
        self.longest_pause_s = 0.0
        self.stopped_by = ""


async def flood(conn: XmppConnection, to: str, args: argparse.Namespace, stats: FloodStats) -> None:
    """Write messages to ``to`` as fast as the transport takes them, until time or bytes run out.

    Writes stop while the transport is paused (its buffer above the high-water mark): then the
    kernel's buffers are full too, so the server is not reading this connection.
    """
    body = "x" * args.body_size
    message = f"<message to='{to}' type='chat' id='f'><body>{body}</body></message>".encode()
    per_batch = max(1, 32768 // len(message))
    batch = message * per_batch
    deadline = time.perf_counter() + args.duration
    while conn.alive:
        now = time.perf_counter()
        if now >= deadline:
            stats.stopped_by = "duration"
            return
        if stats.bytes >= args.bytes:
            stats.stopped_by = "bytes"
            return
        if conn.writing_paused:
            stats.pauses += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deadline - now):
                    await conn.drain()
            took = time.perf_counter() - now
            stats.paused_s += took
            stats.longest_pause_s = max(stats.longest_pause_s, took)
            continue
        conn.send(batch)
        stats.bytes += len(batch)
        stats.messages += per_batch
        await asyncio.sleep(0)
    stats.stopped_by = "connection lost"


async def ping_loop(
    conn: XmppConnection,
    meter: PingMeter,
    domain: str,
    interval: float,
    stop: asyncio.Event,
    limit: float,
) -> None:
    """One ping iq to the server every ``interval`` s (open loop: no waiting for answers).

    Runs until ``stop`` is set, the connection is lost, or ``limit`` seconds have passed.
    """
    head = b"<iq type='get' to='" + domain.encode() + b"' id='p"
    tail = b"'><ping xmlns='urn:xmpp:ping'/></iq>"
    number = 0
    next_at = time.perf_counter()
    deadline = next_at + limit
    while not stop.is_set() and conn.alive and next_at < deadline:
        meter.sent[number] = time.perf_counter_ns()
        conn.send(head + str(number).encode() + tail)
        number += 1
        next_at += interval
        now = time.perf_counter()
        if next_at < now:  # the client fell behind: skip slots rather than send a burst
            next_at = now
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(next_at - now):
                await stop.wait()


def tcp_info(conn: XmppConnection) -> tuple[int, int] | None:
    """(state, bytes acked by the peer's kernel) of a connection's socket, from TCP_INFO."""
    sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
    except OSError:
        return None
    if len(info) < TCP_INFO_SIZE:
        return None
    return info[0], int.from_bytes(info[120:128], sys.byteorder)  # tcpi_state, tcpi_bytes_acked


def tcp_key(address: tuple[str, int]) -> str:
    """An IPv4 address as /proc/net/tcp writes it: little-endian hex address, hex port."""
    return f"{socket.inet_aton(address[0])[::-1].hex().upper()}:{address[1]:04X}"


def tcp_sockets(wanted: dict[tuple[str, str], str]) -> dict[str, tuple[int, int, int]]:
    """(state, tx_queue, rx_queue) of named sockets, by (local, remote) key, from /proc/net/tcp."""
    found: dict[str, tuple[int, int, int]] = {}
    with open("/proc/net/tcp", encoding="ascii") as table:
        next(table)
        for line in table:
            fields = line.split(None, 5)
            name = wanted.get((fields[1], fields[2]))
            if name is not None:
                tx_queue, rx_queue = fields[4].split(":")
                found[name] = (int(fields[3], 16), int(tx_queue, 16), int(rx_queue, 16))
    return found


class SlowReaderMonitor:
    """Samples the server every 20 ms (RSS peak, descriptors), F's progress every 100 ms and the
    server every second (a timeline row).

    A drop in the server's descriptor count while the flooder and the pinger are still connected,
    with the server's side of the reader's connection no longer ESTABLISHED in /proc/net/tcp,
    means the server closed the reader's connection: that is when the reader was disconnected
    (the reader itself cannot see it: it is not reading). Each timeline row has the megabytes of
    F's the server's kernel acknowledged in that second (``tcpi_bytes_acked`` of F's socket), the
    server's RSS, the bytes the server has not read from the flooder and the bytes queued in the
    server's kernel for the reader (both from /proc/net/tcp, the server's side of each connection).
    """

    FIELDS = ("t_s", "flood_mb", "rss_mib", "flooder_unread_kib", "reader_queued_kib")

    def __init__(
        self,
        probe: ServerProbe,
        server: tuple[str, int],
        reader: XmppConnection,
        flooder: XmppConnection,
        pinger: XmppConnection,
        stats: FloodStats,
    ) -> None:
        self.probe = probe
        self.reader, self.flooder, self.pinger = reader, flooder, pinger
        self.stats = stats
        local = tcp_key(server)
        self.sockets = {
            (local, tcp_key(conn.transport.get_extra_info("sockname"))): name
            for name, conn in (("reader", reader), ("flooder", flooder))
            if conn.transport is not None
        }
        self.fds_base = probe.fds()
        self.rss_peak: int | None = probe.rss()
        # times are time.perf_counter() values
        self.reader_closed_at: float | None = None
        self.reader_tcp_state: tuple[str, float] | None = None
        self.timeline: list[list[float | None]] = []
        self.stopped = False
        self.flooding = False  # set by the scenario while F floods
        self.stalled_s = 0.0  # flood time in 100 ms windows in which the server took nothing
        self._acked = 0

    def flood_acked(self) -> int:
        """Bytes of F's the server's kernel has acknowledged (its receive buffer took them)."""
        info = tcp_info(self.flooder)
        if info is not None:
            self._acked = info[1]
        return self._acked

    def _reader_gone(self) -> bool:
        """The server's side of the reader's connection is closed (FIN_WAIT1) or gone (reset)."""
        try:
            reader = tcp_sockets(self.sockets).get("reader")
        except OSError:
            return False
        return reader is None or reader[0] != 1

    def _row(self, now: float, flooded: int) -> None:
        rss = self.probe.rss()
        try:
            queues = tcp_sockets(self.sockets)
        except OSError:
            queues = {}
        flooder, reader = queues.get("flooder"), queues.get("reader")
        self.timeline.append(
            [
                now,
                round(flooded / 1e6, 1),
                round(rss / 1024, 1) if rss is not None else None,
                round(flooder[2] / 1024) if flooder else None,
                round(reader[1] / 1024) if reader else None,
            ]
        )

    async def run(self, limit: float) -> None:
        """Sample until ``stopped`` or for ``limit`` seconds at most."""
        next_row = next_window = time.perf_counter()
        deadline = next_row + limit
        flooded = window_start = self.flood_acked()
        while not self.stopped and time.perf_counter() < deadline:
            now = time.perf_counter()
            if now >= next_window:
                # The server's kernel acknowledges F's bytes as long as its receive buffer has
                # room, and the buffer only drains when the server reads: nothing acknowledged
                # for a whole window while F waits means the server is not reading F.
                acked = self.flood_acked()
                if self.flooding and acked == window_start and self.flooder.writing_paused:
                    self.stalled_s += 0.1
                window_start = acked
                next_window = now + 0.1
            rss = self.probe.rss()
            if rss is not None and (self.rss_peak is None or rss > self.rss_peak):
                self.rss_peak = rss
            fds = self.probe.fds()
            if (
                self.reader_closed_at is None
                and fds is not None
                and self.fds_base is not None
                and fds < self.fds_base
                and self.flooder.alive
                and self.pinger.alive
                and self._reader_gone()
            ):
                self.reader_closed_at = now
            info = tcp_info(self.reader)
            if self.reader_tcp_state is None and info is not None and info[0] != 1:
                self.reader_tcp_state = (TCP_STATES.get(info[0], str(info[0])), now)
            if now >= next_row:
                acked = self.flood_acked()
                self._row(now, acked - flooded)
                flooded = acked
                next_row += 1.0
            await asyncio.sleep(0.02)


async def run_slowreader(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """A reader that stops reading, a flooder writing to it, a pinger timing the server.

    R logs in with a small receive buffer, sends presence and stops reading its socket. After
    ``--baseline`` s of pings alone, F writes messages to R's full JID as fast as its transport
    takes them for ``--duration`` s (at most ``--bytes``); P pings the server every
    ``--interval`` s throughout and for ``--linger`` s after the flood. Then R reads what is left
    (to see a stream error, and to free the server), everyone closes, and RSS is read again.
    """
    if args.pid is None:
        raise SystemExit("slowreader scenario needs --pid of the server process")
    probe = ServerProbe(args.pid)
    fds_start, rss_start = probe.fds(), probe.rss()
    names = usernames(args.prefix, 3)
    result: dict[str, Any] = {
        "flood_s": args.duration,
        "flood_limit_mb": round(args.bytes / 1e6),
        "body_bytes": args.body_size,
        "reader_rcvbuf": args.rcvbuf,
        "ping_interval_ms": args.interval * 1e3,
    }
    conns: list[XmppConnection] = []
    try:
        conns.append(await login(target, names[0], presence=True, rcvbuf=args.rcvbuf))
        conns.append(await login(target, names[1], presence=True))
        conns.append(await login(target, names[2], presence=True))
    except (LoginError, OSError, TimeoutError) as exc:
        await close_all(conns)
        return result | {
            "ok": False,
            "login_errors": 1,
            "first_error": f"{type(exc).__name__}: {exc}",
        }
    reader, flooder, pinger = conns
    assert reader.transport is not None
    await asyncio.sleep(0.5)  # presence exchanged; from here on R reads nothing
    reader.transport.pause_reading()
    reader_seen, flooder_seen, pings = StreamWatcher(), StreamWatcher(), PingMeter()
    reader.handler, flooder.handler, pinger.handler = reader_seen, flooder_seen, pings
    rss_before = probe.rss()

    stats = FloodStats()
    monitor = SlowReaderMonitor(probe, (target.host, target.port), reader, flooder, pinger, stats)
    # the longest the scenario can take from here, as a bound for its sampling loops
    limit = args.baseline + args.duration + args.linger + args.drain_timeout + 30.0
    monitor_task = asyncio.create_task(monitor.run(limit))
    stop_pinging = asyncio.Event()
    ping_task = asyncio.create_task(
        ping_loop(pinger, pings, target.domain, args.interval, stop_pinging, limit)
    )
    try:
        await asyncio.sleep(args.baseline)
        flood_start_ns = time.perf_counter_ns()
        meter = CpuMeter(args.pid)
        acked_start = monitor.flood_acked()
        monitor.flooding = True
        await flood(flooder, reader.jid, args, stats)
        monitor.flooding = False
        usage = meter.read()
        flood_end_ns = time.perf_counter_ns()
        flood_s = (flood_end_ns - flood_start_ns) / 1e9
        to_kernel = stats.bytes - flooder.write_buffer_size()
        accepted = monitor.flood_acked() - acked_start
        await asyncio.sleep(args.linger)
        stop_pinging.set()
        await asyncio.wait_for(ping_task, 5.0)
        await _wait_for(lambda: not pings.sent, 2.0)  # stragglers
        rss_after_flood = probe.rss()
        rss_peak = monitor.rss_peak  # while R was not reading
        monitor.rss_peak = rss_after_flood  # from here: the peak of R's final read
        reader_closed_at = monitor.reader_closed_at
        reader_state = monitor.reader_tcp_state

        # R reads again: whatever the server kept for it, then its stream error if it got one.
        drain_start = time.perf_counter()
        reader_seen.last = drain_start
        if reader.alive and not reader.transport.is_closing():
            reader.transport.resume_reading()
        await _wait_for(
            lambda: not reader.alive or time.perf_counter() - reader_seen.last > 2.0,
            args.drain_timeout,
        )
        drain_s = time.perf_counter() - drain_start
        rss_after_drain = probe.rss()
    finally:
        stop_pinging.set()
        monitor.stopped = True
        await asyncio.wait([monitor_task], timeout=5.0)
        ping_task.cancel()
        monitor_task.cancel()
    alive = {"reader": reader.alive, "flooder": flooder.alive, "pinger": pinger.alive}
    await close_all(conns)
    await probe.wait_closed(fds_start, 30.0)
    await asyncio.sleep(1.0)
    rss_closed = probe.rss()

    def rtts(lo: int, hi: int) -> list[float]:
        return sorted(rtt / 1e6 for sent, rtt in pings.samples if lo <= sent < hi)

    in_flood = rtts(flood_start_ns, flood_end_ns)
    baseline = rtts(0, flood_start_ns)
    after = rtts(flood_end_ns, 1 << 62)
    unanswered = [sent for sent in pings.sent.values() if flood_start_ns <= sent < flood_end_ns]

    # times since the flood began (perf_counter and perf_counter_ns share one clock)
    def since_flood(at: float) -> float:
        return round(at - flood_start_ns / 1e9, 2)

    flood_samples = [
        (sent, rtt) for sent, rtt in pings.samples if flood_start_ns <= sent < flood_end_ns
    ]
    worst = max(flood_samples, key=lambda sample: sample[1], default=None)
    for row in monitor.timeline:
        # the ping column: the worst round trip of the pings sent in the second before the row
        hi = int((row[0] or 0) * 1e9)
        bucket = rtts(hi - 1_000_000_000, hi)
        row[0] = round(since_flood(row[0] or 0), 1)
        row.append(round(bucket[-1], 1) if bucket else None)
    growth = (
        round((rss_peak - rss_before) / 1024, 1)
        if rss_peak is not None and rss_before is not None
        else None
    )
    result |= {
        "ok": bool(in_flood) and stats.bytes > 0 and rss_closed is not None,
        "rtt_p50_ms": percentile(in_flood, 0.5, 2),
        "rtt_p99_ms": percentile(in_flood, 0.99, 2),
        "rtt_max_ms": round(in_flood[-1], 2) if in_flood else None,
        "rtt_samples": len(in_flood),
        "rtt_over_50ms": sum(rtt > 50.0 for rtt in in_flood),
        "rtt_worst_at_s": since_flood(worst[0] / 1e9) if worst else None,
        "rtt_unanswered": len(unanswered),
        "rtt_baseline_p50_ms": percentile(baseline, 0.5, 2),
        "rtt_after_p99_ms": percentile(after, 0.99, 2),
        "ping_errors": pings.errors,
        "rss_start_kib": rss_start,
        "rss_before_kib": rss_before,
        "rss_peak_kib": rss_peak,
        "rss_after_flood_kib": rss_after_flood,
        "rss_drain_peak_kib": monitor.rss_peak,
        "rss_after_drain_kib": rss_after_drain,
        "rss_closed_kib": rss_closed,
        "rss_growth_mib": growth,
        "flood_mb": round(accepted / 1e6, 1),
        "flood_messages": accepted // max(1, stats.bytes // max(1, stats.messages)),
        "flood_mb_per_s": round(accepted / 1e6 / max(flood_s, 1e-9), 1),
        "flood_mb_written": round(to_kernel / 1e6, 1),
        "flood_s_actual": round(flood_s, 2),
        "flood_stopped_by": stats.stopped_by,
        "flood_pauses": stats.pauses,
        "flood_paused_s": round(stats.paused_s, 2),
        "flood_longest_pause_s": round(stats.longest_pause_s, 2),
        "flood_stalled_s": round(monitor.stalled_s, 1),
        "flooder_connected": alive["flooder"],
        "flooder_stream_error": flooder_seen.stream_error,
        "flooder_error_stanzas": flooder_seen.errors,
        "reader_closed_by_server": reader_closed_at is not None
        or reader_state is not None
        or not alive["reader"],
        "reader_closed_at_s": since_flood(reader_closed_at) if reader_closed_at else None,
        "reader_tcp_state": [reader_state[0], since_flood(reader_state[1])]
        if reader_state
        else None,
        "reader_stream_error": reader_seen.stream_error,
        "reader_stream_ended": reader_seen.ended,
        "reader_messages": reader_seen.messages,
        "reader_mb": round(reader_seen.bytes / 1e6, 1),
        "reader_drain_s": round(drain_s, 2),
        "pinger_connected": alive["pinger"],
        "server_alive": rss_closed is not None,
        "timeline_fields": [*SlowReaderMonitor.FIELDS, "ping_max_ms"],
        "timeline": monitor.timeline,
        **usage,
    }
    return with_checks(
        result,
        [
            check("rtt_p99_ms", result["rtt_p99_ms"], "<", 50),
            check("rtt_unanswered", len(unanswered), "==", 0),
            check("rss_growth_mib", growth, "<=", 32),
        ],
    )


# --- muc: fan-out to a room ---------------------------------------------------------------------

NS_MUC = "http://jabber.org/protocol/muc"
SELF_PRESENCE = (b"code='110'", b'code="110"')


class MucReceiver:
    """An occupant's raw stream: counts delivered groupchat messages (``</message>`` end tags,
    also across reads) and errors, and notes its self-presence (status 110) and IQ results."""

    __slots__ = ("joined", "results", "room", "tail", "totals")

    def __init__(self, room: MucRoom, totals: Totals) -> None:
        self.room = room
        self.totals = totals
        self.joined = False
        self.results = 0
        self.tail = b""

    def __call__(self, data: bytes) -> None:
        joined = self.tail + data
        count = joined.count(MESSAGE_END) - self.tail.count(MESSAGE_END)
        if not self.joined and any(code in joined for code in SELF_PRESENCE):
            self.joined = True
        if b"result" in joined:
            self.results += joined.count(b"type='result'") + joined.count(b'type="result"')
        if b"error" in data:
            self.totals.errors += data.count(b"type='error'") + data.count(b'type="error"')
        self.tail = joined[-SM_TAIL:]
        if count:
            self.totals.delivered += count
            self.room.refill()


class MucRoom:
    """Senders keeping ``window`` room messages in flight in all: a message counts as done once
    every occupant got it (estimated from the delivered total: sent - delivered / occupants)."""

    __slots__ = ("occupants", "running", "senders", "sent", "totals", "turn", "window", "wire")

    def __init__(
        self,
        senders: Sequence[XmppConnection],
        room: str,
        occupants: int,
        window: int,
        totals: Totals,
    ) -> None:
        self.senders = senders
        self.occupants = occupants
        self.window = window
        self.totals = totals
        self.sent = 0
        self.turn = 0
        self.running = False
        self.wire = (
            f"<message to='{room}' type='groupchat'><body>bench payload 0123456789</body></message>"
        ).encode()

    def in_flight(self) -> float:
        return self.sent - self.totals.delivered / self.occupants

    def refill(self) -> None:
        """Top the window up, one message per sender in turn."""
        while self.running and self.in_flight() < self.window:
            self.senders[self.turn % len(self.senders)].send(self.wire)
            self.turn += 1
            self.sent += 1


async def run_muc(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """Occupants join one room; some of them message it as fast as the window allows;
    delivered groupchat stanzas per second (every occupant's copy counts)."""
    names = usernames(args.prefix, args.occupants)
    setup = time.perf_counter()
    conns, errors = await login_many(target, names, presence=True, concurrency=args.concurrency)
    result: dict[str, Any] = {
        "occupants": args.occupants,
        "senders": args.senders,
        "window": args.window,
    }
    if errors:
        await close_all(conns)
        return result | {"ok": False, "login_errors": len(errors), "first_error": errors[0]}
    conns.sort(key=lambda conn: int(conn.jid.split("@")[0].removeprefix(args.prefix)))
    room = f"{args.room}@{args.service}.{target.domain}"
    totals = Totals()
    muc = MucRoom(conns[: args.senders], room, len(conns), args.window, totals)
    receivers = []
    for conn in conns:
        receiver = MucReceiver(muc, totals)
        conn.handler = receiver
        receivers.append(receiver)

    async def join(index: int) -> bool:
        conns[index].send(
            f"<presence to='{room}/n{index}'><x xmlns='{NS_MUC}'>"
            "<history maxstanzas='0'/></x></presence>".encode()
        )
        return await _wait_for(lambda: receivers[index].joined, args.timeout)

    # XEP-0045 §10.1.2: the first occupant creates the room and accepts the default
    # configuration (an instant room), which unlocks it for the others.
    if not await join(0):
        await close_all(conns)
        return result | {"ok": False, "first_error": "the room creator never joined"}
    conns[0].send(
        f"<iq to='{room}' type='set' id='create'><query xmlns='{NS_MUC}#owner'>"
        "<x xmlns='jabber:x:data' type='submit'/></query></iq>".encode()
    )
    if not await _wait_for(lambda: receivers[0].results > 0, args.timeout):
        await close_all(conns)
        return result | {"ok": False, "first_error": "instant room configuration failed"}
    for index in range(1, len(conns)):
        if not await join(index):
            await close_all(conns)
            return result | {"ok": False, "first_error": f"occupant {index} never joined"}
    result["setup_s"] = round(time.perf_counter() - setup, 2)
    result["tls"] = conns[0].tls_version()
    await asyncio.sleep(0.5)  # the last join's presence flood settles
    totals.delivered = 0
    totals.errors = 0

    muc.running = True
    muc.refill()
    samples, delivered, elapsed, usage = await measure(totals, args)
    muc.running = False
    expected = muc.sent * len(conns)
    drained = await _wait_for(lambda: totals.delivered >= expected, 20.0)
    alive = sum(conn.alive for conn in conns)
    await close_all(conns)
    rate = slope(samples)
    return result | {
        "ok": drained and totals.errors == 0 and alive == len(conns) and delivered > 0,
        "delivered_per_s": round(rate),
        "room_msg_per_s": round(rate / len(conns)),
        "server_us_per_delivery": server_cost(usage, elapsed, delivered, 1e6),
        "client_bound": client_bound(usage),
        "delivered": delivered,
        "duration_s": round(elapsed, 2),
        "undelivered": max(0, expected - totals.delivered),
        "errors": totals.errors,
        "connections_lost": len(conns) - alive,
        **usage,
    }


# --- entry point --------------------------------------------------------------------------------

SCENARIOS = {
    "throughput": run_throughput,
    "latency": run_latency,
    "memory": run_idle,
    "hold": run_idle,
    "logins": run_logins,
    "afterload": run_afterload,
    "slowreader": run_slowreader,
    "muc": run_muc,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line: common connection options, then one scenario with its own options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--domain", default="localhost")
    parser.add_argument("--prefix", default="bench", help="accounts are PREFIX0, PREFIX1, ...")
    parser.add_argument("--password", default="bench-password")
    parser.add_argument("--timeout", type=float, default=60.0, help="per login step budget, s")
    parser.add_argument("--pid", type=int, help="server process id: its CPU use and memory")
    sub = parser.add_subparsers(dest="scenario", required=True)

    p = sub.add_parser("throughput")
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--window", type=int, default=50, help="messages in flight per sender")
    p.add_argument("--bare", action="store_true", help="address the partner's bare JID")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--sm", action="store_true", help="XEP-0198 on, an ack request per message")

    p = sub.add_parser("latency")
    p.add_argument("--pairs", type=int, default=50)
    p.add_argument("--rate", type=int, default=2000, help="messages per second, all senders")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--sm", action="store_true", help="XEP-0198 on, an ack request per message")

    for name, hold in (("memory", 0.0), ("hold", 300.0)):
        p = sub.add_parser(name)
        p.add_argument("--count", type=int, default=10_000)
        p.add_argument("--concurrency", type=int, default=200)
        p.add_argument("--sources", type=int, default=5, help="loopback sources 127.0.0.2+")
        p.add_argument("--settle", type=float, default=2.0, help="pause before reading RSS, s")
        p.add_argument("--reclaim", type=float, default=45.0, help="wait for RSS to return, s")
        p.add_argument("--hold", type=float, default=hold, help="seconds held before the pings")
        p.add_argument("--ping-rate", type=int, default=2000, help="final pings per second")

    p = sub.add_parser("logins")
    p.add_argument("--workers", type=int, default=48)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=10.0)

    p = sub.add_parser("afterload")
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--window", type=int, default=50, help="messages in flight per sender")
    p.add_argument("--bare", action="store_true", help="address the partner's bare JID")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=50, help="logins in flight (pairs)")
    p.add_argument("--count", type=int, default=10_000, help="sessions in the idle storm")
    p.add_argument("--storm-concurrency", type=int, default=200)
    p.set_defaults(sm=False)
    p.add_argument("--sources", type=int, default=5, help="loopback sources 127.0.0.2+")
    p.add_argument("--settle", type=float, default=2.0, help="pause before reading RSS, s")
    p.add_argument("--reclaim", type=float, default=45.0, help="wait for RSS to return, s")

    p = sub.add_parser("muc")
    p.add_argument("--occupants", type=int, default=100)
    p.add_argument("--senders", type=int, default=10, help="occupants that send")
    p.add_argument("--window", type=int, default=20, help="room messages in flight, all senders")
    p.add_argument("--room", default="bench")
    p.add_argument("--service", default="conference", help="the MUC service's subdomain")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=50)

    p = sub.add_parser("slowreader")
    p.add_argument("--duration", type=float, default=10.0, help="flood seconds")
    p.add_argument("--bytes", type=int, default=200_000_000, help="flood at most this much")
    p.add_argument("--body-size", type=int, default=1000, help="bytes of each message body")
    p.add_argument("--interval", type=float, default=0.01, help="seconds between pings")
    p.add_argument("--baseline", type=float, default=1.0, help="pings alone before the flood, s")
    p.add_argument("--linger", type=float, default=5.0, help="pings after the flood, s")
    p.add_argument("--rcvbuf", type=int, default=65536, help="the reader's SO_RCVBUF")
    p.add_argument("--drain-timeout", type=float, default=30.0, help="the reader's final read, s")
    return parser.parse_args(argv)


def raise_file_limit() -> int:
    """Raise RLIMIT_NOFILE to the hard limit; returns the new soft limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def main(argv: Sequence[str] | None = None) -> int:
    """Run one scenario and print its JSON result line."""
    args = parse_args(argv)
    limit = raise_file_limit()
    if args.scenario in ("memory", "hold", "afterload") and args.count + 200 > limit:
        print(f"--count {args.count} exceeds the file limit {limit}", file=sys.stderr)
        return 2
    target = Target(args.host, args.port, args.domain, args.password, timeout=args.timeout)
    try:
        import uvloop
    except ImportError:
        runner: Callable[..., Any] = asyncio.run
        loop_name = "asyncio"
    else:
        runner = uvloop.run
        loop_name = "uvloop"
    with contextlib.suppress(KeyboardInterrupt):
        result = runner(SCENARIOS[args.scenario](target, args))
        print(json.dumps({"scenario": args.scenario, **result, "loop": loop_name}), flush=True)
        return 0 if result.get("ok") else 1
    return 130


if __name__ == "__main__":
    sys.exit(main())
