"""XEP-0114 component listener: slixmpp ComponentXMPP and raw-XML edge cases over real sockets."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import slixmpp
from lxml import etree

from tests.conftest import PASSWORD, TIMEOUT, ClientFactory, make_config
from tests.helpers.wire import RawClient
from xmppd.config import ConfigError
from xmppd.hosts import Host
from xmppd.jid import JID
from xmppd.server import Server

pytestmark = pytest.mark.interop

SECRET = "s3cr3t-component"
DOMAIN = "push.localhost"
NS_COMPONENT = "jabber:component:accept"
NS_STREAMS = "http://etherx.jabber.org/streams"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def component_config(tmp_path: Path, **overrides: Any) -> Any:
    return make_config(
        tmp_path,
        listen={"c2s": ["127.0.0.1:0"], "c2s_direct_tls": [], "component": ["127.0.0.1:0"]},
        component={DOMAIN: {"secret": SECRET}, "other.localhost": {"secret": "other"}},
        limits={"stanza_size": 8192},
        **overrides,
    )


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """Overrides the shared fixture: the same server plus a component listener."""
    srv = Server(component_config(tmp_path))
    await srv.start()
    for user in ("alice", "bob"):
        await srv.accounts.create(JID.parse(f"{user}@localhost"), PASSWORD)
    try:
        yield srv
    finally:
        await srv.stop()


class Component(slixmpp.ComponentXMPP):
    """A slixmpp component recording the messages it receives."""

    def __init__(self, jid: str, secret: str) -> None:
        super().__init__(jid, secret)
        self.messages: asyncio.Queue[slixmpp.Message] = asyncio.Queue()
        self.add_event_handler("message", self.messages.put_nowait)
        self.register_plugin("xep_0030")


@pytest.fixture
async def component(server: Server) -> AsyncIterator[Component]:
    comp = Component(DOMAIN, SECRET)
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    comp.add_event_handler("session_start", lambda _: started.done() or started.set_result(None))
    comp.connect("127.0.0.1", server.ports["component"][0])
    await asyncio.wait_for(started, TIMEOUT)
    try:
        yield comp
    finally:
        comp.disconnect(wait=0)
        await asyncio.sleep(0)


@pytest.fixture(autouse=True)
def _quiet_component_logs() -> None:
    logging.getLogger("xmppd.stream.component").setLevel(logging.ERROR)


async def open_component(server: Server, domain: str = DOMAIN) -> RawClient:
    """A raw connection with the component stream header sent and the answer read."""
    raw = await RawClient.connect(server.ports["component"][0])
    await raw.send(
        f"<?xml version='1.0'?><stream:stream xmlns='{NS_COMPONENT}' "
        f"xmlns:stream='{NS_STREAMS}' to='{domain}'>"
    )
    while raw.header is None:
        await raw._read_more(TIMEOUT)
    return raw


async def handshake(raw: RawClient, secret: str = SECRET) -> None:
    assert raw.header is not None
    digest = hashlib.sha1((raw.header.get("id", "") + secret).encode()).hexdigest()
    await raw.send(f"<handshake>{digest}</handshake>")
    await raw.expect(f"{{{NS_COMPONENT}}}handshake")


def condition(element: etree._Element) -> str | None:
    for child in element.iter(f"{{{NS_STANZAS}}}*"):
        name = etree.QName(child).localname
        if name != "text":
            return name
    return None


# --- slixmpp component ----------------------------------------------------------------------


async def test_message_from_user_reaches_component(
    server: Server, component: Component, connect: ClientFactory
) -> None:
    alice = await connect("alice@localhost/a")
    alice.send_message(mto=f"{DOMAIN}", mbody="to the component", mtype="chat")
    msg = await asyncio.wait_for(component.messages.get(), TIMEOUT)
    assert msg["body"] == "to the component"
    assert str(msg["from"]) == "alice@localhost/a"
    assert str(msg["to"]) == DOMAIN


async def test_message_to_jid_at_component_reaches_component(
    component: Component, connect: ClientFactory
) -> None:
    alice = await connect("alice@localhost/a")
    alice.send_message(mto=f"node@{DOMAIN}/res", mbody="to a user of it", mtype="chat")
    msg = await asyncio.wait_for(component.messages.get(), TIMEOUT)
    assert str(msg["to"]) == f"node@{DOMAIN}/res"
    assert msg["body"] == "to a user of it"


async def test_message_from_component_reaches_user(
    component: Component, connect: ClientFactory
) -> None:
    alice = await connect("alice@localhost/a")
    component.send_message(
        mto="alice@localhost", mfrom=f"bot@{DOMAIN}", mbody="hello from the component"
    )
    msg = await alice.next_message()
    assert msg["body"] == "hello from the component"
    assert str(msg["from"]) == f"bot@{DOMAIN}"


async def test_user_disco_info_answered_by_component(
    component: Component, connect: ClientFactory
) -> None:
    alice = await connect("alice@localhost/a")
    info = await alice.plugin["xep_0030"].get_info(jid=DOMAIN, timeout=TIMEOUT)
    assert "http://jabber.org/protocol/disco#info" in info["disco_info"]["features"]


async def test_component_listed_in_host_disco_items(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    items = await alice.plugin["xep_0030"].get_items(jid="localhost", timeout=TIMEOUT)
    jids = {str(item[0]) for item in items["disco_items"]["items"]}
    assert {DOMAIN, "other.localhost"} <= jids


async def test_iq_from_component_to_server_is_answered(
    server: Server, component: Component
) -> None:
    iq = component.make_iq_get(queryxmlns="http://jabber.org/protocol/disco#info", ito="localhost")
    iq["from"] = DOMAIN
    reply = await iq.send(timeout=TIMEOUT)
    assert reply["type"] == "result"
    assert "urn:xmpp:ping" in reply["disco_info"]["features"]


async def test_disconnected_component_answers_service_unavailable(
    server: Server, connect: ClientFactory
) -> None:
    alice = await connect("alice@localhost/a")
    msg = alice.make_message(mto=f"x@{DOMAIN}", mbody="anyone there?", mtype="chat")
    msg.send()
    reply = await alice.next_message()
    assert reply["type"] == "error"
    assert reply["error"]["condition"] == "service-unavailable"
    assert str(reply["from"]) == f"x@{DOMAIN}"


# --- raw edge cases ------------------------------------------------------------------------


async def test_handshake_reply_header_has_id_and_no_version(server: Server) -> None:
    raw = await open_component(server)
    assert raw.header is not None
    assert raw.header.get("from") == DOMAIN
    assert len(raw.header.get("id", "")) >= 16
    assert raw.header.get("version") is None
    await handshake(raw)
    await raw.close()


async def test_bad_handshake_is_not_authorized(server: Server) -> None:
    raw = await open_component(server)
    assert raw.header is not None
    wrong = hashlib.sha1((raw.header.get("id", "") + "wrong").encode()).hexdigest()
    await raw.send(f"<handshake>{wrong}</handshake>")
    assert await raw.stream_error() == "not-authorized"
    assert DOMAIN not in server.components


async def test_other_component_secret_is_not_authorized(server: Server) -> None:
    raw = await open_component(server, "other.localhost")
    assert raw.header is not None
    digest = hashlib.sha1((raw.header.get("id", "") + SECRET).encode()).hexdigest()
    await raw.send(f"<handshake>{digest}</handshake>")
    assert await raw.stream_error() == "not-authorized"


async def test_stanza_before_handshake_is_not_authorized(server: Server) -> None:
    raw = await open_component(server)
    await raw.send(f"<message from='{DOMAIN}' to='alice@localhost'><body>x</body></message>")
    assert await raw.stream_error() == "not-authorized"


async def test_unknown_domain_is_host_unknown(server: Server) -> None:
    raw = await open_component(server, "nope.localhost")
    assert await raw.stream_error() == "host-unknown"


async def test_local_host_domain_is_host_unknown(server: Server) -> None:
    raw = await open_component(server, "localhost")
    assert await raw.stream_error() == "host-unknown"


async def test_client_namespace_is_invalid_namespace(server: Server) -> None:
    raw = await RawClient.connect(server.ports["component"][0])
    await raw.send(
        f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
        f"xmlns:stream='{NS_STREAMS}' to='{DOMAIN}'>"
    )
    assert await raw.stream_error() == "invalid-namespace"


async def test_forged_from_is_invalid_from(server: Server, connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    raw = await open_component(server)
    await handshake(raw)
    await raw.send("<message from='bob@localhost' to='alice@localhost/a'><body>x</body></message>")
    assert await raw.stream_error() == "invalid-from"
    with pytest.raises(asyncio.TimeoutError):
        await alice.next_message(timeout=0.3)


async def test_from_of_a_subdomain_is_invalid_from(server: Server) -> None:
    raw = await open_component(server)
    await handshake(raw)
    await raw.send(f"<message from='a.{DOMAIN}' to='alice@localhost'><body>x</body></message>")
    assert await raw.stream_error() == "invalid-from"


async def test_missing_to_is_improper_addressing(server: Server) -> None:
    raw = await open_component(server)
    await handshake(raw)
    await raw.send(f"<message from='{DOMAIN}'><body>x</body></message>")
    assert await raw.stream_error() == "improper-addressing"


async def test_malformed_to_is_jid_malformed_and_stream_survives(
    server: Server, connect: ClientFactory
) -> None:
    alice = await connect("alice@localhost/a")
    raw = await open_component(server)
    await handshake(raw)
    await raw.send(f"<message from='{DOMAIN}' to='a@b@c' id='m1'><body>x</body></message>")
    reply = await raw.expect(f"{{{NS_COMPONENT}}}message")
    assert reply.get("type") == "error"
    assert reply.get("to") == DOMAIN
    assert condition(reply) == "jid-malformed"
    # the error's children are in the component namespace too (XEP-0114 stream content)
    assert reply.find(f"{{{NS_COMPONENT}}}error") is not None
    await raw.send(f"<message from='{DOMAIN}' to='alice@localhost/a'><body>still</body></message>")
    assert (await alice.next_message())["body"] == "still"
    await raw.close()


async def test_stanza_to_unknown_domain_gets_remote_server_not_found(server: Server) -> None:
    raw = await open_component(server)
    await handshake(raw)
    await raw.send(
        f"<iq type='get' id='q1' from='{DOMAIN}' to='example.net'><ping xmlns='urn:xmpp:ping'/></iq>"
    )
    reply = await raw.expect(f"{{{NS_COMPONENT}}}iq")
    assert reply.get("type") == "error"
    assert condition(reply) == "remote-server-not-found"
    await raw.close()


async def test_invalid_iq_from_component_is_bad_request(server: Server) -> None:
    raw = await open_component(server)
    await handshake(raw)
    await raw.send(
        f"<iq type='get' from='{DOMAIN}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    )
    reply = await raw.expect(f"{{{NS_COMPONENT}}}iq")
    assert reply.get("type") == "error"
    assert condition(reply) == "bad-request"
    await raw.close()


async def test_oversize_stanza_is_policy_violation(server: Server) -> None:
    raw = await open_component(server)
    await handshake(raw)
    body = "x" * 20000
    await raw.send(f"<message from='{DOMAIN}' to='alice@localhost'><body>{body}</body></message>")
    assert await raw.stream_error() == "policy-violation"


async def test_oversize_handshake_is_policy_violation(server: Server) -> None:
    raw = await open_component(server)
    await raw.send(f"<handshake>{'a' * 40000}</handshake>")
    assert await raw.stream_error() == "policy-violation"


async def test_malformed_xml_is_not_well_formed(server: Server) -> None:
    raw = await open_component(server)
    await handshake(raw)
    await raw.send(f"<message from='{DOMAIN}' to='alice@localhost'><body>x</bod></message>")
    assert await raw.stream_error() == "not-well-formed"


async def test_comment_is_restricted_xml(server: Server) -> None:
    raw = await open_component(server)
    await raw.send("<!-- hello -->")
    assert await raw.stream_error() == "restricted-xml"


async def test_unknown_element_is_unsupported_stanza_type(server: Server) -> None:
    raw = await open_component(server)
    await handshake(raw)
    await raw.send("<foo xmlns='urn:example'/>")
    assert await raw.stream_error() == "unsupported-stanza-type"


async def test_second_connection_gets_conflict_and_first_keeps_working(
    server: Server, connect: ClientFactory
) -> None:
    alice = await connect("alice@localhost/a")
    first = await open_component(server)
    await handshake(first)
    second = await open_component(server)
    assert second.header is not None
    digest = hashlib.sha1((second.header.get("id", "") + SECRET).encode()).hexdigest()
    await second.send(f"<handshake>{digest}</handshake>")
    assert await second.stream_error() == "conflict"
    await first.send(
        f"<message from='{DOMAIN}' to='alice@localhost/a'><body>first</body></message>"
    )
    assert (await alice.next_message())["body"] == "first"
    alice.send_message(mto=DOMAIN, mbody="back", mtype="chat")
    got = await first.expect(f"{{{NS_COMPONENT}}}message")
    assert got.findtext(f"{{{NS_COMPONENT}}}body") == "back"
    await first.close()


async def test_reconnect_after_disconnect(server: Server) -> None:
    first = await open_component(server)
    await handshake(first)
    await first.send("</stream:stream>")
    await first.wait_closed()  # the server closes its side after releasing the domain
    assert DOMAIN not in server.components
    again = await open_component(server)
    await handshake(again)
    assert DOMAIN in server.components
    await again.close()


async def test_component_listener_on_public_address_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(
        tmp_path,
        storage="memory",
        listen={"c2s": [], "c2s_direct_tls": [], "component": ["0.0.0.0:0"]},
        component={DOMAIN: {"secret": SECRET}},
    )
    srv = Server(config)
    with caplog.at_level(logging.WARNING, logger="xmppd.server"):
        await srv.start()
        await srv.stop()
    assert any("not on a loopback address" in r.getMessage() for r in caplog.records)


def test_component_domain_taken_by_a_module_is_refused(tmp_path: Path) -> None:
    srv = Server(component_config(tmp_path))
    srv.hosts[DOMAIN] = Host(DOMAIN)  # as a module's service subdomain would be
    with pytest.raises(ConfigError, match=r'component\."push\.localhost": the domain is already'):
        srv._add_component_hosts()
