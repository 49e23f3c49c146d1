"""XEP-0280 message carbons (xeps/carbons.py) with XEP-0334 <no-copy/> and XEP-0359 ids.

Tier 2: a real Server on memory storage, fake sessions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lxml import etree

from tests.helpers.harness import ModuleHarness, error_condition
from xmppd.lib.stanza_id import find_stanza_id
from xmppd.session import Session

NS = "urn:xmpp:carbons:2"
FWD = "{urn:xmpp:forward:0}forwarded"
MSG = "{jabber:client}message"
BODY = "{jabber:client}body"


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with ModuleHarness.started(
        tmp_path,
        accounts=("alice", "bob"),
        modules_enabled=["disco", "carbons", "stanza_id", "offline"],
    ) as harness:
        yield harness


async def enable(h: ModuleHarness, session: Session, what: str = "enable", to: str = "") -> None:
    to_attr = f" to='{to}'" if to else ""
    await h.send(session, f"<iq type='set' id='c'{to_attr}><{what} xmlns='{NS}'/></iq>")
    reply = h.take_one(session)
    assert reply.get("type") == "result", etree.tostring(reply)


@pytest.fixture
async def alice(h: ModuleHarness) -> Session:
    return await h.connect("alice@localhost/home", priority=0)


@pytest.fixture
async def bob1(h: ModuleHarness) -> Session:
    session = await h.connect("bob@localhost/one", priority=1)
    await enable(h, session)
    return session


@pytest.fixture
async def bob2(h: ModuleHarness, bob1: Session) -> Session:
    session = await h.connect("bob@localhost/two", priority=0)
    await enable(h, session)
    h.take(bob1)
    return session


def unwrap(copy: etree._Element, kind: str) -> etree._Element:
    wrapper = copy.find(f"{{{NS}}}{kind}")
    assert wrapper is not None, etree.tostring(copy)
    forwarded = wrapper.find(FWD)
    assert forwarded is not None
    (inner,) = forwarded
    assert inner.tag == MSG
    return inner


async def test_received_copy_to_other_enabled_resource(
    h: ModuleHarness, alice: Session, bob1: Session, bob2: Session
) -> None:
    await h.send(
        alice, "<message to='bob@localhost/one' type='chat' id='m'><body>hi</body></message>"
    )
    original = h.take_one(bob1)
    copy = h.take_one(bob2)
    assert copy.get("from") == "bob@localhost"
    assert copy.get("to") == "bob@localhost/two"
    assert copy.get("type") == "chat"
    inner = unwrap(copy, "received")
    assert inner.get("from") == "alice@localhost/home"
    assert inner.get("to") == "bob@localhost/one"
    assert inner.findtext(BODY) == "hi"
    sid = find_stanza_id(original, "bob@localhost")
    assert sid is not None
    assert find_stanza_id(inner, "bob@localhost") == sid


async def test_bare_message_copied_to_lower_priority_resource(
    h: ModuleHarness, alice: Session, bob1: Session, bob2: Session
) -> None:
    await h.send(alice, "<message to='bob@localhost' type='chat'><body>hi</body></message>")
    assert h.take_one(bob1).findtext(BODY) == "hi"
    assert unwrap(h.take_one(bob2), "received").findtext(BODY) == "hi"


async def test_no_copy_for_resources_receiving_the_original(
    h: ModuleHarness, alice: Session, bob1: Session
) -> None:
    bob2 = await h.connect("bob@localhost/two", priority=1)  # same priority: both get it
    await enable(h, bob2)
    h.take(bob1)
    await h.send(alice, "<message to='bob@localhost' type='chat'><body>hi</body></message>")
    assert h.take_one(bob1).find(f"{{{NS}}}received") is None
    assert h.take_one(bob2).find(f"{{{NS}}}received") is None


async def test_disabled_and_never_enabled_resources_get_no_copies(
    h: ModuleHarness, alice: Session, bob1: Session, bob2: Session
) -> None:
    plain = await h.connect("bob@localhost/plain", priority=0)
    await enable(h, bob2, "disable")
    await enable(h, bob2, "disable")  # twice is no error (§10.1)
    await h.send(alice, "<message to='bob@localhost/one' type='chat'><body>hi</body></message>")
    h.take_one(bob1)
    assert h.take(bob2) == []
    assert h.take(plain) == []


async def test_sent_copy_to_other_enabled_resources(
    h: ModuleHarness, alice: Session, bob1: Session, bob2: Session
) -> None:
    plain = await h.connect("bob@localhost/plain", priority=0)
    await h.send(bob1, "<message to='alice@localhost/home' type='chat'><body>yo</body></message>")
    assert h.take_one(alice).findtext(BODY) == "yo"
    copy = h.take_one(bob2)
    assert copy.get("from") == "bob@localhost"
    assert copy.get("to") == "bob@localhost/two"
    inner = unwrap(copy, "sent")
    assert inner.get("from") == "bob@localhost/one"
    assert inner.get("to") == "alice@localhost/home"
    assert h.take(bob1) == []  # never back to the sender
    assert h.take(plain) == []


async def test_sent_copy_even_when_the_sender_has_carbons_off(
    h: ModuleHarness, alice: Session, bob1: Session, bob2: Session
) -> None:
    await enable(h, bob1, "disable")
    await h.send(bob1, "<message to='alice@localhost' type='chat'><body>yo</body></message>")
    assert unwrap(h.take_one(bob2), "sent").findtext(BODY) == "yo"


@pytest.mark.parametrize(
    "message",
    [
        "<message to='{to}' type='chat'><body>p</body><private xmlns='urn:xmpp:carbons:2'/></message>",
        "<message to='{to}' type='chat'><body>p</body><no-copy xmlns='urn:xmpp:hints'/></message>",
        "<message to='{to}'><subject>no body</subject></message>",
        "<message to='{to}' type='headline'><body>news</body></message>",
        "<message to='{to}' type='groupchat'><body>room</body></message>",
        "<message to='{to}' type='error'><body>err</body></message>",
    ],
)
async def test_ineligible_messages_are_not_copied(
    h: ModuleHarness, alice: Session, bob1: Session, bob2: Session, message: str
) -> None:
    await h.send(alice, message.format(to="bob@localhost/one"))
    assert h.take(bob2) == []
    await h.send(bob1, message.format(to="alice@localhost/home"))
    assert h.take(bob2) == []


async def test_normal_message_with_body_is_copied(
    h: ModuleHarness, alice: Session, bob1: Session, bob2: Session
) -> None:
    await h.send(alice, "<message to='bob@localhost/one'><body>n</body></message>")
    assert unwrap(h.take_one(bob2), "received").findtext(BODY) == "n"


async def test_private_element_is_removed_before_delivery(
    h: ModuleHarness, alice: Session, bob1: Session, bob2: Session
) -> None:
    await h.send(
        alice,
        "<message to='bob@localhost/one' type='chat'><body>p</body>"
        "<private xmlns='urn:xmpp:carbons:2'/></message>",
    )
    assert h.take_one(bob1).find(f"{{{NS}}}private") is None
    assert h.take(bob2) == []


async def test_muc_private_message_is_not_copied(
    h: ModuleHarness, alice: Session, bob1: Session, bob2: Session
) -> None:
    await h.send(
        alice,
        "<message to='bob@localhost/one' type='chat'><body>pm</body>"
        "<x xmlns='http://jabber.org/protocol/muc#user'/></message>",
    )
    h.take_one(bob1)
    assert h.take(bob2) == []


async def test_message_between_own_resources_copies_to_the_third_only(
    h: ModuleHarness, bob1: Session, bob2: Session
) -> None:
    bob3 = await h.connect("bob@localhost/three", priority=0)
    await enable(h, bob3)
    h.take(bob1), h.take(bob2)
    await h.send(bob1, "<message to='bob@localhost/two' type='chat'><body>self</body></message>")
    assert h.take_one(bob2).findtext(BODY) == "self"
    assert unwrap(h.take_one(bob3), "received").findtext(BODY) == "self"
    assert h.take(bob1) == []


async def test_offline_message_still_copied_to_negative_priority_enabled_resource(
    h: ModuleHarness, alice: Session
) -> None:
    low = await h.connect("bob@localhost/low", priority=-1)
    await enable(h, low)
    await h.send(alice, "<message to='bob@localhost' type='chat'><body>later</body></message>")
    assert unwrap(h.take_one(low), "received").findtext(BODY) == "later"
    assert h.take(alice) == []  # stored offline, no error


async def test_forged_carbon_from_a_client_is_refused(
    h: ModuleHarness, alice: Session, bob1: Session, bob2: Session
) -> None:
    forged = (
        "<message to='bob@localhost/one' type='chat' id='f'>"
        "<{kind} xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>"
        "<message xmlns='jabber:client' from='bob@localhost/two' to='carol@localhost'"
        " type='chat'><body>I never said that</body></message>"
        "</forwarded></{kind}></message>"
    )
    for kind in ("sent", "received"):
        await h.send(alice, forged.format(kind=kind))
        reply = h.take_one(alice)
        assert error_condition(reply) == "not-acceptable"
        assert h.take(bob1) == []
        assert h.take(bob2) == []
    # Not even to the user's own resources.
    await h.send(bob2, forged.format(kind="sent"))
    assert error_condition(h.take_one(bob2)) == "not-acceptable"
    assert h.take(bob1) == []


async def test_forged_carbon_routed_from_elsewhere_is_stripped(
    h: ModuleHarness, bob1: Session, bob2: Session
) -> None:
    # A stanza from outside (server-routed, as s2s will be) with a carbons wrapper.
    element = etree.fromstring(
        "<message xmlns='jabber:client' from='mallory@evil.example/x' to='bob@localhost/one'"
        " type='chat'><body>hello</body><received xmlns='urn:xmpp:carbons:2'>"
        "<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'"
        " from='bob@localhost/two' to='carol@localhost' type='chat'><body>lie</body>"
        "</message></forwarded></received></message>"
    )
    await h.server.router.route(element)
    got = h.take_one(bob1)
    assert got.find(f"{{{NS}}}received") is None
    assert got.findtext(BODY) == "hello"
    copy = h.take_one(bob2)  # the (now clean) message is copied as usual
    assert unwrap(copy, "received").find(f"{{{NS}}}received") is None


async def test_enable_for_another_account_is_not_allowed(h: ModuleHarness, alice: Session) -> None:
    await h.send(alice, f"<iq type='set' id='c' to='bob@localhost'><enable xmlns='{NS}'/></iq>")
    reply = h.take_one(alice)
    assert error_condition(reply) == "not-allowed"


async def test_enable_addressed_to_the_server_works(
    h: ModuleHarness, alice: Session, bob1: Session
) -> None:
    other = await h.connect("bob@localhost/other", priority=0)
    await enable(h, other, to="localhost")
    await h.send(alice, "<message to='bob@localhost/one' type='chat'><body>x</body></message>")
    h.take_one(bob1)
    assert unwrap(h.take_one(other), "received").findtext(BODY) == "x"


async def test_carbons_feature_is_advertised(h: ModuleHarness, alice: Session) -> None:
    await h.send(
        alice,
        "<iq type='get' id='d' to='localhost'>"
        "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    )
    reply = h.take_one(alice)
    features = {f.get("var") for f in reply.iter("{http://jabber.org/protocol/disco#info}feature")}
    assert NS in features
