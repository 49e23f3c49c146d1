"""XEP-0402: PEP Native Bookmarks — the legacy XEP-0048 views of them (private XML and PEP).

The account's bookmarks live as Bookmarks 2 items (node ``urn:xmpp:bookmarks:1``, one item per
room, the room JID as item id) in its PEP service, which another module runs: this one acts on
it only through the PEP_REQUEST event and never stores conferences itself. It adds the
server-side unification XEP-0402 §5.3 allows:

- ``#compat`` (XEP-0049 private storage): a private-storage get of ``storage:bookmarks`` is
  answered from the items, each cast into a XEP-0048 ``<conference/>`` with the item id as
  its jid (§5.3.1), so the view is derived on every read and never stale. A private-storage
  set is compared with the items: changed or new conferences are published with the
  publish-options §3.3 requires (the node stays private to the account), conferences no longer
  listed are retracted, unchanged ones are left alone so that no notification goes out for
  them (§5.3.2). Bookmarks 2 clients get the PEP notifications as for any publish.
- ``#compat-pep`` (XEP-0048 in the PEP node ``storage:bookmarks``, item ``current``; also
  announced as XEP-0411's ``urn:xmpp:bookmarks-conversion:0``): every change of the items is
  published there as the whole legacy list, and a client's publish there is cast into items
  as a private-storage set is. The copy goes only to a node the account alone can read
  (whitelist precondition, XEP-0411 §5); a retract, purge or delete of that node leaves the
  items alone. This module's own changes are not echoed back.

Bookmarks 2 has no place for URL bookmarks (§1) nor for other children of ``<storage/>``:
they are kept here, per account, and come back with the conferences. Children of a legacy
``<conference/>`` other than nick and password go into the item's ``<extensions/>`` (and
back); a legacy write that carries none keeps the extensions the item had, since XEP-0402
requires that they survive edits by clients that do not know them. Bookmarks stored in private
XML before this module ran are merged into PEP when the account first binds a session
(XEP-0411 §4), so that PEP-only clients see them.

Requests this module does not take are left to the private module: another account's data,
other namespaces, malformed queries, and everything when no PEP module answers PEP_REQUEST.
A private-storage set of ``storage:bookmarks`` together with other namespaces is split: the
bookmarks are applied first, then the private module stores the rest (it may still refuse it,
e.g. over its namespace quota, after the bookmarks changed).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass

from lxml import etree

from xmppd import events as ev
from xmppd.errors import StanzaError
from xmppd.events import Priority
from xmppd.features import Scope
from xmppd.jid import JID, JIDError
from xmppd.module_api import Module, StoreKind, Target, hook
from xmppd.stanza import Stanza, error_reply, iq_result, make, new_id

NS_PRIVATE = "jabber:iq:private"
NS_LEGACY = "storage:bookmarks"
NS_BOOKMARKS = "urn:xmpp:bookmarks:1"
NODE = NS_BOOKMARKS
FEATURE_COMPAT = f"{NS_BOOKMARKS}#compat"
FEATURE_COMPAT_PEP = f"{NS_BOOKMARKS}#compat-pep"
FEATURE_CONVERSION = "urn:xmpp:bookmarks-conversion:0"  # XEP-0411 §2
NODE_LEGACY = NS_LEGACY  # XEP-0048 §3.3: the PEP node of the legacy list
STORE = "bookmarks"
REST_KEY = "rest"  # the <storage/> children that are not conferences (URL bookmarks, ...)
MIGRATED_KEY = "migrated"  # legacy private data was looked at once

_QUERY = f"{{{NS_PRIVATE}}}query"
_STORAGE = f"{{{NS_LEGACY}}}storage"
_LEGACY_CONFERENCE = f"{{{NS_LEGACY}}}conference"
_CONFERENCE = f"{{{NS_BOOKMARKS}}}conference"
_EXTENSIONS = f"{{{NS_BOOKMARKS}}}extensions"
_RESERVED = frozenset({"jabber:client", "jabber:server", NS_PRIVATE})
_TRUE = frozenset({"true", "1"})

# XEP-0402 §3.3: the node must not leak to contacts, and keep every bookmark.
PUBLISH_OPTIONS: dict[str, list[str]] = {
    "pubsub#persist_items": ["true"],
    "pubsub#max_items": ["max"],
    "pubsub#send_last_published_item": ["never"],
    "pubsub#access_model": ["whitelist"],
}
# XEP-0048 §3.3 (XEP-0223 §3): the legacy node is private and keeps its item.
LEGACY_OPTIONS: dict[str, list[str]] = {
    "pubsub#persist_items": ["true"],
    "pubsub#access_model": ["whitelist"],
}


def _namespace(element: etree._Element) -> str | None:
    return etree.QName(element).namespace if isinstance(element.tag, str) else None


def _elements(parent: etree._Element) -> list[etree._Element]:
    return [child for child in parent if isinstance(child.tag, str)]


def _canonical(element: etree._Element) -> bytes:
    """A comparable form of a payload (C14N: prefixes and attribute order do not matter)."""
    return etree.tostring(element, method="c14n")


def room_jid(text: str | None) -> str:
    """The prepared room JID of a legacy conference (its Bookmarks 2 item id).

    Raises:
        StanzaError: bad-request for a missing, malformed or full JID.
    """
    if not text:
        raise StanzaError("bad-request", "a conference needs a jid")
    try:
        jid = JID.parse(text)
    except JIDError:
        raise StanzaError("bad-request", f"not a room JID: {text[:100]!r}") from None
    if jid.resource is not None:
        raise StanzaError("bad-request", f"a room JID has no resource: {text[:100]!r}")
    return str(jid)


def to_item(conference: etree._Element, previous: etree._Element | None) -> etree._Element:
    """Cast a legacy ``<conference/>`` into a Bookmarks 2 payload (XEP-0402 §2).

    `previous` is the item's current payload: its extensions are kept when the legacy element
    carries none (legacy clients drop elements they do not know).
    """
    item = etree.Element(_CONFERENCE, nsmap={None: NS_BOOKMARKS})
    name = conference.get("name")
    if name:
        item.set("name", name)
    if (conference.get("autojoin") or "").strip().lower() in _TRUE:
        item.set("autojoin", "true")
    known: dict[str, str] = {}
    extensions: list[etree._Element] = []
    for child in _elements(conference):
        local = etree.QName(child).localname
        if _namespace(child) == NS_LEGACY and local in ("nick", "password"):
            if local in known:
                raise StanzaError("bad-request", f"a conference has at most one {local}")
            known[local] = child.text or ""
        else:
            extensions.append(copy.deepcopy(child))
    for local in ("nick", "password"):  # the schema's order: nick, password, extensions
        if local in known:
            etree.SubElement(item, f"{{{NS_BOOKMARKS}}}{local}").text = known[local]
    if extensions:
        etree.SubElement(item, _EXTENSIONS).extend(extensions)
    elif previous is not None and (kept := previous.find(_EXTENSIONS)) is not None:
        item.append(copy.deepcopy(kept))
    return item


def to_legacy(item_id: str, payload: etree._Element) -> etree._Element | None:
    """Cast a Bookmarks 2 item into a legacy ``<conference/>`` (XEP-0402 §5.3.1); None for an
    item that is not a bookmark (wrong payload, or an id that is not a room JID)."""
    if payload.tag != _CONFERENCE:
        return None
    try:
        jid = room_jid(item_id)
    except StanzaError:
        return None
    conference = etree.Element(_LEGACY_CONFERENCE, nsmap={None: NS_LEGACY}, jid=jid)
    name = payload.get("name")
    if name:
        conference.set("name", name)
    autojoin = (payload.get("autojoin") or "").strip().lower() in _TRUE
    conference.set("autojoin", "true" if autojoin else "false")
    for local in ("nick", "password"):
        text = payload.findtext(f"{{{NS_BOOKMARKS}}}{local}")
        if text is not None:
            etree.SubElement(conference, f"{{{NS_LEGACY}}}{local}").text = text
    extensions = payload.find(_EXTENSIONS)
    if extensions is not None:
        conference.extend(copy.deepcopy(child) for child in _elements(extensions))
    return conference


class Bookmarks(Module):
    """Bookmarks 2 seen through private XML storage (XEP-0402 §5.3 compat)."""

    xeps = (402, 411, 48)
    depends = ("private", "pep")
    stores = {STORE: StoreKind.KEYVALUE}

    @dataclass(frozen=True)
    class Options:
        """`max_size`: most bytes a legacy ``<storage/>`` may have (serialised);
        `max_bookmarks`: most conferences it may list; `compat_pep`: also keep the XEP-0048
        PEP node ``storage:bookmarks`` in step with the Bookmarks 2 items."""

        max_size: int = 65536
        max_bookmarks: int = 1000
        compat_pep: bool = True

    async def load(self) -> None:
        """Announce the unification on accounts when a PEP module is there to hold the items."""
        self._quieted: dict[JID, int] = {}
        if self._pep_available():
            self.ctx.add_feature(FEATURE_COMPAT, Scope.ACCOUNT)
            if self.options.compat_pep:
                self.ctx.add_feature(FEATURE_COMPAT_PEP, Scope.ACCOUNT)
                self.ctx.add_feature(FEATURE_CONVERSION, Scope.ACCOUNT)

    def _pep_available(self) -> bool:
        return self.ctx.host.bus.has_handlers(ev.PEP_REQUEST)

    def _private_available(self) -> bool:
        return self.ctx.host.iq.handles(_QUERY, Target.ACCOUNT)

    # --- PEP --------------------------------------------------------------------------
    async def _pep(self, request: ev.PepRequest) -> ev.PepRequest:
        if not await self.ctx.fire(ev.PEP_REQUEST, request):
            raise StanzaError("service-unavailable", "no PEP service for bookmarks")
        if request.error is not None:
            raise request.error
        return request

    async def _items(self, owner: JID) -> list[tuple[str, etree._Element]]:
        return (await self._pep(ev.PepRequest(owner, NODE, "items"))).items

    @contextlib.contextmanager
    def _quiet(self, owner: JID) -> Iterator[None]:
        """While this module changes `owner`'s nodes, their PEP_CHANGED are its own echo."""
        self._quieted[owner] = self._quieted.get(owner, 0) + 1
        try:
            yield
        finally:
            left = self._quieted.pop(owner) - 1
            if left:
                self._quieted[owner] = left

    # --- private XML storage ----------------------------------------------------------
    @hook(ev.IQ_BARE, priority=Priority.NORMAL)
    async def private_iq(self, event: ev.StanzaEvent) -> bool:
        """Take private-storage requests for ``storage:bookmarks`` of one's own account."""
        stanza = event.stanza
        if stanza.type not in ("get", "set") or event.origin is None:
            return False
        payload = stanza.element[0]
        if payload.tag != _QUERY or stanza.from_.bare != event.to.bare:
            return False
        children = _elements(payload)
        namespaces = [_namespace(c) for c in children]
        if NS_LEGACY not in namespaces:
            return False
        if not self._pep_available() or not self._private_available():
            return False
        if stanza.type == "get":
            if any(ns != NS_LEGACY for ns in namespaces):
                return False  # private refuses a get of several namespaces
        elif any(not ns or ns in _RESERVED for ns in namespaces):
            return False  # private refuses the whole set
        owner = stanza.from_.bare
        try:
            await self._migrate(owner)
            if stanza.type == "get":
                query = etree.Element(_QUERY, nsmap={None: NS_PRIVATE})
                query.append(await self._legacy_view(owner))
                reply = iq_result(stanza.element, query)
            else:
                await self._set_private(owner, [c for c in children if _namespace(c) == NS_LEGACY])
                if len(children) != namespaces.count(NS_LEGACY):
                    # Other namespaces too: the private module stores them and replies.
                    for child in children:
                        if _namespace(child) == NS_LEGACY:
                            payload.remove(child)
                    return False
                reply = iq_result(stanza.element, None)
        except StanzaError as err:
            reply = error_reply(stanza.element, err, from_=str(owner))
        except Exception:
            self.ctx.log.exception("bookmarks request of %s failed", owner)
            reply = error_reply(
                stanza.element, StanzaError("internal-server-error"), from_=str(owner)
            )
        reply.set("from", str(owner))
        await self.ctx.send(reply)
        return True

    async def _legacy_view(self, owner: JID) -> etree._Element:
        """The XEP-0048 ``<storage/>``: conferences from the items, then the kept rest."""
        storage = etree.Element(_STORAGE, nsmap={None: NS_LEGACY})
        for item_id, payload in await self._items(owner):
            conference = to_legacy(item_id, payload)
            if conference is not None:
                storage.append(conference)
        for text in await self._rest(owner):
            try:
                storage.append(etree.fromstring(text.encode()))
            except etree.XMLSyntaxError:
                self.ctx.log.error("stored legacy bookmarks of %s are corrupt", owner)
        return storage

    async def _rest(self, owner: JID) -> list[str]:
        stored = await self.ctx.keyvalue(STORE).get(owner.local or "", REST_KEY)
        return [str(s) for s in stored] if isinstance(stored, list) else []

    def _parse(
        self, owner: JID, storages: list[etree._Element], *, strict: bool
    ) -> tuple[dict[str, etree._Element], list[str]]:
        """The conferences of legacy ``<storage/>`` elements by room JID, and the rest.

        Strict (a client's request): a bad conference fails it all with bad-request.
        Lenient (a PEP publish already stored): bad conferences are skipped.
        """
        conferences: dict[str, etree._Element] = {}
        rest: list[str] = []
        for storage in storages:
            if storage.tag != _STORAGE:
                raise StanzaError("bad-request", "storage:bookmarks data is a <storage/> element")
            for child in _elements(storage):
                if child.tag != _LEGACY_CONFERENCE:
                    rest.append(etree.tostring(child).decode())
                    continue
                try:
                    jid = room_jid(child.get("jid"))
                    if jid in conferences:
                        raise StanzaError("bad-request", f"{jid} is bookmarked twice")
                    to_item(child, None)  # checks nick and password
                except StanzaError:
                    if strict:
                        raise
                    self.ctx.log.warning("skipping a bad legacy bookmark of %s", owner)
                    continue
                conferences[jid] = child
        if len(conferences) > self.options.max_bookmarks:
            raise StanzaError(
                "not-acceptable", f"at most {self.options.max_bookmarks} bookmarks are kept"
            )
        return conferences, rest

    async def _apply(
        self, owner: JID, conferences: dict[str, etree._Element], rest: list[str]
    ) -> bool:
        """Bring the items in line with a legacy list: publish what changed, retract what
        is gone (§5.3.2), keep the rest. Returns whether anything changed."""
        current = await self._bookmarks(owner)
        changed = False
        with self._quiet(owner):
            for jid, conference in conferences.items():
                item_id, previous = current.get(jid, (jid, None))
                item = to_item(conference, previous)
                if not self._same(jid, previous, item):
                    await self._pep(
                        ev.PepRequest(owner, NODE, "publish", item_id, item, dict(PUBLISH_OPTIONS))
                    )
                    changed = True
            for jid in current.keys() - conferences.keys():
                await self._pep(ev.PepRequest(owner, NODE, "retract", current[jid][0]))
                changed = True
        if rest != await self._rest(owner):
            await self.ctx.keyvalue(STORE).set(owner.local or "", REST_KEY, list(rest))
            changed = True
        return changed

    async def _bookmarks(self, owner: JID) -> dict[str, tuple[str, etree._Element]]:
        """The items a legacy client sees, by prepared room JID: (item id, payload). Items
        with no legacy form are left out, so a legacy write never retracts them."""
        found: dict[str, tuple[str, etree._Element]] = {}
        for item_id, payload in await self._items(owner):
            conference = to_legacy(item_id, payload)
            if conference is not None:
                found.setdefault(conference.get("jid") or "", (item_id, payload))
        return found

    async def _set_private(self, owner: JID, storages: list[etree._Element]) -> None:
        """A legacy client's private-storage set: validate it all, then apply it."""
        size = sum(len(etree.tostring(s)) for s in storages)
        if size > self.options.max_size:
            raise StanzaError(
                "not-acceptable", f"bookmarks are larger than {self.options.max_size} bytes"
            )
        conferences, rest = self._parse(owner, storages, strict=True)
        if await self._apply(owner, conferences, rest):
            await self._mirror(owner)

    @staticmethod
    def _same(jid: str, previous: etree._Element | None, item: etree._Element) -> bool:
        """Whether publishing `item` would change nothing a legacy client can express
        (e.g. autojoin '1' and 'true' are the same)."""
        if previous is None:
            return False
        legacy = to_legacy(jid, previous)
        return legacy is not None and _canonical(to_item(legacy, previous)) == _canonical(item)

    # --- the XEP-0048 PEP node (#compat-pep) --------------------------------------------
    @hook(ev.PEP_CHANGED)
    async def pep_changed(self, change: ev.PepChanged) -> None:
        """Bookmarks 2 changed: the legacy PEP node follows. The legacy PEP node was
        published to by a client: the Bookmarks 2 items follow."""
        if change.owner in self._quieted or not self.options.compat_pep:
            return
        if change.node == NODE:
            await self._mirror(change.owner)
        elif change.node == NODE_LEGACY and change.action == "publish":
            if change.payload is None or change.payload.tag != _STORAGE:
                return
            if len(etree.tostring(change.payload)) > self.options.max_size:
                self.ctx.log.warning("legacy PEP bookmarks of %s are too large", change.owner)
                return
            try:
                conferences, rest = self._parse(change.owner, [change.payload], strict=False)
            except StanzaError as err:
                self.ctx.log.warning("legacy PEP bookmarks of %s: %s", change.owner, err)
                return
            await self._apply(change.owner, conferences, rest)
        # A retracted, purged or deleted legacy node leaves the Bookmarks 2 items alone.

    async def _mirror(self, owner: JID) -> None:
        """Publish the legacy view as the ``storage:bookmarks`` node's item (XEP-0048 §3.3
        over XEP-0223, whitelist: XEP-0411 §5). A node configured otherwise is left as it is."""
        if not self.options.compat_pep:
            return
        storage = await self._legacy_view(owner)
        request = ev.PepRequest(
            owner, NODE_LEGACY, "publish", "current", storage, dict(LEGACY_OPTIONS)
        )
        with self._quiet(owner):
            try:
                await self._pep(request)
            except StanzaError as err:
                self.ctx.log.warning("legacy PEP bookmarks of %s not updated: %s", owner, err)

    # --- migration (XEP-0411 §4) --------------------------------------------------------
    @hook(ev.SESSION_BOUND)
    async def session_bound(self, event: ev.SessionEvent) -> None:
        """Move bookmarks kept in private XML before this module ran to PEP, once."""
        if self._pep_available() and self._private_available():
            await self._migrate(event.session.full_jid.bare)

    async def _migrate(self, owner: JID) -> None:
        store = self.ctx.keyvalue(STORE)
        user = owner.local or ""
        if await store.get(user, MIGRATED_KEY):
            return
        # Ask the private module through its own protocol (modules never import each other).
        iq = make("iq", type_="get", id_=new_id(), from_=owner, to=owner)
        etree.SubElement(etree.SubElement(iq, _QUERY, nsmap={None: NS_PRIVATE}), _STORAGE)
        reply = await self.ctx.host.iq.dispatch(
            Stanza(iq, "iq", "get", owner, owner), None, Target.ACCOUNT
        )
        storages = (
            []
            if reply is None or reply.get("type") != "result"
            else reply.findall(f"{_QUERY}/{_STORAGE}")
        )
        if storages:
            try:
                conferences, rest = self._parse(owner, storages, strict=False)
            except StanzaError as err:  # more than max_bookmarks
                self.ctx.log.warning("not moving the bookmarks of %s: %s", owner, err)
                conferences, rest = {}, []
            # Merge: what Bookmarks 2 already holds wins, nothing is retracted.
            current = await self._bookmarks(owner)
            conferences = {j: c for j, c in conferences.items() if j not in current}
            with self._quiet(owner):
                for jid, conference in conferences.items():
                    item = to_item(conference, None)
                    await self._pep(
                        ev.PepRequest(owner, NODE, "publish", jid, item, dict(PUBLISH_OPTIONS))
                    )
            kept = await self._rest(owner)
            if rest and not kept:
                await store.set(user, REST_KEY, list(rest))
            if conferences or (rest and not kept):
                await self._mirror(owner)
        await store.set(user, MIGRATED_KEY, True)
