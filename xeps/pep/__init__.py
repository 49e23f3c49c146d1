"""XEP-0163: Personal Eventing Protocol — a XEP-0060 pubsub service on every account's bare JID.

What this service implements of XEP-0060 (the PEP subset):

- publish (§7.1) with item ids (generated when absent), auto-create, publish-options (§7.1.5:
  on a new node they are its configuration; on an existing one every field must match or the
  publish fails with <conflict/> + <precondition-not-met/>; unknown fields fail the same way);
- retract (§7.2, with notifications when asked for or configured), items retrieval (§6.5: all,
  by id, max_items) by the owner and by whoever the access model allows;
- owner use cases: create with configuration (§8.1), configure (§8.2), default configuration
  (§8.3), delete (§8.4), purge (§8.5), affiliations (§8.9: member and outcast);
- access models presence (default), open, roster (groups through ROSTER_GROUPS) and whitelist;
- notifications (XEP-0163 §4) from the owner's bare JID to the owner's available resources and
  to contacts the access model allows, filtered by their XEP-0115 ``<node>+notify`` features
  (learnt through CAPS_CHANGED from the caps module); the last published item goes to a
  resource whose interest appears (initial presence) and to a contact whose subscription is
  approved.

Explicit subscriptions are not implemented (subscriptions are implicit, XEP-0163 §4.1): subscribe,
unsubscribe and subscription options get <feature-not-implemented/> with <unsupported/>.

Storage: key-value store ``pep``, per account: ``n:<node>`` holds the configuration, item order
and affiliations; ``i:<len>:<node>:<id>`` one item. Other modules act on a node as the owner
through PEP_REQUEST; every stored change fires PEP_CHANGED. Accounts' nodes are cached in
memory, least recently used dropped beyond ``cache_accounts`` (not those with sessions); other
entities' requests are checked against the nodes' configuration before any item is loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from xeps.pep.node import (
    FORM_NODE_CONFIG,
    FORM_PUBLISH_OPTIONS,
    NS_DATA,
    NS_ERRORS,
    NS_EVENT,
    NS_OWNER,
    NS_PUBSUB,
    ConfigError,
    Item,
    Limits,
    Node,
    NodeConfig,
    access_denial,
    apply_fields,
    config_form,
    parse_form,
)
from xmppd import events as ev
from xmppd.errors import StanzaError
from xmppd.features import Identity, Scope
from xmppd.jid import JID, JIDError
from xmppd.module_api import (
    IqRequest,
    Module,
    Priority,
    StoreKind,
    Target,
    hook,
    iq_handler,
)
from xmppd.ns import NS_DISCO_INFO, NS_DISCO_ITEMS
from xmppd.stanza import iq_result, make
from xmppd.storage import KeyValueStore

NS_ADDRESS = "http://jabber.org/protocol/address"
_P = f"{{{NS_PUBSUB}}}"
_O = f"{{{NS_OWNER}}}"
_E = f"{{{NS_EVENT}}}"
_NOTIFY = "+notify"
_ID_PREFIX = "pep-"  # ids of notifications, to recognise bounces

FEATURES = tuple(
    f"{NS_PUBSUB}#{f}"
    for f in (
        "access-open",
        "access-presence",
        "access-roster",
        "access-whitelist",
        "auto-create",
        "auto-subscribe",
        "config-node",
        "config-node-max",
        "create-and-configure",
        "create-nodes",
        "delete-items",
        "delete-nodes",
        "filtered-notifications",
        "item-ids",
        "last-published",
        "member-affiliation",
        "modify-affiliations",
        "multi-items",
        "outcast-affiliation",
        "persistent-items",
        "presence-notifications",
        "publish",
        "publish-options",
        "purge-nodes",
        "retract-items",
        "retrieve-affiliations",
        "retrieve-default",
        "retrieve-items",
    )
)


def pubsub_error(
    condition: str, app: str | None = None, text: str | None = None, feature: str | None = None
) -> StanzaError:
    """A stanza error with an optional pubsub#errors condition (XEP-0060 §14)."""
    element = None
    if app is not None:
        element = etree.Element(f"{{{NS_ERRORS}}}{app}", nsmap={None: NS_ERRORS})
        if feature is not None:
            element.set("feature", feature)
    return StanzaError(condition, text, app=element)


def unsupported(feature: str) -> StanzaError:
    """feature-not-implemented + <unsupported feature=…/>."""
    return pubsub_error("feature-not-implemented", "unsupported", feature=feature)


def _is_true(value: str | None) -> bool:
    return value in ("1", "true")


def _item_key(node: str, item_id: str) -> str:
    return f"i:{len(node)}:{node}:{item_id}"


@dataclass(slots=True)
class _AccountLock:
    """An account's lock and how many coroutines hold or wait for it (dropped at zero)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class Pep(Module):
    """Personal eventing: a virtual pubsub service per account."""

    name = "pep"
    xeps = (60, 163)
    account_features = (NS_PUBSUB, *FEATURES)
    depends = ("disco",)
    stores = {"pep": StoreKind.KEYVALUE}

    @dataclass(frozen=True)
    class Options:
        """`[modules.pep]`.

        `max_payload_size`: bytes of one item's payload (larger: <payload-too-big/>);
        `max_items`: the most items a node may keep (what pubsub#max_items "max" means);
        `default_max_items`: pubsub#max_items of a node created without saying;
        `max_nodes`: nodes per account; `max_name_length`: characters of a node name or
        item id; `max_account_size`: characters of stored payloads per account, all nodes
        together (a publish beyond it: <not-acceptable/>); `cache_accounts`: accounts whose
        nodes stay loaded in memory, least recently used dropped first (accounts with
        sessions, or in the middle of a change, are kept beyond it).
        """

        max_payload_size: int = 65536
        max_items: int = 256
        default_max_items: int = 1
        max_nodes: int = 100
        max_name_length: int = 256
        max_account_size: int = 10 * 1024 * 1024
        cache_accounts: int = 1000

    options: Options

    async def load(self) -> None:
        """Identity, state."""
        self.ctx.add_identity(Identity("pubsub", "pep"), Scope.ACCOUNT)
        self.limits = Limits(self.options.max_items, self.options.max_payload_size)
        self.default = NodeConfig(
            max_items=min(self.options.default_max_items, self.options.max_items),
            max_payload_size=self.options.max_payload_size,
        )
        # username -> node name -> node, least recently used first (bounded: _evict)
        self._nodes: OrderedDict[str, dict[str, Node]] = OrderedDict()
        self._locks: dict[str, _AccountLock] = {}  # only while held or waited for
        # owner bare JID -> entity full JID -> nodes it wants notifications of (+notify)
        self._interest: dict[JID, dict[JID, frozenset[str]]] = {}
        # Entities whose notification bounced: their interests, back at their next presence.
        self._bounced: dict[JID, dict[JID, frozenset[str]]] = {}

    @property
    def store(self) -> KeyValueStore:
        """The module's store."""
        return self.ctx.keyvalue("pep")

    # --- state ---------------------------------------------------------------------------
    async def nodes_of(self, username: str) -> dict[str, Node]:
        """The nodes of an account with their items, loaded from storage on first use (and
        again after the account left the bounded cache)."""
        nodes = self._nodes.get(username)
        if nodes is not None:
            self._nodes.move_to_end(username)
            return nodes
        orders: dict[str, list[str]] = {}
        loaded = await self._read_nodes(username, orders=orders)
        for name, node in loaded.items():
            for item_id in orders.get(name, []):
                data = await self.store.get(username, _item_key(name, item_id))
                if isinstance(data, dict):
                    node.items[item_id] = Item(str(data.get("p", "")), str(data.get("by", "")))
        # Another coroutine may have loaded meanwhile: keep the first.
        nodes = self._nodes.setdefault(username, loaded)
        self._evict()
        return nodes

    async def _nodes_meta(self, username: str, name: str | None = None) -> dict[str, Node]:
        """The account's nodes (only `name` when given) for access checks: the cached ones,
        else their configuration and affiliations read from storage, without items and
        without caching them (so that requests that will be refused load no payloads)."""
        nodes = self._nodes.get(username)
        if nodes is not None:
            self._nodes.move_to_end(username)
            if name is None:
                return nodes
            return {name: nodes[name]} if name in nodes else {}
        return await self._read_nodes(username, name)

    async def _read_nodes(
        self, username: str, only: str | None = None, orders: dict[str, list[str]] | None = None
    ) -> dict[str, Node]:
        """Nodes (configuration and affiliations, no items) from storage; their item ids
        go to `orders` when given."""
        names = (
            [only]
            if only is not None
            else [k[2:] for k in await self.store.keys(username) if k.startswith("n:")]
        )
        out: dict[str, Node] = {}
        for name in names:
            meta = await self.store.get(username, f"n:{name}")
            if not isinstance(meta, dict):
                continue
            raw_config = meta.get("config")
            config = NodeConfig.from_json(
                raw_config if isinstance(raw_config, dict) else {}, self.default
            )
            node = Node(config)
            raw_aff = meta.get("aff")
            if isinstance(raw_aff, dict):
                node.affiliations = {str(k): str(v) for k, v in raw_aff.items()}
            if orders is not None:
                order = meta.get("order")
                orders[name] = [str(i) for i in order] if isinstance(order, list) else []
            out[name] = node
        return out

    def _evict(self) -> None:
        """Drop least recently used accounts beyond cache_accounts, except those with
        sessions or a change under way (their data stays in storage: reloaded on use)."""
        excess = len(self._nodes) - self.options.cache_accounts
        if excess <= 0:
            return
        domain = self.ctx.host.domain
        for username in list(self._nodes):
            if excess <= 0:
                break
            if username in self._locks or self.ctx.sessions.has_sessions(
                JID(username, domain, None)
            ):
                continue
            del self._nodes[username]
            excess -= 1

    @contextlib.asynccontextmanager
    async def _locked(self, username: str) -> AsyncIterator[dict[str, Node]]:
        entry = self._locks.get(username)
        if entry is None:
            entry = self._locks[username] = _AccountLock()
        entry.users += 1
        try:
            async with entry.lock:
                try:
                    yield await self.nodes_of(username)
                except StanzaError:
                    raise  # refused before anything changed
                except BaseException:
                    # A storage failure may have left memory ahead of storage: reload next time.
                    self._nodes.pop(username, None)
                    raise
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[username]

    async def _save_meta(self, username: str, name: str, node: Node) -> None:
        meta: dict[str, Any] = {
            "config": node.config.to_json(),
            "order": list(node.items),
            "aff": dict(node.affiliations),
        }
        await self.store.set(username, f"n:{name}", meta)

    async def _drop_items(self, username: str, name: str, ids: Iterable[str]) -> None:
        for item_id in ids:
            await self.store.delete(username, _item_key(name, item_id))

    # --- access --------------------------------------------------------------------------
    async def _subscription(self, owner: JID, contact: JID) -> str:
        query = ev.RosterQuery(owner, contact.bare)
        await self.ctx.fire(ev.ROSTER_QUERY, query)
        return query.subscription(contact.bare)

    async def _groups(self, owner: JID, contact: JID) -> set[str] | None:
        query = ev.RosterGroups(owner, contact.bare)
        if not await self.ctx.fire(ev.ROSTER_GROUPS, query):
            return None
        return query.groups

    async def _denial(self, owner: JID, node: Node, requester: JID) -> str | None:
        """Why `requester` may not see `node` (see node.access_denial), None if it may."""
        bare = requester.bare
        is_owner = bare == owner
        model = node.config.access_model
        subscription = "none"
        groups: set[str] | None = None
        if not is_owner and model == "presence":
            subscription = await self._subscription(owner, bare)
        if not is_owner and model == "roster":
            groups = await self._groups(owner, bare)
        affiliation = node.affiliations.get(str(bare), "none")
        return access_denial(node.config, is_owner, subscription, groups, affiliation)

    async def _check_access(self, owner: JID, node: Node, requester: JID) -> None:
        denial = await self._denial(owner, node, requester)
        if denial is None:
            return
        if denial == "presence":
            raise pubsub_error("not-authorized", "presence-subscription-required")
        if denial == "roster":
            raise pubsub_error("not-authorized", "not-in-roster-group")
        if denial == "whitelist":
            raise pubsub_error("not-allowed", "closed-node")
        raise StanzaError("forbidden")

    def _check_name(self, name: str | None, what: str = "node") -> str:
        if not name:
            raise pubsub_error("bad-request", "nodeid-required")
        if len(name) > self.options.max_name_length or any(ord(c) < 32 for c in name):
            raise StanzaError("bad-request", f"bad {what} name")
        return name

    def _check_quota(self, nodes: dict[str, Node], name: str, item_id: str, size: int) -> None:
        """Stored payloads of the account with this item added (and what it replaces or
        pushes out left out) must stay within max_account_size."""
        total = size
        for node_name, node in nodes.items():
            kept = list(node.items.items())
            if node_name == name:
                kept = [(i, item) for i, item in kept if i != item_id]
                kept = kept[len(kept) + 1 - node.config.max_items :] if kept else kept
            total += sum(len(item.payload) for _, item in kept)
        if total > self.options.max_account_size:
            raise StanzaError("not-acceptable", "the account's PEP storage is full")

    # --- the operations (as the owner, or a requester) -----------------------------------
    async def publish(
        self,
        owner: JID,
        name: str,
        item_id: str | None,
        payload: etree._Element | None,
        *,
        options: dict[str, list[str]] | None = None,
        publisher: JID | None = None,
        has_item: bool = True,
    ) -> str:
        """§7.1: publish (auto-creating the node); returns the item id.

        Raises:
            StanzaError: the XEP-0060 §7.1.3 / §7.1.5 errors.
        """
        username = owner.local or ""
        self._check_name(name)
        if item_id is not None:
            self._check_name(item_id, "item")
        text = etree.tostring(payload).decode() if payload is not None else ""
        if len(text.encode()) > self.options.max_payload_size:
            raise pubsub_error("not-acceptable", "payload-too-big")
        async with self._locked(username) as nodes:
            node = nodes.get(name)
            if node is None:
                if len(nodes) >= self.options.max_nodes:
                    raise pubsub_error("not-allowed", "max-nodes-exceeded", "too many nodes")
                config = self.default
                if options:
                    try:
                        config = apply_fields(config, options, self.limits)
                    except ConfigError as exc:
                        raise pubsub_error(
                            "conflict", "precondition-not-met", exc.reason + f" ({exc.var})"
                        ) from None
                node = Node(config)
                created = True
            else:
                created = False
                if options:
                    try:
                        met = apply_fields(node.config, options, self.limits) == node.config
                    except ConfigError:
                        met = False
                    if not met:
                        raise pubsub_error("conflict", "precondition-not-met")
            config = node.config
            if not has_item and config.persist_items:
                raise pubsub_error("bad-request", "item-required")
            if payload is None and has_item and config.deliver_payloads:
                raise pubsub_error("bad-request", "payload-required")
            if payload is not None and len(text.encode()) > config.max_payload_size:
                raise pubsub_error("not-acceptable", "payload-too-big")
            if (
                payload is not None
                and config.type
                and etree.QName(payload).namespace != config.type
            ):
                raise pubsub_error("bad-request", "invalid-payload")
            if item_id is None:
                item_id = uuid.uuid4().hex
            if config.persist_items:
                self._check_quota(nodes, name, item_id, len(text))
            if created:
                nodes[name] = node
            item = Item(text, str(publisher or owner))
            dropped = node.publish(item_id, item)
            if config.persist_items:
                await self.store.set(
                    username, _item_key(name, item_id), {"p": text, "by": item.publisher}
                )
            await self._save_meta(username, name, node)
            await self._drop_items(username, name, dropped)
        await self.ctx.notify(
            ev.PEP_CHANGED, ev.PepChanged(owner, name, "publish", item_id, payload)
        )
        await self._notify_item(owner, name, node, (item_id, item), publisher)
        return item_id

    async def retract(self, owner: JID, name: str, item_id: str, notify: bool | None) -> None:
        """§7.2: delete an item; notify when asked to (or configured to when not said)."""
        username = owner.local or ""
        async with self._locked(username) as nodes:
            node = nodes.get(name)
            if node is None or item_id not in node.items:
                raise StanzaError("item-not-found")
            del node.items[item_id]
            await self._save_meta(username, name, node)
            await self._drop_items(username, name, [item_id])
        await self.ctx.notify(ev.PEP_CHANGED, ev.PepChanged(owner, name, "retract", item_id))
        if notify if notify is not None else node.config.notify_retract:
            event = etree.Element(f"{_E}event", nsmap={None: NS_EVENT})
            items = etree.SubElement(event, f"{_E}items", node=name)
            etree.SubElement(items, f"{_E}retract", id=item_id)
            await self._broadcast(owner, name, node, event)

    async def delete(self, owner: JID, name: str) -> None:
        """§8.4: delete a node and its items."""
        username = owner.local or ""
        async with self._locked(username) as nodes:
            node = nodes.pop(name, None)
            if node is None:
                raise StanzaError("item-not-found")
            await self._drop_items(username, name, list(node.items))
            await self.store.delete(username, f"n:{name}")
        await self.ctx.notify(ev.PEP_CHANGED, ev.PepChanged(owner, name, "delete"))
        if node.config.notify_delete:
            event = etree.Element(f"{_E}event", nsmap={None: NS_EVENT})
            etree.SubElement(event, f"{_E}delete", node=name)
            await self._broadcast(owner, name, node, event)

    async def purge(self, owner: JID, name: str) -> None:
        """§8.5: delete every item of a node."""
        username = owner.local or ""
        async with self._locked(username) as nodes:
            node = nodes.get(name)
            if node is None:
                raise StanzaError("item-not-found")
            if not node.config.persist_items:
                raise unsupported("persistent-items")
            ids = list(node.items)
            node.items.clear()
            await self._save_meta(username, name, node)
            await self._drop_items(username, name, ids)
        await self.ctx.notify(ev.PEP_CHANGED, ev.PepChanged(owner, name, "purge"))
        if node.config.notify_retract:
            event = etree.Element(f"{_E}event", nsmap={None: NS_EVENT})
            etree.SubElement(event, f"{_E}purge", node=name)
            await self._broadcast(owner, name, node, event)

    async def items(
        self,
        owner: JID,
        name: str,
        requester: JID,
        max_items: int | None = None,
        ids: list[str] | None = None,
    ) -> list[tuple[str, Item]]:
        """§6.5: the items `requester` asked for, oldest first. Access is checked on the
        node's configuration before the account's items are loaded."""
        username = owner.local or ""
        meta = None
        if requester.bare != owner:
            meta = (await self._nodes_meta(username, name)).get(name)
            if meta is None:
                raise StanzaError("item-not-found")
            await self._check_access(owner, meta, requester)
        node = (await self.nodes_of(username)).get(name)
        if node is None:
            raise StanzaError("item-not-found")
        if meta is not None and node is not meta:  # loaded since: check the loaded node too
            await self._check_access(owner, node, requester)
        return node.select(max_items, ids)

    # --- notifications -------------------------------------------------------------------
    def _item_event(self, name: str, node: Node, item_id: str, item: Item) -> etree._Element:
        event = etree.Element(f"{_E}event", nsmap={None: NS_EVENT})
        items = etree.SubElement(event, f"{_E}items", node=name)
        el = etree.SubElement(items, f"{_E}item", id=item_id)
        if node.config.itemreply == "publisher" and item.publisher:
            el.set("publisher", item.publisher)
        payload = item.element()
        if node.config.deliver_payloads and payload is not None:
            el.append(payload)
        return event

    async def _notify_item(
        self, owner: JID, name: str, node: Node, item: tuple[str, Item], publisher: JID | None
    ) -> None:
        if not node.config.deliver_notifications:
            return
        event = self._item_event(name, node, *item)
        replyto = publisher if publisher is not None and publisher.resource else None
        await self._broadcast(owner, name, node, event, replyto=replyto)

    async def _recipients(self, owner: JID, name: str, node: Node) -> list[JID]:
        """Available entities interested in `name` (+notify) that may see the node."""
        out: list[JID] = []
        verdicts: dict[JID, bool] = {}
        for entity, wanted in list(self._interest.get(owner, {}).items()):
            if name not in wanted:
                continue
            bare = entity.bare
            if bare not in verdicts:
                verdicts[bare] = await self._denial(owner, node, bare) is None
            if verdicts[bare] and not await self._blocked(owner, entity):
                out.append(entity)
        return out

    async def _blocked(self, owner: JID, entity: JID) -> bool:
        """XEP-0191 §3.3: nothing goes in the account's name to a JID it blocks."""
        if entity.bare == owner:
            return False
        query = ev.BlockQuery(owner, entity)
        return await self.ctx.fire(ev.BLOCK_QUERY, query) and query.blocked

    async def _broadcast(
        self,
        owner: JID,
        name: str,
        node: Node,
        event: etree._Element,
        *,
        replyto: JID | None = None,
    ) -> None:
        for to in await self._recipients(owner, name, node):
            await self._send_event(owner, to, node, event, replyto)

    async def _send_event(
        self,
        owner: JID,
        to: JID,
        node: Node,
        event: etree._Element,
        replyto: JID | None = None,
    ) -> None:
        message = make(
            "message",
            type_=node.config.notification_type,
            from_=owner,
            to=to,
            id_=_ID_PREFIX + uuid.uuid4().hex[:16],
        )
        message.append(copy.deepcopy(event))
        if replyto is not None and to.bare != owner:
            # XEP-0163 §4.3.3: the publishing resource, for contacts with a subscription.
            addresses = etree.SubElement(
                message, f"{{{NS_ADDRESS}}}addresses", nsmap={None: NS_ADDRESS}
            )
            etree.SubElement(
                addresses, f"{{{NS_ADDRESS}}}address", type="replyto", jid=str(replyto)
            )
        await self.ctx.services.route(message)

    async def _send_last(self, owner: JID, entity: JID, names: Iterable[str], on: str) -> None:
        """XEP-0163 §4.3.4: the last published item of each node in `names` to `entity`,
        where send_last_published_item allows it for `on` ("presence" or "sub")."""
        username = owner.local or ""
        metas = await self._nodes_meta(username)  # access first: items only if some may go
        allowed: list[str] = []
        for name in sorted(names):
            meta = metas.get(name)
            if meta is None or not meta.config.deliver_notifications:
                continue
            when = meta.config.send_last_published_item
            if when == "never" or (on == "presence" and when != "on_sub_and_presence"):
                continue
            if await self._denial(owner, meta, entity) is None:
                allowed.append(name)
        if not allowed or await self._blocked(owner, entity):
            return
        nodes = await self.nodes_of(username)
        for name in allowed:
            node = nodes.get(name)
            last = node.last() if node is not None else None
            if node is None or last is None:
                continue
            if node is not metas[name] and await self._denial(owner, node, entity) is not None:
                continue
            await self._send_event(owner, entity, node, self._item_event(name, node, *last))

    @hook(ev.CAPS_CHANGED)
    async def caps_changed(self, event: ev.CapsChanged) -> None:
        """An entity's +notify interests as seen by an account; new interests get the last
        published item (that is the entity's initial presence, or a caps change)."""
        owner = event.user.bare
        self._unbounce(owner, event.entity)
        if event.features is None:
            table = self._interest.get(owner)
            if table is not None:
                table.pop(event.entity, None)
                if not table:
                    del self._interest[owner]
            return
        wanted = frozenset(f[: -len(_NOTIFY)] for f in event.features if f.endswith(_NOTIFY))
        table = self._interest.setdefault(owner, {})
        before = table.get(event.entity, frozenset())
        table[event.entity] = wanted
        if wanted - before and owner.local is not None:
            await self._send_last(owner, event.entity, wanted - before, "presence")

    # Above the roster module's inbound handler (HIGH), which consumes subscription stanzas.
    @hook(ev.PRESENCE_BARE, priority=Priority.HIGH + 10)
    async def subscription_approved(self, event: ev.StanzaEvent) -> bool:
        """A local owner approved a contact's subscription: the contact's interested
        resources get the last items (on_sub). Delivery goes on (returns False)."""
        stanza = event.stanza
        owner = stanza.from_.bare
        if stanza.type != "subscribed" or owner.domain != self.ctx.host.domain or not owner.local:
            return False
        contact = event.to.bare
        for entity, wanted in list(self._interest.get(owner, {}).items()):
            if entity.bare == contact and wanted:
                await self._send_last(owner, entity, wanted, "sub")
        return False

    @hook(ev.MESSAGE_BARE, priority=Priority.HIGH)
    async def bounce(self, event: ev.StanzaEvent) -> bool:
        """Errors in answer to notifications come back to the bare JID (XEP-0163 §4.3.3):
        consumed here rather than shown to the owner's clients."""
        stanza = event.stanza
        if stanza.type != "error" or not (stanza.id or "").startswith(_ID_PREFIX):
            return False
        # The resource that bounced gets no more notifications until its next presence.
        owner = event.to.bare
        table = self._interest.get(owner)
        wanted = table.pop(stanza.from_, None) if table is not None else None
        if table is not None and not table:
            del self._interest[owner]
        if wanted is not None:
            self._bounced.setdefault(owner, {})[stanza.from_] = wanted
        return True

    def _unbounce(self, owner: JID, entity: JID) -> frozenset[str] | None:
        """Forget that `entity` bounced; the interests it had then (None: it did not)."""
        table = self._bounced.get(owner)
        if table is None:
            return None
        wanted = table.pop(entity, None)
        if not table:
            del self._bounced[owner]
        return wanted

    async def _present(self, owner: JID, entity: JID) -> None:
        """An available presence from `entity` reached `owner`: if a notification to it had
        bounced, its interests are back (and it gets the last items it may have missed).
        Its caps, when they changed, come with CAPS_CHANGED (which forgets the bounce)."""
        wanted = self._unbounce(owner, entity)
        if wanted is None:
            return
        table = self._interest.setdefault(owner, {})
        if entity in table:
            return
        table[entity] = wanted
        if wanted and owner.local is not None:
            await self._send_last(owner, entity, wanted, "presence")

    @hook(ev.PRESENCE_BARE, priority=Priority.HIGH)
    async def presence_bare(self, event: ev.StanzaEvent) -> bool:
        """A contact's available presence to the owner (delivery goes on: returns False)."""
        if event.stanza.type is None and self._bounced:
            await self._present(event.to.bare, event.stanza.from_)
        return False

    @hook(ev.PRESENCE_FULL, priority=Priority.HIGH)
    async def presence_full(self, event: ev.StanzaEvent) -> bool:
        """The same, addressed to one of the owner's resources (e.g. a probe's answer)."""
        return await self.presence_bare(event)

    @hook(ev.PRESENCE_UPDATE)
    async def own_presence(self, event: ev.SessionEvent) -> None:
        """An own resource's presence update (its initial presence follows CAPS_CHANGED)."""
        if self._bounced:
            jid = event.session.full_jid
            await self._present(jid.bare, jid)

    @hook(ev.ACCOUNT_REMOVED)
    async def account_removed(self, event: ev.AccountRemoved) -> None:
        """A deleted account's nodes go (the server deletes the stored data)."""
        owner = event.jid.bare
        self._nodes.pop(owner.local or "", None)
        self._interest.pop(owner, None)
        self._bounced.pop(owner, None)
        if owner.local is not None:
            await self.store.delete_user(owner.local)

    # --- PEP_REQUEST (other modules acting as the owner) ---------------------------------
    @hook(ev.PEP_REQUEST)
    async def pep_request(self, request: ev.PepRequest) -> bool:
        """Answer another module's request on an account's node."""
        owner = request.owner.bare
        try:
            if request.action == "publish":
                request.item_id = await self.publish(
                    owner, request.node, request.item_id, request.payload, options=request.options
                )
            elif request.action == "retract":
                await self.retract(owner, request.node, request.item_id or "", None)
            elif request.action == "items":
                nodes = await self.nodes_of(owner.local or "")
                node = nodes.get(request.node)
                request.items = []
                if node is not None:
                    for item_id, item in node.select():
                        payload = item.element()
                        if payload is not None:
                            request.items.append((item_id, payload))
            elif request.action == "delete":
                await self.delete(owner, request.node)
            else:
                request.error = StanzaError("bad-request", f"unknown action {request.action}")
        except StanzaError as err:
            request.error = err
        return True

    # --- IQ: pubsub ----------------------------------------------------------------------
    @iq_handler("set", NS_PUBSUB, "pubsub", to=Target.ACCOUNT)
    async def pubsub_set(self, request: IqRequest) -> etree._Element | None:
        """publish, retract, create (subscriptions are implicit)."""
        pubsub = request.payload
        children = [c for c in pubsub if isinstance(c.tag, str)]
        actions = [
            c
            for c in children
            if c.tag not in (f"{_P}publish-options", f"{_P}configure", f"{_P}options")
        ]
        if len(actions) != 1:
            raise StanzaError("bad-request", "expected one pubsub action")
        action = actions[0]
        if action.tag in (f"{_P}subscribe", f"{_P}unsubscribe", f"{_P}options"):
            raise unsupported("subscribe")
        if action.tag not in (f"{_P}publish", f"{_P}retract", f"{_P}create"):
            raise StanzaError("feature-not-implemented")
        owner = request.to.bare
        if request.from_.bare != owner:
            raise StanzaError("forbidden", "only the account may change its nodes")
        name = self._check_name(action.get("node"))
        if action.tag == f"{_P}publish":
            return await self._iq_publish(request, action, name, pubsub)
        if action.tag == f"{_P}retract":
            items = action.findall(f"{_P}item")
            if len(items) != 1 or not items[0].get("id"):
                raise pubsub_error("bad-request", "item-required")
            notify = action.get("notify")
            await self.retract(
                owner, name, items[0].get("id") or "", None if notify is None else _is_true(notify)
            )
            return None
        await self._iq_create(request, name, pubsub)
        return None

    async def _iq_publish(
        self, request: IqRequest, action: etree._Element, name: str, pubsub: etree._Element
    ) -> etree._Element:
        items = action.findall(f"{_P}item")
        if len(items) > 1:
            raise StanzaError("bad-request", "one item per publish")
        item = items[0] if items else None
        payload = None
        if item is not None:
            payloads = [c for c in item if isinstance(c.tag, str)]
            if len(payloads) > 1:
                raise pubsub_error("bad-request", "invalid-payload")
            payload = copy.deepcopy(payloads[0]) if payloads else None
            if payload is not None:
                payload.tail = None
        options: dict[str, list[str]] | None = None
        publish_options = pubsub.find(f"{_P}publish-options")
        if publish_options is not None:
            form = publish_options.find(f"{{{NS_DATA}}}x")
            if form is not None:
                try:
                    options = parse_form(form, FORM_PUBLISH_OPTIONS)
                except ConfigError as exc:
                    raise StanzaError("bad-request", exc.reason) from None
        item_id = await self.publish(
            request.to.bare,
            name,
            (item.get("id") or None) if item is not None else None,
            payload,
            options=options,
            publisher=request.from_,
            has_item=item is not None,
        )
        result = etree.Element(f"{_P}pubsub", nsmap={None: NS_PUBSUB})
        publish = etree.SubElement(result, f"{_P}publish", node=name)
        etree.SubElement(publish, f"{_P}item", id=item_id)
        return result

    async def _iq_create(self, request: IqRequest, name: str, pubsub: etree._Element) -> None:
        owner = request.to.bare
        config = self.default
        configure = pubsub.find(f"{_P}configure")
        form = configure.find(f"{{{NS_DATA}}}x") if configure is not None else None
        if form is not None:
            config = self._configured(config, form)
        username = owner.local or ""
        async with self._locked(username) as nodes:
            if name in nodes:
                raise StanzaError("conflict", "the node exists")
            if len(nodes) >= self.options.max_nodes:
                raise pubsub_error("not-allowed", "max-nodes-exceeded", "too many nodes")
            node = Node(config)
            nodes[name] = node
            await self._save_meta(username, name, node)

    def _configured(self, config: NodeConfig, form: etree._Element) -> NodeConfig:
        """`config` changed by a submitted node_config form (§8.2.4, §8.1.3)."""
        if form.get("type") == "cancel":
            return config
        try:
            fields = parse_form(form, FORM_NODE_CONFIG)
            return apply_fields(config, fields, self.limits)
        except ConfigError as exc:
            if exc.var == "pubsub#access_model" and not exc.unknown:
                raise pubsub_error("not-acceptable", "unsupported-access-model") from None
            raise StanzaError("not-acceptable", f"{exc.var}: {exc.reason}") from None

    @iq_handler("get", NS_PUBSUB, "pubsub", to=Target.ACCOUNT)
    async def pubsub_get(self, request: IqRequest) -> etree._Element:
        """Items retrieval (§6.5)."""
        children = [c for c in request.payload if isinstance(c.tag, str)]
        if len(children) != 1:
            raise StanzaError("bad-request", "expected one pubsub request")
        action = children[0]
        if action.tag == f"{_P}subscriptions":
            raise unsupported("retrieve-subscriptions")
        if action.tag == f"{_P}options":
            raise unsupported("subscription-options")
        if action.tag == f"{_P}affiliations":
            return await self._own_affiliations(request)
        if action.tag != f"{_P}items":
            raise StanzaError("feature-not-implemented")
        name = self._check_name(action.get("node"))
        max_items = None
        raw = action.get("max_items")
        if raw is not None:
            if not raw.isdigit() or int(raw[:12]) <= 0:
                raise StanzaError("bad-request", "max_items must be a positive integer")
            max_items = int(raw[:12])
        ids = [el.get("id") or "" for el in action.findall(f"{_P}item")]
        if any(not i for i in ids):
            raise pubsub_error("bad-request", "item-required")
        found = await self.items(request.to.bare, name, request.from_, max_items, ids or None)
        result = etree.Element(f"{_P}pubsub", nsmap={None: NS_PUBSUB})
        items = etree.SubElement(result, f"{_P}items", node=name)
        for item_id, item in found:
            el = etree.SubElement(items, f"{_P}item", id=item_id)
            payload = item.element()
            if payload is not None:
                el.append(payload)
        return result

    async def _own_affiliations(self, request: IqRequest) -> etree._Element:
        """§5.7: the requester's affiliations with this account's nodes."""
        owner = request.to.bare
        nodes = await self._nodes_meta(owner.local or "")
        result = etree.Element(f"{_P}pubsub", nsmap={None: NS_PUBSUB})
        affs = etree.SubElement(result, f"{_P}affiliations")
        wanted = request.payload[0].get("node")
        requester = str(request.from_.bare)
        for name in sorted(nodes):
            if wanted and name != wanted:
                continue
            affiliation = (
                "owner" if request.from_.bare == owner else nodes[name].affiliations.get(requester)
            )
            if affiliation:
                etree.SubElement(affs, f"{_P}affiliation", node=name, affiliation=affiliation)
        return result

    # --- IQ: pubsub#owner ----------------------------------------------------------------
    @iq_handler("get", NS_OWNER, "pubsub", to=Target.ACCOUNT)
    async def owner_get(self, request: IqRequest) -> etree._Element:
        """configure (form), default, affiliations."""
        action = self._owner_action(request)
        result = etree.Element(f"{_O}pubsub", nsmap={None: NS_OWNER})
        if action.tag == f"{_O}default":
            default = etree.SubElement(result, f"{_O}default")
            default.append(config_form(self.default, self.limits))
            return result
        name = self._check_name(action.get("node"))
        node = await self._owned_node(request, name)
        if action.tag == f"{_O}configure":
            configure = etree.SubElement(result, f"{_O}configure", node=name)
            configure.append(config_form(node.config, self.limits))
            return result
        if action.tag == f"{_O}affiliations":
            affs = etree.SubElement(result, f"{_O}affiliations", node=name)
            etree.SubElement(
                affs, f"{_O}affiliation", jid=str(request.to.bare), affiliation="owner"
            )
            for jid, affiliation in sorted(node.affiliations.items()):
                etree.SubElement(affs, f"{_O}affiliation", jid=jid, affiliation=affiliation)
            return result
        if action.tag == f"{_O}subscriptions":
            raise unsupported("manage-subscriptions")
        raise StanzaError("feature-not-implemented")

    @iq_handler("set", NS_OWNER, "pubsub", to=Target.ACCOUNT)
    async def owner_set(self, request: IqRequest) -> None:
        """configure, delete, purge, affiliations."""
        action = self._owner_action(request)
        name = self._check_name(action.get("node"))
        owner = request.to.bare
        if action.tag == f"{_O}delete":
            await self._owned_node(request, name)
            await self.delete(owner, name)
            return
        if action.tag == f"{_O}purge":
            await self._owned_node(request, name)
            await self.purge(owner, name)
            return
        if action.tag == f"{_O}configure":
            await self._owned_node(request, name)
            form = action.find(f"{{{NS_DATA}}}x")
            if form is None:
                raise StanzaError("bad-request", "a data form is required")
            await self._configure(owner, name, form)
            return
        if action.tag == f"{_O}affiliations":
            await self._owned_node(request, name)
            await self._set_affiliations(owner, name, action)
            return
        if action.tag == f"{_O}subscriptions":
            raise unsupported("manage-subscriptions")
        raise StanzaError("feature-not-implemented")

    def _owner_action(self, request: IqRequest) -> etree._Element:
        children = [c for c in request.payload if isinstance(c.tag, str)]
        if len(children) != 1:
            raise StanzaError("bad-request", "expected one pubsub#owner request")
        return children[0]

    async def _owned_node(self, request: IqRequest, name: str) -> Node:
        """The node, for its owner only (forbidden for others, §8.2.3.3)."""
        owner = request.to.bare
        if request.from_.bare != owner:
            raise StanzaError("forbidden")
        nodes = await self.nodes_of(owner.local or "")
        node = nodes.get(name)
        if node is None:
            raise StanzaError("item-not-found")
        return node

    async def _configure(self, owner: JID, name: str, form: etree._Element) -> None:
        username = owner.local or ""
        async with self._locked(username) as nodes:
            node = nodes.get(name)
            if node is None:
                raise StanzaError("item-not-found")
            node.config = self._configured(node.config, form)
            dropped = node.trim()
            if not node.config.persist_items:
                dropped += list(node.items)
                node.items.clear()
            await self._save_meta(username, name, node)
            await self._drop_items(username, name, dropped)
        if node.config.notify_config:
            # §8.2.5.1: a configuration notification (with the form when payloads go out).
            event = etree.Element(f"{_E}event", nsmap={None: NS_EVENT})
            configuration = etree.SubElement(event, f"{_E}configuration", node=name)
            if node.config.deliver_payloads:
                form = config_form(node.config, self.limits)
                form.set("type", "result")
                configuration.append(form)
            await self._broadcast(owner, name, node, event)

    async def _set_affiliations(self, owner: JID, name: str, action: etree._Element) -> None:
        changes: dict[str, str] = {}
        for el in action.findall(f"{_O}affiliation"):
            try:
                jid = JID.parse(el.get("jid") or "").bare
            except JIDError:
                raise StanzaError("jid-malformed") from None
            affiliation = el.get("affiliation")
            if affiliation is None:
                continue
            if jid == owner or affiliation not in ("none", "member", "outcast"):
                raise StanzaError("not-acceptable", f"cannot set {affiliation} for {jid}")
            changes[str(jid)] = affiliation
        username = owner.local or ""
        async with self._locked(username) as nodes:
            node = nodes.get(name)
            if node is None:
                raise StanzaError("item-not-found")
            if len(set(node.affiliations) | set(changes)) > self.options.max_items * 4:
                raise StanzaError("resource-constraint", "too many affiliations")
            for jid_text, affiliation in changes.items():
                if affiliation == "none":
                    node.affiliations.pop(jid_text, None)
                else:
                    node.affiliations[jid_text] = affiliation
            await self._save_meta(username, name, node)

    # --- disco (XEP-0030 on the bare JID, XEP-0060 §5.2, §5.3) ----------------------------
    @hook(ev.IQ_BARE, priority=Priority.HIGH)
    async def disco(self, event: ev.StanzaEvent) -> bool:
        """disco#items lists the nodes the requester may see; disco#info on a node says it
        is a leaf. Other disco queries are left to the disco module."""
        stanza = event.stanza
        element = stanza.element
        if stanza.type != "get" or len(element) != 1:
            return False
        query = element[0]
        owner = event.to.bare
        if owner.local is None:
            return False
        requester = stanza.from_
        node_name = query.get("node")
        items_query = query.tag == f"{{{NS_DISCO_ITEMS}}}query" and not node_name
        info_query = (
            query.tag == f"{{{NS_DISCO_INFO}}}query"
            and node_name
            and len(node_name) <= self.options.max_name_length
        )
        if not (items_query or info_query) or not await self.ctx.services.account_exists(
            owner.domain, owner.local
        ):
            return False
        if items_query:
            nodes = await self._nodes_meta(owner.local)
            visible = [
                n
                for n, node in sorted(nodes.items())
                if await self._denial(owner, node, requester) is None
            ]
            if not visible and requester.bare != owner:
                return False  # nothing to show: the disco module answers as for any account
            result = etree.Element(f"{{{NS_DISCO_ITEMS}}}query", nsmap={None: NS_DISCO_ITEMS})
            for name in visible:
                etree.SubElement(result, f"{{{NS_DISCO_ITEMS}}}item", jid=str(owner), node=name)
            await self._reply(element, owner, result)
            return True
        if node_name:
            nodes = await self._nodes_meta(owner.local, node_name)
            node = nodes.get(node_name)
            if node is None or await self._denial(owner, node, requester) is not None:
                return False
            result = etree.Element(
                f"{{{NS_DISCO_INFO}}}query", nsmap={None: NS_DISCO_INFO}, node=node_name
            )
            etree.SubElement(result, f"{{{NS_DISCO_INFO}}}identity", category="pubsub", type="leaf")
            etree.SubElement(result, f"{{{NS_DISCO_INFO}}}feature", var=NS_PUBSUB)
            await self._reply(element, owner, result)
            return True
        return False

    async def _reply(self, request: etree._Element, owner: JID, payload: etree._Element) -> None:
        reply = iq_result(request, payload)
        reply.set("from", str(owner))
        await self.ctx.services.route(reply)
