"""A null XMPP server: just enough c2s to calibrate the load client's own ceiling.

It negotiates STARTTLS, SASL SCRAM-SHA-1 and resource binding for any ``<name>@<domain>`` with one
shared password, then relays each session's bytes verbatim to the full JID named by the first
``to='...'`` it sends: no parsing, no stanza handling, no presence. It is not an XMPP server; it
exists so ``xmppbench.py --server null`` shows how much traffic the client can generate and absorb
on its core (for each scenario it reports what a real server would have to beat).

Usage: ``nullserver.py --port 5222 --cert localhost.crt --key localhost.key``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import ssl
import sys
from typing import cast

HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:client'"
    " xmlns:stream='http://etherx.jabber.org/streams' from='{domain}' id='{id}' version='1.0'>"
)
FEATURES_TLS = (
    "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
    "</stream:features>"
)
FEATURES_SASL = (
    "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
    "<mechanism>SCRAM-SHA-1</mechanism></mechanisms></stream:features>"
)
FEATURES_BIND = (
    "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
)
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
ITERATIONS = 4096
TO = re.compile(rb"to=['\"]([^'\"]+)['\"]")
TEXT = re.compile(rb">([^<]*)</(?:auth|response)>")
IQ_ID = re.compile(rb"<iq[^>]*\sid=['\"]([^'\"]+)['\"]")


class Credentials:
    """One password for every account; SCRAM keys derived once."""

    def __init__(self, password: str) -> None:
        self.salt = secrets.token_bytes(16)
        salted = hashlib.pbkdf2_hmac("sha1", password.encode(), self.salt, ITERATIONS)
        client_key = hmac.digest(salted, b"Client Key", "sha1")
        self.stored_key = hashlib.sha1(client_key).digest()
        self.server_key = hmac.digest(salted, b"Server Key", "sha1")


class NullSession(asyncio.Protocol):
    """Negotiation by byte patterns, then a verbatim relay to one peer."""

    def __init__(self, server: NullServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.stage = "header-tls"
        self.jid = b""
        self.peer: asyncio.Transport | None = None
        self._first_bare = b""
        self._server_first = b""
        self._nonce = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.sessions.pop(self.jid, None)

    def write(self, text: str | bytes) -> None:
        assert self.transport is not None
        self.transport.write(text.encode() if isinstance(text, str) else text)

    def header(self, features: str) -> None:
        self.write(HEADER.format(domain=self.server.domain, id=secrets.token_hex(8)) + features)

    def data_received(self, data: bytes) -> None:
        if self.stage == "relay":
            peer = self.peer
            if peer is None:
                match = TO.search(data)
                peer = self.server.sessions.get(match.group(1)) if match else None
                self.peer = peer
            if peer is None:
                return
            if self.server.split:  # one write (one TLS record) per stanza, like a naive server
                for piece in data.split(b"</message>")[:-1]:
                    peer.write(piece + b"</message>")
                # a stanza split across reads: its tail goes out with the next read's first piece
                rest = data[data.rfind(b"</message>") + 10 :] if b"</message>" in data else data
                if rest:
                    peer.write(rest)
            else:
                peer.write(data)
            return
        self.buffer += data
        try:
            self.negotiate()
        except (ValueError, KeyError) as exc:
            print(f"nullserver: negotiation failed: {exc}", file=sys.stderr)
            assert self.transport is not None
            self.transport.abort()

    def negotiate(self) -> None:
        """One negotiation step per call, in protocol order."""
        buffer = self.buffer
        if self.stage.startswith("header"):
            start = buffer.find(b"<stream:stream")
            end = buffer.find(b">", start) if start >= 0 else -1
            if end < 0:
                return
            self.buffer = buffer[end + 1 :]
            features = {
                "header-tls": FEATURES_TLS,
                "header-sasl": FEATURES_SASL,
                "header-bind": FEATURES_BIND,
            }[self.stage]
            self.header(features)
            self.stage = self.stage.replace("header-", "")
        elif self.stage == "tls" and b"<starttls" in buffer and buffer.rstrip().endswith(b"/>"):
            self.buffer = b""
            self.write("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            self.stage = "starting-tls"
            asyncio.get_running_loop().create_task(self.start_tls())
        elif self.stage == "sasl" and b"</auth>" in buffer:
            self.buffer = b""
            first = base64.b64decode(_text(buffer))
            self._first_bare = first[first.index(b",", 2) + 1 :]  # after the gs2 header
            attrs = dict(part.split(b"=", 1) for part in self._first_bare.split(b","))
            self._nonce = attrs[b"r"] + base64.b64encode(secrets.token_bytes(12))
            salt = base64.b64encode(self.server.credentials.salt)
            self._server_first = b"r=%s,s=%s,i=%d" % (self._nonce, salt, ITERATIONS)
            self.jid = attrs[b"n"] + b"@" + self.server.domain.encode()
            challenge = base64.b64encode(self._server_first).decode()
            self.write(f"<challenge xmlns='{NS_SASL}'>{challenge}</challenge>")
            self.stage = "sasl-final"
        elif self.stage == "sasl-final" and b"</response>" in buffer:
            self.buffer = b""
            final = base64.b64decode(_text(buffer))
            without_proof, proof = final.rsplit(b",p=", 1)
            if not without_proof.endswith(b"r=" + self._nonce):
                raise ValueError("nonce mismatch")
            auth = self._first_bare + b"," + self._server_first + b"," + without_proof
            creds = self.server.credentials
            signature = hmac.digest(creds.stored_key, auth, "sha1")
            client_key = bytes(
                a ^ b for a, b in zip(base64.b64decode(proof), signature, strict=True)
            )
            if hashlib.sha1(client_key).digest() != creds.stored_key:
                raise ValueError("bad proof")
            verifier = b"v=" + base64.b64encode(hmac.digest(creds.server_key, auth, "sha1"))
            self.write(
                f"<success xmlns='{NS_SASL}'>{base64.b64encode(verifier).decode()}</success>"
            )
            self.stage = "header-bind"
        elif self.stage == "bind" and b"</iq>" in buffer:
            self.buffer = b""
            match = IQ_ID.search(buffer)
            iq_id = match.group(1).decode() if match else "bind"
            self.server.counter += 1
            self.jid += b"/r%d" % self.server.counter
            self.server.sessions[self.jid] = cast(asyncio.Transport, self.transport)
            self.write(
                f"<iq type='result' id='{iq_id}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                f"<jid>{self.jid.decode()}</jid></bind></iq>"
            )
            self.stage = "relay"

    async def start_tls(self) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(
            self.transport, self, self.server.tls, server_side=True, ssl_handshake_timeout=30
        )
        if transport is None:
            return
        self.transport = transport
        self.stage = "header-sasl"
        if self.buffer:
            self.negotiate()


def _text(buffer: bytes) -> bytes:
    match = TEXT.search(buffer)
    if match is None:
        raise ValueError("no SASL payload")
    return match.group(1)


class NullServer:
    """Listener state: credentials, TLS context, bound sessions by full JID."""

    def __init__(self, domain: str, password: str, cert: str, key: str, split: bool) -> None:
        self.domain = domain
        self.split = split
        self.credentials = Credentials(password)
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(cert, key)
        self.sessions: dict[bytes, asyncio.Transport] = {}
        self.counter = 0

    async def serve(self, host: str, port: int) -> None:
        """Listen until cancelled."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: NullSession(self), host, port, backlog=4096)
        async with server:
            await server.serve_forever()


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--domain", default="localhost")
    parser.add_argument("--password", default="bench-password")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--split", action="store_true", help="write each stanza separately")
    args = parser.parse_args()
    server = NullServer(args.domain, args.password, args.cert, args.key, args.split)
    try:
        import uvloop
    except ImportError:
        asyncio.run(server.serve(args.host, args.port))
    else:
        uvloop.run(server.serve(args.host, args.port))


if __name__ == "__main__":
    main()
