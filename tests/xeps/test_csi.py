"""XEP-0352 Client State Indication (xeps/csi.py): holding, coalescing and flushing.

Tier 2: a real Server on memory storage, fake sessions. Nonzas are handed to the host's nonza
handler as the connection does; stanzas come from other sessions through the real router.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lxml import etree

from tests.helpers.harness import ModuleHarness, parse_element
from xeps.csi import NS_CSI, ClientStateIndication
from xmppd.events import Priority
from xmppd.session import Session
from xmppd.stream.serializer import SharedBytes

INACTIVE = f"<inactive xmlns='{NS_CSI}'/>"
ACTIVE = f"<active xmlns='{NS_CSI}'/>"


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with ModuleHarness.started(
        tmp_path,
        accounts=("alice", "bob", "carol"),
        modules_enabled=["csi", "ping"],
        modules={"csi": {"max_stanzas": 10, "max_bytes": 4096}},
    ) as harness:
        yield harness


@pytest.fixture
async def alice(h: ModuleHarness) -> Session:
    return await h.connect("alice@localhost/phone", priority=0)


@pytest.fixture
async def bob(h: ModuleHarness) -> Session:
    return await h.connect("bob@localhost/desk", priority=0)


def csi(h: ModuleHarness) -> ClientStateIndication:
    module = h.host().modules["csi"]
    assert isinstance(module, ClientStateIndication)
    return module


async def nonza(h: ModuleHarness, session: Session, xml: str) -> None:
    """Hand a top-level element to its nonza handler, as C2SConnection._nonza does."""
    element = parse_element(xml)
    await h.host().nonza_handlers[str(element.tag)](session, element)


def ids(elements: list[etree._Element]) -> list[str | None]:
    return [e.get("id") for e in elements]


async def chat_state(h: ModuleHarness, sender: Session, to: str, id_: str) -> None:
    await h.send(
        sender,
        f"<message to='{to}' type='chat' id='{id_}'>"
        "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
    )


async def test_stream_feature_is_offered(h: ModuleHarness, alice: Session) -> None:
    features = [provider(alice) for provider in h.host().stream_features]
    tags = [f.tag for f in features if f is not None]
    assert f"{{{NS_CSI}}}csi" in tags


async def test_active_session_is_untouched(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await chat_state(h, bob, "alice@localhost/phone", "s1")
    await h.send(bob, "<presence to='alice@localhost/phone' id='p1'/>")
    assert ids(h.take(alice)) == ["s1", "p1"]
    assert csi(h)._held == {}


async def test_non_urgent_stanzas_are_held_until_active(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await nonza(h, alice, INACTIVE)
    await chat_state(h, bob, "alice@localhost/phone", "s1")
    await h.send(bob, "<presence to='alice@localhost/phone' id='p1'/>")
    await h.send(
        bob,
        "<message to='alice@localhost/phone' type='chat' id='r1'>"
        "<received xmlns='urn:xmpp:receipts' id='x'/></message>",
    )
    assert h.take(alice) == []
    await nonza(h, alice, ACTIVE)
    assert ids(h.take(alice)) == ["s1", "p1", "r1"]
    assert csi(h)._held == {}
    # active again: nothing is held any more
    await chat_state(h, bob, "alice@localhost/phone", "s2")
    assert ids(h.take(alice)) == ["s2"]


async def test_urgent_message_flushes_held_stanzas_first(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await nonza(h, alice, INACTIVE)
    await chat_state(h, bob, "alice@localhost/phone", "s1")
    await h.send(bob, "<presence to='alice@localhost/phone' id='p1'/>")
    assert h.take(alice) == []
    await h.send(
        bob, "<message to='alice@localhost/phone' type='chat' id='m1'><body>hi</body></message>"
    )
    assert ids(h.take(alice)) == ["s1", "p1", "m1"]
    # still inactive: holding goes on
    await chat_state(h, bob, "alice@localhost/phone", "s2")
    assert h.take(alice) == []
    assert alice.id in csi(h)._held


async def test_message_to_bare_jid_with_body_arrives_at_once(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await nonza(h, alice, INACTIVE)
    await h.send(bob, "<message to='alice@localhost' id='m1'><body>normal type</body></message>")
    assert ids(h.take(alice)) == ["m1"]


@pytest.mark.parametrize(
    ("xml", "urgent"),
    [
        ("<message type='groupchat'><body>x</body></message>", True),
        ("<message type='headline'><body>announcement</body></message>", False),
        ("<message type='error'><error type='cancel'/></message>", True),
        ("<message type='groupchat'><subject>topic</subject></message>", True),
        ("<message type='chat'><subject>not a room</subject></message>", False),
        ("<message><propose xmlns='urn:xmpp:jingle-message:0' id='c1'/></message>", True),
        ("<message><retract xmlns='urn:xmpp:jingle-message:0' id='c1'/></message>", True),
        ("<message><x xmlns='jabber:x:conference' jid='room@muc.localhost'/></message>", True),
        (
            "<message><x xmlns='http://jabber.org/protocol/muc#user'>"
            "<invite from='carol@localhost'/></x></message>",
            True,
        ),
        (
            "<message><x xmlns='http://jabber.org/protocol/muc#user'>"
            "<status code='104'/></x></message>",
            False,
        ),
        (
            "<message type='chat'><encrypted xmlns='eu.siacs.conversations.axolotl'>"
            "<header sid='1'/><payload>AAAA</payload></encrypted></message>",
            True,
        ),
        (  # an OMEMO key transport: no payload, nothing for the user
            "<message type='chat'><encrypted xmlns='eu.siacs.conversations.axolotl'>"
            "<header sid='1'/></encrypted></message>",
            False,
        ),
        ("<message type='chat'><openpgp xmlns='urn:xmpp:openpgp:0'>AA</openpgp></message>", True),
        (
            "<message type='headline'><event xmlns='http://jabber.org/protocol/pubsub#event'>"
            "<items node='n'/></event></message>",
            False,
        ),
        (
            "<message type='chat'><displayed xmlns='urn:xmpp:chat-markers:0' id='x'/></message>",
            False,
        ),
        (
            "<message type='chat'><received xmlns='urn:xmpp:carbons:2'>"
            "<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' type='chat'>"
            "<body>carbon</body></message></forwarded></received></message>",
            True,
        ),
        (
            "<message type='chat'><sent xmlns='urn:xmpp:carbons:2'>"
            "<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' type='chat'>"
            "<active xmlns='http://jabber.org/protocol/chatstates'/></message></forwarded>"
            "</sent></message>",
            False,
        ),
    ],
)
async def test_message_urgency(
    h: ModuleHarness, alice: Session, bob: Session, xml: str, urgent: bool
) -> None:
    await nonza(h, alice, INACTIVE)
    element = parse_element(xml)
    element.set("to", "alice@localhost/phone")
    element.set("id", "m1")
    await h.send(bob, element)
    got = h.take(alice)
    assert ids(got) == (["m1"] if urgent else [])
    await nonza(h, alice, ACTIVE)
    assert ids(h.take(alice)) == ([] if urgent else ["m1"])


async def test_presence_is_coalesced_per_sender_full_jid(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    bob2 = await h.connect("bob@localhost/tablet", priority=0)
    h.take(alice)
    await nonza(h, alice, INACTIVE)
    await h.send(bob, "<presence to='alice@localhost/phone' id='b1'><show>away</show></presence>")
    await h.send(bob2, "<presence to='alice@localhost/phone' id='t1'/>")
    await chat_state(h, bob, "alice@localhost/phone", "s1")
    await h.send(bob, "<presence to='alice@localhost/phone' id='b2'><show>xa</show></presence>")
    await h.send(bob2, "<presence to='alice@localhost/phone' type='unavailable' id='t2'/>")
    await h.send(bob, "<presence to='alice@localhost/phone' id='b3'><show>dnd</show></presence>")
    assert h.take(alice) == []
    await nonza(h, alice, ACTIVE)
    got = h.take(alice)
    # the latest per sender, in the position of its latest update; the message keeps its place
    assert ids(got) == ["s1", "t2", "b3"]
    assert got[1].get("type") == "unavailable"
    assert got[2].findtext("{jabber:client}show") == "dnd"


async def test_presence_errors_are_held_not_coalesced(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await nonza(h, alice, INACTIVE)
    await h.send(bob, "<presence to='alice@localhost/phone' id='p1'/>")
    await h.send(bob, "<presence to='alice@localhost/phone' type='error' id='e1'/>")
    await h.send(bob, "<presence to='alice@localhost/phone' type='error' id='e2'/>")
    assert h.take(alice) == []
    await nonza(h, alice, ACTIVE)
    assert ids(h.take(alice)) == ["p1", "e1", "e2"]


async def test_subscription_request_is_urgent(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await nonza(h, alice, INACTIVE)
    await h.send(bob, "<presence to='alice@localhost/phone' id='p1'/>")
    await h.send(bob, "<presence to='alice@localhost' type='subscribe' id='sub'/>")
    assert ids(h.take(alice)) == ["p1", "sub"]


async def test_iq_is_never_held_and_keeps_order(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await nonza(h, alice, INACTIVE)
    await chat_state(h, bob, "alice@localhost/phone", "s1")
    await h.send(
        bob, "<iq to='alice@localhost/phone' type='get' id='q1'><ping xmlns='urn:xmpp:ping'/></iq>"
    )
    # the IQ goes at once, after what the same sender sent before it (RFC 6120 §10.1)
    assert ids(h.take(alice)) == ["s1", "q1"]


async def test_iq_result_reaches_inactive_client(h: ModuleHarness, alice: Session) -> None:
    await nonza(h, alice, INACTIVE)
    await h.send(alice, "<iq type='get' id='ping1'><ping xmlns='urn:xmpp:ping'/></iq>")
    reply = h.take_one(alice)
    assert reply.get("type") == "result"
    assert reply.get("id") == "ping1"


async def test_stanza_cap_flushes_everything(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await nonza(h, alice, INACTIVE)
    for i in range(10):
        await chat_state(h, bob, "alice@localhost/phone", f"s{i}")
    assert h.take(alice) == []
    await chat_state(h, bob, "alice@localhost/phone", "s10")  # the 11th: past max_stanzas
    assert ids(h.take(alice)) == [f"s{i}" for i in range(11)]
    # still inactive; the counters start again
    await chat_state(h, bob, "alice@localhost/phone", "s11")
    assert h.take(alice) == []
    held = csi(h)._held[alice.id]
    assert len(held.stanzas) == 1
    assert 0 < held.size < 4096


async def test_byte_cap_flushes_everything(h: ModuleHarness, alice: Session, bob: Session) -> None:
    carol = await h.connect("carol@localhost/r", priority=0)
    await nonza(h, alice, INACTIVE)
    status = "x" * 1500
    for sender, id_ in ((bob, "b1"), (carol, "c1")):
        await h.send(
            sender,
            f"<presence to='alice@localhost/phone' id='{id_}'><status>{status}</status></presence>",
        )
    assert h.take(alice) == []
    await chat_state(h, carol, "alice@localhost/phone", "s1")
    assert h.take(alice) == []
    await h.send(
        carol,
        f"<message to='alice@localhost/phone' id='h1' type='headline'><body>{status}</body></message>",
    )
    # about 4.7 KB held: past max_bytes (4096), everything goes, in order
    assert ids(h.take(alice)) == ["b1", "c1", "s1", "h1"]
    assert csi(h)._held[alice.id].size == 0


async def test_coalesced_presence_does_not_count_twice(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await nonza(h, alice, INACTIVE)
    status = "x" * 1500
    for i in range(20):  # far more than either cap, all from one sender
        await h.send(
            bob,
            f"<presence to='alice@localhost/phone' id='b{i}'><status>{status}</status></presence>",
        )
    assert h.take(alice) == []
    held = csi(h)._held[alice.id]
    assert len(held.stanzas) == 1
    assert held.size < 2000
    await nonza(h, alice, ACTIVE)
    assert ids(h.take(alice)) == ["b19"]


async def test_repeated_inactive_and_active(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await nonza(h, alice, ACTIVE)  # already active: nothing happens
    await nonza(h, alice, INACTIVE)
    await chat_state(h, bob, "alice@localhost/phone", "s1")
    await nonza(h, alice, INACTIVE)  # again: what is held stays held
    await chat_state(h, bob, "alice@localhost/phone", "s2")
    assert h.take(alice) == []
    await nonza(h, alice, ACTIVE)
    assert ids(h.take(alice)) == ["s1", "s2"]
    await nonza(h, alice, ACTIVE)
    assert h.take(alice) == []
    for _ in range(50):
        await nonza(h, alice, INACTIVE)
        await nonza(h, alice, ACTIVE)
    assert csi(h)._held == {}
    assert alice.ext is None  # an active session costs nothing


async def test_inactive_with_garbage_children_and_attributes(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await nonza(
        h,
        alice,
        f"<inactive xmlns='{NS_CSI}' foo='bar' xml:lang='en'>text<evil xmlns='x'>"
        "<deeper/></evil></inactive>",
    )
    await chat_state(h, bob, "alice@localhost/phone", "s1")
    assert h.take(alice) == []
    await nonza(h, alice, f"<active xmlns='{NS_CSI}' junk='1'><x/></active>")
    assert ids(h.take(alice)) == ["s1"]
    assert h.conn(alice).close_error is None


async def test_nonza_before_binding_is_ignored(h: ModuleHarness) -> None:
    from tests.helpers.harness import FakeConnection

    unbound = Session(h.host(), FakeConnection())
    await nonza(h, unbound, INACTIVE)
    assert csi(h)._held == {}


async def test_session_lost_flushes_into_session_and_does_not_consume(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    seen: list[str | None] = []
    conn = h.conn(alice)

    def recorder(session: Session, element: etree._Element) -> etree._Element | None:
        if session is alice:
            seen.append(element.get("id"))
        return element

    # what stream management does: a filter after CSI's that sees what reaches the session
    h.host().add_send_filter(recorder, Priority.LOW)
    await nonza(h, alice, INACTIVE)
    await chat_state(h, bob, "alice@localhost/phone", "s1")
    await h.send(bob, "<presence to='alice@localhost/phone' id='p1'/>")
    assert seen == []
    alice.conn = None
    # SESSION_LOST with no stream management: CSI does not consume it, so the session ends
    await h.server.connection_lost(alice, "test", resumable=True)
    assert seen == ["s1", "p1"]
    assert conn.take() == []  # the connection was gone: nothing written
    assert csi(h)._held == {}
    assert h.server.sessions.get(alice.full_jid) is None


async def test_session_ended_leaves_nothing(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await nonza(h, alice, INACTIVE)
    await chat_state(h, bob, "alice@localhost/phone", "s1")
    await h.disconnect(alice)
    assert csi(h)._held == {}


async def test_resumed_on_another_connection_is_active(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    from tests.helpers.harness import FakeConnection

    await nonza(h, alice, INACTIVE)
    await chat_state(h, bob, "alice@localhost/phone", "s1")
    new = FakeConnection()
    alice.attach(new)  # XEP-0198 resumption on a new stream: it starts active (§5.2)
    await chat_state(h, bob, "alice@localhost/phone", "s2")
    assert ids(new.take()) == ["s1", "s2"]
    assert csi(h)._held == {}


async def test_resumption_releases_held_stanzas_at_once(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    from tests.helpers.harness import FakeConnection
    from xmppd import events as ev

    await nonza(h, alice, INACTIVE)
    await chat_state(h, bob, "alice@localhost/phone", "s1")
    new = FakeConnection()
    alice.attach(new)  # taken over while the old connection looked alive: no SESSION_LOST
    await h.host().bus.notify(ev.SESSION_RESUMED, ev.SessionEvent(alice))
    assert ids(new.take()) == ["s1"]  # without waiting for the next stanza
    assert csi(h)._held == {}


async def test_unload_flushes_held_stanzas(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await nonza(h, alice, INACTIVE)
    await chat_state(h, bob, "alice@localhost/phone", "s1")
    module = csi(h)
    await module.unload()
    assert ids(h.take(alice)) == ["s1"]
    assert module._held == {}


async def test_only_the_inactive_session_holds(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    laptop = await h.connect("alice@localhost/laptop", priority=0)
    h.take(alice)
    await nonza(h, alice, INACTIVE)
    await h.send(bob, "<presence to='alice@localhost' id='p1'/>")  # to every resource
    assert ids(h.take(laptop)) == ["p1"]
    assert h.take(alice) == []


async def test_fan_out_to_inactive_session_holds_its_own_copy(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await nonza(h, alice, INACTIVE)
    presence = etree.Element("{jabber:client}presence", nsmap={None: "jabber:client"}, id="f1")
    presence.set("from", "room@conference.localhost/carol")

    # One fan-out element and its bytes serve both: alice's filter holds, bob's gets it.
    await h.server.route_many(presence, ["alice@localhost/phone", "bob@localhost/desk"])

    assert [p.get("to") for p in h.take(bob)] == ["bob@localhost/desk"]
    await nonza(h, alice, ACTIVE)
    (held,) = h.take(alice)
    assert held.get("to") == "alice@localhost/phone"
    assert held.get("id") == "f1"


async def test_fan_out_without_shared_bytes_still_holds_a_copy(
    h: ModuleHarness, alice: Session, bob: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Review finding: when the splice is impossible, the element shared by every recipient
    # must not be held as it is (its 'to' changes for the next recipient).
    monkeypatch.setattr(SharedBytes, "of", classmethod(lambda cls, element: None))
    await nonza(h, alice, INACTIVE)
    presence = etree.Element("{jabber:client}presence", nsmap={None: "jabber:client"}, id="f2")
    presence.set("from", "room@conference.localhost/carol")

    await h.server.route_many(presence, ["alice@localhost/phone", "bob@localhost/desk"])

    assert [p.get("to") for p in h.take(bob)] == ["bob@localhost/desk"]
    await nonza(h, alice, ACTIVE)
    (held,) = h.take(alice)
    assert held.get("to") == "alice@localhost/phone"
