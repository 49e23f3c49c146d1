"""RFC 6121 §8 delivery rules (xmppd/delivery.py) and own-resource presence, through the router.

Tier 2: a real Server on memory storage, fake connections that record what they were sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers.harness import ModuleHarness, assert_xml_equal, error_condition
from xmppd import events as ev
from xmppd.events import Priority
from xmppd.session import Session


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with ModuleHarness.started(tmp_path, accounts=("alice", "bob")) as harness:
        yield harness


@pytest.fixture
async def alice(h: ModuleHarness) -> Session:
    return await h.connect("alice@localhost/home", priority=0)


def offline_hook(h: ModuleHarness, *, consume: bool) -> list[ev.MessageOffline]:
    """Hook MESSAGE_OFFLINE on localhost; return the list of events it sees."""
    seen: list[ev.MessageOffline] = []

    async def store(event: ev.MessageOffline) -> bool:
        seen.append(event)
        return consume

    h.host().bus.add_chain(ev.MESSAGE_OFFLINE, store, Priority.NORMAL)
    return seen


# --- messages to a full JID (RFC 6121 §8.5.3) --------------------------------------------------


async def test_message_to_full_jid_goes_to_that_resource_only(h: ModuleHarness, alice: Session):
    phone = await h.connect("bob@localhost/phone", priority=5)
    laptop = await h.connect("bob@localhost/laptop", priority=1)

    await h.send(
        alice, "<message to='bob@localhost/laptop' type='chat' id='m1'><body>hi</body></message>"
    )

    assert_xml_equal(
        h.take_one(laptop),
        "<message from='alice@localhost/home' to='bob@localhost/laptop' type='chat' id='m1'>"
        "<body>hi</body></message>",
    )
    assert h.take(phone) == []
    assert h.take(alice) == []


async def test_iq_to_full_jid_goes_to_that_resource(h: ModuleHarness, alice: Session):
    laptop = await h.connect("bob@localhost/laptop")

    await h.send(
        alice, "<iq to='bob@localhost/laptop' type='get' id='q1'><query xmlns='urn:test'/></iq>"
    )

    iq = h.take_one(laptop)
    assert iq.get("from") == "alice@localhost/home"
    assert iq.get("id") == "q1"


async def test_iq_to_unconnected_full_jid_gets_service_unavailable(
    h: ModuleHarness, alice: Session
):
    await h.send(
        alice, "<iq to='bob@localhost/gone' type='get' id='q1'><query xmlns='urn:test'/></iq>"
    )

    reply = h.take_one(alice)
    assert reply.get("type") == "error"
    assert reply.get("id") == "q1"
    assert reply.get("from") == "bob@localhost/gone"
    assert error_condition(reply) == "service-unavailable"


async def test_chat_to_unconnected_full_jid_falls_back_to_bare_jid(
    h: ModuleHarness, alice: Session
):
    laptop = await h.connect("bob@localhost/laptop", priority=0)

    await h.send(alice, "<message to='bob@localhost/gone' type='chat'><body>x</body></message>")

    assert h.take_one(laptop).get("to") == "bob@localhost/gone"
    assert h.take(alice) == []


# --- messages to a bare JID (RFC 6121 §8.5.2) --------------------------------------------------


async def test_bare_message_goes_to_highest_priority_resource(h: ModuleHarness, alice: Session):
    phone = await h.connect("bob@localhost/phone", priority=5)
    laptop = await h.connect("bob@localhost/laptop", priority=1)

    await h.send(alice, "<message to='bob@localhost' type='chat'><body>hi</body></message>")

    assert h.take_one(phone).findtext("{jabber:client}body") == "hi"
    assert h.take(laptop) == []


async def test_bare_message_goes_to_every_resource_sharing_highest_priority(
    h: ModuleHarness, alice: Session
):
    phone = await h.connect("bob@localhost/phone", priority=3)
    laptop = await h.connect("bob@localhost/laptop", priority=3)
    tablet = await h.connect("bob@localhost/tablet", priority=1)

    await h.send(alice, "<message to='bob@localhost'><body>hi</body></message>")

    assert len(h.take(phone)) == 1
    assert len(h.take(laptop)) == 1
    assert h.take(tablet) == []


async def test_bare_message_skips_negative_priority_resources(h: ModuleHarness, alice: Session):
    # RFC 6121 §8.5.2.1.1: a negative priority means "never deliver to a bare JID".
    busy = await h.connect("bob@localhost/busy", priority=-1)
    idle = await h.connect("bob@localhost/idle", priority=0)

    await h.send(alice, "<message to='bob@localhost' type='chat'><body>hi</body></message>")

    assert len(h.take(idle)) == 1
    assert h.take(busy) == []


async def test_bare_message_with_only_negative_priority_resources_is_offline(
    h: ModuleHarness, alice: Session
):
    seen = offline_hook(h, consume=True)
    busy = await h.connect("bob@localhost/busy", priority=-5)

    await h.send(alice, "<message to='bob@localhost' type='chat'><body>hi</body></message>")

    assert h.take(busy) == []
    assert [e.username for e in seen] == ["bob"]
    assert h.take(alice) == []


async def test_bare_message_ignores_bound_but_unavailable_resources(
    h: ModuleHarness, alice: Session
):
    silent = await h.connect("bob@localhost/silent")  # bound, no initial presence
    seen = offline_hook(h, consume=True)

    await h.send(alice, "<message to='bob@localhost' type='chat'><body>hi</body></message>")

    assert h.take(silent) == []
    assert len(seen) == 1


async def test_bare_headline_goes_to_all_non_negative_resources(h: ModuleHarness, alice: Session):
    phone = await h.connect("bob@localhost/phone", priority=5)
    laptop = await h.connect("bob@localhost/laptop", priority=0)
    busy = await h.connect("bob@localhost/busy", priority=-1)

    await h.send(alice, "<message to='bob@localhost' type='headline'><body>news</body></message>")

    assert len(h.take(phone)) == 1
    assert len(h.take(laptop)) == 1
    assert h.take(busy) == []


async def test_bare_groupchat_is_refused_even_with_available_resources(
    h: ModuleHarness, alice: Session
):
    phone = await h.connect("bob@localhost/phone", priority=5)

    await h.send(alice, "<message to='bob@localhost' type='groupchat' id='g1'><body/></message>")

    assert h.take(phone) == []
    reply = h.take_one(alice)
    assert reply.get("id") == "g1"
    assert error_condition(reply) == "service-unavailable"


async def test_bare_error_message_is_dropped_silently(h: ModuleHarness, alice: Session):
    phone = await h.connect("bob@localhost/phone", priority=5)

    await h.send(alice, "<message to='bob@localhost' type='error'><body/></message>")

    assert h.take(phone) == []
    assert h.take(alice) == []


# --- no such account (RFC 6121 §8.5.1) ---------------------------------------------------------


async def test_message_to_missing_account_bounces_service_unavailable_from_bare_jid(
    h: ModuleHarness, alice: Session
):
    await h.send(
        alice, "<message to='nobody@localhost' type='chat' id='m1'><body>hi</body></message>"
    )

    assert_xml_equal(
        h.take_one(alice),
        "<message from='nobody@localhost' to='alice@localhost/home' type='error' id='m1'>"
        "<body>hi</body>"
        "<error type='cancel'>"
        "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
    )


async def test_presence_to_missing_account_is_dropped_silently(h: ModuleHarness, alice: Session):
    await h.send(alice, "<presence to='nobody@localhost' type='subscribe'/>")
    await h.send(alice, "<presence to='nobody@localhost/res'/>")

    assert h.take(alice) == []


async def test_iq_to_missing_account_gets_service_unavailable(h: ModuleHarness, alice: Session):
    await h.send(alice, "<iq to='nobody@localhost' type='get' id='q1'><q xmlns='urn:t'/></iq>")

    reply = h.take_one(alice)
    assert reply.get("type") == "error"
    assert reply.get("from") == "nobody@localhost"
    assert error_condition(reply) == "service-unavailable"


async def test_headline_and_error_to_missing_account_are_dropped(h: ModuleHarness, alice: Session):
    await h.send(alice, "<message to='nobody@localhost' type='headline'><body/></message>")
    await h.send(alice, "<message to='nobody@localhost' type='error'><body/></message>")

    assert h.take(alice) == []


async def test_message_to_missing_account_is_not_offered_to_offline_storage(
    h: ModuleHarness, alice: Session
):
    seen = offline_hook(h, consume=True)

    await h.send(alice, "<message to='nobody@localhost' type='chat'><body/></message>")

    assert seen == []
    assert error_condition(h.take_one(alice)) == "service-unavailable"


# --- existing account, no available resource (RFC 6121 §8.5.2.2) ------------------------------


@pytest.mark.parametrize("type_", ["chat", "normal", None])
async def test_offline_message_is_consumed_by_offline_hook(
    h: ModuleHarness, alice: Session, type_: str | None
):
    seen = offline_hook(h, consume=True)
    type_attr = f" type='{type_}'" if type_ else ""

    await h.send(alice, f"<message to='bob@localhost'{type_attr} id='m1'><body>hi</body></message>")

    assert h.take(alice) == []
    assert len(seen) == 1
    assert seen[0].username == "bob"
    assert str(seen[0].to) == "bob@localhost"
    assert seen[0].stanza.element.get("from") == "alice@localhost/home"


async def test_offline_message_without_consumer_bounces_service_unavailable(
    h: ModuleHarness, alice: Session
):
    seen = offline_hook(h, consume=False)

    await h.send(alice, "<message to='bob@localhost' type='chat' id='m1'><body/></message>")

    assert len(seen) == 1  # offered, declined
    reply = h.take_one(alice)
    assert reply.get("from") == "bob@localhost"
    assert error_condition(reply) == "service-unavailable"


@pytest.mark.parametrize("type_", ["headline", "error"])
async def test_offline_headline_and_error_are_dropped(h: ModuleHarness, alice: Session, type_: str):
    seen = offline_hook(h, consume=True)

    await h.send(alice, f"<message to='bob@localhost' type='{type_}'><body/></message>")

    assert seen == []
    assert h.take(alice) == []


async def test_offline_groupchat_is_refused_without_offline_storage(
    h: ModuleHarness, alice: Session
):
    seen = offline_hook(h, consume=True)

    await h.send(alice, "<message to='bob@localhost' type='groupchat'><body/></message>")

    assert seen == []
    assert error_condition(h.take_one(alice)) == "service-unavailable"


async def test_offline_message_of_unknown_type_is_treated_as_normal(
    h: ModuleHarness, alice: Session
):
    # RFC 6121 §5.2.2: an unknown message type MUST be treated as "normal".
    seen = offline_hook(h, consume=True)

    await h.send(alice, "<message to='bob@localhost' type='bogus'><body>hi</body></message>")

    assert len(seen) == 1
    assert seen[0].stanza.type == "normal"


async def test_message_of_unknown_type_is_delivered_as_normal(h: ModuleHarness, alice: Session):
    phone = await h.connect("bob@localhost/phone", priority=0)

    await h.send(alice, "<message to='bob@localhost' type='bogus'><body>hi</body></message>")

    assert h.take_one(phone).get("type") == "normal"


# --- presence to other accounts ------------------------------------------------------------------


async def test_directed_presence_to_bare_jid_reaches_every_available_resource(
    h: ModuleHarness, alice: Session
):
    phone = await h.connect("bob@localhost/phone", priority=5)
    busy = await h.connect("bob@localhost/busy", priority=-1)
    silent = await h.connect("bob@localhost/silent")

    await h.send(alice, "<presence to='bob@localhost' type='subscribe'/>")

    assert h.take_one(phone).get("type") == "subscribe"
    assert h.take_one(busy).get("type") == "subscribe"
    assert h.take(silent) == []


async def test_directed_presence_to_full_jid_reaches_that_resource(
    h: ModuleHarness, alice: Session
):
    silent = await h.connect("bob@localhost/silent")

    await h.send(alice, "<presence to='bob@localhost/silent'/>")
    await h.send(alice, "<presence to='bob@localhost/gone'/>")

    assert h.take_one(silent).get("from") == "alice@localhost/home"
    assert h.take(alice) == []


# --- own presence broadcast (RFC 6121 §4.2, §4.5) ---------------------------------------------


async def test_initial_presence_sets_availability_and_priority(h: ModuleHarness):
    phone = await h.connect("alice@localhost/phone")
    assert not phone.available

    await h.send(phone, "<presence><priority>7</priority><show>away</show></presence>")

    assert phone.available
    assert phone.priority == 7
    assert phone.presence is not None
    assert phone.presence.findtext("{jabber:client}show") == "away"


async def test_presence_priority_is_clamped_to_byte_range(h: ModuleHarness):
    phone = await h.connect("alice@localhost/phone")

    await h.send(phone, "<presence><priority>1000</priority></presence>")

    assert phone.priority == 127


async def test_presence_with_non_integer_priority_is_bad_request(h: ModuleHarness):
    phone = await h.connect("alice@localhost/phone")

    await h.send(phone, "<presence id='p1'><priority>high</priority></presence>")

    reply = h.take_one(phone)
    assert reply.get("type") == "error"
    assert error_condition(reply) == "bad-request"
    assert not phone.available


async def test_initial_presence_goes_to_every_own_available_resource_including_sender(
    h: ModuleHarness,
):
    laptop = await h.connect("alice@localhost/laptop", priority=1)
    silent = await h.connect("alice@localhost/silent")
    phone = await h.connect("alice@localhost/phone", drain=False)

    await h.send(phone, "<presence><priority>2</priority></presence>")

    for session in (laptop, phone):
        received = [p for p in h.take(session) if p.get("from") == "alice@localhost/phone"]
        assert len(received) == 1
        assert received[0].findtext("{jabber:client}priority") == "2"
    assert h.take(silent) == []


async def test_new_resource_receives_presence_of_available_siblings(h: ModuleHarness):
    await h.connect("alice@localhost/laptop", priority=1)
    await h.connect("alice@localhost/silent")
    phone = await h.connect("alice@localhost/phone", drain=False)

    await h.send(phone, "<presence/>")

    senders = sorted(p.get("from") or "" for p in h.take(phone))
    assert senders == ["alice@localhost/laptop", "alice@localhost/phone"]


async def test_presence_is_not_broadcast_to_other_accounts(h: ModuleHarness, alice: Session):
    bob = await h.connect("bob@localhost/laptop", priority=0)

    await h.send(alice, "<presence><show>dnd</show></presence>")

    assert h.take(bob) == []


async def test_initial_presence_event_fires_once(h: ModuleHarness):
    fired: list[Session] = []

    async def on_initial(event: ev.SessionEvent) -> None:
        fired.append(event.session)

    h.host().bus.add_notify(ev.INITIAL_PRESENCE, on_initial, Priority.NORMAL)
    phone = await h.connect("alice@localhost/phone")

    await h.send(phone, "<presence/>")
    await h.send(phone, "<presence><show>away</show></presence>")

    assert fired == [phone]


async def test_unavailable_presence_is_broadcast_and_clears_availability(h: ModuleHarness):
    unavailable_events: list[Session] = []

    async def on_unavailable(event: ev.SessionEvent) -> None:
        unavailable_events.append(event.session)

    h.host().bus.add_notify(ev.SESSION_UNAVAILABLE, on_unavailable, Priority.NORMAL)
    laptop = await h.connect("alice@localhost/laptop", priority=0)
    phone = await h.connect("alice@localhost/phone", priority=0)

    await h.send(phone, "<presence type='unavailable'><status>bye</status></presence>")

    for session in (laptop, phone):
        presence = h.take_one(session)
        assert presence.get("type") == "unavailable"
        assert presence.get("from") == "alice@localhost/phone"
    assert not phone.available
    assert phone.presence is None
    assert unavailable_events == [phone]


async def test_initial_presence_after_unavailable_fires_initial_presence_again(h: ModuleHarness):
    fired: list[Session] = []

    async def on_initial(event: ev.SessionEvent) -> None:
        fired.append(event.session)

    h.host().bus.add_notify(ev.INITIAL_PRESENCE, on_initial, Priority.NORMAL)
    phone = await h.connect("alice@localhost/phone", priority=0)
    await h.send(phone, "<presence type='unavailable'/>")
    await h.send(phone, "<presence/>")

    assert fired == [phone, phone]


async def test_presence_without_to_of_other_type_is_bad_request(h: ModuleHarness):
    phone = await h.connect("alice@localhost/phone", priority=0)

    await h.send(phone, "<presence type='subscribe' id='s1'/>")

    reply = h.take_one(phone)
    assert reply.get("id") == "s1"
    assert error_condition(reply) == "bad-request"


async def test_session_end_broadcasts_unavailable_for_available_session(h: ModuleHarness):
    ended: list[str] = []

    async def on_ended(event: ev.SessionEnded) -> None:
        ended.append(event.reason)

    h.host().bus.add_notify(ev.SESSION_ENDED, on_ended, Priority.NORMAL)
    laptop = await h.connect("alice@localhost/laptop", priority=0)
    phone = await h.connect("alice@localhost/phone", priority=0)
    phone_conn = h.conn(phone)

    await h.disconnect(phone, "connection reset")

    presence = h.take_one(laptop)
    assert presence.get("type") == "unavailable"
    assert presence.get("from") == "alice@localhost/phone"
    assert phone_conn.sent == []
    assert h.server.sessions.get(phone.full_jid) is None
    assert ended == ["connection reset"]


async def test_session_end_of_unavailable_session_broadcasts_nothing(h: ModuleHarness):
    laptop = await h.connect("alice@localhost/laptop", priority=0)
    phone = await h.connect("alice@localhost/phone", priority=0)
    await h.send(phone, "<presence type='unavailable'/>")
    h.take(laptop)

    await h.disconnect(phone)

    assert h.take(laptop) == []


async def test_session_end_is_idempotent(h: ModuleHarness):
    ended: list[Session] = []

    async def on_ended(event: ev.SessionEnded) -> None:
        ended.append(event.session)

    h.host().bus.add_notify(ev.SESSION_ENDED, on_ended, Priority.NORMAL)
    phone = await h.connect("alice@localhost/phone", priority=0)

    await h.disconnect(phone)
    await h.disconnect(phone)

    assert ended == [phone]


async def test_messages_stop_reaching_an_ended_session(h: ModuleHarness, alice: Session):
    phone = await h.connect("bob@localhost/phone", priority=0)
    seen = offline_hook(h, consume=True)
    await h.disconnect(phone)

    await h.send(alice, "<message to='bob@localhost' type='chat'><body/></message>")

    assert len(seen) == 1


async def test_presence_update_event_fires_for_later_presence_only(h: ModuleHarness):
    updates: list[tuple[Session, str | None]] = []

    async def on_update(event: ev.SessionEvent) -> None:
        assert event.stanza is not None
        updates.append((event.session, event.stanza.findtext("{jabber:client}show")))

    h.host().bus.add_notify(ev.PRESENCE_UPDATE, on_update, Priority.NORMAL)
    phone = await h.connect("alice@localhost/phone")

    await h.send(phone, "<presence/>")  # initial: INITIAL_PRESENCE, not an update
    await h.send(phone, "<presence><show>away</show></presence>")
    await h.send(phone, "<presence type='unavailable'/>")

    assert updates == [(phone, "away")]


async def test_unavailable_event_carries_the_clients_stanza(h: ModuleHarness):
    stanzas: list[str | None] = []

    async def on_unavailable(event: ev.SessionEvent) -> None:
        stanzas.append(
            None if event.stanza is None else event.stanza.findtext("{jabber:client}status")
        )

    h.host().bus.add_notify(ev.SESSION_UNAVAILABLE, on_unavailable, Priority.NORMAL)
    phone = await h.connect("alice@localhost/phone", priority=0)
    laptop = await h.connect("alice@localhost/laptop", priority=0)

    await h.send(phone, "<presence type='unavailable'><status>bye</status></presence>")
    await h.disconnect(laptop)  # connection lost: the server decides, no stanza

    assert stanzas == ["bye", None]


async def test_initial_presence_event_carries_the_clients_stanza(h: ModuleHarness):
    seen: list[str | None] = []

    async def on_initial(event: ev.SessionEvent) -> None:
        assert event.stanza is not None
        seen.append(event.stanza.findtext("{jabber:client}status"))

    h.host().bus.add_notify(ev.INITIAL_PRESENCE, on_initial, Priority.NORMAL)
    phone = await h.connect("alice@localhost/phone")

    await h.send(phone, "<presence><status>hello</status></presence>")

    assert seen == ["hello"]
