"""XEP-0352 Client State Indication over real sockets: slixmpp's xep_0352 and raw XML.

Holding is shown by coalescing: of two presence updates sent while the client is inactive only
the second arrives, so the first was held. Each step that must be processed before the next is
followed by a ping round trip on the same stream (RFC 6120 §10.1 in-order processing).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from lxml import etree

from tests.conftest import PASSWORD, TIMEOUT, Client, ClientFactory
from tests.helpers.sm import SmClient, sm, sm_login
from tests.helpers.wire import RawClient, client_context
from xmppd.events import SESSION_ENDED, SESSION_LOST, Priority, SessionEnded, SessionEvent
from xmppd.server import Server

pytestmark = pytest.mark.interop

NS_CSI = "urn:xmpp:csi:0"
MESSAGE = "{jabber:client}message"
PRESENCE = "{jabber:client}presence"
IQ = "{jabber:client}iq"
COMPOSING = (
    "<message to='alice@localhost/raw' type='chat'>"
    "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
)


@pytest.fixture
async def csi_client(server: Server) -> AsyncIterator[Client]:
    """alice@localhost/phone on slixmpp with the xep_0352 plugin, available."""
    client = Client("alice@localhost/phone", PASSWORD)
    client.register_plugin("xep_0352")
    client.ssl_context = client_context()
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    client.add_event_handler("session_start", lambda _: started.done() or started.set_result(None))
    client.connect("127.0.0.1", server.ports["c2s"][0])
    await asyncio.wait_for(started, TIMEOUT)
    client.send_presence()
    await client.next_presence()
    try:
        yield client
    finally:
        client.disconnect(wait=0)
        await asyncio.sleep(0)


async def raw_alice(server: Server) -> RawClient:
    raw = await RawClient.connect(server.ports["c2s"][0])
    await raw.login("alice", PASSWORD, resource="raw")
    return raw


async def raw_roundtrip(raw: RawClient, before: str = "") -> list[etree._Element]:
    """Send `before` and a ping in one write; return what arrived before the pong."""
    await raw.send(before + "<iq type='get' id='rt'><ping xmlns='urn:xmpp:ping'/></iq>")
    got = []
    while True:
        element = await raw.next()
        if element.tag == IQ and element.get("id") == "rt":
            assert element.get("type") == "result"
            return got
        got.append(element)


async def test_slixmpp_sees_the_feature_and_presence_is_held_while_inactive(
    csi_client: Client, connect: ClientFactory
) -> None:
    alice = csi_client
    assert alice.plugin["xep_0352"].enabled  # the stream feature was offered after auth
    bob = await connect("bob@localhost/desk")
    alice.plugin["xep_0352"].send_inactive()
    await alice.plugin["xep_0199"].ping("localhost")  # the nonza was processed before this
    bob.send_presence(pto="alice@localhost/phone", pstatus="one")
    bob.send_presence(pto="alice@localhost/phone", pstatus="two")
    bob.send_message(mto="alice@localhost/phone", mbody="wake up", mtype="chat")
    presence = await alice.next_presence()
    assert presence["status"] == "two"  # "one" was held, then replaced
    assert (await alice.next_message())["body"] == "wake up"
    assert alice.presences.empty()
    # active again: presence is delivered as it comes
    alice.plugin["xep_0352"].send_active()
    await alice.plugin["xep_0199"].ping("localhost")
    bob.send_presence(pto="alice@localhost/phone", pstatus="three")
    bob.send_presence(pto="alice@localhost/phone", pstatus="four")
    assert (await alice.next_presence())["status"] == "three"
    assert (await alice.next_presence())["status"] == "four"


async def test_urgent_message_arrives_at_once_while_inactive(
    server: Server, connect: ClientFactory
) -> None:
    raw = await raw_alice(server)
    bob = await connect("bob@localhost/desk")
    assert await raw_roundtrip(raw, f"<inactive xmlns='{NS_CSI}'/>") == []
    bob.send_presence(pto="alice@localhost/raw", pstatus="one")
    bob.send_raw(COMPOSING)
    bob.send_presence(pto="alice@localhost/raw", pstatus="two")
    bob.send_message(mto="alice@localhost/raw", mbody="urgent", mtype="chat")
    # the body message flushes what was held, in order, and comes right after it
    got = [await raw.next() for _ in range(3)]
    assert [e.tag for e in got] == [MESSAGE, PRESENCE, MESSAGE]
    assert got[0].find("{http://jabber.org/protocol/chatstates}composing") is not None
    assert got[1].findtext("{jabber:client}status") == "two"
    assert got[2].findtext("{jabber:client}body") == "urgent"
    await raw.close()


async def test_active_flushes_before_the_next_request_is_answered(
    server: Server, connect: ClientFactory
) -> None:
    raw = await raw_alice(server)
    bob = await connect("bob@localhost/desk")
    assert await raw_roundtrip(raw, f"<inactive xmlns='{NS_CSI}'/>") == []
    bob.send_presence(pto="alice@localhost/raw", pstatus="one")
    bob.send_raw(COMPOSING)
    bob.send_presence(pto="alice@localhost/raw", pstatus="two")
    await bob.plugin["xep_0199"].ping("localhost")  # bob's stanzas were routed
    # <active/> alone releases them (no IQ of ours goes out to flush them)
    await raw.send(f"<active xmlns='{NS_CSI}'/>")
    first, second = await raw.next(), await raw.next()
    assert first.tag == MESSAGE
    assert second.findtext("{jabber:client}status") == "two"
    # XEP-0352 §5.1: after <active/>, what the client sends next is answered after the flush
    assert await raw_roundtrip(raw, f"<inactive xmlns='{NS_CSI}'/>") == []
    bob.send_presence(pto="alice@localhost/raw", pstatus="three")
    await bob.plugin["xep_0199"].ping("localhost")
    got = await raw_roundtrip(raw, f"<active xmlns='{NS_CSI}'/>")
    assert [e.findtext("{jabber:client}status") for e in got] == ["three"]
    await raw.close()


async def test_inactive_with_garbage_is_accepted(server: Server, connect: ClientFactory) -> None:
    raw = await raw_alice(server)
    bob = await connect("bob@localhost/desk")
    garbage = (
        f"<inactive xmlns='{NS_CSI}' foo='bar'><junk xmlns='urn:example'>x<y/></junk>"
        "text</inactive>"
    )
    assert await raw_roundtrip(raw, garbage + garbage) == []
    bob.send_presence(pto="alice@localhost/raw", pstatus="one")
    bob.send_presence(pto="alice@localhost/raw", pstatus="two")
    await bob.plugin["xep_0199"].ping("localhost")
    got = await raw_roundtrip(raw, f"<active xmlns='{NS_CSI}' x='y'>z</active>")
    assert [e.findtext("{jabber:client}status") for e in got] == ["two"]
    await raw.close()


@pytest.mark.parametrize(
    "element",
    [
        f"<csi xmlns='{NS_CSI}'/>",
        f"<wakeup xmlns='{NS_CSI}'/>",
        "<inactive xmlns='urn:xmpp:csi:1'/>",
    ],
)
async def test_unknown_csi_element_is_unsupported_stanza_type(server: Server, element: str) -> None:
    raw = await raw_alice(server)
    await raw.send(element)
    assert await raw.stream_error() == "unsupported-stanza-type"
    await raw.close()


async def test_held_stanzas_are_not_lost_when_the_client_disconnects(
    server: Server, connect: ClientFactory
) -> None:
    raw = await raw_alice(server)
    bob = await connect("bob@localhost/desk")
    assert await raw_roundtrip(raw, f"<inactive xmlns='{NS_CSI}'/>") == []
    bob.send_presence(pto="alice@localhost/raw", pstatus="held")
    await bob.plugin["xep_0199"].ping("localhost")
    module = server.hosts["localhost"].modules["csi"]
    assert len(module._held) == 1  # type: ignore[attr-defined]  # the module's own state
    ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_end(event: SessionEnded) -> None:
        session = event.session
        if session.jid is not None and session.jid.resource == "raw" and not ended.done():
            ended.set_result(None)

    server.hosts["localhost"].bus.add_notify(SESSION_ENDED, on_end, Priority.LOW)
    await raw.close()
    # the session ends (no stream management for this client): nothing stays held
    await asyncio.wait_for(ended, TIMEOUT)
    assert module._held == {}  # type: ignore[attr-defined]


async def test_held_stanzas_survive_a_cut_and_the_resumed_stream_is_active(
    server: Server, connect: ClientFactory
) -> None:
    bob = await connect("bob@localhost/desk")
    alice = await sm_login(server.ports["c2s"][0], "alice", PASSWORD, "sm")
    again: SmClient | None = None
    lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_lost(event: SessionEvent) -> bool:
        if event.session.username == "alice" and not lost.done():
            lost.set_result(None)
        return False  # after CSI (FIRST), before stream management keeps the session

    server.hosts["localhost"].bus.add_chain(SESSION_LOST, on_lost, Priority.HIGH)
    try:
        await alice.send(f"<inactive xmlns='{NS_CSI}'/>")
        await alice.send_stanza("<iq type='get' id='rt'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert (await alice.stanza()).get("id") == "rt"
        bob.send_presence(pto="alice@localhost/sm", pstatus="one")
        bob.send_raw(COMPOSING.replace("alice@localhost/raw", "alice@localhost/sm"))
        bob.send_presence(pto="alice@localhost/sm", pstatus="two")
        await bob.plugin["xep_0199"].ping("localhost")
        assert alice.stanzas.empty()  # held
        previous = alice.state
        alice.writer.transport.abort()  # the link is cut: the session is kept for resumption
        await asyncio.wait_for(lost, TIMEOUT)

        again = await SmClient.connect(server.ports["c2s"][0])
        await again.authenticate("alice", PASSWORD)
        again.start()
        resumed = await again.resume(previous)
        assert resumed.tag == sm("resumed"), etree.tostring(resumed)
        # what CSI held went into the session when the link was lost: replayed, in order
        replay = [await again.stanza() for _ in range(2)]
        assert replay[0].tag == MESSAGE
        assert replay[1].findtext("{jabber:client}status") == "two"
        # XEP-0352 §5.2: the resumed stream is active (nothing is held or coalesced)
        bob.send_presence(pto="alice@localhost/sm", pstatus="three")
        bob.send_presence(pto="alice@localhost/sm", pstatus="four")
        statuses = [(await again.stanza()).findtext("{jabber:client}status") for _ in range(2)]
        assert statuses == ["three", "four"]
    finally:
        server.hosts["localhost"].bus.remove(SESSION_LOST, on_lost)
        await alice.stop()
        if again is not None:
            await again.stop()
