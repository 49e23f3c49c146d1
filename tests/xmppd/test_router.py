"""RFC 6120 §8 and §10 routing (xmppd/router.py): validation, 'from' stamping, error replies,
pre-routing events, IQ dispatch and the server's own IQ requests.

Tier 2: a real Server on memory storage, fake connections that record what they were sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lxml import etree

from tests.helpers.harness import ModuleHarness, assert_xml_equal, error_condition, parse_element
from xmppd import events as ev
from xmppd.errors import StanzaError
from xmppd.events import Priority
from xmppd.module_api import IqRequest, Module, Target, iq_handler
from xmppd.session import Session

NS_TEST = "urn:xmppd:test"


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with ModuleHarness.started(tmp_path, accounts=("alice", "bob")) as harness:
        yield harness


@pytest.fixture
async def alice(h: ModuleHarness) -> Session:
    return await h.connect("alice@localhost/home", priority=0)


@pytest.fixture
async def bob(h: ModuleHarness) -> Session:
    return await h.connect("bob@localhost/work", priority=0)


class Echo(Module):
    """Test module: IQ handlers on the server JID and on account JIDs."""

    name = "echo"

    async def load(self) -> None:
        self.requests: list[IqRequest] = []

    @iq_handler("get", NS_TEST, "echo")
    async def echo(self, request: IqRequest) -> etree._Element:
        result = etree.Element(f"{{{NS_TEST}}}echo", nsmap={None: NS_TEST})
        result.text = request.payload.text
        return result

    @iq_handler("set", NS_TEST, "empty")
    async def empty(self, request: IqRequest) -> None:
        return None

    @iq_handler("get", NS_TEST, "refuse")
    async def refuse(self, request: IqRequest) -> None:
        raise StanzaError("forbidden", "not you")

    @iq_handler("get", NS_TEST, "crash")
    async def crash(self, request: IqRequest) -> None:
        raise RuntimeError("module bug")

    @iq_handler("get", NS_TEST, "whoami", to=Target.ACCOUNT)
    async def whoami(self, request: IqRequest) -> etree._Element:
        self.requests.append(request)
        result = etree.Element(f"{{{NS_TEST}}}whoami", nsmap={None: NS_TEST})
        result.set("from", str(request.from_))
        result.set("to", str(request.to))
        return result


# --- 'from' stamping and 'to' ------------------------------------------------------------------


async def test_forged_from_is_replaced_with_session_full_jid(
    h: ModuleHarness, alice: Session, bob: Session
):
    await h.send(
        alice, "<message from='bob@localhost/work' to='bob@localhost/work'><body/></message>"
    )

    assert h.take_one(bob).get("from") == "alice@localhost/home"


async def test_message_without_to_goes_to_sender_bare_jid(h: ModuleHarness, alice: Session):
    phone = await h.connect("alice@localhost/phone", priority=-1)
    seen: list[ev.StanzaEvent] = []

    async def spy(event: ev.StanzaEvent) -> bool:
        seen.append(event)
        return False

    h.host().bus.add_chain(ev.MESSAGE_BARE, spy, Priority.HIGH)

    await h.send(alice, "<message type='chat'><body>note to self</body></message>")

    assert [str(e.to) for e in seen] == ["alice@localhost"]
    delivered = h.take_one(alice)
    assert delivered.findtext("{jabber:client}body") == "note to self"
    assert h.take(phone) == []  # negative priority: not a bare-JID recipient


async def test_to_is_prepared_before_routing(h: ModuleHarness, alice: Session, bob: Session):
    await h.send(alice, "<message to='BOB@LocalHost/work'><body/></message>")

    assert len(h.take(bob)) == 1


async def test_malformed_to_is_answered_jid_malformed_from_server(h: ModuleHarness, alice: Session):
    await h.send(alice, "<message to='bob@@localhost' id='m1'><body>x</body></message>")

    reply = h.take_one(alice)
    assert reply.get("type") == "error"
    assert reply.get("id") == "m1"
    assert reply.get("to") == "alice@localhost/home"
    assert reply.get("from") == "localhost"
    assert error_condition(reply) == "jid-malformed"


async def test_stanza_to_unknown_domain_gets_remote_server_not_found(
    h: ModuleHarness, alice: Session
):
    await h.send(alice, "<message to='juliet@example.net' id='m1'><body/></message>")

    reply = h.take_one(alice)
    assert reply.get("from") == "juliet@example.net"
    assert error_condition(reply) == "remote-server-not-found"


# --- IQ validation (RFC 6120 §8.2.3) -----------------------------------------------------------


@pytest.mark.parametrize(
    "iq",
    [
        "<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
        "<iq type='get' id='' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
        "<iq type='fetch' id='q1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
        "<iq id='q1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
        "<iq type='get' id='q1' to='localhost'/>",
        "<iq type='set' id='q1' to='localhost'><a xmlns='urn:a'/><b xmlns='urn:b'/></iq>",
    ],
    ids=["no-id", "empty-id", "bad-type", "no-type", "no-child", "two-children"],
)
async def test_invalid_iq_is_answered_bad_request(h: ModuleHarness, alice: Session, iq: str):
    seen: list[ev.StanzaEvent] = []

    async def spy(event: ev.StanzaEvent) -> bool:
        seen.append(event)
        return False

    h.host().bus.add_chain(ev.PRE_IQ, spy, Priority.FIRST)

    await h.send(alice, iq)

    reply = h.take_one(alice)
    assert reply.get("type") == "error"
    assert reply.get("to") == "alice@localhost/home"
    assert error_condition(reply) == "bad-request"
    assert seen == []  # never routed


async def test_presence_of_unknown_type_is_bad_request(h: ModuleHarness, alice: Session):
    await h.send(alice, "<presence to='bob@localhost' type='maybe' id='p1'/>")

    assert error_condition(h.take_one(alice)) == "bad-request"


# --- errors are never answered with errors (RFC 6120 §8.3.1) ------------------------------------


@pytest.mark.parametrize(
    "stanza",
    [
        "<message to='nobody@localhost' type='error'><body/></message>",
        "<iq to='nobody@localhost' type='error' id='e1'><error type='cancel'/></iq>",
        "<iq to='nobody@localhost' type='result' id='r1'/>",
        "<iq to='bob@localhost/gone' type='result' id='r1'/>",
        "<iq to='juliet@example.net' type='error' id='e1'/>",
        "<message to='bob@@localhost' type='error'><body/></message>",
        "<iq to='bob@@localhost' type='result' id='r1'/>",
        "<iq type='error'/>",
    ],
)
async def test_error_or_result_stanza_is_never_answered_with_error(
    h: ModuleHarness, alice: Session, stanza: str
):
    await h.send(alice, stanza)

    assert h.take(alice) == []


# --- pre-routing events --------------------------------------------------------------------------


async def test_pre_message_hook_can_consume_before_delivery(
    h: ModuleHarness, alice: Session, bob: Session
):
    seen: list[str] = []

    async def block(event: ev.StanzaEvent) -> bool:
        seen.append(str(event.stanza.from_))
        return True

    h.host().bus.add_chain(ev.PRE_MESSAGE, block, Priority.NORMAL)

    await h.send(alice, "<message to='bob@localhost'><body/></message>")

    assert seen == ["alice@localhost/home"]
    assert h.take(bob) == []
    assert h.take(alice) == []


async def test_pre_hook_raising_stanza_error_answers_sender(
    h: ModuleHarness, alice: Session, bob: Session
):
    async def refuse(event: ev.StanzaEvent) -> bool:
        raise StanzaError("not-acceptable", "blocked")

    h.host().bus.add_chain(ev.PRE_MESSAGE, refuse, Priority.NORMAL)

    await h.send(alice, "<message to='bob@localhost' id='m1'><body/></message>")

    reply = h.take_one(alice)
    assert reply.get("from") == "bob@localhost"
    assert error_condition(reply) == "not-acceptable"
    assert h.take(bob) == []


# --- unexpected exceptions ------------------------------------------------------------------------


async def test_exception_in_hook_answers_internal_server_error_and_session_survives(
    h: ModuleHarness, alice: Session, bob: Session
):
    async def broken(event: ev.StanzaEvent) -> bool:
        raise RuntimeError("module bug")

    h.host().bus.add_chain(ev.IQ_HOST, broken, Priority.HIGH)

    await h.send(alice, "<iq to='localhost' type='get' id='q1'><x xmlns='urn:x'/></iq>")

    reply = h.take_one(alice)
    assert reply.get("type") == "error"
    assert reply.get("id") == "q1"
    assert error_condition(reply) == "internal-server-error"
    assert not h.conn(alice).closed
    # The session still routes.
    await h.send(alice, "<message to='bob@localhost/work'><body>still here</body></message>")
    assert h.take_one(bob).findtext("{jabber:client}body") == "still here"


async def test_exception_in_iq_handler_answers_internal_server_error(
    h: ModuleHarness, alice: Session
):
    await h.load(Echo)

    await h.send(alice, f"<iq to='localhost' type='get' id='c1'><crash xmlns='{NS_TEST}'/></iq>")

    reply = h.take_one(alice)
    assert reply.get("id") == "c1"
    assert error_condition(reply) == "internal-server-error"
    assert not h.conn(alice).closed


# --- IQ dispatch (xmppd/iq.py through the router) -----------------------------------------------


async def test_iq_handler_payload_becomes_result_addressed_to_requester(
    h: ModuleHarness, alice: Session
):
    await h.load(Echo)

    await h.send(
        alice, f"<iq to='localhost' type='get' id='e1'><echo xmlns='{NS_TEST}'>ho</echo></iq>"
    )

    assert_xml_equal(
        h.take_one(alice),
        f"<iq type='result' id='e1' from='localhost' to='alice@localhost/home'>"
        f"<echo xmlns='{NS_TEST}'>ho</echo></iq>",
    )


async def test_iq_handler_returning_none_gives_empty_result(h: ModuleHarness, alice: Session):
    await h.load(Echo)

    await h.send(alice, f"<iq to='localhost' type='set' id='s1'><empty xmlns='{NS_TEST}'/></iq>")

    assert_xml_equal(
        h.take_one(alice), "<iq type='result' id='s1' from='localhost' to='alice@localhost/home'/>"
    )


async def test_iq_handler_raising_stanza_error_gives_error_reply(h: ModuleHarness, alice: Session):
    await h.load(Echo)

    await h.send(alice, f"<iq to='localhost' type='get' id='f1'><refuse xmlns='{NS_TEST}'/></iq>")

    reply = h.take_one(alice)
    assert reply.get("type") == "error"
    assert reply.get("id") == "f1"
    assert reply.get("from") == "localhost"
    assert reply.get("to") == "alice@localhost/home"
    assert error_condition(reply) == "forbidden"
    assert reply.find(f"{{{NS_TEST}}}refuse") is not None  # the request payload is included
    assert reply.findtext(".//{urn:ietf:params:xml:ns:xmpp-stanzas}text") == "not you"


async def test_iq_with_unknown_payload_gets_service_unavailable(h: ModuleHarness, alice: Session):
    await h.load(Echo)

    await h.send(alice, "<iq to='localhost' type='get' id='u1'><nope xmlns='urn:nope'/></iq>")
    # Same payload, other type: handlers are per type.
    await h.send(alice, f"<iq to='localhost' type='set' id='u2'><echo xmlns='{NS_TEST}'/></iq>")

    replies = h.take(alice)
    assert [(r.get("id"), error_condition(r)) for r in replies] == [
        ("u1", "service-unavailable"),
        ("u2", "service-unavailable"),
    ]


async def test_iq_without_to_is_handled_for_sender_account(h: ModuleHarness, alice: Session):
    module = await h.load(Echo)
    assert isinstance(module, Echo)

    await h.send(alice, f"<iq type='get' id='w1'><whoami xmlns='{NS_TEST}'/></iq>")

    assert [(str(r.from_), str(r.to)) for r in module.requests] == [
        ("alice@localhost/home", "alice@localhost")
    ]


async def test_iq_without_to_gets_result(h: ModuleHarness, alice: Session):
    # RFC 6120 §10.3.3: processed on the account's behalf; §8.2.3: get/set MUST be answered.
    await h.load(Echo)

    await h.send(alice, f"<iq type='get' id='w1'><whoami xmlns='{NS_TEST}'/></iq>")

    reply = h.take_one(alice)
    assert reply.get("type") == "result"
    assert reply.get("id") == "w1"
    assert reply.get("to") == "alice@localhost/home"
    # RFC 6120 §8.1.2.1: from the account's bare JID, or no 'from' at all.
    assert reply.get("from") in (None, "alice@localhost")


async def test_iq_without_to_and_unknown_payload_gets_service_unavailable(
    h: ModuleHarness, alice: Session
):
    await h.send(alice, "<iq type='get' id='u1'><nope xmlns='urn:nope'/></iq>")

    reply = h.take_one(alice)
    assert reply.get("id") == "u1"
    assert error_condition(reply) == "service-unavailable"


async def test_iq_to_other_account_bare_jid_uses_account_handlers(
    h: ModuleHarness, alice: Session, bob: Session
):
    await h.load(Echo)

    await h.send(
        alice, f"<iq to='bob@localhost' type='get' id='w1'><whoami xmlns='{NS_TEST}'/></iq>"
    )

    reply = h.take_one(alice)
    assert reply.get("from") == "bob@localhost"
    assert reply.get("type") == "result"
    assert h.take(bob) == []  # answered by the server on bob's behalf


async def test_host_handler_does_not_answer_for_accounts(h: ModuleHarness, alice: Session):
    await h.load(Echo)

    await h.send(alice, f"<iq to='bob@localhost' type='get' id='e1'><echo xmlns='{NS_TEST}'/></iq>")

    assert error_condition(h.take_one(alice)) == "service-unavailable"


async def test_server_iq_request_is_resolved_by_client_result(h: ModuleHarness, alice: Session):
    module = await h.load(Echo)
    query = parse_element(
        f"<iq type='get' to='alice@localhost/home' id='srv1'><q xmlns='{NS_TEST}'/></iq>"
    )

    task = asyncio.create_task(module.ctx.request_iq(query, timeout=5))
    await asyncio.sleep(0)
    request = h.take_one(alice)
    assert request.get("from") == "localhost"
    assert request.get("id") == "srv1"
    assert not task.done()

    await h.send(alice, "<iq type='result' id='srv1' to='localhost'><answer xmlns='urn:a'/></iq>")

    result = await asyncio.wait_for(task, 5)
    assert result.get("type") == "result"
    assert result.get("from") == "alice@localhost/home"
    assert result.find("{urn:a}answer") is not None
    assert h.take(alice) == []


async def test_server_iq_request_ignores_result_from_other_sender(
    h: ModuleHarness, alice: Session, bob: Session
):
    module = await h.load(Echo)
    query = parse_element(
        f"<iq type='get' to='alice@localhost/home' id='srv1'><q xmlns='{NS_TEST}'/></iq>"
    )
    task = asyncio.create_task(module.ctx.request_iq(query, timeout=5))
    await asyncio.sleep(0)

    await h.send(bob, "<iq type='result' id='srv1' to='localhost'/>")
    await asyncio.sleep(0)
    assert not task.done()

    await h.send(alice, "<iq type='error' id='srv1' to='localhost'/>")
    result = await asyncio.wait_for(task, 5)
    assert result.get("type") == "error"


async def test_server_iq_request_times_out(h: ModuleHarness, alice: Session):
    module = await h.load(Echo)
    query = parse_element(f"<iq type='get' to='alice@localhost/home'><q xmlns='{NS_TEST}'/></iq>")

    with pytest.raises(TimeoutError):
        await module.ctx.request_iq(query, timeout=0.01)

    assert query.get("id")  # an id was generated
    # A late answer is a result: dropped, and not answered with an error.
    await h.send(alice, f"<iq type='result' id='{query.get('id')}' to='localhost'/>")
    assert len(h.take(alice)) == 1  # only the request itself
