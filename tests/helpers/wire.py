"""RawClient: a minimal raw-XML client (send / expect) for protocol edges slixmpp hides."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import secrets
import ssl

from lxml import etree

NS_STREAMS = "http://etherx.jabber.org/streams"
TIMEOUT = 10.0


def client_context(max_tls12: bool = False) -> ssl.SSLContext:
    """A client TLS context that accepts the test server's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class RawClient:
    """Speaks raw XML over a real socket; parses the server's stream with lxml."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._new_parser()
        self.pending: list[etree._Element] = []
        self.header: etree._Element | None = None
        self.closed = False

    def _new_parser(self) -> None:
        self.parser = etree.XMLPullParser(events=("start", "end"), resolve_entities=False)
        self.depth = 0

    @classmethod
    async def connect(cls, port: int, *, tls: bool = False) -> RawClient:
        """Open a TCP (or direct TLS) connection to 127.0.0.1:port."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            port,
            ssl=client_context() if tls else None,
            server_hostname="localhost" if tls else None,
        )
        return cls(reader, writer)

    async def send(self, data: bytes | str) -> None:
        """Write raw bytes."""
        self.writer.write(data.encode() if isinstance(data, str) else data)
        await self.writer.drain()

    async def open_stream(self, to: str = "localhost") -> etree._Element:
        """Send a stream header; return the <stream:features/>."""
        self._new_parser()
        await self.send(
            f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            f"xmlns:stream='{NS_STREAMS}' to='{to}' version='1.0'>"
        )
        return await self.expect(f"{{{NS_STREAMS}}}features")

    async def _read_more(self, timeout: float) -> None:
        data = await asyncio.wait_for(self.reader.read(65536), timeout)
        if not data:
            self.closed = True
            raise ConnectionError("server closed the connection")
        self.parser.feed(data)
        for event, el in self.parser.read_events():
            if event == "start":
                self.depth += 1
                if self.depth == 1:
                    self.header = el
            else:
                self.depth -= 1
                if self.depth == 1:
                    self.pending.append(el)
                elif self.depth == 0:
                    self.closed = True

    async def next(self, timeout: float = TIMEOUT) -> etree._Element:
        """The next top-level element from the server."""
        while not self.pending:
            await self._read_more(timeout)
        return self.pending.pop(0)

    async def expect(self, tag: str, timeout: float = TIMEOUT) -> etree._Element:
        """The next top-level element, which must have `tag` (Clark notation)."""
        el = await self.next(timeout)
        assert el.tag == tag, f"expected {tag}, got {etree.tostring(el)!r}"
        return el

    async def stream_error(self, timeout: float = TIMEOUT) -> str:
        """Read until a stream error; return its condition; the server must then close."""
        while True:
            el = await self.next(timeout)
            if el.tag == f"{{{NS_STREAMS}}}error":
                conditions = [
                    etree.QName(c).localname for c in el if etree.QName(c).localname != "text"
                ]
                await self.wait_closed(timeout)
                return conditions[0]

    async def wait_closed(self, timeout: float = TIMEOUT) -> None:
        """Wait until the server closes the connection."""
        try:
            while not self.closed:
                await self._read_more(timeout)
        except ConnectionError:
            pass

    async def starttls(self) -> None:
        """Negotiate STARTTLS on this connection."""
        await self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await self.expect("{urn:ietf:params:xml:ns:xmpp-tls}proceed")
        await self.writer.start_tls(client_context(), server_hostname="localhost")

    async def login(
        self,
        user: str,
        password: str,
        resource: str | None = "raw",
        tls: bool = True,
        *,
        bind: bool = True,
    ) -> str:
        """STARTTLS (unless already on TLS), SASL PLAIN, bind; returns the bound JID.

        With `bind=False` it stops after the post-authentication stream restart (e.g. to
        send a XEP-0198 <resume/>) and returns "".
        """
        await self.open_stream()
        if tls:
            await self.starttls()
            await self.open_stream()
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        await self.send(
            f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
        )
        await self.expect("{urn:ietf:params:xml:ns:xmpp-sasl}success")
        await self.open_stream()
        if not bind:
            return ""
        res = f"<resource>{resource}</resource>" if resource else ""
        await self.send(
            f"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{res}</bind></iq>"
        )
        reply = await self.expect("{jabber:client}iq")
        assert reply.get("type") == "result", etree.tostring(reply)
        return reply.findtext(".//{urn:ietf:params:xml:ns:xmpp-bind}jid") or ""

    async def close(self) -> None:
        """Close the stream and the socket (abort it if the server already closed it)."""
        if self.closed:
            self.writer.transport.abort()
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.send("</stream:stream>")
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            await self.writer.wait_closed()


def scram_client_first(user: str, nonce: str | None = None, gs2: str = "n,,") -> tuple[str, str]:
    """(client-first-message, bare part) for a hand-driven SCRAM exchange."""
    nonce = nonce or secrets.token_urlsafe(18)
    bare = f"n={user},r={nonce}"
    return gs2 + bare, bare


def scram_client_final(
    password: str,
    hash_name: str,
    first_bare: str,
    server_first: str,
    gs2: str = "n,,",
    cb_data: bytes = b"",
) -> tuple[str, bytes]:
    """(client-final-message, expected server signature)."""
    algo = {"SHA-1": "sha1", "SHA-256": "sha256"}[hash_name]
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    salted = hashlib.pbkdf2_hmac(
        algo, password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
    )
    client_key = hmac.new(salted, b"Client Key", algo).digest()
    stored = hashlib.new(algo, client_key).digest()
    cbind = base64.b64encode(gs2.encode() + cb_data).decode()
    without_proof = f"c={cbind},r={attrs['r']}"
    auth_message = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.new(stored, auth_message, algo).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_key = hmac.new(salted, b"Server Key", algo).digest()
    return (
        f"{without_proof},p={base64.b64encode(proof).decode()}",
        hmac.new(server_key, auth_message, algo).digest(),
    )
