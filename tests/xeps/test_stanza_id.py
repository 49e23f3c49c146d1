"""XEP-0359 stanza ids (xeps/stanza_id.py, xmppd/lib/stanza_id.py).

Tier 2: a real Server on memory storage, fake sessions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lxml import etree

from tests.helpers.harness import ModuleHarness, error_condition
from xeps.stanza_id import StanzaIds
from xmppd.lib.stanza_id import (
    ID_LENGTH,
    ORIGIN_ID,
    STANZA_ID,
    SortableIds,
    find_stanza_id,
    id_counter,
)
from xmppd.session import Session


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with ModuleHarness.started(
        tmp_path, accounts=("alice", "bob"), modules_enabled=["disco", "stanza_id"]
    ) as harness:
        yield harness


@pytest.fixture
async def alice(h: ModuleHarness) -> Session:
    return await h.connect("alice@localhost/home", priority=0)


@pytest.fixture
async def bob(h: ModuleHarness) -> Session:
    return await h.connect("bob@localhost/phone", priority=0)


def ids_by(element: etree._Element) -> list[tuple[str | None, str | None]]:
    return [(e.get("by"), e.get("id")) for e in element.findall(STANZA_ID)]


@pytest.mark.parametrize("to", ["bob@localhost", "bob@localhost/phone"])
@pytest.mark.parametrize("type_", ["chat", "normal", "headline"])
async def test_message_for_local_account_is_stamped(
    h: ModuleHarness, alice: Session, bob: Session, to: str, type_: str
) -> None:
    await h.send(alice, f"<message to='{to}' type='{type_}'><body>x</body></message>")
    got = h.take_one(bob)
    (by, id_), *rest = ids_by(got)
    assert rest == []
    assert by == "bob@localhost"
    assert id_ is not None
    assert len(id_) == ID_LENGTH


async def test_error_and_groupchat_are_not_stamped(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await h.send(alice, "<message to='bob@localhost/phone' type='error'><body>x</body></message>")
    assert ids_by(h.take_one(bob)) == []
    await h.send(
        alice, "<message to='bob@localhost/phone' type='groupchat'><body>x</body></message>"
    )
    assert ids_by(h.take_one(bob)) == []


async def test_spoofed_ids_are_replaced_and_foreign_ids_kept(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await h.send(
        alice,
        "<message to='bob@localhost' type='chat'><body>x</body>"
        "<stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='forged-1'/>"
        "<stanza-id xmlns='urn:xmpp:sid:0' by='localhost' id='forged-2'/>"
        "<stanza-id xmlns='urn:xmpp:sid:0' by='alice@localhost' id='forged-3'/>"
        "<stanza-id xmlns='urn:xmpp:sid:0' by='BOB@LOCALHOST' id='forged-4'/>"
        "<stanza-id xmlns='urn:xmpp:sid:0' id='no-by'/>"
        "<stanza-id xmlns='urn:xmpp:sid:0' by='room@muc.example.org' id='foreign' evil='1'/>"
        "<origin-id xmlns='urn:xmpp:sid:0' id='origin-1' extra='y'>text<x/></origin-id>"
        "</message>",
    )
    got = h.take_one(bob)
    stamps = dict(ids_by(got))
    assert set(stamps) == {"room@muc.example.org", "bob@localhost"}
    assert stamps["room@muc.example.org"] == "foreign"
    assert not (stamps["bob@localhost"] or "").startswith("forged")
    foreign = next(e for e in got.findall(STANZA_ID) if e.get("by") == "room@muc.example.org")
    assert dict(foreign.attrib) == {"by": "room@muc.example.org", "id": "foreign"}
    origin = got.find(ORIGIN_ID)
    assert origin is not None
    assert dict(origin.attrib) == {"id": "origin-1"}
    assert len(origin) == 0
    assert not origin.text


async def test_spoofed_id_removed_from_messages_to_remote_domains(
    h: ModuleHarness, alice: Session
) -> None:
    # No s2s yet: the message bounces, and the bounce shows what would have left the server.
    await h.send(
        alice,
        "<message to='juliet@example.org' type='chat' id='r'><body>x</body>"
        "<stanza-id xmlns='urn:xmpp:sid:0' by='alice@localhost' id='forged'/></message>",
    )
    reply = h.take_one(alice)
    assert error_condition(reply) == "remote-server-not-found"
    assert ids_by(reply) == []


async def test_bounce_for_missing_account_carries_no_id_in_our_name(
    h: ModuleHarness, alice: Session
) -> None:
    await h.send(
        alice, "<message to='nobody@localhost' type='chat' id='r'><body>x</body></message>"
    )
    reply = h.take_one(alice)
    assert error_condition(reply) == "service-unavailable"
    assert ids_by(reply) == []


async def test_ids_increase_and_are_unique(h: ModuleHarness, alice: Session, bob: Session) -> None:
    for i in range(50):
        await h.send(alice, f"<message to='bob@localhost' type='chat'><body>{i}</body></message>")
    ids = [find_stanza_id(e, "bob@localhost") for e in h.take(bob)]
    assert len(set(ids)) == 50
    assert ids == sorted(ids)  # type: ignore[type-var]


async def test_ids_keep_increasing_after_restart_even_if_the_clock_goes_back(
    tmp_path: Path,
) -> None:
    overrides = {"storage": "sqlite", "modules_enabled": ["stanza_id"]}
    async with ModuleHarness.started(tmp_path, **overrides) as h:
        module = h.host().modules["stanza_id"]
        assert isinstance(module, StanzaIds)
        before = await module.next_id()
    async with ModuleHarness.started(tmp_path, accounts=(), **overrides) as h:
        module = h.host().modules["stanza_id"]
        assert isinstance(module, StanzaIds)
        module.ids.ids._clock = lambda: 0.0  # the clock now lies far in the past
        after = [await module.next_id() for _ in range(3)]
    assert before < after[0] < after[1] < after[2]


async def test_sid_feature_on_account_disco(h: ModuleHarness, alice: Session) -> None:
    await h.send(
        alice,
        "<iq type='get' id='d' to='alice@localhost'>"
        "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    )
    reply = h.take_one(alice)
    features = {f.get("var") for f in reply.iter("{http://jabber.org/protocol/disco#info}feature")}
    assert "urn:xmpp:sid:0" in features


def test_sortable_ids_are_monotonic_under_a_stuck_clock() -> None:
    ids = SortableIds(clock=lambda: 1000.0)
    made = [ids.next() for _ in range(100)]
    assert made == sorted(made)
    assert len(set(made)) == 100
    assert id_counter(made[0]) == 1000 * 1_000_000
    assert id_counter("not-an-id") is None


def test_sortable_ids_are_unpredictable() -> None:
    ids = SortableIds(clock=lambda: 1.0)
    a, b = ids.next(), ids.next()
    assert a[-16:] != b[-16:]
