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
bookmarks are validated, the private module stores the rest (its refusal is the answer, and
then nothing changed), then the bookmarks are applied.

Every write is checked before anything is published: room ids, the number of items the node
would hold (at most the smaller of `max_bookmarks` and `pep_max_items`, which must not exceed
what the PEP service keeps, or it would evict the oldest silently) and the size of the
resulting legacy view. A publish the PEP service still refuses (quota, a node configured
otherwise: the publish-options precondition, XEP-0060 §7.1.5) undoes what the write had done
and is the answer. When the legacy PEP node could not be updated, it is out of step: a
client's publish there then adds and changes bookmarks but retracts none, until it is in step.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
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
STALE_KEY = "stale"  # the legacy PEP node could not be updated: it is out of step

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


def _serialize(element: etree._Element) -> str:
    """An element alone (not its tail text)."""
    return etree.tostring(element, with_tail=False).decode()


def _fragments(texts: Iterable[str]) -> Iterator[etree._Element]:
    """Parse stored fragments; rows stored with tail text are read without it.

    Raises:
        etree.XMLSyntaxError: a fragment is not XML.
    """
    for text in texts:
        wrapper = etree.fromstring(f"<w>{text}</w>".encode())
        for child in _elements(wrapper):
            child.tail = None
            yield child


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


@dataclass(slots=True)
class _Plan:
    """A validated legacy write: what to publish (id, payload, previous) and retract."""

    owner: JID
    publish: list[tuple[str, etree._Element, etree._Element | None]]
    retract: list[tuple[str, etree._Element]]
    rest: list[str]
    rest_changed: bool
    room: bool = True  # new items fit beside all the current ones (below the limit)


class Bookmarks(Module):
    """Bookmarks 2 seen through private XML storage (XEP-0402 §5.3 compat)."""

    xeps = (402, 411, 48)
    depends = ("private", "pep")
    stores = {STORE: StoreKind.KEYVALUE}

    @dataclass(frozen=True)
    class Options:
        """`max_size`: most bytes a legacy ``<storage/>`` may have (serialised);
        `max_bookmarks`: most conferences it may list; `pep_max_items`: most items the
        Bookmarks 2 node may hold (must not exceed ``[modules.pep] max_items``: PEP evicts
        the oldest beyond it); `max_id_length`: longest room JID kept as an item id (must not
        exceed ``[modules.pep] max_name_length``); `compat_pep`: also keep the XEP-0048 PEP
        node ``storage:bookmarks`` in step with the Bookmarks 2 items."""

        max_size: int = 65536
        max_bookmarks: int = 1000
        pep_max_items: int = 256
        max_id_length: int = 256
        compat_pep: bool = True

    options: Options

    async def load(self) -> None:
        """Announce the unification on accounts when a PEP module is there to hold the items."""
        # This module's own writes in flight: (owner, node, action, item id, payload), so
        # that their PEP_CHANGED (fired while the write is awaited) are not taken as a
        # client's; anyone else's change to the same account still is.
        self._own: dict[tuple[JID, str, str, str, bytes], int] = {}
        if self._pep_available():
            self.ctx.add_feature(FEATURE_COMPAT, Scope.ACCOUNT)
            if self.options.compat_pep:
                self.ctx.add_feature(FEATURE_COMPAT_PEP, Scope.ACCOUNT)
                self.ctx.add_feature(FEATURE_CONVERSION, Scope.ACCOUNT)

    @property
    def limit(self) -> int:
        """The most items the Bookmarks 2 node may hold after a write of this module."""
        return min(self.options.max_bookmarks, self.options.pep_max_items)

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

    async def _items(self, owner: JID, node: str = NODE) -> list[tuple[str, etree._Element]]:
        return (await self._pep(ev.PepRequest(owner, node, "items"))).items

    @staticmethod
    def _key(
        owner: JID, node: str, action: str, item_id: str | None, payload: etree._Element | None
    ) -> tuple[JID, str, str, str, bytes]:
        return (owner, node, action, item_id or "", b"" if payload is None else _canonical(payload))

    async def _write(
        self,
        owner: JID,
        node: str,
        action: str,
        item_id: str,
        payload: etree._Element | None = None,
        *,
        options: dict[str, list[str]] | None = None,
    ) -> None:
        """Publish or retract one item, marked as this module's own change."""
        key = self._key(owner, node, action, item_id, payload)
        self._own[key] = self._own.get(key, 0) + 1
        try:
            await self._pep(
                ev.PepRequest(owner, node, action, item_id, payload, dict(options or {}))
            )
        finally:
            left = self._own.pop(key) - 1
            if left:
                self._own[key] = left

    def _is_own(self, change: ev.PepChanged) -> bool:
        key = self._key(change.owner, change.node, change.action, change.item_id, change.payload)
        return key in self._own

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
                legacy = [c for c in children if _namespace(c) == NS_LEGACY]
                plan = await self._plan_private(owner, legacy)
                if len(legacy) != len(children):
                    # Other namespaces too: the private module checks and stores them first;
                    # its refusal is the answer, and then the bookmarks are left alone.
                    others = copy.deepcopy(stanza.element)
                    query_copy = others[0]
                    for child in _elements(query_copy):
                        if _namespace(child) == NS_LEGACY:
                            query_copy.remove(child)
                    answer = await self.ctx.host.iq.dispatch(
                        Stanza(others, "iq", "set", stanza.from_, stanza.to),
                        event.origin,
                        Target.ACCOUNT,
                    )
                    if answer is None or answer.get("type") != "result":
                        if answer is not None:
                            answer.set("from", str(owner))
                            await self.ctx.send(answer)
                        return True
                await self._execute(plan)
                await self._mirror(owner)
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

    async def _legacy_view(
        self, owner: JID, items: list[tuple[str, etree._Element]] | None = None
    ) -> etree._Element:
        """The XEP-0048 ``<storage/>``: conferences from the items (one per room JID, the
        first item wins as in `_bookmarks`), then the kept rest."""
        if items is None:
            items = await self._items(owner)
        return self._view(owner, items, await self._rest(owner))

    def _view(
        self, owner: JID, items: list[tuple[str, etree._Element]], rest: list[str]
    ) -> etree._Element:
        storage = etree.Element(_STORAGE, nsmap={None: NS_LEGACY})
        seen: set[str] = set()
        for item_id, payload in items:
            conference = to_legacy(item_id, payload)
            if conference is not None and conference.get("jid") not in seen:
                seen.add(conference.get("jid") or "")
                storage.append(conference)
        try:
            storage.extend(_fragments(rest))
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
        Lenient (data already stored): bad conferences and other elements are skipped.
        """
        conferences: dict[str, etree._Element] = {}
        rest: list[str] = []
        for storage in storages:
            if storage.tag != _STORAGE:
                if strict:
                    raise StanzaError(
                        "bad-request", "storage:bookmarks data is a <storage/> element"
                    )
                self.ctx.log.warning("skipping legacy bookmarks data of %s", owner)
                continue
            for child in _elements(storage):
                if child.tag != _LEGACY_CONFERENCE:
                    rest.append(_serialize(child))
                    continue
                try:
                    jid = room_jid(child.get("jid"))
                    if len(jid) > self.options.max_id_length:
                        raise StanzaError(
                            "not-acceptable",
                            f"room JID longer than {self.options.max_id_length} characters",
                        )
                    if jid in conferences:
                        raise StanzaError("bad-request", f"{jid} is bookmarked twice")
                    to_item(child, None)  # checks nick and password
                except StanzaError:
                    if strict:
                        raise
                    self.ctx.log.warning("skipping a bad legacy bookmark of %s", owner)
                    continue
                conferences[jid] = child
        return conferences, rest

    async def _plan(
        self,
        owner: JID,
        conferences: dict[str, etree._Element],
        rest: list[str],
        *,
        retract: bool = True,
    ) -> _Plan:
        """Compare a legacy list with the items: what changed or is new is published, what
        is gone retracted (§5.3.2), unchanged items left alone. Everything is checked here,
        before anything is written.

        Raises:
            StanzaError: not-acceptable when the node would hold more than `limit` items or
                the legacy view would grow beyond `max_size`.
        """
        items = await self._items(owner)
        current = self._index(items)
        plan = _Plan(owner, [], [], list(rest), rest != await self._rest(owner))
        for jid, conference in conferences.items():
            item_id, previous = current.get(jid, (jid, None))
            item = to_item(conference, previous)
            if not self._same(jid, previous, item):
                plan.publish.append((item_id, item, previous))
        if retract:
            plan.retract = [current[jid] for jid in current.keys() - conferences.keys()]
        after = dict(items)
        for item_id, _ in plan.retract:
            del after[item_id]
        for item_id, item, _ in plan.publish:
            after.pop(item_id, None)
            after[item_id] = item
        if len(after) > len(items) and len(after) > self.limit:
            raise StanzaError("not-acceptable", f"at most {self.limit} bookmarks are kept")
        added = sum(1 for _, _, previous in plan.publish if previous is None)
        plan.room = len(items) + added <= self.limit
        size = len(etree.tostring(self._view(owner, list(after.items()), plan.rest)))
        if size > self.options.max_size and size > len(
            etree.tostring(self._view(owner, items, await self._rest(owner)))
        ):
            raise StanzaError(
                "not-acceptable", f"bookmarks are larger than {self.options.max_size} bytes"
            )
        return plan

    async def _execute(self, plan: _Plan) -> None:
        """Write a plan: changed and new items first (a node configured otherwise fails
        before anything changed), then retractions; when the new items fit only once the
        retractions are done, those go before them (PEP must evict nothing). A refusal
        undoes what was written and is raised."""
        owner = plan.owner
        updates = [(i, item, p) for i, item, p in plan.publish if p is not None]
        added = [(i, item, p) for i, item, p in plan.publish if p is None]
        retracts = [(i, None, p) for i, p in plan.retract]
        steps = [*updates, *added, *retracts] if plan.room else [*updates, *retracts, *added]
        done: list[tuple[str, etree._Element | None]] = []  # (id, what it held before)
        try:
            for item_id, item, previous in steps:
                if item is None:
                    await self._write(owner, NODE, "retract", item_id)
                else:
                    await self._write(
                        owner, NODE, "publish", item_id, item, options=PUBLISH_OPTIONS
                    )
                done.append((item_id, previous))
        except StanzaError:
            for item_id, previous in reversed(done):
                try:  # as the node is configured: no publish-options
                    if previous is None:
                        await self._write(owner, NODE, "retract", item_id)
                    else:
                        await self._write(owner, NODE, "publish", item_id, previous)
                except StanzaError as err:
                    self.ctx.log.error("bookmark %s of %s not restored: %s", item_id, owner, err)
            raise
        if plan.rest_changed:
            await self.ctx.keyvalue(STORE).set(owner.local or "", REST_KEY, list(plan.rest))

    @staticmethod
    def _index(
        items: list[tuple[str, etree._Element]],
    ) -> dict[str, tuple[str, etree._Element]]:
        """The items a legacy client sees, by prepared room JID: (item id, payload). Items
        with no legacy form are left out, so a legacy write never retracts them."""
        found: dict[str, tuple[str, etree._Element]] = {}
        for item_id, payload in items:
            conference = to_legacy(item_id, payload)
            if conference is not None:
                found.setdefault(conference.get("jid") or "", (item_id, payload))
        return found

    async def _plan_private(self, owner: JID, storages: list[etree._Element]) -> _Plan:
        """A legacy client's private-storage set, validated."""
        size = sum(len(etree.tostring(s, with_tail=False)) for s in storages)
        if size > self.options.max_size:
            raise StanzaError(
                "not-acceptable", f"bookmarks are larger than {self.options.max_size} bytes"
            )
        conferences, rest = self._parse(owner, storages, strict=True)
        return await self._plan(owner, conferences, rest)

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
        if not self.options.compat_pep or self._is_own(change):
            return
        if change.node == NODE:
            await self._mirror(change.owner)
        elif change.node == NODE_LEGACY and change.action == "publish":
            if change.payload is None or change.payload.tag != _STORAGE:
                return
            await self._apply_legacy_node(change.owner, change.payload)
            await self._mirror(change.owner)
        # A retracted, purged or deleted legacy node leaves the Bookmarks 2 items alone.

    async def _apply_legacy_node(self, owner: JID, payload: etree._Element) -> None:
        """A client's publish to the legacy node, already stored: cast into items (bad
        entries skipped). Out of step, it adds and changes but retracts nothing."""
        if len(etree.tostring(payload, with_tail=False)) > self.options.max_size:
            self.ctx.log.warning("legacy PEP bookmarks of %s are too large", owner)
            return
        stale = bool(await self.ctx.keyvalue(STORE).get(owner.local or "", STALE_KEY))
        try:
            conferences, rest = self._parse(owner, [payload], strict=False)
            await self._execute(await self._plan(owner, conferences, rest, retract=not stale))
        except StanzaError as err:
            self.ctx.log.warning("legacy PEP bookmarks of %s not applied: %s", owner, err)

    async def _mirror(self, owner: JID) -> None:
        """Publish the legacy view as the ``storage:bookmarks`` node's item (XEP-0048 §3.3
        over XEP-0223, whitelist: XEP-0411 §5), when it differs from what the node holds.
        A node configured otherwise, or a view too large, leaves the node out of step."""
        if not self.options.compat_pep:
            return
        store = self.ctx.keyvalue(STORE)
        user = owner.local or ""
        try:
            storage = await self._legacy_view(owner)
            if len(etree.tostring(storage)) > self.options.max_size:
                raise StanzaError("not-acceptable", "the legacy view is too large")
            held = dict(await self._items(owner, NODE_LEGACY)).get("current")
            if held is None or _canonical(held) != _canonical(storage):
                await self._write(
                    owner, NODE_LEGACY, "publish", "current", storage, options=LEGACY_OPTIONS
                )
        except StanzaError as err:
            self.ctx.log.warning("legacy PEP bookmarks of %s not updated: %s", owner, err)
            await store.set(user, STALE_KEY, True)
            return
        if await store.get(user, STALE_KEY):
            await store.delete(user, STALE_KEY)

    # --- migration (XEP-0411 §4) --------------------------------------------------------
    @hook(ev.SESSION_BOUND)
    async def session_bound(self, event: ev.SessionEvent) -> None:
        """Move bookmarks kept in private XML before this module ran to PEP, once."""
        if self._pep_available() and self._private_available():
            await self._migrate(event.session.full_jid.bare)

    async def _migrate(self, owner: JID) -> None:
        """Merge the private-XML list into the items (what Bookmarks 2 holds wins, nothing
        is retracted, as many as `limit` allows; bad entries and refused items skipped).
        Done once, whatever failed; only a Bookmarks 2 node configured otherwise (the
        publish-options precondition) leaves it to be tried again, e.g. at the next bind,
        after the client reconfigured the node (XEP-0060 §7.1.5)."""
        store = self.ctx.keyvalue(STORE)
        user = owner.local or ""
        if await store.get(user, MIGRATED_KEY):
            return
        try:
            if not await self._move(owner):
                return
        except Exception:
            self.ctx.log.exception("moving the bookmarks of %s failed", owner)
        await store.set(user, MIGRATED_KEY, True)

    async def _move(self, owner: JID) -> bool:
        """The migration; False when the Bookmarks 2 node refused the publish-options."""
        # Ask the private module through its own protocol (modules never import each other).
        iq = make("iq", type_="get", id_=new_id(), from_=owner, to=owner)
        etree.SubElement(etree.SubElement(iq, _QUERY, nsmap={None: NS_PRIVATE}), _STORAGE)
        reply = await self.ctx.host.iq.dispatch(
            Stanza(iq, "iq", "get", owner, owner), None, Target.ACCOUNT
        )
        query = None if reply is None or reply.get("type") != "result" else reply.find(_QUERY)
        storages = [] if query is None else _elements(query)
        if not storages:
            return True
        conferences, rest = self._parse(owner, storages, strict=False)
        items = await self._items(owner)
        current = self._index(items)
        room = self.limit - len(items)
        moved = 0
        for jid, conference in conferences.items():
            if jid in current:
                continue
            if moved >= room:
                self.ctx.log.warning(
                    "bookmarks of %s beyond %d not moved to PEP", owner, self.limit
                )
                break
            try:
                await self._write(
                    owner, NODE, "publish", jid, to_item(conference, None), options=PUBLISH_OPTIONS
                )
            except StanzaError as err:
                if err.condition == "conflict":  # precondition-not-met: configured otherwise
                    self.ctx.log.warning("bookmarks node of %s is configured otherwise", owner)
                    return False
                self.ctx.log.warning("bookmark %s of %s not moved: %s", jid, owner, err)
                continue
            moved += 1
        kept = bool(rest) and not await self._rest(owner)
        if kept:
            await self.ctx.keyvalue(STORE).set(owner.local or "", REST_KEY, list(rest))
        if moved or kept:
            await self._mirror(owner)
        return True
