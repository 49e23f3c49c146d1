"""RFC 6121 §4 presence end to end: unavailable on disconnect, directed presence, priorities."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import Client, ClientFactory
from tests.interop.test_subscription import manual, of, wait_presence

pytestmark = pytest.mark.interop


async def befriend(a: Client, a_jid: str, b: Client, b_jid: str) -> None:
    """A mutual subscription through the protocol (both clients online and available)."""
    manual(a)
    manual(b)
    for asker, asker_jid, approver, approver_jid in ((a, a_jid, b, b_jid), (b, b_jid, a, a_jid)):
        asker.send_presence(pto=approver_jid, ptype="subscribe")
        await wait_presence(approver, of("subscribe", asker_jid))
        approver.send_presence(pto=asker_jid, ptype="subscribed")
        await wait_presence(asker, of("subscribed", approver_jid))


async def test_unavailable_reaches_contacts_when_the_connection_drops(
    connect: ClientFactory,
) -> None:
    alice = await connect("alice@localhost/a")
    bob = await connect("bob@localhost/b")
    await befriend(alice, "alice@localhost", bob, "bob@localhost")

    alice.abort()  # no </stream>, no unavailable: the server notices the lost connection

    await wait_presence(bob, of("unavailable", "alice@localhost/a"))


async def test_logout_unavailable_carries_the_status(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    bob = await connect("bob@localhost/b")
    await befriend(alice, "alice@localhost", bob, "bob@localhost")

    alice.send_presence(ptype="unavailable", pstatus="bye for now")

    got = await wait_presence(bob, of("unavailable", "alice@localhost/a"))
    assert got["status"] == "bye for now"


async def test_directed_presence_gets_unavailable_at_disconnect(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    carol = await connect("carol@localhost/c")  # no subscription either way

    alice.send_presence(pto="carol@localhost/c", pstatus="psst")
    hello = await wait_presence(carol, of("available", "alice@localhost/a"))
    assert hello["status"] == "psst"
    alice.abort()

    await wait_presence(carol, of("unavailable", "alice@localhost/a"))


async def test_directed_presence_to_the_bare_jid_of_a_stranger_is_delivered(
    connect: ClientFactory,
) -> None:
    """RFC 6121 §4.6 / §8.5.2.1.2: directed presence needs no subscription."""
    alice = await connect("alice@localhost/a")
    carol = await connect("carol@localhost/c")
    alice.send_presence(pto="carol@localhost", pstatus="to the bare JID")
    got = await wait_presence(carol, of("available", "alice@localhost/a"))
    assert got["status"] == "to the bare JID"


async def test_priorities_and_bare_jid_delivery(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    busy = await connect("bob@localhost/busy", presence=False)
    main = await connect("bob@localhost/main", presence=False)
    busy.send_presence(ppriority=-1)
    await wait_presence(busy, of("available", "bob@localhost/busy"))
    main.send_presence(ppriority=10)
    await wait_presence(main, of("available", "bob@localhost/main"))
    await befriend(alice, "alice@localhost", main, "bob@localhost")

    # Both resources get alice's presence (presence goes to every available resource)...
    alice.send_presence(pstatus="here")
    for session in (busy, main):
        await wait_presence(
            session, lambda p: of("available", "alice@localhost/a")(p) and p["status"] == "here"
        )
    # ...a new resource of alice learns both through the login probe, with priorities...
    alice2 = await connect("alice@localhost/a2")
    seen: dict[str, int] = {}
    while len(seen) < 2:
        p = await wait_presence(alice2, lambda p: str(p["from"]).startswith("bob@localhost/"))
        seen[str(p["from"])] = int(p["priority"])
    assert seen == {"bob@localhost/busy": -1, "bob@localhost/main": 10}
    # ...but a message to the bare JID goes to the non-negative one only.
    alice.send_message(mto="bob@localhost", mbody="for bob", mtype="chat")
    assert (await main.next_message())["body"] == "for bob"
    with pytest.raises(asyncio.TimeoutError):
        await busy.next_message(timeout=0.5)


async def test_bad_priority_is_refused(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a", presence=False)
    presence = alice.make_presence()
    priority = presence.xml.makeelement("{jabber:client}priority", {})
    priority.text = "very high"
    presence.xml.append(priority)
    presence.send()
    error = await wait_presence(alice, lambda p: p["type"] == "error")
    assert error["error"]["condition"] == "bad-request"
