"""XEP-0191 Blocking Command with real slixmpp clients over sockets."""

from __future__ import annotations

import asyncio

import pytest
from slixmpp.exceptions import IqError

from tests.conftest import Client, ClientFactory

pytestmark = pytest.mark.interop


async def presence_from(client: Client, bare: str) -> None:
    """Wait for a presence from `bare` (TimeoutError after 0.3 s of nothing from it)."""
    while True:
        presence = await client.next_presence(timeout=0.3)
        if str(presence["from"].bare) == bare:
            raise AssertionError(f"got presence from {bare}: {presence}")


async def test_block_bounces_messages_and_hides_presence(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    bob = await connect("bob@localhost/b")
    alice.register_plugin("xep_0191")
    bob.register_plugin("xep_0191")
    await alice.plugin["xep_0191"].block("bob@localhost")
    assert await alice.plugin["xep_0191"].get_blocked_jids() == {"bob@localhost"}

    # bob's message comes back as an error and never reaches alice.
    bob.send_message(mto="alice@localhost", mbody="let me in", mtype="chat")
    while True:
        bounced = await bob.next_message()
        if bounced["type"] == "error":
            break
    assert bounced["error"]["condition"] == "service-unavailable"
    with pytest.raises(asyncio.TimeoutError):
        await alice.next_message(timeout=0.3)

    # alice's directed presence is refused; bob sees nothing of her.
    alice.send_presence(pto="bob@localhost/b", pstatus="hidden")
    with pytest.raises(asyncio.TimeoutError):
        await presence_from(bob, "alice@localhost")

    # alice cannot write to bob either: <not-acceptable/> + <blocked/>.
    alice.send_message(mto="bob@localhost/b", mbody="hi", mtype="chat")
    while True:
        refused = await alice.next_message()
        if refused["type"] == "error":
            break
    assert refused["error"]["condition"] == "not-acceptable"
    assert refused.xml.find(".//{urn:xmpp:blocking:errors}blocked") is not None

    await alice.plugin["xep_0191"].unblock("bob@localhost")
    bob.send_message(mto="alice@localhost/a", mbody="friends again", mtype="chat")
    assert (await alice.next_message())["body"] == "friends again"


async def test_block_without_items_is_bad_request(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    alice.register_plugin("xep_0191")
    with pytest.raises(IqError) as info:
        await alice.plugin["xep_0191"].block([])
    assert info.value.condition == "bad-request"
