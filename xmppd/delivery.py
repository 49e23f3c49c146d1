"""RFC 6121 §8 delivery rules: the core's default handlers, registered at Priority.DEFAULT.

Any module can pre-empt them by hooking the same event at a higher priority. Messages for an
existing account with no available resource go through the MESSAGE_OFFLINE chain event; with
nothing consuming it the sender gets service-unavailable (§8.5.2.2.1).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from copy import deepcopy
from typing import TYPE_CHECKING

from lxml import etree

from xmppd import events as ev
from xmppd.errors import StanzaError
from xmppd.events import Priority
from xmppd.iq import Target
from xmppd.jid import JID, JIDError
from xmppd.session_manager import SessionManager
from xmppd.stream.serializer import SharedBytes, serialize

if TYPE_CHECKING:
    from xmppd.hosts import Host
    from xmppd.router import Router
    from xmppd.session import Session

logger = logging.getLogger(__name__)
MESSAGE = "{jabber:client}message"
PRESENCE = "{jabber:client}presence"

AccountExists = Callable[[str, str], Awaitable[bool]]


def _priority(session: Session) -> int:
    return session.priority


class Delivery:
    """Default handlers for one server; `register(host)` wires them onto a host's bus."""

    def __init__(self, router: Router, sessions: SessionManager, exists: AccountExists) -> None:
        self.router = router
        self.sessions = sessions
        self.exists = exists

    def register(self, host: Host) -> None:
        """Install the default handlers on `host`."""
        bus = host.bus
        d = Priority.DEFAULT
        bus.add_chain(ev.MESSAGE_BARE, self.message_bare, d)
        bus.add_chain(ev.MESSAGE_FULL, self.message_full, d)
        bus.add_chain(ev.MESSAGE_HOST, self.message_host, d)
        bus.add_chain(ev.PRESENCE_BARE, self.presence_bare, d)
        bus.add_chain(ev.PRESENCE_FULL, self.presence_full, d)
        bus.add_chain(ev.PRESENCE_HOST, self.ignore, d)
        bus.add_chain(ev.PRESENCE_BROADCAST, self.presence_broadcast, d)
        bus.add_chain(ev.IQ_FULL, self.iq_full, d)

        async def iq_host(event: ev.StanzaEvent) -> bool:
            return await self._iq_dispatch(host, event, Target.HOST)

        async def iq_bare(event: ev.StanzaEvent) -> bool:
            if not await self._account(event.to):
                raise StanzaError("service-unavailable")
            return await self._iq_dispatch(host, event, Target.ACCOUNT)

        bus.add_chain(ev.IQ_HOST, iq_host, d)
        bus.add_chain(ev.IQ_BARE, iq_bare, d)

    async def _account(self, bare: JID) -> bool:
        if self.sessions.has_sessions(bare):
            return True
        return bare.local is not None and await self.exists(bare.domain, bare.local)

    async def _iq_dispatch(self, host: Host, event: ev.StanzaEvent, target: Target) -> bool:
        reply = await host.iq.dispatch(event.stanza, event.origin, target)
        if reply is not None:
            await self.router.route(reply)
        return True

    # --- fan-out -------------------------------------------------------------------------
    async def fan_out(self, element: etree._Element, recipients: Iterable[JID | str]) -> None:
        """Route a copy of a server-generated stanza (e.g. a MUC broadcast) to each recipient,
        in order, serialized once.

        Presence and groupchat messages to a recipient bound here with a live connection go
        straight through its host's send filters (as presence broadcast does: blocking, client
        state indication and stream management all apply), with the shared bytes and its own
        'to' spliced in; the recipient host's routing hooks do not run, and for these stanzas
        they would only deliver them (no carbons, user archive or stanza id for groupchat).
        Anything else (e.g. a private message, which the recipient's archive and carbons must
        see) and anyone else get a routed copy: remote, hibernated and absent recipients,
        whose errors bounce back to the sender (RFC 6121 §8.5.3.2.1).
        """
        direct = element.tag == PRESENCE or (
            element.tag == MESSAGE and element.get("type") == "groupchat"
        )
        shared = deepcopy(element)  # ours: its 'to' is set for each recipient in turn
        wire: SharedBytes | None = None
        prepared = False
        for to in recipients:
            try:
                jid = to if isinstance(to, JID) else JID.parse(to)
            except JIDError:
                logger.warning("fan-out to a malformed JID %r skipped", to)
                continue
            session = self.sessions.get(jid) if direct and jid.resource is not None else None
            conn = session.conn if session is not None else None
            if session is None or conn is None or conn.closed:
                copy = deepcopy(element)
                copy.set("to", str(jid))
                await self.router.route(copy)
                continue
            if not prepared:
                wire = SharedBytes.of(shared)
                prepared = True
            text = str(jid)
            shared.set("to", text)
            # Bytes always go with the shared element: they tell filters that keep a stanza
            # (client state indication) to keep a copy, since `shared` changes on.
            session.send(shared, wire.to(text) if wire is not None else serialize(shared))

    # --- messages ------------------------------------------------------------------------
    async def message_bare(self, event: ev.StanzaEvent) -> bool:
        """RFC 6121 §8.5.2 (and §8.5.1 for a missing account)."""
        stanza = event.stanza
        type_ = stanza.type or "normal"
        bare = event.to.bare
        available = [s for s in self.sessions.available(bare) if s.priority >= 0]
        if available:
            if type_ == "groupchat":  # §8.5.2.1.1: never to a bare JID's resources
                raise StanzaError("service-unavailable")
            if type_ == "error":
                return True
            if type_ != "headline":
                # §8.5.2.1.1: the highest-priority resource(s); several at the same priority.
                top = max(available, key=_priority).priority
                available = [s for s in available if s.priority == top]
            for session in available:
                session.send(stanza.element)
            return True
        # §8.5.2.2 (also when only negative-priority resources are available).
        if not await self._account(bare):
            if type_ in ("error", "headline"):
                return True
            raise StanzaError("service-unavailable")
        if type_ in ("chat", "normal"):
            offline = ev.MessageOffline(stanza, bare.local or "", bare)
            if await self.router.hosts[bare.domain].bus.chain(ev.MESSAGE_OFFLINE, offline):
                return True
            raise StanzaError("service-unavailable")
        if type_ == "groupchat":
            raise StanzaError("service-unavailable")
        return True  # headline and error are silently dropped

    async def message_full(self, event: ev.StanzaEvent) -> bool:
        """RFC 6121 §8.5.3."""
        session = self.sessions.get(event.to)
        if session is not None:
            session.send(event.stanza.element)
            return True
        type_ = event.stanza.type or "normal"
        if type_ == "chat":
            # §8.5.3.2.1: a chat message to a resource that is gone goes to the account.
            return await self.message_bare(event)
        if type_ in ("error", "headline"):
            return True
        # §8.5.3.2.1 (normal, groupchat) and §8.5.1 (no such account) both answer
        # service-unavailable, so no account lookup is needed here.
        raise StanzaError("service-unavailable")

    async def message_host(self, event: ev.StanzaEvent) -> bool:
        """A message to the server itself that no module consumed."""
        if event.stanza.type in ("error", "headline", "groupchat"):
            return True
        raise StanzaError("service-unavailable")

    # --- presence ------------------------------------------------------------------------
    async def ignore(self, event: ev.StanzaEvent) -> bool:
        """Consume silently."""
        return True

    async def presence_bare(self, event: ev.StanzaEvent) -> bool:
        """RFC 6121 §8.5.2.1.2 / §8.5.1: to every available resource; none → dropped."""
        if event.stanza.type == "probe":
            return True  # answered by the presence module when loaded
        for session in self.sessions.available(event.to.bare):
            session.send(event.stanza.element)
        return True

    async def presence_full(self, event: ev.StanzaEvent) -> bool:
        """RFC 6121 §8.5.3: to that resource if connected, otherwise dropped."""
        if event.stanza.type == "probe":
            return True
        session = self.sessions.get(event.to)
        if session is not None:
            session.send(event.stanza.element)
        return True

    async def presence_broadcast(self, event: ev.StanzaEvent) -> bool:
        """RFC 6121 §4.2-4.5 for the sender's own resources; contacts are the presence module's.

        Tracks availability and priority, which message delivery depends on, then fires
        INITIAL_PRESENCE, PRESENCE_UPDATE or SESSION_UNAVAILABLE with the client's stanza.
        """
        session = event.origin
        stanza = event.stanza
        if session is None or stanza.type not in (None, "unavailable"):
            raise StanzaError("bad-request", "presence of this type needs a 'to'")
        if self.sessions.get(session.full_jid) is not session:
            # The session ended while this presence waited in a handler (its connection went
            # away): it must not become available again after its unavailable went out.
            return True
        bare = session.full_jid.bare
        if stanza.type is None:
            session.priority = _parse_priority(stanza.element)
            initial = not session.available
            session.available = True
            session.presence = stanza.element
            # §4.2.2: broadcast to all of the user's available resources, the sender included;
            # and the new resource learns of its siblings.
            for other in self.sessions.available(bare):
                other.send(stanza.element)
                if initial and other is not session and other.presence is not None:
                    session.send(other.presence)
            event_key = ev.INITIAL_PRESENCE if initial else ev.PRESENCE_UPDATE
            await session.host.bus.notify(event_key, ev.SessionEvent(session, stanza.element))
        else:
            was_available = session.available
            for other in self.sessions.available(bare):
                other.send(stanza.element)
            session.available = False
            session.presence = None
            if was_available:
                await session.host.bus.notify(
                    ev.SESSION_UNAVAILABLE, ev.SessionEvent(session, stanza.element)
                )
        return True

    # --- iq --------------------------------------------------------------------------------
    async def iq_full(self, event: ev.StanzaEvent) -> bool:
        """RFC 6121 §8.5.3.1 / §8.5.3.2.2: to the connected resource, or service-unavailable."""
        session = self.sessions.get(event.to)
        if session is not None:
            session.send(event.stanza.element)
            return True
        if event.stanza.type in ("result", "error"):
            return True
        raise StanzaError("service-unavailable")


def _parse_priority(element: etree._Element) -> int:
    """RFC 6121 §4.7.2.3: an integer -128..127, default 0; out of range is clamped."""
    text = element.findtext("{jabber:client}priority")
    if text is None:
        return 0
    try:
        value = int(text.strip())
    except ValueError:
        raise StanzaError("bad-request", "priority must be an integer") from None
    return max(-128, min(127, value))
