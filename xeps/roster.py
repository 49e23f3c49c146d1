"""RFC 6121 §2-3: Roster — roster management, versioning, pushes and presence subscriptions.

The roster of each account is one JSON document in the module's key-value store (durable across
restarts). Subscription states follow RFC 6121 Appendix A: a roster item carries the
subscription ("none", "to", "from", "both") plus the pending-out ("ask"), pending-in and
pre-approval flags. A pending inbound request from someone not in the roster is kept in a
hidden item (not shown nor pushed, §3.1.3) together with the request stanza, which is
redelivered to every resource that comes online until the user answers it.

Other modules read subscription states through the ROSTER_QUERY event (presence broadcast,
probes, disco access to an account) and a contact's groups through ROSTER_GROUPS (the PEP
'roster' access model).
"""

from __future__ import annotations

import asyncio
import copy
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lxml import etree

from xmppd import events as ev
from xmppd.errors import StanzaError
from xmppd.jid import JID, JIDError
from xmppd.module_api import IqRequest, Module, Priority, StoreKind, Target, hook, iq_handler
from xmppd.ns import NS_CLIENT
from xmppd.session import Session
from xmppd.stanza import make, new_id
from xmppd.storage import JsonValue, KeyValueStore

NS_ROSTER = "jabber:iq:roster"
NS_ROSTERVER = "urn:xmpp:features:rosterver"
NS_PREAPPROVAL = "urn:xmpp:features:pre-approval"
SUBSCRIPTION_TYPES = frozenset({"subscribe", "subscribed", "unsubscribe", "unsubscribed"})
_ITEM = f"{{{NS_ROSTER}}}item"
_GROUP = f"{{{NS_ROSTER}}}group"
_SAFE_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


_NS_NICK = "http://jabber.org/protocol/nick"
_KEPT_TEXT = 1024  # characters kept of a waiting request's status and nick


def _kept_request(element: etree._Element) -> str:
    """What is kept of a waiting subscription request (§3.1.3): its addresses, id, status and
    nick (XEP-0172), each text bounded, not whatever payload the sender attached."""
    kept = etree.Element(f"{{{NS_CLIENT}}}presence", nsmap={None: NS_CLIENT})
    for name in ("from", "to", "type", "id"):
        value = element.get(name)
        if value is not None:
            kept.set(name, value)
    for tag in (f"{{{NS_CLIENT}}}status", f"{{{_NS_NICK}}}nick"):
        child = element.find(tag)
        if child is not None and child.text:
            if tag == f"{{{_NS_NICK}}}nick":
                copy_ = etree.SubElement(kept, tag, nsmap={None: _NS_NICK})
            else:
                copy_ = etree.SubElement(kept, tag)
            copy_.text = child.text[:_KEPT_TEXT]
    return etree.tostring(kept, encoding="unicode")


@dataclass(slots=True)
class Item:
    """One roster item and its subscription state (RFC 6121 §2.1.2, Appendix A)."""

    jid: str
    name: str | None = None
    groups: list[str] = field(default_factory=list)
    to: bool = False  # the user receives the contact's presence
    from_: bool = False  # the contact receives the user's presence
    ask: bool = False  # Pending Out: the user asked the contact
    pending_in: bool = False  # Pending In: the contact asked the user
    approved: bool = False  # pre-approval (§3.4)
    hidden: bool = False  # only tracks a pending inbound request: not in the roster (§3.1.3)
    request: str | None = None  # the inbound subscribe stanza, kept for redelivery

    @property
    def subscription(self) -> str:
        """The 'subscription' attribute value."""
        if self.to and self.from_:
            return "both"
        return "to" if self.to else ("from" if self.from_ else "none")

    @property
    def state(self) -> str:
        """The RFC 6121 Appendix A.1 state name, e.g. "None + Pending Out+In"."""
        base = self.subscription.capitalize()
        pending = [p for p, on in (("Out", self.ask), ("In", self.pending_in)) if on]
        if not pending:
            return base
        return f"{base} + Pending {'+'.join(pending)}"

    def to_json(self) -> dict[str, JsonValue]:
        """The stored form."""
        data: dict[str, JsonValue] = {"jid": self.jid, "sub": self.subscription}
        if self.name is not None:
            data["name"] = self.name
        if self.groups:
            data["groups"] = list(self.groups)
        for key, on in (
            ("ask", self.ask),
            ("pin", self.pending_in),
            ("approved", self.approved),
            ("hidden", self.hidden),
        ):
            if on:
                data[key] = True
        if self.request is not None:
            data["request"] = self.request
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Item:
        """Read the stored form."""
        sub = data.get("sub", "none")
        return cls(
            jid=data["jid"],
            name=data.get("name"),
            groups=list(data.get("groups", [])),
            to=sub in ("to", "both"),
            from_=sub in ("from", "both"),
            ask=bool(data.get("ask")),
            pending_in=bool(data.get("pin")),
            approved=bool(data.get("approved")),
            hidden=bool(data.get("hidden")),
            request=data.get("request"),
        )

    def element(self) -> etree._Element:
        """The <item/> of roster results and pushes."""
        el = etree.Element(_ITEM, jid=self.jid, subscription=self.subscription)
        if self.name is not None:
            el.set("name", self.name)
        if self.ask:
            el.set("ask", "subscribe")
        if self.approved:
            el.set("approved", "true")
        for group in self.groups:
            etree.SubElement(el, _GROUP).text = group
        return el


@dataclass(slots=True)
class Roster:
    """One account's roster: items by JID and the version (RFC 6121 §2.6)."""

    epoch: str
    counter: int = 0
    items: dict[str, Item] = field(default_factory=dict)

    @property
    def ver(self) -> str:
        """The current roster version string."""
        return f"{self.epoch}-{self.counter}"

    def visible(self) -> Iterator[Item]:
        """The items that are in the roster as the client sees it."""
        return (item for item in self.items.values() if not item.hidden)

    def to_json(self) -> dict[str, JsonValue]:
        """The stored form."""
        return {
            "epoch": self.epoch,
            "counter": self.counter,
            "items": [item.to_json() for item in self.items.values()],
        }

    @classmethod
    def from_json(cls, data: JsonValue | None) -> Roster:
        """Read the stored form (a fresh roster when there is none)."""
        if not isinstance(data, dict):
            return cls(epoch=secrets.token_hex(4))
        raw_items = data.get("items")
        items = (
            [Item.from_json(i) for i in raw_items if isinstance(i, dict)]
            if isinstance(raw_items, list)
            else []
        )
        counter = data.get("counter")
        return cls(
            epoch=str(data.get("epoch") or secrets.token_hex(4)),
            counter=counter if isinstance(counter, int) else 0,
            items={item.jid: item for item in items},
        )


# --- RFC 6121 Appendix A: the subscription state machine (pure) ----------------------------


def outbound(item: Item, type_: str) -> bool:
    """Apply a client-generated subscription stanza (Appendix A.2); True if the state changed."""
    before = (item.to, item.from_, item.ask, item.pending_in)
    if type_ == "subscribe":  # A.2.1
        if not item.to:
            item.ask = True
    elif type_ == "unsubscribe":  # A.2.2
        item.ask = False
        item.to = False
    elif type_ == "subscribed":  # A.2.3
        if item.pending_in:
            item.pending_in = False
            item.from_ = True
            item.request = None
    elif type_ == "unsubscribed":  # A.2.4
        item.pending_in = False
        item.from_ = False
        item.request = None
    return before != (item.to, item.from_, item.ask, item.pending_in)


def inbound(item: Item, type_: str) -> tuple[bool, bool]:
    """Apply an inbound subscription stanza (Appendix A.3): (state changed, deliver it)."""
    if type_ == "subscribe":  # A.3.1
        if item.from_ or item.pending_in:
            return False, False  # From/Both: auto-reply subscribed (the caller does it)
        item.pending_in = True
        return True, True
    if type_ == "unsubscribe":  # A.3.2
        if item.pending_in or item.from_:
            item.pending_in = False
            item.from_ = False
            item.request = None
            return True, True
        return False, False
    if type_ == "subscribed":  # A.3.3
        if item.ask:
            item.ask = False
            item.to = True
            return True, True
        return False, False
    if type_ == "unsubscribed":  # A.3.4
        if item.ask or item.to:
            item.ask = False
            item.to = False
            return True, True
        return False, False
    raise ValueError(type_)


@dataclass(slots=True)
class _Outcome:
    """What a roster change requires once the user's lock is released."""

    pushes: list[Item] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    route: list[etree._Element] = field(default_factory=list)
    ver: str = ""


class RosterModule(Module):
    """RFC 6121 rosters and subscriptions."""

    name = "roster"
    features: ClassVar[tuple[str, ...]] = ()
    stores = {"roster": StoreKind.KEYVALUE}

    @dataclass(frozen=True)
    class Options:
        """`[modules.roster]`."""

        max_items: int = 1000  # items per roster; more is refused (not-allowed)
        max_name_length: int = 1024  # characters of an item name or group name
        # Subscription requests from strangers kept waiting for an answer (§3.1.3); more get
        # resource-constraint. They do not count against max_items.
        max_pending: int = 100

    options: Options

    async def load(self) -> None:
        """Stream features: roster versioning (§2.6.1) and pre-approval (§3.4.1)."""
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}
        # Stored documents of accounts with a bound session (presence filtering reads the
        # roster of every online recipient); a fresh Roster is built from it on each read.
        self._cache: dict[str, JsonValue] = {}
        self.ctx.add_stream_feature(
            lambda _session: etree.Element(f"{{{NS_ROSTERVER}}}ver", nsmap={None: NS_ROSTERVER})
        )
        self.ctx.add_stream_feature(
            lambda _session: etree.Element(f"{{{NS_PREAPPROVAL}}}sub", nsmap={None: NS_PREAPPROVAL})
        )

    # --- storage ---------------------------------------------------------------------------
    @property
    def store(self) -> KeyValueStore:
        """The roster store."""
        return self.ctx.keyvalue("roster")

    async def get_roster(self, username: str) -> Roster:
        """Read an account's roster (a fresh object: callers may change it)."""
        if username in self._cache:
            return Roster.from_json(self._cache[username])
        data = await self.store.get(username, "roster")
        if self.ctx.sessions.has_sessions(self._bare(username)):
            self._cache[username] = data
        return Roster.from_json(data)

    async def put_roster(self, username: str, roster: Roster) -> None:
        """Write an account's roster (bumping nothing)."""
        data = roster.to_json()
        await self.store.set(username, "roster", data)
        if username in self._cache or self.ctx.sessions.has_sessions(self._bare(username)):
            self._cache[username] = data

    @hook(ev.SESSION_ENDED)
    async def forget(self, event: ev.SessionEnded) -> None:
        """The account's last session is gone: drop its cached roster."""
        jid = event.session.jid
        if jid is not None and not self.ctx.sessions.has_sessions(jid.bare):
            self._cache.pop(jid.local or "", None)

    @asynccontextmanager
    async def _editing(self, username: str) -> AsyncIterator[None]:
        """Serialise read-modify-write of one account's roster."""
        lock = self._locks.get(username)
        if lock is None:
            lock = self._locks[username] = asyncio.Lock()
        self._users[username] = self._users.get(username, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[username] -= 1
            if not self._users[username]:
                del self._users[username]
                del self._locks[username]

    def _bare(self, username: str) -> JID:
        return JID(username, self.ctx.host.domain, None)

    # --- roster pushes (§2.1.6) ------------------------------------------------------------
    def _push(self, username: str, ver: str, item: Item | None, removed: str | None) -> None:
        bare = self._bare(username)
        for session in self.ctx.sessions.sessions(bare):
            if not session.interested or session.jid is None:
                continue
            iq = make("iq", type_="set", id_=new_id(), from_=bare, to=session.jid)
            query = etree.SubElement(iq, f"{{{NS_ROSTER}}}query", nsmap={None: NS_ROSTER})
            query.set("ver", ver)
            if item is not None:
                query.append(item.element())
            else:
                etree.SubElement(query, _ITEM, jid=removed or "", subscription="remove")
            session.send(iq)

    async def _finish(self, username: str, outcome: _Outcome) -> None:
        """Pushes, then stanzas to route (outside the lock: routing may come back here)."""
        for item in outcome.pushes:
            self._push(username, outcome.ver, item, None)
        for jid in outcome.removed:
            self._push(username, outcome.ver, None, jid)
        for element in outcome.route:
            await self.ctx.services.route(element)

    # --- roster get/set (§2.2-2.5) ---------------------------------------------------------
    @staticmethod
    def _check_own(request: IqRequest) -> str:
        # §2.1.5 / §2.3.3: only the account itself reads or changes its roster.
        return request.own_account("its roster")

    @iq_handler("get", NS_ROSTER, "query", to=Target.ACCOUNT)
    async def roster_get(self, request: IqRequest) -> etree._Element | None:
        """§2.2 roster get; §2.6.3: an empty result when the client's version is current."""
        username = self._check_own(request)
        if request.origin is not None:
            request.origin.interested = True  # §2.1.6: an interested resource
        roster = await self.get_roster(username)
        if request.payload.get("ver") == roster.ver:
            return None
        query = etree.Element(f"{{{NS_ROSTER}}}query", nsmap={None: NS_ROSTER})
        query.set("ver", roster.ver)
        for item in roster.visible():
            query.append(item.element())
        return query

    @iq_handler("set", NS_ROSTER, "query", to=Target.ACCOUNT)
    async def roster_set(self, request: IqRequest) -> None:
        """§2.3 add/update and §2.5 remove."""
        username = self._check_own(request)
        children = [c for c in request.payload if isinstance(c.tag, str)]
        items = [c for c in children if c.tag == _ITEM]
        if len(items) != 1:
            raise StanzaError("bad-request", "a roster set carries exactly one item")  # §2.3.3
        element = items[0]
        jid_text = element.get("jid")
        if not jid_text:
            raise StanzaError("bad-request", "the item has no jid")
        try:
            jid = JID.parse(jid_text)
        except JIDError as exc:
            raise StanzaError("jid-malformed", str(exc)) from None
        if jid.bare == request.from_.bare:
            raise StanzaError("not-allowed", "the account itself cannot be a roster item")
        key = str(jid)
        if element.get("subscription") == "remove":
            await self._remove(username, key)
            return None
        # §2.1.2.5: other 'subscription' values, and 'ask'/'approved', are ignored in a set.
        name = element.get("name")
        if name is not None and len(name) > self.options.max_name_length:
            raise StanzaError("not-acceptable", "name too long")  # §2.3.3
        groups: list[str] = []
        for group in element.findall(_GROUP):
            text = group.text or ""
            if not text:
                raise StanzaError("not-acceptable", "empty group name")  # §2.3.3
            if len(text) > self.options.max_name_length:
                raise StanzaError("not-acceptable", "group name too long")
            if text in groups:
                raise StanzaError("bad-request", "duplicate group")  # §2.3.3
            groups.append(text)
        outcome = _Outcome()
        async with self._editing(username):
            roster = await self.get_roster(username)
            item = roster.items.get(key)
            if item is None:
                self._check_room(roster, "not-allowed")
                item = roster.items[key] = Item(key)
            item.name = name
            item.groups = groups
            item.hidden = False
            roster.counter += 1
            await self.put_roster(username, roster)
            outcome.pushes.append(item)
            outcome.ver = roster.ver
        await self._finish(username, outcome)
        return None

    async def _store_change(
        self, username: str, roster: Roster, item: Item, outcome: _Outcome
    ) -> None:
        """Store an item whose subscription state changed (a hidden one with nothing pending
        goes), with a new roster version; a visible item is pushed (§2.1.6)."""
        if item.hidden and not item.pending_in:
            roster.items.pop(item.jid, None)
        else:
            roster.items[item.jid] = item
        roster.counter += 1
        await self.put_roster(username, roster)
        outcome.ver = roster.ver
        if not item.hidden:
            outcome.pushes.append(item)

    def _check_room(self, roster: Roster, condition: str) -> None:
        """The user's own items (not strangers' waiting requests) are limited to max_items."""
        if sum(not item.hidden for item in roster.items.values()) >= self.options.max_items:
            raise StanzaError(condition, f"the roster is full ({self.options.max_items} items)")

    async def _remove(self, username: str, key: str) -> None:
        """§2.5.2: cancel both subscriptions, then push the removal."""
        bare = self._bare(username)
        outcome = _Outcome()
        async with self._editing(username):
            roster = await self.get_roster(username)
            item = roster.items.get(key)
            if item is None or item.hidden:
                raise StanzaError("item-not-found")  # §2.5.3
            contact = JID.parse(key).bare
            if item.from_:
                # Like §3.2.2: the contact no longer sees us; tell it we are gone.
                outcome.route.extend(self._unavailable_to(bare, contact))
            if item.to or item.ask:
                outcome.route.append(make("presence", type_="unsubscribe", from_=bare, to=contact))
            if item.from_ or item.pending_in:
                outcome.route.append(make("presence", type_="unsubscribed", from_=bare, to=contact))
            del roster.items[key]
            roster.counter += 1
            await self.put_roster(username, roster)
            outcome.removed.append(key)
            outcome.ver = roster.ver
        await self._finish(username, outcome)

    @hook(ev.ACCOUNT_REMOVED)
    async def account_removed(self, event: ev.AccountRemoved) -> None:
        """A deleted account cancels its subscriptions (as removing each item would, §2.5.2),
        so that a later account of the same name inherits no one's presence."""
        username = event.jid.local or ""
        roster = await self.get_roster(username)
        for key, item in list(roster.items.items()):
            if not item.hidden:
                await self._remove(username, key)

    # --- presence helpers ------------------------------------------------------------------
    def _current_presence_to(self, bare: JID, contact: JID) -> list[etree._Element]:
        """§3.1.5: the last presence of each available resource, addressed to `contact`."""
        out = []
        for session in self.ctx.sessions.available(bare):
            if session.presence is None:
                continue
            presence = copy.deepcopy(session.presence)
            presence.set("from", str(session.full_jid))
            presence.set("to", str(contact))
            out.append(presence)
        return out

    def _unavailable_to(self, bare: JID, contact: JID) -> list[etree._Element]:
        """§3.2.2 / §3.3.3: unavailable from each available resource to `contact`."""
        return [
            make("presence", type_="unavailable", from_=s.full_jid, to=contact)
            for s in self.ctx.sessions.available(bare)
        ]

    # --- outbound subscription stanzas (§3.1.2, §3.1.5, §3.2.2, §3.3.2, Appendix A.2) -----
    @hook(ev.PRE_PRESENCE, priority=Priority.LOW)
    async def outbound_subscription(self, event: ev.StanzaEvent) -> bool:
        """A user's subscription stanza: update the roster, stamp the bare JID, route."""
        stanza = event.stanza
        session = event.origin
        if stanza.type not in SUBSCRIPTION_TYPES or stanza.to is None or session is None:
            return False
        type_ = stanza.type
        user = session.full_jid.bare
        username = user.local or ""
        contact = stanza.to.bare
        if contact == user:
            # Own presence always reaches own resources (§4.2.2): nothing to subscribe to.
            raise StanzaError("not-allowed", "an account cannot subscribe to itself")
        element = stanza.element
        key = str(contact)
        outcome = _Outcome()
        async with self._editing(username):
            roster = await self.get_roster(username)
            item = roster.items.get(key)
            if item is None:
                if type_ in ("subscribe", "subscribed"):
                    self._check_room(roster, "not-allowed")
                item = Item(key)  # unsubscribe/unsubscribed: no state, nothing to store
            had_from = item.from_
            changed = outbound(item, type_)
            approval_changed = False
            if type_ == "subscribed" and not changed and not item.from_ and not item.approved:
                item.approved = True  # §3.4.1: pre-approval
                approval_changed = True
            elif type_ == "unsubscribed" and item.approved:
                item.approved = False  # §3.4: cancels a pre-approval
                approval_changed = True
            if item.hidden and (item.to or item.from_ or item.ask):
                item.hidden = False
            dirty = changed or approval_changed
            if dirty:
                await self._store_change(username, roster, item, outcome)
            # Routing: subscribe/unsubscribe always (the contact's server may have lost
            # sync); subscribed/unsubscribed only when they changed the state (§3.1.5, §3.2.2).
            if type_ in ("subscribe", "unsubscribe") or changed:
                if type_ == "unsubscribed" and had_from:
                    outcome.route.extend(self._unavailable_to(user, contact))
                element.set("from", str(user))  # §3.1.2: stamped with the bare JID
                element.set("to", str(contact))
                outcome.route.append(element)
                if type_ == "subscribed":
                    outcome.route.extend(self._current_presence_to(user, contact))
        await self._finish(username, outcome)
        return True

    # --- inbound subscription stanzas (§3.1.3, §3.1.6, §3.2.3, §3.3.3, Appendix A.3) ------
    @hook(ev.PRESENCE_BARE, priority=Priority.HIGH)
    async def inbound_bare(self, event: ev.StanzaEvent) -> bool:
        """Subscription stanzas to a local account."""
        return await self._inbound(event)

    @hook(ev.PRESENCE_FULL, priority=Priority.HIGH)
    async def inbound_full(self, event: ev.StanzaEvent) -> bool:
        """Subscription stanzas to a full JID are processed for the bare JID (§3)."""
        return await self._inbound(event)

    async def _inbound(self, event: ev.StanzaEvent) -> bool:
        stanza = event.stanza
        type_ = stanza.type
        if type_ not in SUBSCRIPTION_TYPES:
            return False
        user = event.to.bare
        username = user.local or ""
        contact = stanza.from_.bare
        if contact == user:
            return True
        if not await self.ctx.services.account_exists(user.domain, username):
            if type_ == "subscribe":
                # §3.1.3: no such account: the request is answered "unsubscribed".
                await self.ctx.services.route(
                    make("presence", type_="unsubscribed", from_=user, to=contact)
                )
            return True
        element = stanza.element
        element.set("from", str(contact))
        element.set("to", str(user))
        key = str(contact)
        outcome = _Outcome()
        deliver = False
        async with self._editing(username):
            roster = await self.get_roster(username)
            item = roster.items.get(key)
            if item is None:
                if type_ != "subscribe":
                    return True  # no item: no state, nothing delivered (A.3.2-A.3.4 "None")
                waiting = sum(item.hidden for item in roster.items.values())
                if waiting >= self.options.max_pending:
                    raise StanzaError("resource-constraint", "too many requests are waiting")
                item = Item(key, hidden=True)
            if type_ == "subscribe" and not item.from_ and not item.pending_in and item.approved:
                # §3.4: pre-approved: approve on the user's behalf.
                item.approved = False
                item.from_ = True
                item.hidden = False
                changed, deliver = True, False
            else:
                changed, deliver = inbound(item, type_)
            if type_ == "subscribe" and item.from_:
                # A.3.1 From/Both, and a pre-approval just used: auto-reply "subscribed".
                outcome.route.append(make("presence", type_="subscribed", from_=user, to=contact))
                outcome.route.extend(self._current_presence_to(user, contact))
            request_changed = False
            if type_ == "subscribe" and item.pending_in:
                request = _kept_request(element)
                if request != item.request:
                    item.request = request
                    request_changed = True
            if type_ == "unsubscribe" and changed:
                outcome.route.extend(self._unavailable_to(user, contact))  # §3.3.3
            if changed:
                await self._store_change(username, roster, item, outcome)
            elif request_changed:
                # A re-sent request (a new status or nick): kept, no state change, no push.
                roster.items[key] = item
                await self.put_roster(username, roster)
        await self._finish(username, outcome)
        if deliver:
            for session in self.ctx.sessions.available(user):
                session.send(element)
        return True

    # --- redelivery of pending requests (§3.1.3) -------------------------------------------
    @hook(ev.INITIAL_PRESENCE)
    async def redeliver(self, event: ev.SessionEvent) -> None:
        """Every resource that comes online gets the requests still waiting for an answer."""
        session = event.session
        bare = session.full_jid.bare
        roster = await self.get_roster(bare.local or "")
        for item in roster.items.values():
            if item.pending_in and item.request is not None:
                self._send_request(session, item.request)

    @staticmethod
    def _send_request(session: Session, text: str) -> None:
        try:
            element = etree.fromstring(text.encode(), _SAFE_PARSER)
        except etree.XMLSyntaxError:
            return
        if element.tag != f"{{{NS_CLIENT}}}presence":
            return
        session.send(element)

    # --- other modules' questions ----------------------------------------------------------
    @hook(ev.ROSTER_GROUPS)
    async def groups(self, event: ev.RosterGroups) -> bool:
        """The groups of one contact's roster item (XEP-0060 'roster' access model)."""
        if event.user.domain != self.ctx.host.domain or event.user.local is None:
            return False
        item = (await self.get_roster(event.user.local)).items.get(str(event.contact.bare))
        if item is not None and not item.hidden:
            event.groups.update(item.groups)
        return True

    @hook(ev.ROSTER_QUERY)
    async def query(self, event: ev.RosterQuery) -> bool:
        """Subscription states of an account's items (all, or one contact)."""
        if event.user.domain != self.ctx.host.domain or event.user.local is None:
            return False
        roster = await self.get_roster(event.user.local)
        if event.contact is not None:
            item = roster.items.get(str(event.contact))
            if item is not None and not item.hidden:
                event.subscriptions[event.contact] = item.subscription
            return True
        for item in roster.visible():
            try:
                event.subscriptions[JID.parse(item.jid)] = item.subscription
            except JIDError:
                continue
        return True
