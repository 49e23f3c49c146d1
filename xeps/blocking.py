"""XEP-0191: Blocking Command — a per-account block list enforced by the server.

The account manages its list with <blocklist/> (get), <block/> and <unblock/> (set); changes
are pushed to every resource that retrieved the list (§3.3, §3.4). Enforcement (§3.3):

- stanzas from a blocked JID to the account: presence is dropped silently, messages and IQ
  get/set are answered service-unavailable (so that the block is not revealed), IQ results and
  errors are dropped — on the recipient's host (MESSAGE_*/PRESENCE_*/IQ_*), and as a last
  resort in a send filter, which also catches presence broadcast straight to sessions;
- stanzas from the account to a blocked JID are refused with not-acceptable plus
  <blocked xmlns='urn:xmpp:blocking:errors'/> (PRE_* on the sender's host); presence the
  account broadcasts is kept from blocked JIDs on their host (and by the send filter).

JID matching follows XEP-0191 §6 (as XEP-0016 §2.1): full JID, bare JID, domain/resource,
domain. Lists of accounts with sessions are cached in memory; others are read from storage.

Blocking a contact subscribed to the account's presence sends it unavailable presence from
each available resource; unblocking sends the current presence (§3.3, §3.4). Subscriptions
come from the roster module (ROSTER_QUERY); without it nothing is sent.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable
from dataclasses import dataclass

from lxml import etree

from xmppd import events as ev
from xmppd.errors import StanzaError
from xmppd.events import Priority, SessionEnded, SessionEvent, StanzaEvent
from xmppd.jid import JID, JIDError
from xmppd.module_api import IqRequest, Module, StoreKind, Target, hook, iq_handler
from xmppd.session import Session
from xmppd.stanza import Stanza, make, new_id
from xmppd.storage import JsonValue

NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
BLOCKED = f"{{{NS_BLOCKING_ERRORS}}}blocked"
STORE = "blocking"
KEY = "list"
_ITEM = f"{{{NS_BLOCKING}}}item"


def matches(item: JID, jid: JID) -> bool:
    """XEP-0191 §6 (as XEP-0016 §2.1): whether blocking `item` covers `jid`.

    user@domain/resource: that resource only; user@domain: any of its resources;
    domain/resource: that resource of any address at the domain; domain: the domain itself,
    every address at it and at its subdomains.
    """
    if item.local is None and item.resource is None:
        return jid.domain == item.domain or jid.domain.endswith(f".{item.domain}")
    if item.domain != jid.domain:
        return False
    if item.local is None:
        return item.resource == jid.resource
    return item.local == jid.local and (item.resource is None or item.resource == jid.resource)


def blocked_error() -> StanzaError:
    """§3.3: the error for an outbound stanza to a blocked JID."""
    return StanzaError(
        "not-acceptable",
        type="cancel",  # as in the §3.3 example
        app=etree.Element(BLOCKED, nsmap={None: NS_BLOCKING_ERRORS}),
    )


def _is_block_refusal(element: etree._Element) -> bool:
    error = element.find("{jabber:client}error")
    return error is not None and error.find(BLOCKED) is not None


class _Interested:
    """Session state key: the resource retrieved the block list (gets pushes)."""


class Blocking(Module):
    """Blocking command."""

    xeps = (191,)
    features = (NS_BLOCKING,)
    account_features = (NS_BLOCKING,)
    stores = {STORE: StoreKind.KEYVALUE}

    @dataclass(frozen=True)
    class Options:
        """`max_items`: most JIDs one account may block."""

        max_items: int = 1000

    async def load(self) -> None:
        """Cache of block lists of accounts with sessions; the send filter."""
        self._loaded: set[str] = set()  # accounts with sessions: their lists are cached
        self._lists: dict[str, frozenset[JID]] = {}  # their non-empty lists
        # Accounts with a non-empty list (few): a login of any other needs no storage read.
        self._listed: set[str] = set(await self.ctx.keyvalue(STORE).users())
        self.ctx.add_send_filter(self._filter)

    # --- list storage ----------------------------------------------------------------------
    @hook(ev.BLOCK_QUERY)
    async def query(self, event: ev.BlockQuery) -> bool:
        """Whether a local account of this host blocks a JID (for other modules)."""
        owner = event.owner
        if owner.local is None or owner.domain != self.ctx.host.domain:
            return False
        items = await self.blocklist(owner.local)
        event.blocked = any(matches(item, event.other) for item in items)
        return True

    async def blocklist(self, username: str) -> frozenset[JID]:
        """The block list of a local account of this host."""
        if username in self._loaded:
            return self._lists.get(username, frozenset())
        if username not in self._listed:
            return frozenset()
        raw = await self.ctx.keyvalue(STORE).get(username, KEY)
        items = set()
        for text in raw if isinstance(raw, list) else ():
            try:
                items.add(JID.parse(str(text)))
            except JIDError:
                self.ctx.log.warning("dropping malformed blocked JID of %s", username)
        return frozenset(items)

    async def _save(self, username: str, items: frozenset[JID]) -> None:
        store = self.ctx.keyvalue(STORE)
        if items:
            value: list[JsonValue] = [str(j) for j in sorted(items, key=str)]
            self._listed.add(username)
            await store.set(username, KEY, value)
        else:
            await store.delete(username, KEY)
            self._listed.discard(username)
        if username in self._loaded:
            self._cache(username, items)

    def _cache(self, username: str, items: frozenset[JID]) -> None:
        if items:
            self._lists[username] = items
        else:
            self._lists.pop(username, None)

    async def blocks(self, owner: JID, other: JID) -> bool:
        """Whether the local account `owner` (of this host) blocks `other`."""
        if owner.local is None or owner.domain != self.ctx.host.domain:
            return False
        if owner.local in self._loaded:  # online: the cached list, no storage round trip
            return self._blocks_cached(owner, other)
        items = await self.blocklist(owner.local)
        return any(matches(item, other) for item in items)

    def _blocks_cached(self, owner: JID, other: JID) -> bool:
        if owner.local is None or owner.domain != self.ctx.host.domain:
            return False
        items = self._lists.get(owner.local)
        return items is not None and any(matches(item, other) for item in items)

    @hook(ev.SESSION_BOUND, priority=Priority.FIRST)
    async def session_bound(self, event: SessionEvent) -> None:
        """Cache the list while the account has sessions (the send filter is synchronous)."""
        username = event.session.username or ""
        if username not in self._loaded:
            items = await self.blocklist(username)
            jid = event.session.jid
            if jid is None or not self.ctx.sessions.has_sessions(jid.bare):
                return  # the session ended during the read: nothing would uncache it
            self._loaded.add(username)
            self._cache(username, items)

    @hook(ev.SESSION_ENDED)
    async def session_ended(self, event: SessionEnded) -> None:
        """Forget the cached list with the account's last session."""
        jid = event.session.jid
        if jid is not None and not self.ctx.sessions.has_sessions(jid.bare):
            self._loaded.discard(event.session.username or "")
            self._lists.pop(event.session.username or "", None)

    # --- protocol -------------------------------------------------------------------------
    @staticmethod
    def _own(request: IqRequest) -> str:
        return request.own_account("its block list")

    @iq_handler("get", NS_BLOCKING, "blocklist", to=Target.ACCOUNT)
    async def get_list(self, request: IqRequest) -> etree._Element:
        """§3.2: return the list; the resource now gets pushes."""
        username = self._own(request)
        if request.origin is not None:
            request.origin.set_state(_Interested, True)
        result = etree.Element(f"{{{NS_BLOCKING}}}blocklist", nsmap={None: NS_BLOCKING})
        for jid in sorted(await self.blocklist(username), key=str):
            etree.SubElement(result, _ITEM, jid=str(jid))
        return result

    @staticmethod
    def _items(payload: etree._Element) -> list[JID]:
        items = []
        for item in payload.iter(_ITEM):
            try:
                items.append(JID.parse(item.get("jid") or ""))
            except JIDError:
                raise StanzaError("jid-malformed", "an item's jid is not a valid JID") from None
        return items

    @iq_handler("set", NS_BLOCKING, "block", to=Target.ACCOUNT)
    async def block(self, request: IqRequest) -> None:
        """§3.3: add JIDs, push, and tell each newly blocked contact we went offline."""
        username = self._own(request)
        items = self._items(request.payload)
        if not items:
            raise StanzaError("bad-request", "block at least one JID")
        current = await self.blocklist(username)
        if len(current | frozenset(items)) > self.options.max_items:
            raise StanzaError("not-acceptable", f"at most {self.options.max_items} JIDs")
        await self._save(username, current | frozenset(items))
        self._push(request.to.bare, "block", items)
        await self._presence_to(request.to.bare, [i for i in items if i not in current], False)

    @iq_handler("set", NS_BLOCKING, "unblock", to=Target.ACCOUNT)
    async def unblock(self, request: IqRequest) -> None:
        """§3.4 / §3.5: remove the given JIDs, or all of them when none is given."""
        username = self._own(request)
        items = self._items(request.payload)
        current = await self.blocklist(username)
        remaining = current - frozenset(items) if items else frozenset()
        await self._save(username, remaining)
        self._push(request.to.bare, "unblock", items)
        await self._presence_to(request.to.bare, list(current - remaining), True, remaining)

    async def _presence_to(
        self,
        user: JID,
        items: list[JID],
        available: bool,
        still_blocked: frozenset[JID] = frozenset(),
    ) -> None:
        """Unavailable (on block) or current presence (on unblock) to subscribed contacts
        (none to a contact another item still blocks)."""
        sessions = [s for s in self.ctx.sessions.available(user) if s.jid is not None]
        if not items or not sessions:
            return
        query = ev.RosterQuery(user)
        if not await self.ctx.fire(ev.ROSTER_QUERY, query):
            return
        subscribers = {c for c, sub in query.subscriptions.items() if sub in ("from", "both")}
        contacts = [
            contact
            for contact in subscribers
            if any(matches(item, contact) for item in items)
            and not any(matches(item, contact) for item in still_blocked)
        ]
        # A blocked full JID of a subscriber is one resource of it: that one is told.
        contacts += [
            item
            for item in items
            if item.resource is not None
            and item.bare in subscribers
            and item.bare not in contacts
            and not any(matches(other, item) for other in still_blocked)
        ]
        for contact in contacts:
            for session in sessions:
                if available and session.presence is not None:
                    presence = copy.deepcopy(session.presence)
                    presence.attrib.pop("type", None)
                else:
                    presence = make("presence", type_="unavailable")
                presence.set("from", str(session.jid))
                presence.set("to", str(contact))
                await self.ctx.services.route(presence)

    def _push(self, bare: JID, kind: str, items: list[JID]) -> None:
        for session in self.ctx.sessions.sessions(bare):
            if session.state(_Interested) and session.jid is not None:
                iq = make("iq", type_="set", id_=new_id(), to=session.jid)
                command = etree.SubElement(
                    iq, f"{{{NS_BLOCKING}}}{kind}", nsmap={None: NS_BLOCKING}
                )
                for jid in items:
                    etree.SubElement(command, _ITEM, jid=str(jid))
                session.send(iq)

    # --- enforcement: outbound (sender's host) ---------------------------------------------
    @hook(ev.PRE_MESSAGE, priority=Priority.FIRST)
    @hook(ev.PRE_PRESENCE, priority=Priority.FIRST)
    @hook(ev.PRE_IQ, priority=Priority.FIRST)
    def outbound(self, event: StanzaEvent) -> bool:
        """§3.3: the account may not send to a JID it blocks."""
        stanza = event.stanza
        if stanza.to is None or event.origin is None:
            return False
        if not self._blocks_cached(stanza.from_.bare, stanza.to):
            return False
        if stanza.type == "error" or (stanza.kind == "iq" and stanza.type == "result"):
            return True  # never answered; just not routed
        raise blocked_error()

    # --- enforcement: inbound (recipient's host) -------------------------------------------
    @hook(ev.MESSAGE_BARE, priority=Priority.FIRST)
    @hook(ev.MESSAGE_FULL, priority=Priority.FIRST)
    @hook(ev.PRESENCE_BARE, priority=Priority.FIRST)
    @hook(ev.PRESENCE_FULL, priority=Priority.FIRST)
    @hook(ev.IQ_BARE, priority=Priority.FIRST)
    @hook(ev.IQ_FULL, priority=Priority.FIRST)
    def inbound(self, event: StanzaEvent) -> bool | Awaitable[bool]:
        """§3.3: what a blocked JID sends to the account never reaches it.

        Synchronous when the recipient is online (its list is cached): the hot path.
        """
        stanza = event.stanza
        to = event.to
        if to.local is None or (
            # The server's own refusal of what the account sent to a JID it blocks (routed back
            # "from" that JID); the same error sent by a client is no exemption.
            event.origin is None and stanza.type == "error" and _is_block_refusal(stanza.element)
        ):
            return False
        # Presence the account broadcasts (routed by the server, not by its session) must not
        # reach a JID it blocks either; unavailable may (it hides nothing).
        broadcast = (
            event.origin is None and stanza.kind == "presence" and stanza.type != "unavailable"
        )
        if not broadcast and to.local in self._loaded and to.domain == self.ctx.host.domain:
            return self._blocks_cached(to.bare, stanza.from_) and self._refuse(stanza)
        return self._inbound_later(event, broadcast)

    async def _inbound_later(self, event: StanzaEvent, broadcast: bool) -> bool:
        stanza = event.stanza
        if await self.blocks(event.to.bare, stanza.from_) or (
            broadcast and await self.blocks(stanza.from_, event.to)
        ):
            return self._refuse(stanza)
        return False

    @staticmethod
    def _refuse(stanza: Stanza) -> bool:
        """A stanza from a blocked JID: dropped (True), or bounced (raises)."""
        if stanza.kind == "presence" or stanza.type in ("error", "result"):
            return True
        if stanza.kind == "message" and stanza.type in ("headline", "groupchat"):
            return True
        raise StanzaError("service-unavailable")

    def _filter(self, session: Session, element: etree._Element) -> etree._Element | None:
        """Last resort for stanzas handed straight to sessions (e.g. presence broadcast)."""
        if not self._lists or element.get("from") is None:
            return element
        try:
            sender = JID.parse(element.get("from") or "")
        except JIDError:
            return element
        jid = session.jid
        if jid is None or sender.bare == jid.bare or _is_block_refusal(element):
            return element
        if self._blocks_cached(jid.bare, sender):
            return None
        if (
            element.tag == "{jabber:client}presence"
            and element.get("type") != "unavailable"
            and self._blocks_cached(sender.bare, jid)
        ):
            return None
        return element
