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
- ``memory``: N idle authenticated TLS connections; server RSS before/after (``--pid``).
- ``logins``: concurrent workers loop connect, STARTTLS, SCRAM-SHA-1, bind, close.

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

MESSAGE_END = b"</message>"
TAIL = len(MESSAGE_END) - 1  # bytes kept from one read to find an end tag split across reads
STAMP = re.compile(rb"<body>(\d+)</body>")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
READ_SIZE = 256 * 1024  # one plaintext buffer shared by every connection (single thread)
READ_VIEW = memoryview(bytearray(READ_SIZE))


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
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(LoginError("connection lost during TLS handshake"))
        if not self.lost.done():
            self.lost.set_result(None)

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


async def login(
    target: Target,
    username: str,
    *,
    presence: bool,
    source: str | None = None,
) -> XmppConnection:
    """Connect, STARTTLS, SCRAM-SHA-1, bind (server-chosen resource), optional initial presence.

    Raises:
        LoginError: the server refused a step.
        OSError, TimeoutError: connection failures and timeouts.
    """
    loop = asyncio.get_running_loop()
    local = (source, 0) if source else None
    async with asyncio.timeout(target.timeout):
        _, conn = await loop.create_connection(
            XmppConnection, target.host, target.port, local_addr=local
        )
    try:
        async with asyncio.timeout(target.timeout):
            await _negotiate(conn, target, username)
    except BaseException:
        conn.abort()
        raise
    if presence:
        conn.send(b"<presence/>")
    return conn


async def _negotiate(conn: XmppConnection, target: Target, username: str) -> None:
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
    conn.established(jid)


async def login_many(
    target: Target,
    usernames: Sequence[str],
    *,
    presence: bool,
    concurrency: int,
    sources: Sequence[str] = (),
) -> tuple[list[XmppConnection], list[str]]:
    """Log in every user with bounded concurrency; returns (connections, error descriptions)."""
    semaphore = asyncio.Semaphore(concurrency)
    conns: list[XmppConnection] = []
    errors: list[str] = []

    async def one(index: int, username: str) -> None:
        source = sources[index % len(sources)] if sources else None
        async with semaphore:
            try:
                conns.append(await login(target, username, presence=presence, source=source))
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

    def __init__(self, sender: XmppConnection, to: str, window: int) -> None:
        self.send = sender.send
        self.batch_size = max(1, window // 2)
        self.low_water = window - self.batch_size
        message = f"<message to='{to}' type='chat'><body>bench payload 0123456789</body></message>"
        self.batch = message.encode() * self.batch_size
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


async def run_throughput(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """Pairs message each other as fast as the window allows; delivered messages per second."""
    names = usernames(args.prefix, 2 * args.pairs)
    setup = time.perf_counter()
    conns, errors = await login_many(target, names, presence=True, concurrency=args.concurrency)
    result: dict[str, Any] = {"pairs": args.pairs, "window": args.window, "bare": args.bare}
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
            flow = Flow(sender, to, args.window)
            receiver.handler = CountingReceiver(flow, totals)
            flows.append(flow)
    for flow in flows:
        flow.running = True
        flow.refill()

    await asyncio.sleep(args.warmup)
    start, meter = totals.delivered, CpuMeter(args.pid)
    samples = await sample_counter(totals, args.duration)
    delivered, elapsed, usage = (
        totals.delivered - start,
        time.perf_counter() - meter.wall,
        meter.read(),
    )

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
    conns, errors = await login_many(target, names, presence=True, concurrency=args.concurrency)
    result: dict[str, Any] = {"pairs": args.pairs, "rate": args.rate}
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
            receiver.handler = StampReceiver(window)

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
            send(head + b"<body>%d</body></message>" % stamp)
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


# --- memory -------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status VmRSS."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise LookupError(f"no VmRSS for pid {pid}")


async def run_memory(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """N idle, authenticated, available TLS sessions; server RSS growth per connection."""
    if args.pid is None:
        raise SystemExit("memory scenario needs --pid of the server process")
    sources = [f"127.0.0.{2 + i}" for i in range(args.sources)]
    result: dict[str, Any] = {"connections": args.count, "concurrency": args.concurrency}

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
    await asyncio.sleep(args.settle)
    before = rss_kib(args.pid)

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
    after = rss_kib(args.pid)
    alive = sum(conn.alive for conn in conns)
    tls = conns[0].tls_version() if conns else "none"
    await close_all(conns, timeout=30.0)
    result |= {
        "ok": not errors and alive == args.count,
        "kib_per_conn": round((after - before) / max(1, alive), 1),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "established": alive,
        "setup_conn_per_s": round(len(conns) / setup_s, 1),
        "server_ms_per_conn": server_cost(usage, setup_s, len(conns), 1e3),
        "client_bound": client_bound(usage),
        "setup_s": round(setup_s, 2),
        "tls": tls,
        **usage,
    }
    if errors:
        result |= {"login_errors": len(errors), "first_error": errors[0]}
    return result


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


# --- entry point --------------------------------------------------------------------------------

SCENARIOS = {
    "throughput": run_throughput,
    "latency": run_latency,
    "memory": run_memory,
    "logins": run_logins,
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

    p = sub.add_parser("latency")
    p.add_argument("--pairs", type=int, default=50)
    p.add_argument("--rate", type=int, default=2000, help="messages per second, all senders")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=50)

    p = sub.add_parser("memory")
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--sources", type=int, default=4, help="loopback source addresses 127.0.0.2+")
    p.add_argument("--settle", type=float, default=2.0, help="pause before reading RSS, s")

    p = sub.add_parser("logins")
    p.add_argument("--workers", type=int, default=48)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=10.0)
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
    if args.scenario == "memory" and args.count + 200 > limit:
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
