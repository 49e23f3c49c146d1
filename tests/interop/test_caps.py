"""XEP-0115 server capabilities and XEP-0157 contact addresses over real sockets: the stream
feature's ver is checked with slixmpp's own verification-string implementation."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lxml import etree
from slixmpp.exceptions import IqError

from tests.conftest import PASSWORD, Client, ClientFactory, make_config
from tests.helpers.wire import RawClient, client_context
from xmppd import events as ev
from xmppd.jid import JID
from xmppd.server import Server

pytestmark = pytest.mark.interop

CAPS = "{http://jabber.org/protocol/caps}c"
SERVERINFO = "http://jabber.org/network/serverinfo"


async def post_auth_features(port: int) -> etree._Element:
    """Log in by hand and return the <stream:features/> after authentication."""
    raw = await RawClient.connect(port)
    try:
        await raw.open_stream()
        await raw.starttls()
        await raw.open_stream()
        token = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
        await raw.send(
            f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
        )
        await raw.expect("{urn:ietf:params:xml:ns:xmpp-sasl}success")
        return await raw.open_stream()
    finally:
        await raw.close()


@pytest.fixture
async def contact_server(tmp_path: Path) -> AsyncIterator[Server]:
    config = make_config(tmp_path, modules={"contact_info": {"abuse": ["mailto:abuse@localhost"]}})
    srv = Server(config)
    await srv.start()
    await srv.accounts.create(JID.parse("alice@localhost"), PASSWORD)
    try:
        yield srv
    finally:
        await srv.stop()


async def test_caps_feature_verifies_against_node_query(contact_server: Server) -> None:
    features = await post_auth_features(contact_server.ports["c2s"][0])
    c = features.find(CAPS)
    assert c is not None
    assert c.get("hash") == "sha-1"
    node, ver = c.get("node"), c.get("ver")

    client = Client("alice@localhost/caps", PASSWORD)
    client.register_plugin("xep_0128")
    client.register_plugin("xep_0115")
    client.ssl_context = client_context()
    started = client.wait_until("session_start", timeout=15)
    client.connect("127.0.0.1", contact_server.ports["c2s"][0])
    await started
    try:
        info = await client.plugin["xep_0030"].get_info(jid="localhost", node=f"{node}#{ver}")
        assert client.plugin["xep_0115"].generate_verstring(info["disco_info"], "sha-1") == ver
        values = [v.text for v in info.xml.iter("{jabber:x:data}value")]
        assert SERVERINFO in values
        assert "mailto:abuse@localhost" in values
    finally:
        client.disconnect(wait=0)


async def test_unknown_caps_node_is_not_answered_as_the_server(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    with pytest.raises(IqError) as info:
        await alice.plugin["xep_0030"].get_info(jid="localhost", node="urn:stale#nope")
    assert info.value.condition == "item-not-found"


async def test_server_learns_and_verifies_a_clients_caps(server: Server) -> None:
    """Client side (§6.2): the server asks slixmpp's node#ver and believes the answer only
    because it hashes to the ver slixmpp advertised."""
    learnt: asyncio.Future[ev.CapsChanged] = asyncio.get_running_loop().create_future()

    async def record(event: ev.CapsChanged) -> None:
        if event.features is not None and not learnt.done():
            learnt.set_result(event)

    server.hosts["localhost"].bus.add_notify(ev.CAPS_CHANGED, record, 0)
    client = Client("alice@localhost/caps", PASSWORD)
    client.register_plugin("xep_0115")
    client.register_plugin("xep_0163")
    client.ssl_context = client_context()
    started = client.wait_until("session_start", timeout=15)
    client.connect("127.0.0.1", server.ports["c2s"][0])
    await started
    try:
        client.plugin["xep_0030"].add_feature("http://jabber.org/protocol/tune+notify")
        await client.plugin["xep_0115"].update_caps(broadcast=False)
        client.send_presence()
        event = await asyncio.wait_for(learnt, 15)
        assert str(event.entity) == "alice@localhost/caps"
        assert event.user == JID.parse("alice@localhost")
        assert "http://jabber.org/protocol/tune+notify" in event.features
        assert "http://jabber.org/protocol/caps" in event.features
    finally:
        client.disconnect(wait=0)
