"""Typed event bus: chain events (first handler returning True wins) and notify events.

Event keys carry their payload type, so a handler's signature is checked by mypy. Priorities are
named; core default behaviour registers at `Priority.DEFAULT`, so any module can pre-empt it.
Handlers are awaited in order inside the caller's coroutine: no task per event, so the per-session
ordering of stanzas is kept (DESIGN §2.1 principle 7).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from lxml import etree

if TYPE_CHECKING:
    from xmppd.errors import StanzaError
    from xmppd.jid import JID
    from xmppd.session import Session
    from xmppd.stanza import Stanza

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Priority(IntEnum):
    """Named handler priorities; higher runs first."""

    FIRST = 1000
    HIGH = 500
    NORMAL = 0
    LOW = -500
    DEFAULT = -1000  # core default behaviour (delivery, IQ dispatch fallback)


class ChainKey(Generic[T]):
    """A chain event: handlers run by priority until one returns True (the event is consumed)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"ChainKey({self.name!r})"


class NotifyKey(Generic[T]):
    """A notify event: every handler runs; handlers return None."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"NotifyKey({self.name!r})"


# A chain handler returns its verdict directly (a plain function: no coroutine to create on
# the hot path) or an awaitable of it (a coroutine function, or a plain function that goes
# async only when it must, e.g. for a storage lookup).
ChainHandler = Callable[[T], "bool | Awaitable[bool]"]
NotifyHandler = Callable[[T], Awaitable[None]]


class EventBus:
    """Handlers per event key, kept sorted by priority (stable for equal priorities)."""

    __slots__ = ("_handlers",)

    def __init__(self) -> None:
        self._handlers: dict[object, list[tuple[int, Callable[[Any], Any]]]] = {}

    def add_chain(self, key: ChainKey[T], handler: ChainHandler[T], priority: int) -> None:
        """Register a chain handler."""
        self._add(key, handler, priority)

    def add_notify(self, key: NotifyKey[T], handler: NotifyHandler[T], priority: int) -> None:
        """Register a notify handler."""
        self._add(key, handler, priority)

    def _add(self, key: object, handler: Callable[[Any], Any], priority: int) -> None:
        # Copy-on-write: a running chain keeps iterating the list it started with.
        entries = [*self._handlers.get(key, []), (priority, handler)]
        entries.sort(key=lambda entry: -entry[0])  # stable: equal priorities keep order
        self._handlers[key] = entries

    def remove(self, key: object, handler: Callable[[Any], Any]) -> None:
        """Unregister a handler (no error if absent)."""
        entries = self._handlers.get(key)
        if entries:
            self._handlers[key] = [e for e in entries if e[1] != handler]

    def has_handlers(self, key: object) -> bool:
        """Whether any handler is registered for `key`."""
        return bool(self._handlers.get(key))

    async def chain(self, key: ChainKey[T], payload: T) -> bool:
        """Run handlers until one returns True; return whether the event was consumed."""
        entries = self._handlers.get(key)
        if entries:
            # remove() builds a new list, so handlers may unregister while the chain runs.
            for _prio, handler in entries:
                verdict = handler(payload)
                if verdict is False:
                    continue
                if verdict is True or await verdict:
                    return True
        return False

    async def notify(self, key: NotifyKey[T], payload: T) -> None:
        """Run every handler; an exception in one is logged and does not stop the others."""
        entries = self._handlers.get(key)
        if not entries:
            return
        for _prio, handler in entries:
            try:
                await handler(payload)
            except Exception:
                logger.exception("handler %r failed for %s", handler, key)


# ----------------------------------------------------------------------------------------------
# Core event payloads and keys.


@dataclass(slots=True)
class StanzaEvent:
    """A stanza being routed: `origin` is the sending session (None for server-generated)."""

    stanza: Stanza
    origin: Session | None
    to: JID  # the prepared recipient (the host JID when the stanza had no 'to')


@dataclass(slots=True)
class MessageOffline:
    """A chat/normal message for an existing account with no available resource."""

    stanza: Stanza
    username: str
    to: JID


@dataclass(slots=True)
class SessionEvent:
    """A session changed state (bound, available, ended).

    `stanza` is the presence that caused the change when the client sent one (e.g. its
    unavailable presence with a status); None when the server decided (connection lost).
    """

    session: Session
    stanza: etree._Element | None = None


@dataclass(slots=True)
class RosterQuery:
    """Asks the roster module for an account's subscription states (RFC 6121 §2.1.2.5).

    The handler fills `subscriptions` (contact JID -> "none" | "to" | "from" | "both") for every
    roster item, or only for `contact` when it is given, and returns True. Items that exist only
    to track a pending inbound request are left out (they are not in the roster, §3.1.3).
    """

    user: JID  # the account's bare JID
    contact: JID | None = None
    subscriptions: dict[JID, str] = field(default_factory=dict)

    def subscription(self, contact: JID) -> str:
        """The state for `contact`, "none" when it has no roster item."""
        return self.subscriptions.get(contact, "none")


@dataclass(slots=True)
class SessionEnded:
    """A session is gone; `unacked` lists stanzas sent to it that the client never acknowledged."""

    session: Session
    unacked: list[etree._Element] = field(default_factory=list)
    reason: str = ""


@dataclass(slots=True)
class AccountRemoved:
    """A local account was deleted and its sessions ended; its stored data goes right after
    the handlers ran (they may still read it, e.g. to cancel subscriptions)."""

    jid: JID  # the account's bare JID


@dataclass(slots=True)
class PepRequest:
    """Another module acts on a local account's PEP node (XEP-0163) as the account itself
    would: e.g. bookmarks compatibility (XEP-0411) reading and writing Bookmarks 2 items.

    Actions: "publish" (`item_id`, `payload`, `options` as publish-options: a field var ->
    values; the node is created as by a client's publish), "retract" (`item_id`), "items"
    (fills `items`, oldest first; an absent node leaves it empty) and "delete" (the node).
    The PEP module answers it and returns True, with `error` set when it refused (e.g. a
    publish-options precondition that does not hold). Notifications go out as for a client.
    """

    owner: JID  # the account's bare JID
    node: str
    action: str
    item_id: str | None = None
    payload: etree._Element | None = None
    options: dict[str, list[str]] = field(default_factory=dict)
    items: list[tuple[str, etree._Element]] = field(default_factory=list)
    error: StanzaError | None = None


@dataclass(slots=True)
class PepChanged:
    """A local account's PEP node changed: an item published or retracted, or the node
    purged or deleted (`item_id` None). Fired after the change is stored."""

    owner: JID  # the account's bare JID
    node: str
    action: str  # "publish" | "retract" | "purge" | "delete"
    item_id: str | None = None
    payload: etree._Element | None = None


@dataclass(slots=True)
class Shutdown:
    """The server is stopping; handlers may await (flush state) before storage closes."""

    reason: str = "shutdown"


# Pre-routing events fire on the sender's host: carbons, blocking and privacy hook here.
PRE_MESSAGE: ChainKey[StanzaEvent] = ChainKey("pre-message")
PRE_PRESENCE: ChainKey[StanzaEvent] = ChainKey("pre-presence")
PRE_IQ: ChainKey[StanzaEvent] = ChainKey("pre-iq")

# Routing events fire on the recipient's host, by stanza kind and address form.
MESSAGE_BARE: ChainKey[StanzaEvent] = ChainKey("message/bare")
MESSAGE_FULL: ChainKey[StanzaEvent] = ChainKey("message/full")
MESSAGE_HOST: ChainKey[StanzaEvent] = ChainKey("message/host")
PRESENCE_BARE: ChainKey[StanzaEvent] = ChainKey("presence/bare")
PRESENCE_FULL: ChainKey[StanzaEvent] = ChainKey("presence/full")
PRESENCE_HOST: ChainKey[StanzaEvent] = ChainKey("presence/host")
IQ_BARE: ChainKey[StanzaEvent] = ChainKey("iq/bare")
IQ_FULL: ChainKey[StanzaEvent] = ChainKey("iq/full")
IQ_HOST: ChainKey[StanzaEvent] = ChainKey("iq/host")

# Presence the session sends with no 'to' (RFC 6121 §4.2, §4.4, §4.5): broadcast is a module's job.
PRESENCE_BROADCAST: ChainKey[StanzaEvent] = ChainKey("presence/broadcast")

MESSAGE_OFFLINE: ChainKey[MessageOffline] = ChainKey("message/offline")

SESSION_BOUND: NotifyKey[SessionEvent] = NotifyKey("session/bound")
INITIAL_PRESENCE: NotifyKey[SessionEvent] = NotifyKey("session/initial-presence")
# An available session sent a presence update (RFC 6121 §4.4), not its initial presence.
PRESENCE_UPDATE: NotifyKey[SessionEvent] = NotifyKey("session/presence-update")
SESSION_UNAVAILABLE: NotifyKey[SessionEvent] = NotifyKey("session/unavailable")
# The connection of a bound session is gone. A handler returning True keeps the session bound
# but detached (stream management hibernation); it must later re-attach it or end it with
# ModuleContext.end_session(). With no handler consuming it, the session ends.
SESSION_LOST: ChainKey[SessionEvent] = ChainKey("session/lost")
SESSION_ENDED: NotifyKey[SessionEnded] = NotifyKey("session/ended")
# A kept session was taken over by a new connection (XEP-0198 resumption): the client is back.
SESSION_RESUMED: NotifyKey[SessionEvent] = NotifyKey("session/resumed")
# The server is about to close every stream: stanzas sent now still reach connected clients
# (e.g. MUC's status 332). SHUTDOWN comes later, once sessions have ended, to flush state.
STOPPING: NotifyKey[Shutdown] = NotifyKey("server/stopping")
SHUTDOWN: NotifyKey[Shutdown] = NotifyKey("server/shutdown")
ACCOUNT_REMOVED: NotifyKey[AccountRemoved] = NotifyKey("account/removed")

# The roster module answers this (see RosterQuery): presence broadcast, probes, disco access.
ROSTER_QUERY: ChainKey[RosterQuery] = ChainKey("roster/query")

# Personal eventing (XEP-0163): requests to the PEP module, and what changed in a node.
PEP_REQUEST: ChainKey[PepRequest] = ChainKey("pep/request")
PEP_CHANGED: NotifyKey[PepChanged] = NotifyKey("pep/changed")


@dataclass(slots=True)
class CapsChanged:
    """XEP-0115: what a local account knows of an entity's capabilities, learnt from the
    entity's presence (the account's own resources included). `features` are the entity's
    verified disco#info features; None when it went unavailable (forget it). Fired by the
    caps module when the set changes, e.g. for PEP's filtered notifications (XEP-0163)."""

    user: JID  # the local account's bare JID that received the presence
    entity: JID  # the entity's full JID
    features: frozenset[str] | None


@dataclass(slots=True)
class RosterGroups:
    """Asks the roster module for the groups of `contact` in `user`'s roster (XEP-0060
    'roster' access model). The handler fills `groups` (empty: no item or no group) and
    returns True; unanswered, callers must assume nothing."""

    user: JID  # the account's bare JID
    contact: JID  # a bare JID
    groups: set[str] = field(default_factory=set)


CAPS_CHANGED: NotifyKey[CapsChanged] = NotifyKey("caps/changed")
ROSTER_GROUPS: ChainKey[RosterGroups] = ChainKey("roster/groups")


@dataclass(slots=True)
class BlockQuery:
    """Asks the blocking module whether a local account blocks `other` (XEP-0191 §3.3), for
    stanzas the server sends in the account's name (e.g. PEP notifications). The handler sets
    `blocked` and returns True; unanswered, nothing is blocked (no blocking module)."""

    owner: JID  # the account's bare JID
    other: JID
    blocked: bool = False


BLOCK_QUERY: ChainKey[BlockQuery] = ChainKey("blocking/query")
