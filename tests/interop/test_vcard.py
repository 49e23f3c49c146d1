"""XEP-0054 vcard-temp and XEP-0153 avatar hashes with real slixmpp clients over sockets."""

from __future__ import annotations

import base64
import hashlib

import pytest
from slixmpp.exceptions import IqError

from tests.conftest import ClientFactory

pytestmark = pytest.mark.interop

IMAGE = b"GIF89a not really an image"


async def test_publish_and_read_vcard_with_avatar(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    bob = await connect("bob@localhost/b")
    for client in (alice, bob):
        client.register_plugin("xep_0054")
    vcard = alice.plugin["xep_0054"].make_vcard()
    vcard["FN"] = "Alice Liddell"
    vcard["PHOTO"]["TYPE"] = "image/gif"
    vcard["PHOTO"]["BINVAL"] = IMAGE
    await alice.plugin["xep_0054"].publish_vcard(vcard)

    iq = await bob.plugin["xep_0054"].get_vcard("alice@localhost")
    assert iq["vcard_temp"]["FN"] == "Alice Liddell"
    assert iq["vcard_temp"]["PHOTO"]["BINVAL"] == IMAGE

    # XEP-0153: the server adds the photo hash to presence that lacks it.
    alice.send_presence(pstatus="with avatar")
    while True:
        presence = await alice.next_presence()
        if presence["status"] == "with avatar":
            break
    photo = presence.xml.find("{vcard-temp:x:update}x/{vcard-temp:x:update}photo")
    assert photo is not None
    assert photo.text == hashlib.sha1(IMAGE).hexdigest()
    assert base64.b64encode(IMAGE)  # the BINVAL travelled base64-encoded


async def test_oversize_vcard_is_refused(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    alice.register_plugin("xep_0054")
    vcard = alice.plugin["xep_0054"].make_vcard()
    vcard["DESC"] = "x" * 70_000
    with pytest.raises(IqError) as info:
        await alice.plugin["xep_0054"].publish_vcard(vcard)
    assert info.value.condition == "not-acceptable"
