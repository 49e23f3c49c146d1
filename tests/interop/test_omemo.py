"""XEP-0384 OMEMO end to end through our PEP, with the slixmpp-omemo plugin on real slixmpp
clients: two contacts publish their device lists and bundles, fetch each other's, and exchange
messages that only the receiving client can read. The server is watched: no stanza it routes
carries the plaintext.

slixmpp-omemo publishes device lists and bundles of both OMEMO versions
(eu.siacs.conversations.axolotl and urn:xmpp:omemo:2) and both are checked here; it encrypts
message bodies with the older version only (it has no XEP-0420 stanza content encryption for
urn:xmpp:omemo:2), so that is the version the messages use.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import slixmpp
from lxml import etree
from omemo.storage import Just, Maybe, Nothing, Storage
from omemo.types import DeviceInformation, JSONType
from slixmpp.exceptions import IqError
from slixmpp.plugins import register_plugin
from slixmpp.xmlstream import ET
from slixmpp_omemo import XEP_0384

from tests.helpers.pep import PepClient as Client
from tests.helpers.pep import make_contacts, pep_client
from xmppd import events as ev
from xmppd.events import Priority
from xmppd.server import Server

pytestmark = [
    pytest.mark.interop,
    # slixmpp-omemo 2.2 still reaches plugins the way slixmpp 1.17 deprecates
    pytest.mark.filterwarnings(
        "ignore:Accessing plugins through the XMPP object:DeprecationWarning"
    ),
]

OLD = "eu.siacs.conversations.axolotl"
NEW = "urn:xmpp:omemo:2"
OLD_DEVICES = f"{OLD}.devicelist"
NEW_DEVICES = f"{NEW}:devices"
NEW_BUNDLES = f"{NEW}:bundles"
PLAINTEXT = "the owl flies at midnight 8f3a"


class MemoryStorage(Storage):
    """The library's storage interface kept in a dict (one per device: see DEVICES)."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, JSONType] = {}

    async def _load(self, key: str) -> Maybe[JSONType]:
        return Just(self.data[key]) if key in self.data else Nothing()

    async def _store(self, key: str, value: JSONType) -> None:
        self.data[key] = value

    async def _delete(self, key: str) -> None:
        self.data.pop(key, None)


# A device's OMEMO state by full JID, so that a client logging in again is the same device.
DEVICES: dict[str, MemoryStorage] = {}


class XEP_0384Impl(XEP_0384):  # noqa: N801  # slixmpp's plugin naming
    """OMEMO with in-memory storage and blind trust before verification (BTBV), as in the
    package's example client: every first-seen device is trusted."""

    default_config = {"fallback_message": "This message is OMEMO encrypted."}

    def plugin_init(self) -> None:
        self._memory = DEVICES.setdefault(str(self.xmpp.boundjid), MemoryStorage())
        super().plugin_init()

    @property
    def storage(self) -> Storage:
        return self._memory

    @property
    def _btbv_enabled(self) -> bool:
        return True

    async def _devices_blindly_trusted(
        self, blindly_trusted: frozenset[DeviceInformation], identifier: str | None
    ) -> None:
        return None

    async def _prompt_manual_trust(
        self, manually_trusted: frozenset[DeviceInformation], identifier: str | None
    ) -> None:
        raise AssertionError(f"BTBV should have trusted {manually_trusted}")


register_plugin(XEP_0384Impl)  # what register_plugin("xep_0384") now loads


@dataclass
class Pair:
    alice: Client
    bob: Client
    routed: list[bytes]  # every message stanza the server routed, serialised


async def omemo_client(server: Server, jid: str) -> Client:
    client = await pep_client(server, jid, plugins=("xep_0380", "xep_0384"), presence=False)
    # Built once its device list and bundles are published (both versions).
    await client.plugin["xep_0384"].get_session_manager()
    await client.plugin["xep_0115"].update_caps(broadcast=False)
    client.send_presence()
    while (await client.next_presence())["from"] != client.boundjid:
        pass
    return client


@pytest.fixture(autouse=True)
def _fresh_devices() -> None:
    DEVICES.clear()  # each test has a new server: no device from an earlier one


@pytest.fixture
async def pair(server: Server) -> AsyncIterator[Pair]:
    routed: list[bytes] = []

    def watch(event: ev.StanzaEvent) -> bool:
        routed.append(etree.tostring(event.stanza.element))
        return False  # only watching

    bus = server.hosts["localhost"].bus
    for key in (ev.PRE_MESSAGE, ev.MESSAGE_BARE, ev.MESSAGE_FULL):
        bus.add_chain(key, watch, Priority.FIRST)
    alice = await omemo_client(server, "alice@localhost/a")
    bob = await omemo_client(server, "bob@localhost/b")
    try:
        await make_contacts(alice, bob)
        yield Pair(alice, bob, routed)
    finally:
        alice.disconnect(wait=0)
        bob.disconnect(wait=0)
        for key in (ev.PRE_MESSAGE, ev.MESSAGE_BARE, ev.MESSAGE_FULL):
            bus.remove(key, watch)


async def device_ids(client: Client, owner: str) -> dict[str, set[int]]:
    """The device ids `client` finds in `owner`'s two device-list nodes."""
    pubsub = client.plugin["xep_0060"]
    old = await pubsub.get_items(owner, OLD_DEVICES, timeout=10)
    new = await pubsub.get_items(owner, NEW_DEVICES, timeout=10)
    old_xml, new_xml = old.xml, new.xml
    return {
        OLD: {int(d.get("id")) for d in old_xml.iter(f"{{{OLD}}}device")},
        NEW: {int(d.get("id")) for d in new_xml.iter(f"{{{NEW}}}device")},
    }


async def own_device_id(client: Client) -> int:
    manager = await client.plugin["xep_0384"].get_session_manager()
    info = await manager.get_own_device_information()
    return int(info[0].device_id)


async def encrypted_message(client: Client, to: str, body: str) -> slixmpp.Message:
    message = client.make_message(mto=to, mtype="chat")
    message["body"] = body
    encrypted, errors = await client.plugin["xep_0384"].encrypt_message(message, slixmpp.JID(to))
    assert encrypted is not None
    assert not errors, errors
    return encrypted


async def next_encrypted(client: Client) -> slixmpp.Message:
    while True:
        message = await client.next_message()
        if client.plugin["xep_0384"].is_encrypted(message):
            return message


async def test_device_lists_and_bundles_of_both_versions_are_published(pair: Pair) -> None:
    alice_id = await own_device_id(pair.alice)
    found = await device_ids(pair.bob, "alice@localhost")
    assert alice_id in found[OLD]
    assert alice_id in found[NEW]
    pubsub = pair.bob.plugin["xep_0060"]
    old_bundle = await pubsub.get_items("alice@localhost", f"{OLD}.bundles:{alice_id}", timeout=10)
    assert old_bundle.xml.find(f".//{{{OLD}}}bundle/{{{OLD}}}identityKey") is not None
    new_bundle = await pubsub.get_item("alice@localhost", NEW_BUNDLES, str(alice_id), timeout=10)
    assert new_bundle.xml.find(f".//{{{NEW}}}bundle/{{{NEW}}}ik") is not None


async def test_encrypted_messages_both_ways_and_the_server_never_sees_plaintext(
    pair: Pair,
) -> None:
    message = await encrypted_message(pair.alice, "bob@localhost", PLAINTEXT)
    assert PLAINTEXT not in str(message)
    message.send()

    received = await next_encrypted(pair.bob)
    assert OLD in pair.bob.plugin["xep_0384"].is_encrypted(received)
    assert received["body"] != PLAINTEXT  # what was relayed is the fallback text
    decrypted, device = await pair.bob.plugin["xep_0384"].decrypt_message(received)
    assert decrypted["body"] == PLAINTEXT
    assert device.bare_jid == "alice@localhost"
    assert device.device_id == await own_device_id(pair.alice)

    # And back, on the session the first message built.
    reply = await encrypted_message(pair.bob, "alice@localhost", PLAINTEXT + " ack")
    reply.send()
    back = await next_encrypted(pair.alice)
    decrypted, _ = await pair.alice.plugin["xep_0384"].decrypt_message(back)
    assert decrypted["body"] == PLAINTEXT + " ack"

    carrying = [s for s in pair.routed if f"{{{OLD}}}".encode() in s or OLD.encode() in s]
    assert carrying, "the encrypted messages went through the server"
    assert all(PLAINTEXT.encode() not in s for s in pair.routed)


async def test_a_device_list_update_reaches_the_contact(server: Server, pair: Pair) -> None:
    """A second device of alice's joins: bob learns of it by PEP notification (XEP-0384 §5.3
    via XEP-0163 +notify), and alice's next message is encrypted for it too."""
    second = await omemo_client(server, "alice@localhost/second")
    try:
        second_id = await own_device_id(second)
        # slixmpp-omemo processes the notification and updates its device list.
        manager = await pair.bob.plugin["xep_0384"].get_session_manager()
        deadline = 50
        while deadline:
            devices = await manager.get_device_information("alice@localhost")
            if second_id in {d.device_id for d in devices}:
                break
            await pair.bob.plugin["xep_0030"].get_info(jid="localhost", timeout=10)  # round trip
            deadline -= 1
        else:
            raise AssertionError("bob never learned of alice's second device")
        message = await encrypted_message(pair.bob, "alice@localhost", PLAINTEXT)
        message.send()
        decrypted, _ = await second.plugin["xep_0384"].decrypt_message(await next_encrypted(second))
        assert decrypted["body"] == PLAINTEXT
    finally:
        second.disconnect(wait=0)


async def test_a_stranger_may_fetch_keys_but_not_replace_them(server: Server, pair: Pair) -> None:
    """XEP-0384 §5.3.2: device lists and bundles are published with the open access model, so
    anyone may start a session; only the owner publishes (XEP-0060 §7.1.3.1: forbidden)."""
    carol = await pep_client(server, "carol@localhost/c")
    try:
        alice_id = await own_device_id(pair.alice)
        assert alice_id in (await device_ids(carol, "alice@localhost"))[NEW]
        bundle = await carol.plugin["xep_0060"].get_item(
            "alice@localhost", NEW_BUNDLES, str(alice_id), timeout=10
        )
        assert bundle.xml.find(f".//{{{NEW}}}bundle") is not None
        fake = ET.Element(f"{{{NEW}}}devices")
        ET.SubElement(fake, f"{{{NEW}}}device", id="12345")
        with pytest.raises(IqError) as info:
            await carol.plugin["xep_0060"].publish(
                "alice@localhost", NEW_DEVICES, id="current", payload=fake, timeout=10
            )
        assert info.value.condition == "forbidden"
        assert (await device_ids(carol, "alice@localhost"))[NEW] == {alice_id}
    finally:
        carol.disconnect(wait=0)


async def test_an_encrypted_message_waits_offline_as_ciphertext(server: Server, pair: Pair) -> None:
    """bob is offline: the server keeps the message (XEP-0160) as it came, ciphertext, and
    bob's device decrypts it when it is back."""
    pair.bob.disconnect()
    while True:
        presence = await pair.alice.next_presence()
        if presence["type"] == "unavailable" and presence["from"] == "bob@localhost/b":
            break
    message = await encrypted_message(pair.alice, "bob@localhost", PLAINTEXT)
    message.send()
    await pair.alice.plugin["xep_0030"].get_info(jid="localhost", timeout=10)  # a round trip

    bob = await omemo_client(server, "bob@localhost/b")  # the same device again
    try:
        received = await next_encrypted(bob)
        assert received.xml.find("{urn:xmpp:delay}delay") is not None
        decrypted, _ = await bob.plugin["xep_0384"].decrypt_message(received)
        assert decrypted["body"] == PLAINTEXT
    finally:
        bob.disconnect(wait=0)
    assert all(PLAINTEXT.encode() not in s for s in pair.routed)
