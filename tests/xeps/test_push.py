"""XEP-0357 push notifications (xeps/push.py): enable/disable, when to publish, what, errors.

Tier 2: a real Server on memory storage with fake sessions. The app server is the configured
component domain push.localhost; a test handler on that host's bus plays it (records each
publish and answers as told), so no component needs to connect.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lxml import etree

from tests.helpers.harness import FakeConnection, ModuleHarness, error_condition, parse_element
from xeps.push import Push
from xmppd import events as ev
from xmppd.errors import StanzaError
from xmppd.events import IQ_HOST, MESSAGE_OFFLINE, MessageOffline, Priority, StanzaEvent
from xmppd.jid import JID
from xmppd.session import Session
from xmppd.stanza import Stanza, error_reply, iq_result

APP = "push.localhost"
NS_PUSH = "urn:xmpp:push:0"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_DATA = "jabber:x:data"
OPTIONS_FORM = (
    "<x xmlns='jabber:x:data' type='submit'>"
    "<field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value>"
    "</field><field var='secret'><value>s3cr3t</value></field></x>"
)


class AppServer:
    """Plays the app server: records publishes, answers result / error / nothing yet."""

    def __init__(self, h: ModuleHarness) -> None:
        self.h = h
        self.received: asyncio.Queue[etree._Element] = asyncio.Queue()
        self.error: StanzaError | None = None
        self.gate: asyncio.Event | None = None  # when set: hold each answer until it is set
        h.host(APP).bus.add_chain(IQ_HOST, self.handle, Priority.FIRST)

    async def handle(self, event: StanzaEvent) -> bool:
        element = event.stanza.element
        if element.get("type") != "set":
            return False
        self.received.put_nowait(copy.deepcopy(element))
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            reply = error_reply(element, self.error)
        else:
            reply = iq_result(element, None)
        await self.h.server.router.route(reply)
        return True

    def take_all(self) -> list[etree._Element]:
        out = []
        while not self.received.empty():
            out.append(self.received.get_nowait())
        return out


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with ModuleHarness.started(
        tmp_path,
        accounts=("alice", "bob"),
        modules_enabled=["disco", "offline", "push"],
        component={APP: {"secret": "x"}},
    ) as harness:
        yield harness


@pytest.fixture
def app(h: ModuleHarness) -> AppServer:
    return AppServer(h)


def push(h: ModuleHarness) -> Push:
    module = h.host().modules["push"]
    assert isinstance(module, Push)
    return module


async def settle(h: ModuleHarness) -> None:
    """Wait for every background publish of the module to finish."""
    module = push(h)
    while module._tasks:
        await asyncio.gather(*list(module._tasks))


async def triggers_done(h: ModuleHarness) -> None:
    """Wait until every message seen so far was matched to registrations (publishes may wait)."""
    await asyncio.gather(*[t for t in push(h)._tasks if t.get_name() == "push-notify"])


async def iq(h: ModuleHarness, session: Session, payload: str, to: str = "") -> etree._Element:
    to_attr = f" to='{to}'" if to else ""
    await h.send(session, f"<iq type='set' id='e1'{to_attr}>{payload}</iq>")
    return h.take_one(session)


async def enable(
    h: ModuleHarness, session: Session, node: str = "n1", form: str = "", jid: str = APP
) -> None:
    reply = await iq(
        h, session, f"<enable xmlns='{NS_PUSH}' jid='{jid}' node='{node}'>{form}</enable>"
    )
    assert reply.get("type") == "result", etree.tostring(reply)


def summary(publish: etree._Element) -> dict[str, str | None]:
    form = publish.find(f".//{{{NS_PUSH}}}notification/{{{NS_DATA}}}x")
    assert form is not None
    return {f.get("var") or "": f.findtext(f"{{{NS_DATA}}}value") for f in form}


async def message_from_bob(
    h: ModuleHarness, bob: Session, body: str = "hi", to: str = "alice@localhost"
) -> None:
    await h.send(bob, f"<message to='{to}' type='chat'><body>{body}</body></message>")


@pytest.fixture
async def bob(h: ModuleHarness) -> Session:
    return await h.connect("bob@localhost/desk", priority=0)


# --- enable / disable ------------------------------------------------------------------------


async def test_feature_advertised_on_account(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/phone", priority=0)
    await h.send(
        alice,
        "<iq type='get' id='d' to='alice@localhost'>"
        "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    )
    reply = h.take_one(alice)
    features = {f.get("var") for f in reply.iter("{http://jabber.org/protocol/disco#info}feature")}
    assert NS_PUSH in features


async def test_enable_stores_registration_with_its_client(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/phone", priority=0)
    await enable(h, alice, form=OPTIONS_FORM)
    [registration] = await push(h).registrations("alice")
    assert (registration.jid, registration.node, registration.resource) == (APP, "n1", "phone")
    assert registration.form is not None
    assert "s3cr3t" in registration.form


@pytest.mark.parametrize(
    ("payload", "condition"),
    [
        (f"<enable xmlns='{NS_PUSH}' node='n'/>", "bad-request"),
        (f"<enable xmlns='{NS_PUSH}' jid='' node='n'/>", "bad-request"),
        (f"<enable xmlns='{NS_PUSH}' jid='a@b@c' node='n'/>", "jid-malformed"),
        (f"<enable xmlns='{NS_PUSH}' jid='{APP}'/>", "bad-request"),
        (f"<enable xmlns='{NS_PUSH}' jid='{APP}' node='{'n' * 2000}'/>", "not-acceptable"),
        (
            f"<enable xmlns='{NS_PUSH}' jid='{APP}' node='n'><x xmlns='jabber:x:data' type='form'>"
            "<field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options"
            "</value></field></x></enable>",
            "bad-request",
        ),
        (
            f"<enable xmlns='{NS_PUSH}' jid='{APP}' node='n'><x xmlns='jabber:x:data' "
            "type='submit'><field var='FORM_TYPE'><value>urn:example</value></field></x></enable>",
            "bad-request",
        ),
        (
            f"<enable xmlns='{NS_PUSH}' jid='{APP}' node='n'>{OPTIONS_FORM}{OPTIONS_FORM}</enable>",
            "bad-request",
        ),
        (
            f"<enable xmlns='{NS_PUSH}' jid='{APP}' node='n'><x xmlns='jabber:x:data' "
            "type='submit'><field var='FORM_TYPE'><value>"
            "http://jabber.org/protocol/pubsub#publish-options</value></field>"
            f"<field var='big'><value>{'v' * 5000}</value></field></x></enable>",
            "not-acceptable",
        ),
        (f"<disable xmlns='{NS_PUSH}'/>", "bad-request"),
    ],
)
async def test_enable_and_disable_errors(h: ModuleHarness, payload: str, condition: str) -> None:
    alice = await h.connect("alice@localhost/phone", priority=0)
    reply = await iq(h, alice, payload)
    assert reply.get("type") == "error"
    assert error_condition(reply) == condition
    assert await push(h).registrations("alice") == []


async def test_enable_for_another_account_is_forbidden(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/phone", priority=0)
    reply = await iq(
        h, alice, f"<enable xmlns='{NS_PUSH}' jid='{APP}' node='n'/>", to="bob@localhost"
    )
    assert error_condition(reply) == "forbidden"
    assert await push(h).registrations("bob") == []


async def test_enable_without_form_type_attribute_is_accepted(h: ModuleHarness) -> None:
    # XEP-0357's own example sends the publish-options form without type='submit'.
    alice = await h.connect("alice@localhost/phone", priority=0)
    await enable(h, alice, form=OPTIONS_FORM.replace(" type='submit'", ""))
    assert len(await push(h).registrations("alice")) == 1


async def test_enable_again_replaces_publish_options(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/phone", priority=0)
    await enable(h, alice, form=OPTIONS_FORM)
    await enable(h, alice, form=OPTIONS_FORM.replace("s3cr3t", "other"))
    [registration] = await push(h).registrations("alice")
    assert registration.form is not None
    assert "other" in registration.form


async def test_registrations_are_limited(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/phone", priority=0)
    for i in range(20):
        await enable(h, alice, node=f"n{i}")
    reply = await iq(h, alice, f"<enable xmlns='{NS_PUSH}' jid='{APP}' node='one-too-many'/>")
    assert error_condition(reply) == "policy-violation"
    await enable(h, alice, node="n3")  # re-enabling an existing one is fine
    assert len(await push(h).registrations("alice")) == 20


async def test_disable_one_node_or_every_node_of_a_service(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/phone", priority=0)
    for node in ("a", "b", "c"):
        await enable(h, alice, node=node)
    await enable(h, alice, node="x", jid="other.example")
    reply = await iq(h, alice, f"<disable xmlns='{NS_PUSH}' jid='{APP}' node='b'/>")
    assert reply.get("type") == "result"
    assert {r.node for r in await push(h).registrations("alice")} == {"a", "c", "x"}
    await iq(h, alice, f"<disable xmlns='{NS_PUSH}' jid='{APP}'/>")
    assert {r.node for r in await push(h).registrations("alice")} == {"x"}


# --- publishing --------------------------------------------------------------------------------


async def test_offline_message_is_pushed_and_still_stored(
    h: ModuleHarness, app: AppServer, bob: Session
) -> None:
    alice = await h.connect("alice@localhost/phone", priority=0)
    await enable(h, alice, form=OPTIONS_FORM)
    await h.disconnect(alice)
    await message_from_bob(h, bob, "secret words")
    assert h.take(bob) == []  # stored offline: no error to the sender
    await settle(h)
    [publish] = app.take_all()
    assert publish.get("from") == "alice@localhost"
    assert publish.get("to") == APP
    node = publish.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}publish")
    assert node is not None
    assert node.get("node") == "n1"
    # privacy by default: only the count
    assert summary(publish) == {"FORM_TYPE": "urn:xmpp:push:summary", "message-count": "1"}
    assert b"secret words" not in etree.tostring(publish)
    options = publish.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}publish-options/{{{NS_DATA}}}x")
    assert options is not None
    assert "s3cr3t" in etree.tostring(options).decode()
    # the offline module still stored the message
    again = await h.connect("alice@localhost/phone", priority=0, drain=False)
    bodies = [m.findtext("{jabber:client}body") for m in h.take(again)]
    assert "secret words" in bodies


async def test_sender_and_body_only_when_configured(tmp_path: Path) -> None:
    async with ModuleHarness.started(
        tmp_path,
        modules_enabled=["offline", "push"],
        component={APP: {"secret": "x"}},
        modules={"push": {"include_sender": True, "include_body": True, "max_body_length": 5}},
    ) as h:
        app = AppServer(h)
        alice = await h.connect("alice@localhost/phone", priority=0)
        bob = await h.connect("bob@localhost/desk", priority=0)
        await enable(h, alice)
        await h.disconnect(alice)
        await message_from_bob(h, bob, "hello there")
        await settle(h)
        [publish] = app.take_all()
        fields = summary(publish)
        assert fields["last-message-sender"] == "bob@localhost/desk"
        assert fields["last-message-body"] == "hello"


async def test_online_client_is_not_pushed(h: ModuleHarness, app: AppServer, bob: Session) -> None:
    alice = await h.connect("alice@localhost/phone", priority=0)
    await enable(h, alice)
    await message_from_bob(h, bob)
    assert len(h.take(alice)) == 1
    await settle(h)
    assert app.take_all() == []


async def test_connected_client_without_presence_is_not_pushed(
    h: ModuleHarness, app: AppServer, bob: Session
) -> None:
    alice = await h.connect("alice@localhost/phone")  # bound, no presence: message goes offline
    await enable(h, alice)
    await message_from_bob(h, bob)
    await settle(h)
    assert app.take_all() == []


async def test_hibernated_session_is_pushed_for_bare_and_full_jid(
    h: ModuleHarness, app: AppServer, bob: Session
) -> None:
    alice = await h.connect("alice@localhost/phone", priority=0)
    await enable(h, alice)
    alice.conn = None  # stream management keeps it bound and available, without a connection
    await message_from_bob(h, bob, "one")
    await settle(h)
    assert summary(app.take_all()[0])["message-count"] == "1"
    await message_from_bob(h, bob, "two", to="alice@localhost/phone")
    await settle(h)
    [publish] = app.take_all()
    assert summary(publish)["message-count"] == "2"


async def test_count_restarts_when_the_session_is_resumed(
    h: ModuleHarness, app: AppServer, bob: Session
) -> None:
    alice = await h.connect("alice@localhost/phone", priority=0)
    await enable(h, alice)
    alice.conn = None
    await message_from_bob(h, bob, "one")
    await settle(h)
    assert summary(app.take_all()[0])["message-count"] == "1"
    alice.attach(FakeConnection())  # stream management resumes it, then says so
    await h.host().bus.notify(ev.SESSION_RESUMED, ev.SessionEvent(alice))
    alice.conn = None
    await message_from_bob(h, bob, "two")
    await settle(h)
    assert summary(app.take_all()[0])["message-count"] == "1"


async def test_hibernated_session_pushes_only_its_own_registration(
    h: ModuleHarness, app: AppServer, bob: Session
) -> None:
    phone = await h.connect("alice@localhost/phone", priority=0)
    laptop = await h.connect("alice@localhost/laptop", priority=0)
    await enable(h, phone, node="phone-node")
    await enable(h, laptop, node="laptop-node")
    phone.conn = None
    await message_from_bob(h, bob)
    await settle(h)
    [publish] = app.take_all()
    node = publish.find(f".//{{{NS_PUBSUB}}}publish")
    assert node is not None
    assert node.get("node") == "phone-node"


async def test_headline_and_chat_state_are_not_pushed(
    h: ModuleHarness, app: AppServer, bob: Session
) -> None:
    alice = await h.connect("alice@localhost/phone", priority=0)
    await enable(h, alice)
    await h.disconnect(alice)
    await h.send(bob, "<message to='alice@localhost' type='headline'><body>news</body></message>")
    await h.send(
        bob,
        "<message to='alice@localhost' type='chat'>"
        "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
    )
    await settle(h)
    assert app.take_all() == []


async def test_encrypted_message_without_body_is_pushed(
    h: ModuleHarness, app: AppServer, bob: Session
) -> None:
    alice = await h.connect("alice@localhost/phone", priority=0)
    await enable(h, alice)
    await h.disconnect(alice)
    await h.send(
        bob,
        "<message to='alice@localhost' type='chat'><encrypted xmlns='urn:xmpp:omemo:2'>"
        "<payload>AAAA</payload></encrypted></message>",
    )
    await settle(h)
    assert len(app.take_all()) == 1


async def test_burst_is_coalesced_while_a_publish_is_in_flight(
    h: ModuleHarness, app: AppServer, bob: Session
) -> None:
    alice = await h.connect("alice@localhost/phone", priority=0)
    await enable(h, alice)
    await h.disconnect(alice)
    app.gate = asyncio.Event()
    await message_from_bob(h, bob, "m0")
    first = await asyncio.wait_for(app.received.get(), 5)  # in flight, unanswered
    assert summary(first)["message-count"] == "1"
    for i in range(1, 5):
        await message_from_bob(h, bob, f"m{i}")
    await triggers_done(h)  # every message reached the module before the app server answers
    app.gate.set()
    await settle(h)
    rest = app.take_all()
    assert len(rest) == 1
    assert summary(rest[0])["message-count"] == "5"


async def test_count_restarts_when_the_client_comes_back(
    h: ModuleHarness, app: AppServer, bob: Session
) -> None:
    alice = await h.connect("alice@localhost/phone", priority=0)
    await enable(h, alice)
    await h.disconnect(alice)
    await message_from_bob(h, bob)
    await settle(h)
    alice = await h.connect("alice@localhost/phone", priority=0)
    await h.disconnect(alice)
    await message_from_bob(h, bob)
    await settle(h)
    assert [summary(p)["message-count"] for p in app.take_all()] == ["1", "1"]


async def test_error_reply_disables_registration(
    h: ModuleHarness, app: AppServer, bob: Session
) -> None:
    alice = await h.connect("alice@localhost/phone", priority=0)
    await enable(h, alice)
    await h.disconnect(alice)
    app.error = StanzaError("item-not-found")
    await message_from_bob(h, bob)
    await settle(h)
    assert len(app.take_all()) == 1
    assert await push(h).registrations("alice") == []
    await message_from_bob(h, bob)  # XEP-0357 §6: nothing is published to a disabled service
    await settle(h)
    assert app.take_all() == []


async def test_transient_errors_disable_only_after_several(
    h: ModuleHarness, app: AppServer, bob: Session
) -> None:
    alice = await h.connect("alice@localhost/phone", priority=0)
    await enable(h, alice)
    await h.disconnect(alice)
    app.error = StanzaError("resource-constraint")  # type wait
    for _ in range(2):
        await message_from_bob(h, bob)
        await settle(h)
    assert len(await push(h).registrations("alice")) == 1
    await message_from_bob(h, bob)
    await settle(h)
    assert await push(h).registrations("alice") == []
    assert len(app.take_all()) == 3


async def test_unconnected_app_server_component_is_a_transient_error(
    h: ModuleHarness, bob: Session
) -> None:
    # No AppServer handler: the component is configured but not connected, so the server
    # itself answers service-unavailable (type wait).
    alice = await h.connect("alice@localhost/phone", priority=0)
    await enable(h, alice)
    await h.disconnect(alice)
    await message_from_bob(h, bob)
    await settle(h)
    assert len(await push(h).registrations("alice")) == 1


async def test_unknown_app_server_domain_disables_registration(
    h: ModuleHarness, bob: Session
) -> None:
    alice = await h.connect("alice@localhost/phone", priority=0)
    await enable(h, alice, jid="push.example.net")
    await h.disconnect(alice)
    await message_from_bob(h, bob)
    await settle(h)
    assert await push(h).registrations("alice") == []


async def test_disable_while_publish_in_flight_stops_further_publishes(
    h: ModuleHarness, app: AppServer, bob: Session
) -> None:
    phone = await h.connect("alice@localhost/phone", priority=0)
    laptop = await h.connect("alice@localhost/laptop")  # no presence: stays out of delivery
    await enable(h, phone)
    await h.disconnect(phone)
    app.gate = asyncio.Event()
    await message_from_bob(h, bob, "1")
    await asyncio.wait_for(app.received.get(), 5)
    await message_from_bob(h, bob, "2")
    await triggers_done(h)  # "2" is waiting for the publish in flight
    reply = await iq(h, laptop, f"<disable xmlns='{NS_PUSH}' jid='{APP}'/>")
    assert reply.get("type") == "result"
    app.gate.set()
    await settle(h)
    assert app.take_all() == []


async def test_app_server_revoking_affiliation_disables_the_node(
    h: ModuleHarness, app: AppServer
) -> None:
    alice = await h.connect("alice@localhost/phone", priority=0)
    await enable(h, alice, node="keep")
    await enable(h, alice, node="gone")
    await enable(h, alice, node="gone", jid="other.example")
    for sender, node, affiliation in (
        ("mallory.example", "keep", "none"),  # not the registered app server: ignored
        (APP, "keep", "publisher"),  # not a revocation
        (APP, "gone", "none"),
    ):
        message = parse_element(
            f"<message from='{sender}' to='alice@localhost'><pubsub xmlns='{NS_PUBSUB}' "
            f"node='{node}'><affiliation jid='alice@localhost' affiliation='{affiliation}'/>"
            "</pubsub></message>"
        )
        await h.server.router.route(message)
    await settle(h)
    assert {(r.jid, r.node) for r in await push(h).registrations("alice")} == {
        (APP, "keep"),
        ("other.example", "gone"),
    }


async def test_message_pushed_while_hibernated_is_not_pushed_again_when_it_goes_offline(
    h: ModuleHarness, app: AppServer, bob: Session
) -> None:
    alice = await h.connect("alice@localhost/phone", priority=0)
    await enable(h, alice)
    alice.conn = None  # hibernated
    await h.send(bob, "<message to='alice@localhost' type='chat' id='m1'><body>x</body></message>")
    await settle(h)
    assert len(app.take_all()) == 1
    # stream management gives up: the unacknowledged message goes to offline storage
    element = parse_element("<message type='chat' id='m1'><body>x</body></message>")
    element.set("from", "bob@localhost/desk")
    element.set("to", "alice@localhost")
    await h.disconnect(alice)
    stanza = Stanza(
        element, "message", "chat", JID.parse("bob@localhost/desk"), JID.parse("alice@localhost")
    )
    await h.host().bus.chain(
        MESSAGE_OFFLINE, MessageOffline(stanza, "alice", JID.parse("alice@localhost"))
    )
    await settle(h)
    assert app.take_all() == []
    # a new message is notified
    await h.send(bob, "<message to='alice@localhost' type='chat' id='m2'><body>y</body></message>")
    await settle(h)
    [publish] = app.take_all()
    assert summary(publish)["message-count"] == "2"
