"""XEP-0280 carbons and XEP-0359 stanza ids end to end with slixmpp clients."""

from __future__ import annotations

import asyncio

import pytest
import slixmpp
from slixmpp.exceptions import IqError

from tests.conftest import TIMEOUT, Client, ClientFactory
from xmppd.lib.stanza_id import find_stanza_id

pytestmark = pytest.mark.interop

NS = "urn:xmpp:carbons:2"
FWD = "{urn:xmpp:forward:0}forwarded"


_queues: dict[int, asyncio.Queue[slixmpp.Message]] = {}


def carbon_queue(client: Client) -> asyncio.Queue[slixmpp.Message]:
    """Carbon copies `client` accepted (slixmpp's xep_0280 checks they come from its own JID)."""
    queue = _queues.get(id(client))
    if queue is None:
        queue = _queues[id(client)] = asyncio.Queue()
        client.register_plugin("xep_0280")
        client.add_event_handler("carbon_received", queue.put_nowait)
        client.add_event_handler("carbon_sent", queue.put_nowait)
    return queue


async def carbons(client: Client, what: str = "enable") -> None:
    carbon_queue(client)
    iq = client.make_iq_set()
    iq.xml.append(slixmpp.ET.Element(f"{{{NS}}}{what}"))
    await iq.send(timeout=10)


async def next_carbon(client: Client) -> slixmpp.Message:
    return await asyncio.wait_for(carbon_queue(client).get(), TIMEOUT)


async def next_carbon_body(client: Client, kind: str) -> str | None:
    return inner(await next_carbon(client), kind).findtext("{jabber:client}body")


def inner(msg: slixmpp.Message, kind: str) -> slixmpp.ET.Element:
    wrapper = msg.xml.find(f"{{{NS}}}{kind}")
    assert wrapper is not None, str(msg)
    forwarded = wrapper.find(FWD)
    assert forwarded is not None
    return forwarded[0]


async def test_received_and_sent_carbons_across_two_resources(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    phone = await connect("bob@localhost/phone")
    laptop = await connect("bob@localhost/laptop")
    await carbons(phone)
    await carbons(laptop)

    alice.send_message(mto="bob@localhost/phone", mbody="hello phone", mtype="chat")
    original = await phone.next_message()
    copy = await next_carbon(laptop)
    assert str(copy["from"]) == "bob@localhost"
    forwarded = inner(copy, "received")
    assert forwarded.findtext("{jabber:client}body") == "hello phone"
    assert forwarded.get("from") == "alice@localhost/a"
    live_id = find_stanza_id(original.xml, "bob@localhost")
    assert live_id is not None
    assert find_stanza_id(forwarded, "bob@localhost") == live_id

    phone.send_message(mto="alice@localhost/a", mbody="hi alice", mtype="chat")
    assert (await alice.next_message())["body"] == "hi alice"
    sent = await next_carbon(laptop)
    assert str(sent["from"]) == "bob@localhost"
    forwarded = inner(sent, "sent")
    assert forwarded.get("from") == "bob@localhost/phone"
    assert forwarded.get("to") == "alice@localhost/a"
    # No copy went back to the sender: the next carbon the phone sees is the laptop's.
    laptop.send_message(mto="alice@localhost/a", mbody="from laptop", mtype="chat")
    assert await next_carbon_body(phone, "sent") == "from laptop"


async def test_disabled_resource_and_private_messages_get_no_copies(
    connect: ClientFactory,
) -> None:
    alice = await connect("alice@localhost/a")
    phone = await connect("bob@localhost/phone")
    laptop = await connect("bob@localhost/laptop")
    await carbons(phone)
    await carbons(laptop)

    private = alice.make_message(mto="bob@localhost/phone", mbody="just the phone", mtype="chat")
    private.xml.append(slixmpp.ET.Element(f"{{{NS}}}private"))
    private.send()
    got = await phone.next_message()
    assert got["body"] == "just the phone"
    assert got.xml.find(f"{{{NS}}}private") is None  # removed before delivery (§9)
    alice.send_message(mto="bob@localhost/phone", mbody="public", mtype="chat")
    assert (await phone.next_message())["body"] == "public"
    assert await next_carbon_body(laptop, "received") == "public"  # not "just the phone"

    await carbons(laptop, "disable")
    alice.send_message(mto="bob@localhost/phone", mbody="after disable", mtype="chat")
    assert (await phone.next_message())["body"] == "after disable"
    await carbons(laptop)
    alice.send_message(mto="bob@localhost/phone", mbody="enabled again", mtype="chat")
    assert (await phone.next_message())["body"] == "enabled again"
    assert await next_carbon_body(laptop, "received") == "enabled again"


async def test_forged_carbon_is_refused(connect: ClientFactory) -> None:
    mallory = await connect("carol@localhost/m")
    phone = await connect("bob@localhost/phone")
    await carbons(phone)
    forged = mallory.make_message(mto="bob@localhost/phone", mbody="look", mtype="chat")
    wrapper = slixmpp.ET.SubElement(forged.xml, f"{{{NS}}}sent")
    forwarded = slixmpp.ET.SubElement(wrapper, FWD)
    fake = slixmpp.ET.SubElement(forwarded, "{jabber:client}message")
    fake.set("from", "bob@localhost/laptop")
    fake.set("to", "alice@localhost")
    slixmpp.ET.SubElement(fake, "{jabber:client}body").text = "I never sent this"
    forged.send()
    err = await mallory.next_message()
    assert err["type"] == "error"
    assert err["error"]["condition"] == "not-acceptable"
    mallory.send_message(mto="bob@localhost/phone", mbody="next", mtype="chat")
    assert (await phone.next_message())["body"] == "next"  # the forged one never arrived
    assert carbon_queue(phone).empty()


async def test_stanza_id_identical_on_live_copy_carbon_and_offline_redelivery(
    connect: ClientFactory,
) -> None:
    alice = await connect("alice@localhost/a")
    # Offline: carol has no resource.
    alice.send_message(mto="carol@localhost", mbody="stored", mtype="chat")
    await alice.plugin["xep_0199"].ping("localhost", timeout=10)
    carol = await connect("carol@localhost/one")
    redelivered = await carol.next_message()
    assert redelivered["body"] == "stored"
    offline_id = find_stanza_id(redelivered.xml, "carol@localhost")
    assert offline_id is not None

    # Live plus carbon: the same id on both copies, a new one above the stored one.
    other = await connect("carol@localhost/two")
    await carbons(carol)
    await carbons(other)
    alice.send_message(mto="carol@localhost/one", mbody="live", mtype="chat")
    live = await carol.next_message()
    copy = await next_carbon(other)
    live_id = find_stanza_id(live.xml, "carol@localhost")
    assert live_id is not None
    assert live_id > offline_id
    assert find_stanza_id(inner(copy, "received"), "carol@localhost") == live_id


async def test_spoofed_stanza_id_is_removed(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    bob = await connect("bob@localhost/b")
    msg = alice.make_message(mto="bob@localhost/b", mbody="spoof", mtype="chat")
    for by in ("bob@localhost", "localhost"):
        forged = slixmpp.ET.SubElement(msg.xml, "{urn:xmpp:sid:0}stanza-id")
        forged.set("by", by)
        forged.set("id", "spoofed")
    origin = slixmpp.ET.SubElement(msg.xml, "{urn:xmpp:sid:0}origin-id")
    origin.set("id", "client-origin")
    msg.send()
    got = await bob.next_message()
    stamps = [(e.get("by"), e.get("id")) for e in got.xml.findall("{urn:xmpp:sid:0}stanza-id")]
    assert len(stamps) == 1
    assert stamps[0][0] == "bob@localhost"
    assert stamps[0][1] != "spoofed"
    kept = got.xml.find("{urn:xmpp:sid:0}origin-id")
    assert kept is not None
    assert kept.get("id") == "client-origin"


async def test_enabling_carbons_for_another_account_is_not_allowed(
    connect: ClientFactory,
) -> None:
    alice = await connect("alice@localhost/a")
    iq = alice.make_iq_set(ito="bob@localhost")
    iq.xml.append(slixmpp.ET.Element(f"{{{NS}}}enable"))
    with pytest.raises(IqError) as info:
        await iq.send(timeout=10)
    assert info.value.iq["error"]["condition"] == "not-allowed"


async def test_carbons_advertised_in_disco(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    info = await alice.plugin["xep_0030"].get_info(jid="localhost", timeout=10)
    features = info["disco_info"]["features"]
    assert NS in features
    assert "msgoffline" in features
    account = await alice.plugin["xep_0030"].get_info(jid="alice@localhost", timeout=10)
    assert "urn:xmpp:sid:0" in account["disco_info"]["features"]
