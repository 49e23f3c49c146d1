"""XEP-0191 Blocking Command (xeps/blocking.py).

Tier 2: a real Server on memory storage (SQLite for the restart test), fake sessions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lxml import etree

from tests.helpers.harness import ModuleHarness, error_condition, parse_element
from xeps.blocking import matches
from xmppd.events import ROSTER_QUERY, RosterQuery
from xmppd.jid import JID
from xmppd.module_api import Module, hook
from xmppd.session import Session

NS = "urn:xmpp:blocking"
BLOCKED = "{urn:xmpp:blocking:errors}blocked"
MODULES = ["disco", "blocking"]


def block(*jids: str, id_: str = "b1") -> str:
    items = "".join(f"<item jid='{j}'/>" for j in jids)
    return f"<iq type='set' id='{id_}'><block xmlns='{NS}'>{items}</block></iq>"


def unblock(*jids: str, id_: str = "u1") -> str:
    items = "".join(f"<item jid='{j}'/>" for j in jids)
    return f"<iq type='set' id='{id_}'><unblock xmlns='{NS}'>{items}</unblock></iq>"


BLOCKLIST = f"<iq type='get' id='l1'><blocklist xmlns='{NS}'/></iq>"


def listed(reply: etree._Element) -> list[str]:
    return [item.get("jid") or "" for item in reply.iter(f"{{{NS}}}item")]


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with ModuleHarness.started(
        tmp_path, accounts=("alice", "bob", "carol"), modules_enabled=MODULES
    ) as harness:
        yield harness


@pytest.fixture
async def alice(h: ModuleHarness) -> Session:
    return await h.connect("alice@localhost/home", priority=0)


@pytest.fixture
async def bob(h: ModuleHarness) -> Session:
    return await h.connect("bob@localhost/work", priority=0)


async def blocks_bob(h: ModuleHarness, alice: Session) -> None:
    await h.send(alice, block("bob@localhost"))
    replies = h.take(alice)
    assert [r.get("type") for r in replies if r.get("id") == "b1"] == ["result"]


@pytest.mark.parametrize(
    ("item", "jid", "expected"),
    [
        ("bob@localhost", "bob@localhost/any", True),
        ("bob@localhost", "bob@localhost", True),
        ("bob@localhost/work", "bob@localhost/work", True),
        ("bob@localhost/work", "bob@localhost/home", False),
        ("bob@localhost/work", "bob@localhost", False),
        ("evil.example", "mallory@evil.example/x", True),
        ("evil.example", "evil.example", True),
        ("evil.example/r", "evil.example/r", True),
        ("evil.example/r", "mallory@evil.example/r", True),
        ("evil.example/r", "mallory@evil.example/other", False),
        ("evil.example", "conference.evil.example", True),
        ("evil.example", "room@conference.evil.example/nick", True),
        ("evil.example", "notevil.example", False),
        ("bob@localhost", "carol@localhost", False),
        ("bob@localhost", "bob@elsewhere", False),
    ],
)
def test_jid_matching_follows_xep_0191(item: str, jid: str, expected: bool) -> None:
    assert matches(JID.parse(item), JID.parse(jid)) is expected


async def test_blocklist_starts_empty(h: ModuleHarness, alice: Session) -> None:
    await h.send(alice, BLOCKLIST)
    reply = h.take_one(alice)
    assert reply.get("type") == "result"
    assert reply.find(f"{{{NS}}}blocklist") is not None
    assert listed(reply) == []


async def test_block_unblock_and_unblock_all(h: ModuleHarness, alice: Session) -> None:
    await h.send(alice, block("bob@localhost", "evil.example"))
    await h.send(alice, BLOCKLIST)
    assert listed(h.take(alice)[-1]) == ["bob@localhost", "evil.example"]
    await h.send(alice, unblock("evil.example"))
    await h.send(alice, BLOCKLIST)
    assert listed(h.take(alice)[-1]) == ["bob@localhost"]
    await h.send(alice, block("carol@localhost"))
    await h.send(alice, unblock())
    await h.send(alice, BLOCKLIST)
    assert listed(h.take(alice)[-1]) == []


async def test_block_pushes_only_to_interested_resources(h: ModuleHarness) -> None:
    interested = await h.connect("alice@localhost/one")
    other = await h.connect("alice@localhost/two")
    await h.send(interested, BLOCKLIST)
    h.take(interested)
    await h.send(other, block("bob@localhost"))
    (push,) = h.take(interested)
    assert push.get("type") == "set"
    assert push.get("to") == "alice@localhost/one"
    assert push.find(f"{{{NS}}}block") is not None
    assert listed(push) == ["bob@localhost"]
    assert [r.get("type") for r in h.take(other)] == ["result"]  # not interested: no push
    await h.send(other, unblock())
    (push,) = h.take(interested)
    unblock_el = push.find(f"{{{NS}}}unblock")
    assert unblock_el is not None
    assert len(unblock_el) == 0


async def test_block_without_items_is_bad_request(h: ModuleHarness, alice: Session) -> None:
    await h.send(alice, block())
    assert error_condition(h.take_one(alice)) == "bad-request"


async def test_block_of_malformed_jid_is_jid_malformed(h: ModuleHarness, alice: Session) -> None:
    await h.send(alice, block("bad@@jid@"))
    assert error_condition(h.take_one(alice)) == "jid-malformed"
    await h.send(alice, BLOCKLIST)
    assert listed(h.take_one(alice)) == []


async def test_another_users_blocklist_is_forbidden(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await h.send(bob, f"<iq type='get' id='x' to='alice@localhost'><blocklist xmlns='{NS}'/></iq>")
    assert error_condition(h.take_one(bob)) == "forbidden"


async def test_message_from_blocked_user_is_bounced_service_unavailable(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await blocks_bob(h, alice)
    for to in ("alice@localhost", "alice@localhost/home"):
        await h.send(bob, f"<message to='{to}' type='chat'><body>hi</body></message>")
        assert error_condition(h.take_one(bob)) == "service-unavailable"
    assert h.take(alice) == []


async def test_message_from_blocked_user_to_offline_blocker_is_bounced(
    h: ModuleHarness, bob: Session
) -> None:
    alice = await h.connect("alice@localhost/home", priority=0)
    await blocks_bob(h, alice)
    await h.disconnect(alice)
    await h.send(bob, "<message to='alice@localhost' type='chat'><body>hi</body></message>")
    assert error_condition(h.take_one(bob)) == "service-unavailable"


async def test_iq_from_blocked_user_is_service_unavailable(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await blocks_bob(h, alice)
    await h.send(bob, "<iq type='get' id='q' to='alice@localhost/home'><query xmlns='urn:x'/></iq>")
    assert error_condition(h.take_one(bob)) == "service-unavailable"
    assert h.take(alice) == []


async def test_presence_from_blocked_user_is_dropped_silently(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await blocks_bob(h, alice)
    await h.send(bob, "<presence to='alice@localhost'/>")
    await h.send(bob, "<presence to='alice@localhost' type='subscribe'/>")
    assert h.take(alice) == []
    assert h.take(bob) == []  # no error: the block is not revealed


async def test_stanzas_to_a_blocked_jid_are_refused_with_blocked_condition(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await blocks_bob(h, alice)
    stanzas = [
        "<message to='bob@localhost' type='chat'><body>hi</body></message>",
        "<presence to='bob@localhost/work'/>",
        "<iq type='get' id='q' to='bob@localhost/work'><query xmlns='urn:x'/></iq>",
    ]
    for stanza in stanzas:
        await h.send(alice, stanza)
        reply = h.take_one(alice)
        assert error_condition(reply) == "not-acceptable"
        assert reply.find("{jabber:client}error").get("type") == "cancel"  # type: ignore[union-attr]
        assert reply.find(f"{{jabber:client}}error/{BLOCKED}") is not None
    assert h.take(bob) == []


async def test_server_routed_presence_of_blocker_does_not_reach_blocked(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    """Presence broadcast by the server (as the presence module does) is kept from bob."""
    await blocks_bob(h, alice)
    element = parse_element("<presence from='alice@localhost/home' to='bob@localhost'/>")
    await h.server.router.route(element)
    assert h.take(bob) == []


async def test_send_filter_drops_presence_handed_straight_to_a_session(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await blocks_bob(h, alice)
    bob.send(parse_element("<presence from='alice@localhost/home' to='bob@localhost/work'/>"))
    alice.send(parse_element("<presence from='bob@localhost/work' to='alice@localhost/home'/>"))
    assert h.take(bob) == []
    assert h.take(alice) == []


async def test_unblocked_user_can_write_again(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await blocks_bob(h, alice)
    await h.send(alice, unblock("bob@localhost"))
    h.take(alice)
    await h.send(bob, "<message to='alice@localhost/home' type='chat'><body>hi</body></message>")
    assert h.take_one(alice).findtext("{jabber:client}body") == "hi"


async def test_others_are_not_affected(h: ModuleHarness, alice: Session) -> None:
    await blocks_bob(h, alice)
    carol = await h.connect("carol@localhost/x", priority=0)
    await h.send(carol, "<message to='alice@localhost/home' type='chat'><body>hi</body></message>")
    assert h.take_one(alice).findtext("{jabber:client}body") == "hi"


async def test_blocklist_survives_a_restart(tmp_path: Path) -> None:
    async with ModuleHarness.started(tmp_path, modules_enabled=MODULES, storage="sqlite") as h:
        alice = await h.connect("alice@localhost/home")
        await h.send(alice, block("bob@localhost"))
        assert h.take_one(alice).get("type") == "result"
    async with ModuleHarness.started(
        tmp_path, modules_enabled=MODULES, storage="sqlite", accounts=()
    ) as h:
        bob = await h.connect("bob@localhost/work")
        await h.send(bob, "<message to='alice@localhost' type='chat'><body>hi</body></message>")
        assert error_condition(h.take_one(bob)) == "service-unavailable"
        alice = await h.connect("alice@localhost/home")
        await h.send(alice, BLOCKLIST)
        assert listed(h.take_one(alice)) == ["bob@localhost"]


class FakeRoster(Module):
    """Answers ROSTER_QUERY: alice's roster has bob with a "from" subscription."""

    name = "fake_roster"

    @hook(ROSTER_QUERY)
    async def answer(self, query: RosterQuery) -> bool:
        if query.user == JID.parse("alice@localhost"):
            query.subscriptions[JID.parse("bob@localhost")] = "from"
            query.subscriptions[JID.parse("carol@localhost")] = "to"
        return True


async def test_blocking_a_subscriber_sends_unavailable_and_unblocking_presence(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await h.load(FakeRoster)
    carol = await h.connect("carol@localhost/x", priority=0)
    await h.send(alice, "<presence><status>here</status></presence>")
    h.take(alice)
    await h.send(alice, block("bob@localhost", "carol@localhost"))
    (unavailable,) = h.take(bob)
    assert unavailable.get("type") == "unavailable"
    assert unavailable.get("from") == "alice@localhost/home"
    assert h.take(carol) == []  # not subscribed to alice: nothing to withdraw
    h.take(alice)
    await h.send(alice, unblock("bob@localhost"))
    (available,) = h.take(bob)
    assert available.get("type") is None
    assert available.get("from") == "alice@localhost/home"
    assert available.findtext("{jabber:client}status") == "here"


async def test_blocklist_size_is_limited(tmp_path: Path) -> None:
    async with ModuleHarness.started(
        tmp_path, modules_enabled=MODULES, modules={"blocking": {"max_items": 2}}
    ) as h:
        alice = await h.connect("alice@localhost/home")
        await h.send(alice, block("a.example", "b.example"))
        assert h.take_one(alice).get("type") == "result"
        await h.send(alice, block("c.example"))
        assert error_condition(h.take_one(alice)) == "not-acceptable"
        await h.send(alice, BLOCKLIST)
        assert listed(h.take_one(alice)) == ["a.example", "b.example"]


@pytest.mark.parametrize(
    ("kind", "to"),
    [
        ("message", "alice@localhost/home"),
        ("presence", "alice@localhost"),
        ("iq", "alice@localhost/home"),
    ],
)
async def test_a_blocked_user_cannot_pass_as_the_servers_own_refusal(
    h: ModuleHarness, alice: Session, bob: Session, kind: str, to: str
) -> None:
    """An error carrying <blocked/> exempts only refusals the server made (XEP-0191 §3.3:
    nothing from the contact reaches the user)."""
    await blocks_bob(h, alice)
    forged = (
        f"<{kind} to='{to}' type='error' id='f1'><body>sneaked in</body>"
        "<error type='cancel'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        "<blocked xmlns='urn:xmpp:blocking:errors'/></error></" + kind + ">"
    )
    if kind == "iq":
        forged = forged.replace("<body>sneaked in</body>", "")
    await h.send(bob, forged)
    assert h.take(alice) == []


async def test_blocking_one_resource_of_a_subscriber_sends_it_unavailable(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    """XEP-0191 §3.3: the blocked entity gets unavailable, also when it is a full JID."""
    await h.load(FakeRoster)
    other = await h.connect("bob@localhost/phone", priority=0)
    await h.send(alice, "<presence><status>here</status></presence>")
    h.take(alice)
    h.take(bob)
    h.take(other)
    await h.send(alice, block("bob@localhost/work"))
    (unavailable,) = h.take(bob)
    assert unavailable.get("type") == "unavailable"
    assert unavailable.get("from") == "alice@localhost/home"
    assert h.take(other) == []  # bob's other resource is not blocked
