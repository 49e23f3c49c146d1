"""XEP-0054: vcard-temp — each account's vCard, stored by the server and readable by anyone.

A user sets their own vCard (an IQ set with no 'to' or to their own bare JID); anyone may get a
user's vCard from the user's bare JID, and the server answers on the account's behalf. The
serialised vCard is limited to `max_size` bytes (not-acceptable beyond). The SHA-1 of the photo
(XEP-0153) is stored next to it so that the vcard_avatar module needs no decoding at login.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from lxml import etree

from xmppd.errors import StanzaError
from xmppd.module_api import IqRequest, Module, StoreKind, Target, iq_handler

NS_VCARD = "vcard-temp"
STORE = "vcard"
KEY_VCARD = "vcard"
KEY_PHOTO = "photo"  # XEP-0153 hash of the photo ("" when there is none)


def photo_hash(vcard: etree._Element) -> str:
    """SHA-1 (hex) of the decoded PHOTO/BINVAL, or "" when there is no (valid) photo."""
    binval = vcard.findtext(f"{{{NS_VCARD}}}PHOTO/{{{NS_VCARD}}}BINVAL")
    if not binval or not binval.strip():
        return ""
    try:
        data = base64.b64decode("".join(binval.split()), validate=True)
    except (binascii.Error, ValueError):
        return ""
    return hashlib.sha1(data, usedforsecurity=False).hexdigest() if data else ""


class VCard(Module):
    """vcard-temp storage."""

    xeps = (54,)
    features = (NS_VCARD,)
    stores = {STORE: StoreKind.KEYVALUE}

    @dataclass(frozen=True)
    class Options:
        """`max_size`: largest accepted vCard, in bytes of its serialised form."""

        max_size: int = 65536

    @iq_handler("get", NS_VCARD, "vCard", to=Target.ACCOUNT)
    async def get(self, request: IqRequest) -> etree._Element:
        """Anyone may read a user's vCard; an account without one gets an empty <vCard/>."""
        username = request.to.local or ""
        stored = await self.ctx.keyvalue(STORE).get(username, KEY_VCARD)
        if isinstance(stored, str):
            try:
                return etree.fromstring(stored.encode())
            except etree.XMLSyntaxError:
                self.ctx.log.error("stored vCard of %s is corrupt", username)
        return etree.Element(f"{{{NS_VCARD}}}vCard", nsmap={None: NS_VCARD})

    @iq_handler("set", NS_VCARD, "vCard", to=Target.ACCOUNT)
    async def set(self, request: IqRequest) -> None:
        """Only the account itself may change its vCard."""
        request.own_account("its vCard")
        data = etree.tostring(request.payload)
        if len(data) > self.options.max_size:
            raise StanzaError(
                "not-acceptable", f"the vCard is larger than {self.options.max_size} bytes"
            )
        store = self.ctx.keyvalue(STORE)
        username = request.to.local or ""
        if len(request.payload) == 0 and not (request.payload.text or "").strip():
            # An empty vCard removes the stored one.
            await store.delete(username, KEY_VCARD)
            await store.delete(username, KEY_PHOTO)
            return None
        await store.set(username, KEY_VCARD, data.decode())
        await store.set(username, KEY_PHOTO, photo_hash(request.payload))
        return None
