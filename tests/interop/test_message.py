"""Messages and directed presence between users and between resources of one user."""

from __future__ import annotations

import asyncio

import pytest
import slixmpp
from slixmpp.exceptions import IqError

from tests.conftest import ClientFactory
from xmppd.events import PRE_MESSAGE, Priority, StanzaEvent
from xmppd.module_api import Module, hook
from xmppd.server import Server

pytestmark = pytest.mark.interop


async def test_message_to_full_jid(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    bob = await connect("bob@localhost/b")
    alice.send_message(mto="bob@localhost/b", mbody="hello bob", mtype="chat")
    msg = await bob.next_message()
    assert msg["body"] == "hello bob"
    assert str(msg["from"]) == "alice@localhost/a"


async def test_message_to_bare_jid_goes_to_highest_priority(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    low = await connect("bob@localhost/low", presence=False)
    high = await connect("bob@localhost/high", presence=False)
    low.send_presence(ppriority=1)
    await low.next_presence()
    high.send_presence(ppriority=5)
    while True:  # wait for high's own presence (low's sibling presence may come too)
        p = await high.next_presence()
        if str(p["from"]) == "bob@localhost/high":
            break
    alice.send_message(mto="bob@localhost", mbody="to the bare jid", mtype="chat")
    msg = await high.next_message()
    assert msg["body"] == "to the bare jid"
    with pytest.raises(asyncio.TimeoutError):
        await low.next_message(timeout=0.5)


async def test_forged_from_is_rewritten(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    bob = await connect("bob@localhost/b")
    msg = alice.make_message(mto="bob@localhost/b", mbody="forged", mtype="chat")
    msg["from"] = "carol@localhost/evil"
    msg.send()
    got = await bob.next_message()
    assert got["body"] == "forged"
    assert str(got["from"]) == "alice@localhost/a"


async def test_messages_between_two_resources_of_one_user(connect: ClientFactory) -> None:
    one = await connect("alice@localhost/one")
    two = await connect("alice@localhost/two")
    one.send_message(mto="alice@localhost/two", mbody="note to self", mtype="chat")
    msg = await two.next_message()
    assert msg["body"] == "note to self"


async def test_order_is_kept(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    bob = await connect("bob@localhost/b")
    for i in range(200):
        alice.send_message(mto="bob@localhost/b", mbody=str(i), mtype="chat")
    got = [int((await bob.next_message())["body"]) for _ in range(200)]
    assert got == list(range(200))


async def test_directed_presence_reaches_the_other_user(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    bob = await connect("bob@localhost/b")
    alice.send_presence(pto="bob@localhost/b", pstatus="hi there")
    while True:
        p = await bob.next_presence()
        if str(p["from"]) == "alice@localhost/a":
            break
    assert p["status"] == "hi there"


async def test_message_to_unknown_user_is_answered_service_unavailable(
    connect: ClientFactory,
) -> None:
    alice = await connect("alice@localhost/a")
    alice.send_message(mto="nobody@localhost", mbody="anyone?", mtype="chat")
    err = await alice.next_message()
    assert err["type"] == "error"
    assert err["error"]["condition"] == "service-unavailable"
    assert str(err["from"]) == "nobody@localhost"


async def test_message_to_offline_user_that_cannot_be_stored_bounces(
    connect: ClientFactory,
) -> None:
    # RFC 6121 §8.5.2.2.1: not stored offline (here: a XEP-0334 <no-store/> hint) → an error.
    alice = await connect("alice@localhost/a")
    msg = alice.make_message(mto="carol@localhost", mbody="are you there", mtype="chat")
    msg.xml.append(slixmpp.ET.Element("{urn:xmpp:hints}no-store"))
    msg.send()
    err = await alice.next_message()
    assert err["type"] == "error"
    assert err["error"]["condition"] == "service-unavailable"


async def test_iq_to_unknown_namespace_is_service_unavailable(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    iq = alice.make_iq_get(queryxmlns="urn:example:unknown", ito="localhost")
    with pytest.raises(IqError) as info:
        await iq.send(timeout=10)
    assert info.value.iq["error"]["condition"] == "service-unavailable"


async def test_iq_between_users_is_routed_to_the_full_jid(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    bob = await connect("bob@localhost/b")
    await alice.plugin["xep_0199"].ping("bob@localhost/b", timeout=10)
    del bob


class _SlowHook(Module):
    """Suspends on some messages, as a storage-backed hook would."""

    name = "slow_hook"

    @hook(PRE_MESSAGE, priority=Priority.HIGH)
    async def slow(self, event: StanzaEvent) -> bool:
        body = event.stanza.element.findtext("{jabber:client}body") or ""
        if body.startswith("slow"):
            await asyncio.sleep(0.002)
        return False


async def test_order_is_kept_when_handlers_suspend(connect: ClientFactory, server: Server) -> None:
    await server.modules.load_one(
        server.hosts["localhost"], _SlowHook, "slow_hook", _SlowHook.Options()
    )
    alice = await connect("alice@localhost/a")
    bob = await connect("bob@localhost/b")
    # 400 messages, a third of them suspending: more than the backlog bound (100), so reading
    # is paused and resumed on the way; order must hold throughout.
    bodies = [f"slow{i}" if i % 3 == 0 else f"fast{i}" for i in range(400)]
    for body in bodies:
        alice.send_message(mto="bob@localhost/b", mbody=body, mtype="chat")
    got = [(await bob.next_message())["body"] for _ in bodies]
    assert got == bodies
