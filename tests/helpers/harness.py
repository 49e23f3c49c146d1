"""ModuleHarness (DESIGN §3.7, tier 2): a real Server on memory storage, no sockets.

The server is started with no listeners (``c2s = []``, ``c2s_direct_tls = []``), so the only way
in is the router. Sessions are real `Session` objects bound through the real `SessionManager`;
their transport is a `FakeConnection` that records every element sent to it (as a snapshot of
the bytes that would have gone on the wire) and the stream error it was closed with.

Typical use::

    async with ModuleHarness.started(tmp_path, accounts=("alice", "bob")) as h:
        alice = await h.connect("alice@localhost/phone", priority=0)
        bob = await h.connect("bob@localhost/laptop", priority=0)
        await h.send(alice, "<message to='bob@localhost' type='chat'><body>hi</body></message>")
        assert_xml_equal(h.take_one(bob), "<message from='alice@localhost/phone' ...>")
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

from lxml import etree

from xmppd import config as config_mod
from xmppd.errors import StreamError
from xmppd.hosts import Host
from xmppd.jid import JID
from xmppd.module_api import Module
from xmppd.module_manager import module_name
from xmppd.ns import NS_CLIENT, NS_STANZAS
from xmppd.server import Server
from xmppd.session import Session
from xmppd.stream.parser import ElementReceived, StreamParser
from xmppd.stream.serializer import serialize

PASSWORD = "correct horse battery staple"
_HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>"
)


def parse_element(xml: str) -> etree._Element:
    """Parse one top-level element as the stream parser hands it over (jabber:client default)."""
    parser = StreamParser()
    events = parser.feed(_HEADER + xml.encode())
    found = [e.element for e in events if isinstance(e, ElementReceived)]
    if len(found) != 1:
        raise ValueError(f"expected exactly one element in {xml!r}, got {len(found)}")
    return found[0]


def _canonical(element: etree._Element) -> tuple[Any, ...]:
    return (
        element.tag,
        sorted(element.attrib.items()),
        (element.text or "").strip(),
        [_canonical(child) for child in element if isinstance(child.tag, str)],
    )


def assert_xml_equal(actual: etree._Element, expected: str | etree._Element) -> None:
    """Assert that two elements have the same tags, attributes, text and children (in order).

    Namespace prefixes and declarations, attribute order and surrounding whitespace do not
    matter. `expected` as a string is parsed as a stanza of a jabber:client stream.
    """
    if isinstance(expected, str):
        expected = parse_element(expected)
    got, want = _canonical(actual), _canonical(expected)
    assert got == want, (
        f"\n got: {etree.tostring(actual).decode()}\nwant: {etree.tostring(expected).decode()}"
    )


def error_condition(element: etree._Element) -> str | None:
    """The defined condition of a stanza's <error/> child (RFC 6120 §8.3.3), or None."""
    error = element.find(f"{{{NS_CLIENT}}}error")
    if error is None:
        return None
    for child in error:
        if isinstance(child.tag, str) and child.tag.startswith(f"{{{NS_STANZAS}}}"):
            name = etree.QName(child).localname
            if name != "text":
                return name
    return None


class FakeConnection:
    """A `SessionTransport` that records what it was sent and how it was closed."""

    def __init__(self) -> None:
        self.sent: list[etree._Element] = []
        self.closed = False
        self.close_error: StreamError | None = None
        self.idle = 0.0  # what idle_time() reports; tests set it

    def send_element(self, element: etree._Element) -> None:
        """Record a snapshot of the element as it would go on the wire."""
        self.sent.append(etree.fromstring(serialize(element)))

    def send_bytes(self, data: bytes) -> None:
        """Record the element the bytes carry."""
        self.sent.append(etree.fromstring(data))

    def buffered(self) -> int:
        return 0

    def idle_time(self) -> float:
        return self.idle

    def adopt(self, session: Session) -> None:
        """Carry `session` (resumption)."""
        session.attach(self)

    async def quiesce(self, error: StreamError | None = None) -> None:
        """Close, as a connection resumed elsewhere does."""
        self.close(error)

    def close(self, error: StreamError | None = None) -> None:
        """Record the close (and the stream error, if any)."""
        self.closed = True
        self.close_error = error

    def take(self) -> list[etree._Element]:
        """Return and forget everything sent so far."""
        sent, self.sent = self.sent, []
        return sent

    def take_one(self) -> etree._Element:
        """Return the single element sent since the last take (fails on zero or several)."""
        sent = self.take()
        assert len(sent) == 1, [etree.tostring(e) for e in sent]
        return sent[0]


class ModuleHarness:
    """A started server without listeners, plus helpers to bind fake sessions and inject."""

    def __init__(self, server: Server) -> None:
        self.server = server

    @classmethod
    @contextlib.asynccontextmanager
    async def started(
        cls,
        tmp_path: Path,
        *,
        hosts: Sequence[str] = ("localhost",),
        accounts: Iterable[str] = ("alice", "bob"),
        modules_enabled: Sequence[str] = (),
        **overrides: Any,
    ) -> AsyncIterator[ModuleHarness]:
        """Start a server (memory storage, no listeners) with `accounts` on the first host."""
        data: dict[str, Any] = {
            "data_dir": str(tmp_path / "data"),
            "hosts": list(hosts),
            "storage": "memory",
            "listen": {"c2s": [], "c2s_direct_tls": []},
            "modules_enabled": list(modules_enabled),
        }
        data.update(overrides)
        config = config_mod.parse(data, base=tmp_path, origin="harness", path=None)
        server = Server(config)
        await server.start()
        harness = cls(server)
        try:
            for user in accounts:
                await server.accounts.create(JID.parse(f"{user}@{hosts[0]}"), PASSWORD)
            yield harness
        finally:
            await server.stop()

    def host(self, domain: str = "localhost") -> Host:
        """A host of the server."""
        return self.server.hosts[domain]

    async def connect(
        self, full_jid: str, *, priority: int | None = None, drain: bool = True
    ) -> Session:
        """Bind a session for `full_jid` (SESSION_BOUND fires).

        Args:
            full_jid: user@domain/resource of a local host.
            priority: if given, the session sends initial presence with this priority.
            drain: forget what the session (and its siblings) received while coming online.
        """
        jid = JID.parse(full_jid)
        assert jid.local is not None
        session = Session(self.server.hosts[jid.domain], FakeConnection())
        self.server.sessions.bind(session, jid.local, jid.resource)
        await self.server.session_bound(session)
        if priority is not None:
            await self.send(session, f"<presence><priority>{priority}</priority></presence>")
        if drain:
            for other in self.server.sessions.sessions(jid.bare):
                assert isinstance(other.conn, FakeConnection)
                other.conn.take()
        return session

    @staticmethod
    def conn(session: Session) -> FakeConnection:
        """The FakeConnection of a session bound by `connect`."""
        assert isinstance(session.conn, FakeConnection)
        return session.conn

    def take(self, session: Session) -> list[etree._Element]:
        """Return and forget what `session` was sent."""
        return self.conn(session).take()

    def take_one(self, session: Session) -> etree._Element:
        """Return the single element `session` was sent (fails on zero or several)."""
        return self.conn(session).take_one()

    async def send(self, session: Session, stanza: str | etree._Element) -> None:
        """Inject a stanza as if `session`'s client had sent it."""
        element = parse_element(stanza) if isinstance(stanza, str) else stanza
        await self.server.router.from_session(session, element)

    async def disconnect(self, session: Session, reason: str = "test") -> None:
        """The session's connection went away (unavailable broadcast, SESSION_ENDED)."""
        session.conn = None
        await self.server.session_ended(session, reason)

    async def load(
        self, cls: type[Module], options: object | None = None, domain: str = "localhost"
    ) -> Module:
        """Load a module class onto a host (unloaded when the server stops)."""
        opts = cls.Options() if options is None else options
        return await self.server.modules.load_one(
            self.server.hosts[domain], cls, module_name(cls), opts
        )
