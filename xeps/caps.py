"""XEP-0115: Entity Capabilities — the server's caps hash, and its clients' and contacts' caps.

Server side: after authentication the server offers ``<c xmlns='http://jabber.org/protocol/caps'
hash='sha-1' node='…' ver='…'/>`` (§6.3), where ver is the §5 verification string of the host's
disco identities, features and extended-information forms. A disco#info query for
``node#ver`` is answered with that same information (§6.2), with the node echoed; it is
intercepted here because the disco module answers only node-less queries.

Client side (for PEP's filtered notifications, XEP-0163 §4): the caps in the presence a local
account receives (its own resources' presence, and its contacts' presence routed to it) are
resolved to features and announced with CAPS_CHANGED. An unknown (hash, ver) is asked once by
disco#info to ``node#ver`` at an entity that advertises it, in a task (the presence path never
waits), and cached only if the answer hashes to ver (§5.4); legacy caps without 'hash' and
unverifiable answers are ignored (a failure is remembered for the entity that answered, not
for the ver: others advertising it are still asked). Unavailable presence forgets the entity.
Presence to one resource counts only from entities the account is subscribed to (probe
answers), and room occupants' presence (XEP-0045 muc#user) never counts. Entities the account
is not subscribed to take at most half of its table: strangers cannot crowd its contacts out.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from lxml import etree

from xmppd import events as ev
from xmppd.events import Priority, StanzaEvent
from xmppd.features import FeatureRegistry, Identity, Scope
from xmppd.jid import JID
from xmppd.module_api import Module, hook
from xmppd.ns import NS_DATA, NS_DISCO_INFO, XML_LANG
from xmppd.session import Session
from xmppd.stanza import iq_result, make

NS_CAPS = "http://jabber.org/protocol/caps"
_INFO_QUERY = f"{{{NS_DISCO_INFO}}}query"
_FIELD = f"{{{NS_DATA}}}field"
_VALUE = f"{{{NS_DATA}}}value"


def _form_type(form: etree._Element) -> str:
    for field in form.iter(_FIELD):
        if field.get("var") == "FORM_TYPE":
            return field.findtext(_VALUE) or ""
    return ""


def verification_string(
    identities: list[Identity], features: list[str], forms: list[etree._Element]
) -> str:
    """XEP-0115 §5.1 steps 1-8 (the string before hashing)."""
    out: list[str] = []
    keys = sorted(f"{i.category}/{i.type}/{i.lang or ''}/{i.name or ''}" for i in identities)
    out.extend(f"{key}<" for key in keys)
    out.extend(f"{var}<" for var in sorted(set(features)))
    for form in sorted(forms, key=_form_type):
        out.append(f"{_form_type(form)}<")
        fields = [f for f in form.iter(_FIELD) if f.get("var") not in (None, "FORM_TYPE")]
        for field in sorted(fields, key=lambda f: f.get("var") or ""):
            out.append(f"{field.get('var')}<")
            out.extend(f"{v}<" for v in sorted(v.text or "" for v in field.iter(_VALUE)))
    return "".join(out)


def verification_hash(
    identities: list[Identity],
    features: list[str],
    forms: list[etree._Element],
    algorithm: str = "sha-1",
) -> str:
    """§5.1 step 9-10: base64 of the hash (SHA-1 by default) of the verification string."""
    text = verification_string(identities, features, forms)
    digest = hashlib.new(HASHES[algorithm], text.encode(), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


# IANA Hash Function Textual Names (§5.1 step 9) this server can verify -> hashlib names.
HASHES = {
    "sha-1": "sha1",
    "sha-224": "sha224",
    "sha-256": "sha256",
    "sha-384": "sha384",
    "sha-512": "sha512",
}


def parse_info(
    query: etree._Element,
) -> tuple[list[Identity], list[str], list[etree._Element]] | None:
    """Identities, features and forms of a disco#info answer; None when §5.4 step 3 says the
    answer must not be used (a duplicate identity, feature or form type, or a form whose
    FORM_TYPE is not hidden)."""
    identities = [
        Identity(
            i.get("category") or "",
            i.get("type") or "",
            i.get("name"),
            i.get(XML_LANG),
        )
        for i in query.iterchildren(f"{{{NS_DISCO_INFO}}}identity")
    ]
    features = [f.get("var") or "" for f in query.iterchildren(f"{{{NS_DISCO_INFO}}}feature")]
    forms = list(query.iterchildren(f"{{{NS_DATA}}}x"))
    keys = [(i.category, i.type, i.lang, i.name) for i in identities]
    if len(set(keys)) != len(keys) or len(set(features)) != len(features):
        return None
    types: list[str] = []
    for form in forms:
        fields = [f for f in form.iterchildren(_FIELD) if f.get("var") == "FORM_TYPE"]
        if len(fields) > 1 or (fields and fields[0].get("type") != "hidden"):
            return None
        if fields:
            types.append(fields[0].findtext(_VALUE) or "")
    if len(set(types)) != len(types):
        return None
    forms = [f for f in forms if _form_type(f)]  # §5.4 3.f: forms without FORM_TYPE ignored
    return identities, features, forms


def info_query(registry: FeatureRegistry, node: str | None = None) -> etree._Element:
    """A disco#info <query/> with the host's identities, features and extension forms."""
    query = etree.Element(_INFO_QUERY, nsmap={None: NS_DISCO_INFO})
    if node:
        query.set("node", node)
    for identity in registry.identities(Scope.HOST):
        el = etree.SubElement(
            query, f"{{{NS_DISCO_INFO}}}identity", category=identity.category, type=identity.type
        )
        if identity.name:
            el.set("name", identity.name)
        if identity.lang:
            el.set(XML_LANG, identity.lang)
    for var in registry.features(Scope.HOST):
        etree.SubElement(query, f"{{{NS_DISCO_INFO}}}feature", var=var)
    for form in registry.extensions():
        query.append(_copy(form))
    return query


def _copy(element: etree._Element) -> etree._Element:
    return etree.fromstring(etree.tostring(element))


_CAPS_C = f"{{{NS_CAPS}}}c"
_MUC_USER = "{http://jabber.org/protocol/muc#user}x"
_NO_CAPS = ""  # the key of an entity whose presence has no verifiable caps


class Caps(Module):
    """Entity capabilities of the server, and of the entities its accounts hear from."""

    xeps = (115,)
    features = (NS_CAPS,)
    depends = ("disco",)
    host_types = ("local",)

    @dataclass(frozen=True)
    class Options:
        """`node`: the URI identifying this server software (XEP-0115 §4).

        `disco_timeout`: seconds to wait for an entity's disco#info answer; `cache_size`:
        verified (hash, ver) kept (and as many failed (hash, ver, entity) lookups);
        `max_entities`: entities tracked per account (more are ignored, against presence
        floods; entities the account is not subscribed to get at most half of them);
        `max_lookups`: (hash, ver) being looked up at once, all accounts together (caps
        beyond it are taken as absent until the entity's next presence).
        """

        node: str = "https://xmppd.invalid/caps"
        disco_timeout: float = 10.0
        cache_size: int = 10000
        max_entities: int = 1000
        max_lookups: int = 100

    async def load(self) -> None:
        """Offer the stream feature after authentication."""
        self._cache: tuple[tuple[object, ...], str] | None = None
        self.ctx.add_stream_feature(self._feature)
        # (hash, ver) key -> verified features, least recently used first.
        self._known: OrderedDict[str, frozenset[str]] = OrderedDict()
        # (key, entity) lookups that failed: that entity is not asked again for that key.
        # Not per key alone: one entity's bad answer must not spoil a ver for everyone.
        self._bad: OrderedDict[tuple[str, JID], None] = OrderedDict()
        # account bare JID -> entity full JID -> caps key (or _NO_CAPS)
        self._seen: dict[JID, dict[JID, str]] = {}
        # account bare JID -> the entities of _seen it is not subscribed to (bounded apart)
        self._strangers: dict[JID, set[JID]] = {}
        # unresolved key -> (node, (account, entity) pairs that advertised it, in order)
        self._waiting: dict[str, tuple[str, dict[tuple[JID, JID], None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def unload(self) -> None:
        """Stop running lookups."""
        for task in list(self._tasks):
            task.cancel()

    # --- client side: caps in presence received by local accounts (§6.2, §6.3) ----------
    def features_of(self, user: JID, entity: JID) -> frozenset[str] | None:
        """The known verified features of `entity` as seen by account `user` (None: unknown)."""
        key = self._seen.get(user.bare, {}).get(entity)
        if key is None:
            return None
        return self._known.get(key, frozenset()) if key else frozenset()

    async def _presence(self, user: JID, entity: JID, presence: etree._Element) -> None:
        """An available presence from `entity` reached account `user`."""
        c = presence.find(_CAPS_C)
        key = _NO_CAPS
        node = ""
        if c is not None:
            algo, ver, node = c.get("hash") or "", c.get("ver") or "", c.get("node") or ""
            if algo in HASHES and ver and node and len(ver) < 200 and len(node) < 1024:
                key = f"{algo} {ver}"
        seen = self._seen.get(user)
        if seen is None:
            if not (
                self.ctx.sessions.has_sessions(user)
                or (user.local and await self.ctx.services.account_exists(user.domain, user.local))
            ):
                return
            seen = self._seen.setdefault(user, {})
        previous = seen.get(entity)
        if previous == key:
            return
        if previous is None:
            if len(seen) >= self.options.max_entities:
                return
            if entity.bare != user and not await self._subscribed(user, entity):
                # Not a contact: strangers may fill at most half of the account's table.
                strangers = self._strangers.setdefault(user, set())
                if len(strangers) >= self.options.max_entities // 2:
                    return
                strangers.add(entity)
            seen = self._seen.setdefault(user, seen)  # still the account's table after awaiting
            if entity not in seen and len(seen) >= self.options.max_entities:
                self._drop_stranger(user, entity)
                return
        seen[entity] = key
        features = self._known.get(key) if key else None
        if features is not None:
            self._known.move_to_end(key)
            await self._announce(user, entity, features)
            return
        waiting = self._waiting.get(key) if key else None
        if waiting is not None:
            waiting[1][user, entity] = None
            return
        if not key or (key, entity) in self._bad or len(self._waiting) >= self.options.max_lookups:
            if key and (key, entity) not in self._bad:
                seen[entity] = _NO_CAPS  # too many lookups under way: ask at the next presence
            if previous:
                await self._announce(user, entity, frozenset())
            return
        self._waiting[key] = (node, {(user, entity): None})
        task = asyncio.get_running_loop().create_task(self._resolve(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _subscribed(self, user: JID, entity: JID) -> bool:
        """Whether account `user` is subscribed to `entity`'s presence (a contact)."""
        query = ev.RosterQuery(user, entity.bare)
        await self.ctx.fire(ev.ROSTER_QUERY, query)
        return query.subscription(entity.bare) in ("to", "both")

    def _drop_stranger(self, user: JID, entity: JID) -> None:
        strangers = self._strangers.get(user)
        if strangers is not None:
            strangers.discard(entity)
            if not strangers:
                del self._strangers[user]

    async def _forget(self, user: JID, entity: JID) -> None:
        self._drop_stranger(user, entity)
        seen = self._seen.get(user)
        if seen is None or seen.pop(entity, None) is None:
            return
        if not seen:
            del self._seen[user]
        await self._announce(user, entity, None)

    async def _announce(self, user: JID, entity: JID, features: frozenset[str] | None) -> None:
        await self.ctx.notify(ev.CAPS_CHANGED, ev.CapsChanged(user, entity, features))

    async def _resolve(self, key: str) -> None:
        """Ask entities advertising `key` (one at a time, at most 3) until one answer
        verifies; then announce the features to everyone who advertised it meanwhile."""
        algo, ver = key.split(" ", 1)
        node, pairs = self._waiting[key]
        features: frozenset[str] | None = None
        asked: set[JID] = set()
        try:
            while len(asked) < 3:
                fresh = [e for (u, e) in pairs if e not in asked and self._still(u, e, key)]
                if not fresh:
                    break
                entity = fresh[0]
                asked.add(entity)
                features = await self._query(entity, node, algo, ver)
                if features is not None:
                    break
                self._bad[key, entity] = None
                while len(self._bad) > self.options.cache_size:
                    self._bad.popitem(last=False)
        finally:
            self._waiting.pop(key, None)
        if features is None:
            return
        self._known[key] = features
        while len(self._known) > self.options.cache_size:
            self._known.popitem(last=False)
        for user, entity in list(pairs):
            if self._still(user, entity, key):
                await self._announce(user, entity, features)

    def _still(self, user: JID, entity: JID, key: str) -> bool:
        """Whether `entity` still advertises `key` to account `user`."""
        return self._seen.get(user, {}).get(entity) == key

    async def _query(self, entity: JID, node: str, algo: str, ver: str) -> frozenset[str] | None:
        """§6.2: disco#info to node#ver at `entity`; the features if the answer verifies."""
        iq = make("iq", type_="get", to=entity, from_=self.ctx.host.domain)
        etree.SubElement(iq, _INFO_QUERY, nsmap={None: NS_DISCO_INFO}, node=f"{node}#{ver}")
        try:
            reply = await self.ctx.request_iq(iq, timeout=self.options.disco_timeout)
        except TimeoutError:
            return None
        except Exception:
            self.ctx.log.exception("caps query to %s failed", entity)
            return None
        query = reply.find(_INFO_QUERY)
        if reply.get("type") != "result" or query is None:
            return None
        parsed = parse_info(query)
        if parsed is None or verification_hash(*parsed, algorithm=algo) != ver:
            self.ctx.log.info("caps of %s do not verify (%s %s)", entity, algo, ver)
            return None
        return frozenset(parsed[1])

    @hook(ev.INITIAL_PRESENCE)
    async def own_initial(self, event: ev.SessionEvent) -> None:
        """A local resource's caps, for its own account."""
        session = event.session
        if session.presence is not None:
            await self._presence(session.full_jid.bare, session.full_jid, session.presence)

    @hook(ev.PRESENCE_UPDATE)
    async def own_update(self, event: ev.SessionEvent) -> None:
        """A changed presence may carry a new ver."""
        await self.own_initial(event)

    @hook(ev.SESSION_UNAVAILABLE)
    async def own_unavailable(self, event: ev.SessionEvent) -> None:
        """A local resource went offline."""
        await self._forget(event.session.full_jid.bare, event.session.full_jid)

    @hook(ev.PRESENCE_BARE, priority=Priority.HIGH)
    async def inbound_bare(self, event: StanzaEvent) -> bool:
        """A contact's presence routed to an account; delivery goes on (returns False)."""
        await self._inbound(event)
        return False

    @hook(ev.PRESENCE_FULL, priority=Priority.HIGH)
    async def inbound_full(self, event: StanzaEvent) -> bool:
        """Presence to one resource (e.g. a contact's answer to a probe, RFC 6121 §4.3.2)
        counts when the account is subscribed to the sender's presence; other directed
        presence (XEP-0163 §4.1 advises against it) is not taken as the sender's caps."""
        stanza = event.stanza
        if stanza.type is None and stanza.element.find(_CAPS_C) is not None:
            query = ev.RosterQuery(event.to.bare, stanza.from_.bare)
            await self.ctx.fire(ev.ROSTER_QUERY, query)
            if query.subscription(stanza.from_.bare) not in ("to", "both"):
                return False
        await self._inbound(event)
        return False

    async def _inbound(self, event: StanzaEvent) -> None:
        stanza = event.stanza
        user = event.to.bare
        entity = stanza.from_
        if user.local is None or entity.resource is None or entity.bare == user:
            return
        if stanza.element.find(_MUC_USER) is not None:
            return  # an occupant of a room (XEP-0045), not a contact's own presence
        if stanza.type is None:
            await self._presence(user, entity, stanza.element)
        elif stanza.type in ("unavailable", "error"):
            await self._forget(user, entity)

    @hook(ev.ACCOUNT_REMOVED)
    async def account_removed(self, event: ev.AccountRemoved) -> None:
        """Forget what a deleted account knew."""
        self._seen.pop(event.jid.bare, None)
        self._strangers.pop(event.jid.bare, None)

    def ver(self) -> str:
        """The current verification hash (recomputed only when the disco data changed)."""
        registry = self.ctx.host.features
        identities = registry.identities(Scope.HOST)
        features = registry.features(Scope.HOST)
        forms = registry.extensions()
        key = (tuple(identities), tuple(features), tuple(etree.tostring(f) for f in forms))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, verification_hash(identities, features, forms))
        return self._cache[1]

    def _feature(self, session: Session) -> etree._Element:
        return etree.Element(
            f"{{{NS_CAPS}}}c",
            nsmap={None: NS_CAPS},
            hash="sha-1",
            node=self.options.node,
            ver=self.ver(),
        )

    @hook(ev.IQ_HOST, priority=Priority.HIGH)
    async def node_info(self, event: StanzaEvent) -> bool:
        """§6.2: disco#info for node#ver is the host's own info."""
        stanza = event.stanza
        element = stanza.element
        if stanza.type != "get" or len(element) != 1 or element[0].tag != _INFO_QUERY:
            return False
        node = element[0].get("node")
        if not node or node != f"{self.options.node}#{self.ver()}":
            return False
        reply = iq_result(element, info_query(self.ctx.host.features, node))
        await self.ctx.services.route(reply)
        return True
