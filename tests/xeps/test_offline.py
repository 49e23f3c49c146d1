"""XEP-0160 offline storage (xeps/offline.py) with XEP-0203 stamps and XEP-0334 hints.

Tier 2: a real Server on memory storage, fake sessions; offline users are users with no
available resource, reached through their bare JID.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers.harness import ModuleHarness, error_condition
from xeps.offline import Offline
from xmppd.lib.delay import parse_stamp
from xmppd.lib.stanza_id import find_stanza_id
from xmppd.session import Session
from xmppd.storage import ArchiveItem

DELAY = "{urn:xmpp:delay}delay"
BODY = "{jabber:client}body"


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with ModuleHarness.started(
        tmp_path, accounts=("alice", "bob"), modules_enabled=["disco", "offline", "stanza_id"]
    ) as harness:
        yield harness


@pytest.fixture
async def alice(h: ModuleHarness) -> Session:
    return await h.connect("alice@localhost/home", priority=0)


def offline(h: ModuleHarness) -> Offline:
    module = h.host().modules["offline"]
    assert isinstance(module, Offline)
    return module


async def stored(h: ModuleHarness, user: str = "bob") -> list[ArchiveItem]:
    return await offline(h).store.items(user)


async def test_messages_are_stored_and_flushed_in_order_with_delay(
    h: ModuleHarness, alice: Session
) -> None:
    for i in range(3):
        await h.send(
            alice, f"<message to='bob@localhost' type='chat' id='m{i}'><body>{i}</body></message>"
        )
    await h.send(alice, "<message to='bob@localhost' id='n'><body>normal</body></message>")
    assert h.take(alice) == []  # no error: stored
    assert len(await stored(h)) == 4

    bob = await h.connect("bob@localhost/phone", drain=False)
    assert h.take(bob) == []  # not before initial presence
    await h.send(bob, "<presence><priority>1</priority></presence>")
    got = [e for e in h.take(bob) if e.tag == "{jabber:client}message"]

    assert [e.findtext(BODY) for e in got] == ["0", "1", "2", "normal"]
    for element in got:
        assert element.get("from") == "alice@localhost/home"
        assert element.get("to") == "bob@localhost"
        delay = element.find(DELAY)
        assert delay is not None
        assert delay.get("from") == "localhost"
        assert delay.text == "Offline Storage"
        assert abs(parse_stamp(delay.get("stamp") or "") - __import__("time").time()) < 60
        assert find_stanza_id(element, "bob@localhost")
    assert await stored(h) == []  # removed once delivered

    other = await h.connect("bob@localhost/laptop", priority=1)
    assert [e for e in h.take(other) if e.tag == "{jabber:client}message"] == []


async def test_stanza_ids_increase_in_storage_order(h: ModuleHarness, alice: Session) -> None:
    for i in range(5):
        await h.send(alice, f"<message to='bob@localhost' type='chat'><body>{i}</body></message>")
    ids = [find_stanza_id(item_element(i.value), "bob@localhost") for i in await stored(h)]
    assert all(ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == 5


def item_element(value: str):  # type: ignore[no-untyped-def]
    from lxml import etree

    return etree.fromstring(value.encode())


async def test_negative_priority_does_not_flush(h: ModuleHarness, alice: Session) -> None:
    await h.send(alice, "<message to='bob@localhost' type='chat'><body>hi</body></message>")
    low = await h.connect("bob@localhost/low", priority=-1, drain=False)
    assert [e for e in h.take(low) if e.tag == "{jabber:client}message"] == []
    assert len(await stored(h)) == 1
    high = await h.connect("bob@localhost/high", drain=False)
    await h.send(high, "<presence/>")
    messages = [e for e in h.take(high) if e.tag == "{jabber:client}message"]
    assert [e.findtext(BODY) for e in messages] == ["hi"]
    assert [e for e in h.take(low) if e.tag == "{jabber:client}message"] == []


async def test_raising_priority_to_non_negative_flushes(h: ModuleHarness, alice: Session) -> None:
    await h.send(alice, "<message to='bob@localhost' type='chat'><body>hi</body></message>")
    bob = await h.connect("bob@localhost/phone", priority=-5, drain=False)
    assert [e for e in h.take(bob) if e.tag == "{jabber:client}message"] == []
    await h.send(bob, "<presence><priority>-1</priority></presence>")
    assert [e for e in h.take(bob) if e.tag == "{jabber:client}message"] == []
    await h.send(bob, "<presence><priority>0</priority></presence>")
    messages = [e for e in h.take(bob) if e.tag == "{jabber:client}message"]
    assert [e.findtext(BODY) for e in messages] == ["hi"]
    await h.send(bob, "<presence><priority>3</priority></presence>")  # once only
    assert [e for e in h.take(bob) if e.tag == "{jabber:client}message"] == []


@pytest.mark.parametrize(
    "payload",
    [
        "<composing xmlns='http://jabber.org/protocol/chatstates'/>",
        "<thread>t1</thread><gone xmlns='http://jabber.org/protocol/chatstates'/>",
        "<paused xmlns='http://jabber.org/protocol/chatstates'/>"
        "<origin-id xmlns='urn:xmpp:sid:0' id='x'/>",
        "",  # nothing to deliver at all
        "<thread>only a thread</thread>",
    ],
)
async def test_chat_state_only_and_empty_messages_are_not_stored(
    h: ModuleHarness, alice: Session, payload: str
) -> None:
    await h.send(alice, f"<message to='bob@localhost' type='chat'>{payload}</message>")
    assert h.take(alice) == []  # dropped silently, no error for a typing notification
    assert await stored(h) == []


async def test_chat_state_with_body_is_stored(h: ModuleHarness, alice: Session) -> None:
    await h.send(
        alice,
        "<message to='bob@localhost' type='chat'><body>hi</body>"
        "<active xmlns='http://jabber.org/protocol/chatstates'/></message>",
    )
    assert len(await stored(h)) == 1


async def test_store_hint_stores_a_message_without_body(h: ModuleHarness, alice: Session) -> None:
    await h.send(
        alice,
        "<message to='bob@localhost' type='chat'>"
        "<composing xmlns='http://jabber.org/protocol/chatstates'/>"
        "<store xmlns='urn:xmpp:hints'/></message>",
    )
    assert len(await stored(h)) == 1


async def test_bodyless_content_is_stored(h: ModuleHarness, alice: Session) -> None:
    await h.send(
        alice, "<message to='bob@localhost'><received xmlns='urn:xmpp:receipts' id='r'/></message>"
    )
    assert len(await stored(h)) == 1


async def test_no_store_hint_is_not_stored_and_bounces(h: ModuleHarness, alice: Session) -> None:
    await h.send(
        alice,
        "<message to='bob@localhost' type='chat' id='x'><body>secret</body>"
        "<no-store xmlns='urn:xmpp:hints'/></message>",
    )
    reply = h.take_one(alice)
    assert error_condition(reply) == "service-unavailable"
    assert reply.get("from") == "bob@localhost"
    assert await stored(h) == []


async def test_no_permanent_store_hint_is_still_stored_offline(
    h: ModuleHarness, alice: Session
) -> None:
    await h.send(
        alice,
        "<message to='bob@localhost' type='chat'><body>b</body>"
        "<no-permanent-store xmlns='urn:xmpp:hints'/></message>",
    )
    assert h.take(alice) == []
    assert len(await stored(h)) == 1


async def test_quota_overflow_is_service_unavailable(tmp_path: Path) -> None:
    async with ModuleHarness.started(
        tmp_path, modules_enabled=["offline"], modules={"offline": {"max_messages": 2}}
    ) as h:
        alice = await h.connect("alice@localhost/home", priority=0)
        for i in range(3):
            await h.send(alice, f"<message to='bob@localhost' id='q{i}'><body>{i}</body></message>")
        reply = h.take_one(alice)
        assert reply.get("id") == "q2"
        assert error_condition(reply) == "service-unavailable"
        assert [i.value.count(">2<") for i in await stored(h)] == [0, 0]


async def test_unreadable_stored_message_is_dropped_and_others_delivered(
    h: ModuleHarness, alice: Session
) -> None:
    await offline(h).store.append("bob", "<message <<< not xml")
    await h.send(alice, "<message to='bob@localhost' type='chat'><body>ok</body></message>")
    bob = await h.connect("bob@localhost/phone", priority=0, drain=False)
    messages = [e for e in h.take(bob) if e.tag == "{jabber:client}message"]
    assert [e.findtext(BODY) for e in messages] == ["ok"]
    assert await stored(h) == []


async def test_live_messages_wait_behind_the_flush(h: ModuleHarness, alice: Session) -> None:
    await h.send(alice, "<message to='bob@localhost' type='chat'><body>old</body></message>")
    module = offline(h)
    gate = asyncio.Event()
    waiting = asyncio.Event()
    real = module.store

    class SlowStore:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        async def items(self, user: str) -> list[ArchiveItem]:
            waiting.set()
            await gate.wait()  # storage is slow: live traffic arrives meanwhile
            return await real.items(user)

    module.store = SlowStore()  # type: ignore[assignment]
    bob = await h.connect("bob@localhost/phone", drain=False)
    flush = asyncio.create_task(h.send(bob, "<presence/>"))
    await waiting.wait()  # the flush has started and waits for storage
    await h.send(alice, "<message to='bob@localhost/phone' type='chat'><body>new</body></message>")
    gate.set()
    await flush
    messages = [e for e in h.take(bob) if e.tag == "{jabber:client}message"]
    assert [e.findtext(BODY) for e in messages] == ["old", "new"]


async def test_removal_waits_for_the_delivery_callback(h: ModuleHarness, alice: Session) -> None:
    """Nothing is removed before it was handed to the session."""
    await h.send(alice, "<message to='bob@localhost' type='chat'><body>keep</body></message>")
    module = offline(h)
    callbacks = []

    def deferred(session: Session, element: object, done: object) -> None:
        callbacks.append(done)  # written nowhere yet: like an unacked stream management queue

    module._deliver = deferred  # type: ignore[method-assign,assignment]
    await h.connect("bob@localhost/phone", priority=0)
    assert len(await stored(h)) == 1
    callbacks[0]()
    await module._removing["bob"]
    assert await stored(h) == []


async def test_msgoffline_is_advertised(h: ModuleHarness, alice: Session) -> None:
    await h.send(
        alice,
        "<iq type='get' id='d' to='localhost'>"
        "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    )
    reply = h.take_one(alice)
    features = {f.get("var") for f in reply.iter("{http://jabber.org/protocol/disco#info}feature")}
    assert "msgoffline" in features


async def test_dropping_to_negative_priority_then_back_flushes_what_came_meanwhile(
    h: ModuleHarness, alice: Session
) -> None:
    bob = await h.connect("bob@localhost/phone", priority=0)
    await h.send(bob, "<presence><priority>-1</priority></presence>")
    await h.send(alice, "<message to='bob@localhost' type='chat'><body>stored</body></message>")
    assert [e for e in h.take(bob) if e.tag == "{jabber:client}message"] == []
    assert len(await stored(h)) == 1
    await h.send(bob, "<presence><priority>1</priority></presence>")
    messages = [e for e in h.take(bob) if e.tag == "{jabber:client}message"]
    assert [e.findtext(BODY) for e in messages] == ["stored"]
    await asyncio.sleep(0)  # let the batched removal run
    assert await stored(h) == []


async def test_nothing_is_removed_for_a_session_whose_connection_is_gone(
    h: ModuleHarness, alice: Session
) -> None:
    for i in range(3):
        await h.send(alice, f"<message to='bob@localhost' type='chat'><body>{i}</body></message>")
    bob = await h.connect("bob@localhost/phone")
    h.conn(bob).closed = True  # the client went away before its presence was handled
    await h.send(bob, "<presence/>")
    assert [e for e in h.take(bob) if e.tag == "{jabber:client}message"] == []
    assert [item.value.count("<body>") for item in await stored(h)] == [1, 1, 1]
    again = await h.connect("bob@localhost/laptop", priority=0, drain=False)
    messages = [e for e in h.take(again) if e.tag == "{jabber:client}message"]
    assert [e.findtext(BODY) for e in messages] == ["0", "1", "2"]


async def test_a_chat_state_with_no_store_is_dropped_without_an_error(
    h: ModuleHarness, alice: Session
) -> None:
    await h.send(
        alice,
        "<message to='bob@localhost' type='chat'>"
        "<composing xmlns='http://jabber.org/protocol/chatstates'/>"
        "<no-store xmlns='urn:xmpp:hints'/></message>",
    )
    assert h.take(alice) == []
    assert await stored(h) == []


class _AppendDuringFirstRead:
    """The offline store, where a message's storing completes while the first flush reads."""

    def __init__(self, store: object) -> None:
        self._store = store
        self.reads = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def items(self, user: str, **kwargs: object) -> list[ArchiveItem]:
        result: list[ArchiveItem] = await self._store.items(user, **kwargs)  # type: ignore[attr-defined]
        self.reads += 1
        if self.reads == 1:
            late = "<message xmlns='jabber:client' to='bob@localhost' type='chat'><body>late</body></message>"
            await self._store.append(user, late, with_jid="alice@localhost", when=1.0)  # type: ignore[attr-defined]
        return result


async def test_a_message_stored_while_the_flush_runs_is_delivered_by_that_flush(
    h: ModuleHarness, alice: Session
) -> None:
    await h.send(alice, "<message to='bob@localhost' type='chat'><body>first</body></message>")
    module = offline(h)
    module.store = _AppendDuringFirstRead(module.store)  # type: ignore[assignment]
    bob = await h.connect("bob@localhost/phone", priority=0, drain=False)
    messages = [e for e in h.take(bob) if e.tag == "{jabber:client}message"]
    assert [e.findtext(BODY) for e in messages] == ["first", "late"]
