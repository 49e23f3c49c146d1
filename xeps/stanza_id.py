"""XEP-0359: Unique and Stable Stanza IDs — stamp <stanza-id/> on messages for local accounts.

Every message of type chat, normal or headline that reaches a local account's bare or full JID
gets ``<stanza-id xmlns='urn:xmpp:sid:0' by='user@host' id='...'/>`` before anything else
handles it, so the live copy, carbon copies and the offline copy carry the same id. Ids come from
`xmppd.lib.stanza_id.LeasedIds`: they increase in the order messages are accepted, also
across restarts (a persisted lease is always ahead of every id handed out), and end in random
bits so they cannot be guessed. Modules read the stamp with `xmppd.lib.stanza_id.find_stanza_id`.

Anti-spoofing (§3 rule 3): a <stanza-id/> whose 'by' is one of this server's domains or one of
its accounts' bare JIDs is removed from every message a client sends and every message routed
to a local account, whoever sent it. Other urn:xmpp:sid:0 elements (such as <origin-id/>) are
kept, stripped of anything the XEP does not define (§3 rules 1, 6).
"""

from __future__ import annotations

from collections.abc import Awaitable

from lxml import etree

from xmppd.events import MESSAGE_BARE, MESSAGE_FULL, PRE_MESSAGE, Priority, StanzaEvent
from xmppd.jid import JID, JIDError
from xmppd.lib.stanza_id import (
    NS_SID,
    LeasedIds,
    has_sid_children,
    sanitize,
    stamp_stanza_id,
    strip_stanza_ids,
)
from xmppd.module_api import Module, StoreKind, hook

# Ahead of every other handler: nothing may see a spoofed id, and everything sees the stamp.
STAMP_PRIORITY = Priority.FIRST + 100
STAMPED_TYPES = frozenset({"chat", "normal", "headline"})


class StanzaIds(Module):
    """Stamps and polices XEP-0359 stanza ids."""

    xeps = (359,)
    account_features = (NS_SID,)
    stores = {"stanza_id": StoreKind.KEYVALUE}

    async def load(self) -> None:
        """Resume ids above the persisted lease, so they keep increasing across restarts."""
        self.ids = LeasedIds(self.ctx.keyvalue("stanza_id"))
        await self.ids.load()
        self._domains = self.ctx.services.local_domains | {self.ctx.host.domain}

    def is_ours(self, by: str) -> bool:
        """Whether `by` is this server's domain or one of its accounts' bare JIDs."""
        try:
            jid = JID.parse(by)
        except JIDError:
            return False
        return jid.resource is None and (
            jid.domain in self._domains or jid.domain == self.ctx.host.domain
        )

    async def next_id(self) -> str:
        """A new id (extending the persisted lease first when needed)."""
        return await self.ids.next()

    @hook(PRE_MESSAGE, priority=STAMP_PRIORITY)
    def police_outgoing(self, event: StanzaEvent) -> bool:
        """A client never gets to send a stanza id in this server's name."""
        element = event.stanza.element
        if has_sid_children(element):
            strip_stanza_ids(element, self.is_ours)
            sanitize(element)
        return False

    @hook(MESSAGE_BARE, priority=STAMP_PRIORITY)
    @hook(MESSAGE_FULL, priority=STAMP_PRIORITY)
    def stamp(self, event: StanzaEvent) -> bool | Awaitable[bool]:
        """Replace any id in our name, then stamp the recipient account's id.

        Synchronous for an online recipient within the id lease (the hot path); otherwise it
        finishes asynchronously (account lookup, lease renewal).
        """
        element = event.stanza.element
        if has_sid_children(element):
            strip_stanza_ids(element, self.is_ours)
            sanitize(element)
        to = event.to
        if (event.stanza.type or "normal") not in STAMPED_TYPES or to.local is None:
            return False
        if self.ctx.sessions.has_sessions(to.bare) and self.ids.within_lease():
            # Every id in our name is gone by now (is_ours covers the account's bare JID).
            stamp_stanza_id(element, str(to.bare), self.ids.next_now(), replace=False)
            return False
        return self._stamp_later(element, to)

    async def _stamp_later(self, element: etree._Element, to: JID) -> bool:
        if await self._account(to):
            stamp_stanza_id(element, str(to.bare), await self.next_id(), replace=False)
        return False

    async def _account(self, to: JID) -> bool:
        """Whether `to` is an account (messages to missing accounts bounce unstamped)."""
        if self.ctx.sessions.has_sessions(to.bare):
            return True
        return await self.ctx.services.account_exists(to.domain, to.local or "")
