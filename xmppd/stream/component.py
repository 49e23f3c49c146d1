"""XEP-0114: Jabber Component Protocol — the accepting side: handshake, then stanzas both ways.

The asyncio glue of one external component connection (the only file besides the c2s
connection code that touches sockets). States:

- HEADER: waiting for the stream header. It must be a ``stream:stream`` whose default namespace
  is ``jabber:component:accept`` (else ``<invalid-namespace/>``) with a 'to' naming a configured
  component (else ``<host-unknown/>``). We answer with our header and a fresh stream id.
- HANDSHAKE: the only acceptable element is ``<handshake>`` with hex(SHA-1(stream id + secret)),
  compared in constant time; anything else, or a wrong digest, is ``<not-authorized/>``. A
  domain that already has a connection gets ``<conflict/>``. Success: ``<handshake/>``.
- ESTABLISHED: the component's stanzas must come from its own domain (``<invalid-from/>``) and
  name a recipient (``<improper-addressing/>``, RFC 6120 §4.9.3.7); they are translated to
  ``jabber:client`` and routed in order, like server-generated ones. Stanzas routed to the
  component's domain (or any JID at it) are translated back and written to the connection.
- CLOSED.

XEP-0114 has no TLS and a shared secret hashed with SHA-1 over a server-chosen id: the listener
belongs on a loopback address (the server warns at start otherwise). Restricted XML and the
size limits of `StreamParser` apply: the pre-authentication ones until the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import hmac
import logging
import secrets
from collections import deque
from collections.abc import Mapping
from enum import Enum
from typing import TYPE_CHECKING, Protocol, cast

from lxml import etree

from xmppd import events as ev
from xmppd.errors import StanzaError, StreamError
from xmppd.events import Priority
from xmppd.jid import JID, JIDError, prep_domain
from xmppd.ns import NS_CLIENT, NS_STREAMS
from xmppd.stanza import STANZA_TAGS, error_reply, is_error_or_result
from xmppd.stream.parser import (
    ElementReceived,
    ParseEvent,
    StreamClosed,
    StreamOpened,
    StreamParser,
    parser_limits,
)
from xmppd.stream.serializer import STREAM_CLOSE, serialize

if TYPE_CHECKING:
    from xmppd.config import Config
    from xmppd.hosts import Host
    from xmppd.router import Router

logger = logging.getLogger(__name__)

NS_COMPONENT = "jabber:component:accept"
_HANDSHAKE = f"{{{NS_COMPONENT}}}handshake"
_STREAM = f"{{{NS_STREAMS}}}stream"
_COMPONENT_STANZAS = {f"{{{NS_COMPONENT}}}{kind}" for kind in ("message", "presence", "iq")}
_ROUTING_EVENTS = (
    ev.MESSAGE_HOST,
    ev.MESSAGE_BARE,
    ev.MESSAGE_FULL,
    ev.PRESENCE_HOST,
    ev.PRESENCE_BARE,
    ev.PRESENCE_FULL,
    ev.IQ_HOST,
    ev.IQ_BARE,
    ev.IQ_FULL,
)


class State(Enum):
    """Where the component stream is (see the module docstring)."""

    HEADER = "header"
    HANDSHAKE = "handshake"
    ESTABLISHED = "established"
    CLOSED = "closed"


class ComponentServices(Protocol):
    """What a component connection needs from the server (the composition root)."""

    config: Config
    router: Router
    # The authenticated connection of each component domain (at most one each).
    components: dict[str, ComponentConnection]
    component_connections: set[ComponentConnection]


def handshake_digest(stream_id: str, secret: str) -> str:
    """XEP-0114 §3: lowercase hex of SHA-1 over the stream id followed by the secret."""
    return hashlib.sha1((stream_id + secret).encode("utf-8")).hexdigest()  # noqa: S324 - the protocol's


def translate(element: etree._Element, source: str, target: str) -> etree._Element:
    """A copy of a stanza with itself and its `source`-namespace children moved to `target`.

    Only the stanza and the chain of its children in the stanza namespace (body, subject,
    error, ...) are renamed; foreign payloads are copied as they are, so a forwarded
    ``<message xmlns='jabber:client'/>`` inside one stays what it is.
    """
    out = etree.Element(f"{{{target}}}{etree.QName(element).localname}", nsmap={None: target})
    _copy_into(element, out, source)
    return out


def _copy_into(element: etree._Element, out: etree._Element, source: str) -> None:
    for name, value in element.attrib.items():
        out.set(name, value)
    out.text = element.text
    for child in element:
        if not isinstance(child.tag, str):
            continue  # the parser refuses comments and PIs; nothing else can be here
        qname = etree.QName(child)
        if qname.namespace == source:
            new = etree.SubElement(out, f"{{{out.nsmap[None]}}}{qname.localname}")
            _copy_into(child, new, source)
        else:
            new = copy.deepcopy(child)
            out.append(new)
        new.tail = child.tail


def register_component_host(host: Host, components: Mapping[str, ComponentConnection]) -> None:
    """Route every stanza for `host` (a component domain) to its connection.

    While the component is not connected: messages, IQ requests and presence subscription
    requests get ``service-unavailable`` (type wait: it may come back); nothing is stored
    offline; other presence is dropped (RFC 6121 §8: presence to an unavailable entity).
    """

    def deliver(event: ev.StanzaEvent) -> bool:
        conn = components.get(host.domain)
        stanza = event.stanza
        if conn is not None:
            conn.send_element(stanza.element)
            return True
        if stanza.kind == "presence" and stanza.type in (None, "unavailable", "probe", "error"):
            return True
        raise StanzaError("service-unavailable", "the component is not connected", type="wait")

    for key in _ROUTING_EVENTS:
        host.bus.add_chain(key, deliver, Priority.DEFAULT)


class ComponentConnection(asyncio.Protocol):
    """One external component's TCP connection (jabber:component:accept)."""

    def __init__(self, services: ComponentServices) -> None:
        self.services = services
        self.config = services.config
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.parser = StreamParser(parser_limits(self.config.limits, pre_auth=True))
        self.state = State.HEADER
        self.domain: str | None = None
        self.stream_id = secrets.token_hex(12)
        self._header_sent = False
        self._queue: deque[ParseEvent] = deque()
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.services.component_connections.add(self)
        self._timer = self._loop.call_later(self.config.limits.auth_timeout, self._auth_timeout)

    def data_received(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        try:
            events = self.parser.feed(data)
        except StreamError as err:
            logger.warning("closing component stream from %s: %s", self.peer, err)
            self._queue.clear()
            self.close(err)
            return
        if not events:
            return
        self._queue.extend(events)
        if self._task is None:
            self._task = self._loop.create_task(self._drain())
        elif len(self._queue) > self.config.limits.max_backlog and not self._paused:
            self._paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]  # set while connected

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.state
        self.state = State.CLOSED
        self.services.component_connections.discard(self)
        if self.domain is not None and self.services.components.get(self.domain) is self:
            del self.services.components[self.domain]
            logger.info("component %s disconnected (%s)", self.domain, exc or "closed")
        elif was is not State.ESTABLISHED:
            logger.debug("component connection from %s closed before the handshake", self.peer)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()
        self.parser.release()
        self.transport = None

    # --- input --------------------------------------------------------------------------
    async def _drain(self) -> None:
        """Process events one at a time, in order (DESIGN §2.1 principle 7)."""
        try:
            while self._queue and self.state is not State.CLOSED:
                event = self._queue.popleft()
                try:
                    await self._process(event)
                except Exception:
                    logger.exception("unexpected error on component stream from %s", self.peer)
                    self.close(StreamError("internal-server-error"))
                if self._paused and len(self._queue) <= self.config.limits.max_backlog // 2:
                    self._paused = False
                    if self.transport is not None:
                        self.transport.resume_reading()
        finally:
            self._task = None

    async def _process(self, event: ParseEvent) -> None:
        if isinstance(event, StreamOpened):
            self._opened(event)
        elif isinstance(event, StreamClosed):
            self.close()
        elif isinstance(event, ElementReceived):
            if self.state is State.HANDSHAKE:
                self._handshake(event.element)
            elif self.state is State.ESTABLISHED:
                await self._stanza(event.element)

    def _opened(self, event: StreamOpened) -> None:
        if self.state is not State.HEADER:  # pragma: no cover - the parser opens once
            self.close(StreamError("invalid-xml"))
            return
        if event.tag != _STREAM or event.default_ns != NS_COMPONENT:
            self.close(StreamError("invalid-namespace", f"expected {NS_COMPONENT}"))
            return
        try:
            domain = prep_domain(event.attrs.get("to") or "")
        except JIDError:
            domain = ""
        if domain not in self.config.components:
            logger.warning("component connection from %s for unknown domain", self.peer)
            self.close(StreamError("host-unknown", "no such component is configured"))
            return
        self.domain = domain
        self._send_header()
        self.state = State.HANDSHAKE

    def _send_header(self) -> None:
        # XEP-0114 §3: no 'version' (so no stream features): the component handshakes next.
        from_ = f" from='{self.domain}'" if self.domain else ""
        self._write(
            f"<?xml version='1.0'?><stream:stream xmlns='{NS_COMPONENT}' "
            f"xmlns:stream='{NS_STREAMS}' id='{self.stream_id}'{from_}>".encode()
        )
        self._header_sent = True

    def _handshake(self, element: etree._Element) -> None:
        domain = cast(str, self.domain)  # set when the header was accepted
        expected = handshake_digest(self.stream_id, self.config.components[domain].secret)
        given = (element.text or "").strip().lower().encode("utf-8")
        if (
            element.tag != _HANDSHAKE
            or len(element)
            or not hmac.compare_digest(given, expected.encode())
        ):
            logger.warning("component %s from %s: handshake failed", domain, self.peer)
            self.close(StreamError("not-authorized", "handshake failed"))
            return
        current = self.services.components.get(domain)
        if current is not None:
            # One connection per component domain: the first one keeps it.
            logger.warning("component %s from %s: already connected", domain, self.peer)
            self.close(StreamError("conflict", "this component is already connected"))
            return
        self.services.components[domain] = self
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.parser.limits = parser_limits(self.config.limits, pre_auth=False)
        self.state = State.ESTABLISHED
        self._write(b"<handshake/>")
        logger.info("component %s connected from %s", domain, self.peer)

    async def _stanza(self, element: etree._Element) -> None:
        tag = cast(str, element.tag)  # parsed elements have str tags
        if tag in _COMPONENT_STANZAS:
            element = translate(element, NS_COMPONENT, NS_CLIENT)
        elif tag not in STANZA_TAGS:  # COMPAT: jabber:client stanzas are taken as they are
            self.close(StreamError("unsupported-stanza-type"))
            return
        domain = cast(str, self.domain)
        from_text, to_text = element.get("from"), element.get("to")
        # RFC 6120 §4.9.3.7: a stanza between servers lacking 'to' or 'from' is improper
        # addressing; §4.9.3.9: a 'from' the peer is not authorized for is invalid-from.
        if not from_text or not to_text:
            self.close(StreamError("improper-addressing", "stanzas need 'from' and 'to'"))
            return
        try:
            from_ = JID.parse(from_text)
        except JIDError:
            from_ = None
        if from_ is None or from_.domain != domain:
            logger.warning("component %s sent a stanza from another domain", domain)
            self.close(StreamError("invalid-from", f"'from' must be at {domain}"))
            return
        element.set("from", str(from_))
        try:
            to = JID.parse(to_text)
        except JIDError as exc:
            # RFC 6120 §8.3.3.8: answered to the component, which keeps its stream.
            if not is_error_or_result(element):
                error = StanzaError("jid-malformed", str(exc))
                await self.services.router.route(error_reply(element, error, from_=domain))
            return
        element.set("to", str(to))
        await self.services.router.from_component(element, from_, to)

    # --- output -------------------------------------------------------------------------
    def send_element(self, element: etree._Element) -> None:
        """Write a routed stanza, moved to the component namespace (XEP-0114 §3)."""
        if self.state is not State.ESTABLISHED or self.transport is None:
            return
        if self.transport.get_write_buffer_size() > self.config.limits.output_max:
            logger.warning("closing component %s: it does not read its output", self.domain)
            self.close(StreamError("policy-violation", "not reading fast enough"))
            return
        if element.tag in STANZA_TAGS:
            element = translate(element, NS_CLIENT, NS_COMPONENT)
        self._write(serialize(element))

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _auth_timeout(self) -> None:
        self._timer = None
        if self.state in (State.HEADER, State.HANDSHAKE):
            logger.info("closing component connection from %s (no handshake)", self.peer)
            self.close(StreamError("connection-timeout", "no handshake in time"))

    def close(self, error: StreamError | None = None) -> None:
        """Close the stream: stream error (if any), closing tag, then the transport."""
        if self.state is State.CLOSED or self.transport is None:
            return
        if error is not None:
            if not self._header_sent:
                # RFC 6120 §4.9.1.1: an error during stream setup still follows our header.
                self._send_header()
            self._write(error.to_bytes())
        elif not self._header_sent:
            self._send_header()
        self._write(STREAM_CLOSE)
        self.state = State.CLOSED
        if self.domain is not None and self.services.components.get(self.domain) is self:
            del self.services.components[self.domain]
            logger.info("component %s disconnected", self.domain)
        with contextlib.suppress(Exception):
            self.transport.close()
