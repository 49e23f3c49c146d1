"""RFC 6121 §4: Presence — broadcast to contacts, probes, directed presence, inbound filtering.

The core (xmppd/delivery.py) broadcasts a user's presence to the user's own resources and tracks
availability and priority; this module adds what depends on the roster, which it reads through
the ROSTER_QUERY event (answered by the roster module):

- initial presence goes to contacts with a "from" or "both" subscription, and probes are answered
  on the contacts' behalf (§4.2, §4.3); later updates go to the same contacts (§4.4);
- unavailable presence (sent, or the connection lost) goes to them and to every entity that got
  directed presence from the session (§4.5, §4.6.3);
- available presence to a local account's bare JID from someone it is not subscribed to is not
  delivered; directed presence to a full JID is (§4.6).

Option `deliver_to_all_resources` sends a message to a bare JID to every non-negative resource
instead of only the highest-priority ones (RFC 6121 §8.5.2.1.1 allows both).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from lxml import etree

from xmppd import events as ev
from xmppd.jid import JID
from xmppd.module_api import Module, Priority, StanzaError, hook
from xmppd.session import Session
from xmppd.stanza import make


class _Directed:
    """Per-session state: entities that got directed presence from the session (§4.6)."""

    __slots__ = ("jids",)

    def __init__(self) -> None:
        self.jids: set[JID] = set()


class PresenceModule(Module):
    """RFC 6121 presence broadcast and probes."""

    name = "presence"
    depends = ("roster",)

    @dataclass(frozen=True)
    class Options:
        """`[modules.presence]`."""

        # §8.5.2.1.1: a chat/normal message to a bare JID goes to the highest-priority
        # non-negative resources (default), or to every non-negative resource when true.
        deliver_to_all_resources: bool = False
        # Entities one session may have sent directed available presence to at once (each
        # gets unavailable when the session ends); more is refused with policy-violation.
        max_directed: int = 1000

    options: Options

    # --- roster access -----------------------------------------------------------------------
    async def _subscriptions(self, user: JID) -> dict[JID, str]:
        query = ev.RosterQuery(user.bare)
        await self.ctx.fire(ev.ROSTER_QUERY, query)
        return query.subscriptions

    async def _subscription(self, user: JID, contact: JID) -> str:
        query = ev.RosterQuery(user.bare, contact.bare)
        await self.ctx.fire(ev.ROSTER_QUERY, query)
        return query.subscription(contact.bare)

    # --- sending -------------------------------------------------------------------------------
    async def _send_to(self, presence: etree._Element, to: JID) -> None:
        """Send a copy of `presence` addressed to `to` (routed: local or remote)."""
        element = copy.deepcopy(presence)
        element.set("to", str(to))
        await self.ctx.services.route(element)

    async def _broadcast(self, session: Session, presence: etree._Element) -> set[JID]:
        """§4.2.2 / §4.4.2 / §4.5.2: to every contact with a from/both subscription."""
        available = presence.get("type") is None
        presence = copy.deepcopy(presence)
        presence.set("from", str(session.full_jid))
        sent: set[JID] = set()
        for contact, sub in (await self._subscriptions(session.full_jid)).items():
            if available and not session.available:
                break  # it went unavailable meanwhile: no available presence after that
            if sub in ("from", "both"):
                sent.add(contact)
                await self._send_to(presence, contact)
        return sent

    # --- the user's own presence -------------------------------------------------------------
    @hook(ev.INITIAL_PRESENCE)
    async def initial(self, event: ev.SessionEvent) -> None:
        """§4.2.2 broadcast to subscribers; §4.3.1 probe the contacts we are subscribed to."""
        session = event.session
        if session.presence is None:
            return
        await self._broadcast(session, session.presence)
        for contact, sub in (await self._subscriptions(session.full_jid)).items():
            if sub in ("to", "both"):
                # From the full JID: the answers reach only the resource that needs them.
                probe = make("presence", type_="probe", from_=session.full_jid, to=contact.bare)
                await self.ctx.services.route(probe)

    @hook(ev.PRESENCE_UPDATE)
    async def update(self, event: ev.SessionEvent) -> None:
        """§4.4.2: subsequent presence goes to the same subscribers."""
        if event.session.presence is not None:
            await self._broadcast(event.session, event.session.presence)

    @hook(ev.SESSION_UNAVAILABLE)
    async def unavailable(self, event: ev.SessionEvent) -> None:
        """§4.5.2: unavailable to subscribers and to directed-presence recipients (§4.6.3)."""
        session = event.session
        presence = event.stanza
        if presence is None or presence.get("type") != "unavailable":
            presence = make("presence", type_="unavailable")
        sent = await self._broadcast(session, presence)
        await self._directed_cleanup(session, presence, sent)

    @hook(ev.SESSION_ENDED)
    async def ended(self, event: ev.SessionEnded) -> None:
        """A session that never became available may still have sent directed presence."""
        await self._directed_cleanup(event.session, make("presence", type_="unavailable"), set())

    async def _directed_cleanup(
        self, session: Session, presence: etree._Element, skip: set[JID]
    ) -> None:
        state = session.state(_Directed)
        if not isinstance(state, _Directed):
            return
        jids, state.jids = state.jids, set()
        presence = copy.deepcopy(presence)
        presence.set("from", str(session.full_jid))
        for jid in sorted(jids, key=str):
            if jid.bare not in skip:  # subscribers already got the broadcast
                await self._send_to(presence, jid)

    # --- directed presence (§4.6) --------------------------------------------------------------
    @hook(ev.PRE_PRESENCE, priority=Priority.LOW)
    async def directed(self, event: ev.StanzaEvent) -> bool:
        """Remember who got directed available presence; forget them on directed unavailable."""
        session = event.origin
        stanza = event.stanza
        if session is None or stanza.to is None or stanza.type not in (None, "unavailable"):
            return False
        if stanza.to.bare == session.full_jid.bare:
            return False
        if self.ctx.sessions.get(session.full_jid) is not session:
            return True  # the session has ended (its cleanup ran): send nothing more
        state = session.state(_Directed)
        if stanza.type is None:
            if not isinstance(state, _Directed):
                state = _Directed()
                session.set_state(_Directed, state)
            if stanza.to not in state.jids and len(state.jids) >= self.options.max_directed:
                raise StanzaError(
                    "policy-violation", "directed presence to too many entities at once"
                )
            state.jids.add(stanza.to)
        elif isinstance(state, _Directed):
            state.jids.discard(stanza.to)
        return False

    # --- inbound presence to local accounts ---------------------------------------------------
    @hook(ev.PRESENCE_BARE)
    async def inbound_bare(self, event: ev.StanzaEvent) -> bool:
        """Probes are answered; available presence needs a to/both subscription (§4.4.3)."""
        stanza = event.stanza
        if stanza.type == "probe":
            await self._answer_probe(event)
            return True
        if stanza.type is not None:
            return False  # unavailable, error: delivered by the core
        # Available presence goes to all available resources (§8.5.2.1.2), whether from a
        # contact (§4.4.3) or directed from anyone else (§4.6).
        return False

    @hook(ev.PRESENCE_FULL)
    async def inbound_full(self, event: ev.StanzaEvent) -> bool:
        """Probes to a full JID are answered like probes to the bare JID."""
        if event.stanza.type == "probe":
            await self._answer_probe(event)
            return True
        return False

    async def _answer_probe(self, event: ev.StanzaEvent) -> None:
        """§4.3.2: answered by the server on the contact's behalf."""
        contact = event.to.bare
        requester = event.stanza.from_
        if requester.bare == contact:
            return  # own resources learn of each other at initial presence (core)
        exists = contact.local is not None and await self.ctx.services.account_exists(
            contact.domain, contact.local
        )
        if not exists or await self._subscription(contact, requester) not in ("from", "both"):
            # §4.3.2: no account, or no subscription: "unsubscribed" (which also lets the
            # requester's server correct a stale subscription).
            await self.ctx.services.route(
                make("presence", type_="unsubscribed", from_=contact, to=requester.bare)
            )
            return
        available = [s for s in self.ctx.sessions.available(contact) if s.presence is not None]
        if event.to.resource is not None:
            available = [s for s in available if s.jid == event.to]
        if not available:
            # §4.3.2: no available resource: unavailable from the bare JID.
            await self.ctx.services.route(
                make("presence", type_="unavailable", from_=contact, to=requester)
            )
            return
        for session in available:
            assert session.presence is not None
            presence = copy.deepcopy(session.presence)
            presence.set("from", str(session.full_jid))
            await self._send_to(presence, requester)

    # --- message delivery option (§8.5.2.1.1) --------------------------------------------------
    @hook(ev.MESSAGE_BARE, priority=Priority.LOW)
    async def all_resources(self, event: ev.StanzaEvent) -> bool:
        """With deliver_to_all_resources, chat/normal go to every non-negative resource."""
        if not self.options.deliver_to_all_resources:
            return False
        if (event.stanza.type or "normal") not in ("chat", "normal"):
            return False
        targets = [s for s in self.ctx.sessions.available(event.to.bare) if s.priority >= 0]
        if not targets:
            return False
        for session in targets:
            session.send(event.stanza.element)
        return True
