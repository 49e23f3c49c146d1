"""XEP-0160: Best Practices for Handling Offline Messages — store, then flush with XEP-0203 stamps.

Messages the core hands over on MESSAGE_OFFLINE (chat and normal messages for an existing account
with no available non-negative resource, RFC 6121 §8.5.2.2) are kept in the ``offline`` archive
store, so they survive restarts, and are delivered in order to the first resource that sends
initial presence with a non-negative priority, or that raises its priority to a non-negative
one later (XEP-0160 §2), each with
``<delay xmlns='urn:xmpp:delay' from='host' stamp='...'>Offline Storage</delay>``.

What is not stored: standalone XEP-0085 chat-state notifications (XEP-0160 §3, XEP-0085 §5.5;
dropped silently) and messages without any content; messages with the XEP-0334 <no-store/> hint
(the sender gets service-unavailable, RFC 6121 §8.5.2.2.1). A <store/> hint stores the message
anyway. Past ``max_messages`` stored messages the sender gets service-unavailable (XEP-0160 §2).

A stored message is removed only after it was handed to the session (`_deliver` calls its
``done`` callback): stream management can later defer that callback to the client's ack.
While a flush runs, live messages for that session are held back and released after it, so the
client sees its messages in order.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass

from lxml import etree

from xmppd import events
from xmppd.errors import StanzaError
from xmppd.events import (
    INITIAL_PRESENCE,
    MESSAGE_OFFLINE,
    SHUTDOWN,
    MessageOffline,
    Priority,
    SessionEvent,
    Shutdown,
)
from xmppd.lib.delay import add_delay
from xmppd.lib.hints import NO_STORE, STORE, has_content, hints, is_chat_state_only
from xmppd.module_api import Module, StoreKind, hook
from xmppd.session import Session
from xmppd.stanza import MESSAGE
from xmppd.stream.serializer import serialize

NS_MSGOFFLINE = "msgoffline"
DELAY_REASON = "Offline Storage"
FLUSH_HIGH_WATER = 65536  # output bytes a flush lets pile up in a client's buffer before waiting
FLUSH_DRAIN_TIMEOUT = 60.0  # seconds a flush waits for a client to read; the rest stays stored
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


class Offline(Module):
    """Stores messages for offline accounts and flushes them on initial presence."""

    xeps = (160, 203, 334)
    features = (NS_MSGOFFLINE,)
    stores = {"offline": StoreKind.ARCHIVE}

    @dataclass(frozen=True)
    class Options:
        """Module options."""

        max_messages: int = 1000  # per account; 0 for no limit

    async def load(self) -> None:
        """State for flushes in progress and removals not yet committed."""
        self.store = self.ctx.archive("offline")
        self._held: dict[int, list[etree._Element]] = {}  # session id -> live messages held
        self._bypass = False
        self._inflight: dict[str, set[str]] = {}  # user -> keys handed out, not yet removed
        self._to_remove: dict[str, list[str]] = {}
        self._removing: dict[str, asyncio.Task[None]] = {}
        self.ctx.add_send_filter(self._hold_live)
        # A resource that came online at a negative priority gets the messages when it raises
        # its priority (XEP-0160 §2: "next sends non-negative available presence").
        self.ctx.hook_notify(events.PRESENCE_UPDATE, self._priority_raised)

    # --- storing -------------------------------------------------------------------------
    @hook(MESSAGE_OFFLINE)
    async def store_message(self, event: MessageOffline) -> bool:
        """Store the message, or decline (service-unavailable), or drop a bare chat state."""
        element = event.stanza.element
        found = hints(element)
        if STORE not in found and (is_chat_state_only(element) or not has_content(element)):
            return True  # XEP-0085 §5.5 / XEP-0160 §3: not stored, and not worth an error
        if NO_STORE in found:
            return False  # XEP-0334 §4: not stored; the core answers service-unavailable
        limit = self.options.max_messages
        if limit > 0 and await self.store.count(event.username) >= limit:
            raise StanzaError("service-unavailable", "the recipient's offline storage is full")
        sender = event.stanza.from_.bare
        await self.store.append(
            event.username, serialize(element).decode(), with_jid=str(sender), when=time.time()
        )
        # The recipient may have come online while this was being stored (its flush read the
        # store before the append committed): hand it over now rather than at the next login.
        for session in self.ctx.sessions.available(event.to.bare):
            if session.priority >= 0:
                await self._flush(session)
                break
        return True

    # --- delivering ----------------------------------------------------------------------
    # Before other modules act on the presence: live messages must not overtake stored ones.
    @hook(INITIAL_PRESENCE, priority=Priority.HIGH)
    async def flush(self, event: SessionEvent) -> None:
        """XEP-0160 §2: deliver stored messages to a resource coming online at priority >= 0."""
        session = event.session
        if session.priority < 0:
            session.set_state(Offline, True)  # waiting for a non-negative priority
            return
        await self._flush(session)

    async def _priority_raised(self, event: SessionEvent) -> None:
        """A presence update: at a negative priority messages are stored again (RFC 6121
        §8.5.2.1.1); back at a non-negative one they are delivered."""
        session = event.session
        if session.priority < 0:
            session.set_state(Offline, True)
        elif session.state(Offline) is True:
            session.set_state(Offline, False)
            await self._flush(session)

    async def _flush(self, session: Session) -> None:
        user = session.username
        if user is None or session.jid is None or session.id in self._held:
            return
        self._held[session.id] = []
        try:
            # Read again until nothing new is found: a message whose storing finished while
            # this flush ran (routed before the presence) is delivered now, not next login.
            handed = True
            while handed:
                handed = False
                for item in await self.store.items(user):
                    inflight = self._inflight.setdefault(user, set())
                    if item.key in inflight:
                        continue  # handed out already (here, or by another resource's flush)
                    if not await self._writable(session):
                        return  # the rest stays stored for the next flush
                    inflight.add(item.key)
                    handed = True
                    try:
                        element = etree.fromstring(item.value.encode(), _PARSER)
                    except etree.XMLSyntaxError:
                        self.ctx.log.error(
                            "unreadable offline message %s of %s dropped", item.key, user
                        )
                        self._delivered(user, item.key)
                        continue
                    add_delay(element, self.ctx.host.domain, item.when, DELAY_REASON)
                    done = functools.partial(self._delivered, user, item.key)
                    self._deliver(session, element, done)
        finally:
            held = self._held.pop(session.id, [])
            for element in held:
                self._send_through(session, element)
        task = self._removing.get(user)
        if task is not None:
            await task

    async def _writable(self, session: Session) -> bool:
        """Whether `session` can still take a message, once its output has drained below
        FLUSH_HIGH_WATER: a flush never piles a whole store into a client's buffer (where the
        core would drop the connection past output_max, with the messages)."""
        deadline = time.monotonic() + FLUSH_DRAIN_TIMEOUT
        while True:
            conn = session.conn
            if conn is None or conn.closed or session.jid is None:
                return False
            if self.ctx.sessions.get(session.jid) is not session:
                return False
            if conn.buffered() <= FLUSH_HIGH_WATER:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)

    def _deliver(self, session: Session, element: etree._Element, done: Callable[[], None]) -> None:
        """Hand one stored message to the session; `done` once it is delivered.

        For now delivery is done once the message is written to the session. With stream
        management, `done` can be called on the client's ack instead.
        """
        self._send_through(session, element)
        done()

    def _undelivered(self, user: str, key: str) -> None:
        """A handed-out message was not delivered after all: a later flush may hand it out."""
        inflight = self._inflight.get(user)
        if inflight is not None:
            inflight.discard(key)

    def _send_through(self, session: Session, element: etree._Element) -> None:
        self._bypass = True
        try:
            session.send(element)
        finally:
            self._bypass = False

    def _hold_live(self, session: Session, element: etree._Element) -> etree._Element | None:
        """Send filter: while a flush runs for `session`, live messages wait behind it."""
        if self._bypass or element.tag != MESSAGE:
            return element
        held = self._held.get(session.id)
        if held is None:
            return element
        # A fan-out's element is shared with its other recipients: keep a copy.
        held.append(element if session.wire is None else deepcopy(element))
        return None

    # --- removing ------------------------------------------------------------------------
    def _delivered(self, user: str, key: str) -> None:
        """A stored message was delivered: remove it (batched, in a task awaited on flush)."""
        self._to_remove.setdefault(user, []).append(key)
        if user not in self._removing:
            self._removing[user] = asyncio.get_running_loop().create_task(self._remove(user))

    async def _remove(self, user: str) -> None:
        try:
            while keys := self._to_remove.pop(user, None):
                try:
                    await self.store.remove(user, keys)
                except Exception:
                    self.ctx.log.exception("removing delivered offline messages of %s failed", user)
                inflight = self._inflight.get(user)
                if inflight is not None:
                    inflight.difference_update(keys)
                    if not inflight:
                        del self._inflight[user]
        finally:
            self._removing.pop(user, None)

    @hook(SHUTDOWN)
    async def finish_removals(self, event: Shutdown) -> None:
        """Commit pending removals before storage closes."""
        for task in list(self._removing.values()):
            await task

    async def unload(self) -> None:
        """Let pending removals finish."""
        for task in list(self._removing.values()):
            await task
