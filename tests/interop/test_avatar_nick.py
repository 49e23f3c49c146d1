"""XEP-0084 User Avatar and XEP-0172 User Nickname served by our PEP (XEP-0163), with real
slixmpp clients (plugins xep_0084, xep_0172; +notify interests in XEP-0115 caps)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from lxml import etree
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET

from tests.helpers.pep import PepClient as Client
from tests.helpers.pep import make_contacts, next_event, no_event, pep_client
from xmppd.server import Server

pytestmark = pytest.mark.interop

META = "urn:xmpp:avatar:metadata"
DATA = "urn:xmpp:avatar:data"
NICK = "http://jabber.org/protocol/nick"
PUBSUB_ERRORS = "http://jabber.org/protocol/pubsub#errors"
PLUGINS = ("xep_0084", "xep_0172")
# A 1x1 PNG: what an avatar looks like on the wire does not matter to the server.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
PNG_ID = hashlib.sha1(PNG).hexdigest()


@dataclass
class Pair:
    alice: Client
    bob: Client


@pytest.fixture
async def pair(server: Server) -> AsyncIterator[Pair]:
    """alice and bob, contacts with a both subscription, both interested in avatars and nicks."""
    alice = await pep_client(server, "alice@localhost/a", plugins=PLUGINS)
    bob = await pep_client(server, "bob@localhost/b", plugins=PLUGINS)
    try:
        await make_contacts(alice, bob)
        yield Pair(alice, bob)
    finally:
        alice.disconnect(wait=0)
        bob.disconnect(wait=0)


async def publish_avatar(client: Client) -> None:
    """XEP-0084 §4.1-4.2: the data first, then the metadata pointing at it."""
    await client.plugin["xep_0084"].publish_avatar(PNG, timeout=10)
    await client.plugin["xep_0084"].publish_avatar_metadata(
        [{"id": PNG_ID, "type": "image/png", "bytes": str(len(PNG)), "height": "1", "width": "1"}],
        timeout=10,
    )


def caps_features(client: Client) -> set[str]:
    return set(client.plugin["xep_0030"].static.get_node(client.boundjid, None)["info"]["features"])


async def test_clients_announce_notify_interest(pair: Pair) -> None:
    """The premise of the other tests: +notify is in the caps the server reads (§4.3)."""
    features = caps_features(pair.bob)
    assert f"{META}+notify" in features
    assert f"{NICK}+notify" in features
    assert f"{DATA}+notify" not in features


async def test_avatar_metadata_reaches_the_contact_and_data_is_retrievable(pair: Pair) -> None:
    await publish_avatar(pair.alice)
    items = await next_event(pair.bob, META)
    assert items.getparent() is not None
    message = items.getparent().getparent()
    assert message is not None
    assert message.get("from") == "alice@localhost"
    (item,) = items
    assert item.get("id") == PNG_ID
    info = item.find(f"{{{META}}}metadata/{{{META}}}info")
    assert info is not None
    assert (info.get("id"), info.get("type"), info.get("bytes")) == (
        PNG_ID,
        "image/png",
        str(len(PNG)),
    )
    # XEP-0084 §4.2: the contact fetches the data by the id the metadata gave.
    result = await pair.bob.plugin["xep_0084"].retrieve_avatar(
        "alice@localhost", PNG_ID, timeout=10
    )
    (data_item,) = result["pubsub"]["items"]
    assert data_item["id"] == PNG_ID
    assert data_item["avatar_data"]["value"] == PNG
    # bob never asked for data notifications (no urn:xmpp:avatar:data+notify): none came.
    assert no_event(pair.bob, DATA)


async def test_the_owners_other_resource_is_notified_too(server: Server, pair: Pair) -> None:
    """XEP-0163 §4.3.4: the account owner itself gets notifications too."""
    second = await pep_client(server, "alice@localhost/second", plugins=PLUGINS)
    try:
        await pair.alice.plugin["xep_0172"].publish_nick("Ally", timeout=10)
        items = await next_event(second, NICK)
        assert items.findtext(f"{{*}}item/{{{NICK}}}nick") == "Ally"
    finally:
        second.disconnect(wait=0)


async def test_nickname_reaches_the_contact(pair: Pair) -> None:
    await pair.alice.plugin["xep_0172"].publish_nick("Ally", timeout=10)
    items = await next_event(pair.bob, NICK)
    assert items.findtext(f"{{*}}item/{{{NICK}}}nick") == "Ally"
    # And it is the node's current item for anyone allowed to ask (XEP-0172 §4.5).
    result = await pair.bob.plugin["xep_0060"].get_items("alice@localhost", NICK, timeout=10)
    (item,) = result["pubsub"]["items"]
    assert item.xml.findtext(f"{{{NICK}}}nick") == "Ally"


async def test_a_contact_coming_online_gets_the_last_items(server: Server, pair: Pair) -> None:
    """XEP-0163 §4.3.3-4.3.4: initial presence with +notify caps brings the last item."""
    await pair.alice.plugin["xep_0172"].publish_nick("Ally", timeout=10)
    await publish_avatar(pair.alice)
    later = await pep_client(server, "bob@localhost/later", plugins=PLUGINS)
    try:
        nick = await next_event(later, NICK)
        assert nick.findtext(f"{{*}}item/{{{NICK}}}nick") == "Ally"
    finally:
        later.disconnect(wait=0)


async def test_stopping_the_avatar_notifies_an_empty_metadata(pair: Pair) -> None:
    """XEP-0084 §4.5: an empty <metadata/> says the avatar is gone."""
    await publish_avatar(pair.alice)
    await next_event(pair.bob, META)
    await pair.alice.plugin["xep_0084"].stop(timeout=10)
    items = await next_event(pair.bob, META)
    metadata = items.find(f"{{*}}item/{{{META}}}metadata")
    assert metadata is not None
    assert len(metadata) == 0


async def test_a_stranger_is_not_notified_and_cannot_read(server: Server, pair: Pair) -> None:
    """XEP-0163 §5 and §4.3: the default access model is presence; carol has no
    subscription to alice, so no notification, and XEP-0060 §6.5.9.6 refuses her
    retrieval (not-authorized, <presence-subscription-required/>)."""
    carol = await pep_client(server, "carol@localhost/c", plugins=PLUGINS)
    try:
        await publish_avatar(pair.alice)
        await pair.alice.plugin["xep_0172"].publish_nick("Ally", timeout=10)
        await next_event(pair.bob, NICK)  # everything went out to those allowed
        with pytest.raises(IqError) as info:
            await carol.plugin["xep_0084"].retrieve_avatar("alice@localhost", PNG_ID, timeout=10)
        assert info.value.condition == "not-authorized"
        error = etree.fromstring(str(info.value.iq))
        assert error.find(f".//{{{PUBSUB_ERRORS}}}presence-subscription-required") is not None
        assert "iVBOR" not in str(info.value.iq)
        await carol.plugin["xep_0030"].get_info(jid="localhost", timeout=10)  # a round trip
        assert no_event(carol, META)
        assert no_event(carol, NICK)
    finally:
        carol.disconnect(wait=0)


async def test_a_contact_cannot_publish_to_anothers_node(pair: Pair) -> None:
    """XEP-0060 §7.1.3.1: only the owner (the one publisher, XEP-0163 §3) publishes."""
    nick = pair.bob.plugin["xep_0172"].stanza.UserNick()
    nick["nick"] = "Mallory"
    with pytest.raises(IqError) as info:
        await pair.bob.plugin["xep_0060"].publish(
            "alice@localhost", NICK, id="current", payload=nick, timeout=10
        )
    assert info.value.condition == "forbidden"


async def test_nickname_in_a_subscription_request(server: Server) -> None:
    """XEP-0172 §4.2: a nick in a subscription request reaches the contact as sent."""
    alice = await pep_client(server, "alice@localhost/a", plugins=PLUGINS)
    carol = await pep_client(server, "carol@localhost/c", plugins=PLUGINS)
    try:
        alice.roster.auto_authorize = None
        request = carol.make_presence(pto="alice@localhost", ptype="subscribe")
        ET.SubElement(request.xml, f"{{{NICK}}}nick").text = "Carol C."
        request.send()
        while True:
            presence = await alice.next_presence()
            if presence["type"] == "subscribe":
                break
        assert str(presence["from"]) == "carol@localhost"
        assert presence.xml.findtext(f"{{{NICK}}}nick") == "Carol C."
    finally:
        alice.disconnect(wait=0)
        carol.disconnect(wait=0)
