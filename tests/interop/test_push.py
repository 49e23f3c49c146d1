"""XEP-0357 push end to end: a slixmpp client enables push to a slixmpp ComponentXMPP app
server connected over XEP-0114; the app server gets a publish only while the user is offline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import slixmpp
from lxml import etree
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from tests.conftest import PASSWORD, TIMEOUT, ClientFactory, make_config
from xmppd.events import SESSION_ENDED, Priority, SessionEnded
from xmppd.jid import JID
from xmppd.server import Server

pytestmark = pytest.mark.interop

APP = "push.localhost"
SECRET = "app-server-secret"
NS_PUSH = "urn:xmpp:push:0"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_DATA = "jabber:x:data"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """Overrides the shared fixture: adds the app server's component listener."""
    config = make_config(
        tmp_path,
        listen={"c2s": ["127.0.0.1:0"], "c2s_direct_tls": [], "component": ["127.0.0.1:0"]},
        component={APP: {"secret": SECRET}},
    )
    srv = Server(config)
    await srv.start()
    for user in ("alice", "bob"):
        await srv.accounts.create(JID.parse(f"{user}@localhost"), PASSWORD)
    try:
        yield srv
    finally:
        await srv.stop()


class AppServer(slixmpp.ComponentXMPP):
    """Accepts every pubsub publish and keeps it."""

    def __init__(self) -> None:
        super().__init__(APP, SECRET)
        self.publishes: asyncio.Queue[etree._Element] = asyncio.Queue()
        self.register_handler(
            Callback(
                "push publish",
                MatchXPath(f"{{jabber:component:accept}}iq/{{{NS_PUBSUB}}}pubsub"),
                self._publish,
            )
        )

    def _publish(self, iq: slixmpp.Iq) -> None:
        self.publishes.put_nowait(etree.fromstring(ET.tostring(iq.xml)))
        iq.reply(clear=True).send()


@pytest.fixture
async def app_server(server: Server) -> AsyncIterator[AppServer]:
    app = AppServer()
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    app.add_event_handler("session_start", lambda _: started.done() or started.set_result(None))
    app.connect("127.0.0.1", server.ports["component"][0])
    await asyncio.wait_for(started, TIMEOUT)
    try:
        yield app
    finally:
        app.disconnect(wait=0)
        await asyncio.sleep(0)


def enable_iq(client: slixmpp.ClientXMPP, jid: str | None, node: str | None) -> slixmpp.Iq:
    iq = client.make_iq_set()
    enable = ET.Element(f"{{{NS_PUSH}}}enable")
    if jid is not None:
        enable.set("jid", jid)
    if node is not None:
        enable.set("node", node)
    form = ET.SubElement(enable, f"{{{NS_DATA}}}x", type="submit")
    for var, value in (
        ("FORM_TYPE", "http://jabber.org/protocol/pubsub#publish-options"),
        ("secret", "token-123"),
    ):
        field = ET.SubElement(form, f"{{{NS_DATA}}}field", var=var)
        ET.SubElement(field, f"{{{NS_DATA}}}value").text = value
    iq.append(enable)
    return iq


def message_count(publish: etree._Element) -> str | None:
    for field in publish.iter(f"{{{NS_DATA}}}field"):
        if field.get("var") == "message-count":
            return field.findtext(f"{{{NS_DATA}}}value")
    return None


async def test_push_only_while_offline(
    server: Server, app_server: AppServer, connect: ClientFactory
) -> None:
    alice = await connect("alice@localhost/phone")
    bob = await connect("bob@localhost/desk")
    reply = await enable_iq(alice, APP, "node-1").send(timeout=TIMEOUT)
    assert reply["type"] == "result"

    # online: delivered, no publish
    bob.send_message(mto="alice@localhost", mbody="while online", mtype="chat")
    assert (await alice.next_message())["body"] == "while online"

    ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_end(event: SessionEnded) -> None:
        if event.session.username == "alice" and not ended.done():
            ended.set_result(None)

    server.hosts["localhost"].bus.add_notify(SESSION_ENDED, on_end, Priority.NORMAL)
    alice.disconnect()
    await asyncio.wait_for(ended, TIMEOUT)  # the server saw alice go

    bob.send_message(mto="alice@localhost", mbody="while offline", mtype="chat")
    publish = await asyncio.wait_for(app_server.publishes.get(), TIMEOUT)
    # the first publish is for the offline message: none was sent for the online one
    assert message_count(publish) == "1"
    assert publish.get("from") == "alice@localhost"
    node = publish.find(f".//{{{NS_PUBSUB}}}publish")
    assert node is not None
    assert node.get("node") == "node-1"
    text = etree.tostring(publish).decode()
    assert "token-123" in text  # publish options passed on
    assert "while offline" not in text  # no body by default
    assert app_server.publishes.empty()


@pytest.mark.parametrize(
    ("jid", "node", "condition"),
    [(None, "n", "bad-request"), ("a@b@c", "n", "jid-malformed"), (APP, None, "bad-request")],
)
async def test_enable_errors(
    connect: ClientFactory, jid: str | None, node: str | None, condition: str
) -> None:
    alice = await connect("alice@localhost/phone")
    with pytest.raises(IqError) as info:
        await enable_iq(alice, jid, node).send(timeout=TIMEOUT)
    assert info.value.iq["error"]["condition"] == condition
