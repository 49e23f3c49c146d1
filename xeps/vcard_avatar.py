"""XEP-0153: vCard-Based Avatars — the server stamps the avatar hash on a user's presence.

When a client sends available presence without a ``<x xmlns='vcard-temp:x:update'/>`` child,
the server adds one carrying the SHA-1 of the photo in the user's stored vCard (XEP-0054), or an
empty ``<photo/>`` when there is none (XEP-0153 §4.1: empty means "no avatar"). A client that
includes the element itself (even empty, "not ready to advertise") is left alone.

The hash is read from the `vcard` store written by the vcard module (key ``photo``), cached per
online account, and forgotten when the account sets its vCard or its last session ends.
"""

from __future__ import annotations

from lxml import etree

from xmppd.events import PRE_IQ, PRE_PRESENCE, SESSION_ENDED, Priority, SessionEnded, StanzaEvent
from xmppd.module_api import Module, StoreKind, hook

NS_VCARD = "vcard-temp"
NS_UPDATE = "vcard-temp:x:update"
VCARD_SET = f"{{{NS_VCARD}}}vCard"
STORE = "vcard"  # shared with the vcard module: same (host, store) pair
KEY_PHOTO = "photo"


class VCardAvatar(Module):
    """Adds the vCard photo hash to outgoing available presence."""

    xeps = (153,)
    stores = {STORE: StoreKind.KEYVALUE}
    depends = ("vcard",)

    async def load(self) -> None:
        """Per-account cache of photo hashes (online accounts only)."""
        self._hashes: dict[str, str] = {}

    @hook(PRE_PRESENCE, priority=Priority.HIGH)
    async def stamp(self, event: StanzaEvent) -> bool:
        """Add the photo hash to available presence that lacks an x:update element."""
        stanza = event.stanza
        if stanza.type is not None or event.origin is None:
            return False
        element = stanza.element
        if element.find(f"{{{NS_UPDATE}}}x") is not None:
            return False
        username = event.origin.username or ""
        digest = self._hashes.get(username)
        if digest is None:
            stored = await self.ctx.keyvalue(STORE).get(username, KEY_PHOTO)
            digest = stored if isinstance(stored, str) else ""
            self._hashes[username] = digest
        x = etree.SubElement(element, f"{{{NS_UPDATE}}}x", nsmap={None: NS_UPDATE})
        photo = etree.SubElement(x, f"{{{NS_UPDATE}}}photo")
        if digest:
            photo.text = digest
        return False

    @hook(PRE_IQ, priority=Priority.HIGH)
    async def vcard_changed(self, event: StanzaEvent) -> bool:
        """A vCard set by the account: forget the cached hash (re-read on the next presence)."""
        stanza = event.stanza
        if (
            stanza.type == "set"
            and event.origin is not None
            and event.to == stanza.from_.bare
            and len(stanza.element)
            and stanza.element[0].tag == VCARD_SET
        ):
            self._hashes.pop(event.origin.username or "", None)
        return False

    @hook(SESSION_ENDED)
    async def forget(self, event: SessionEnded) -> None:
        """Drop the cache entry when the account's last session ends."""
        session = event.session
        if session.jid is not None and not self.ctx.sessions.has_sessions(session.jid.bare):
            self._hashes.pop(session.username or "", None)
