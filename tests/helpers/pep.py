"""Helpers for PEP (XEP-0163) interop tests: slixmpp clients with chosen plugins and +notify
interests in their caps, mutual presence subscriptions, and waiting for PEP notifications."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import slixmpp
from lxml import etree
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from tests.conftest import PASSWORD, TIMEOUT, Client
from tests.helpers.wire import client_context
from xmppd.server import Server

NS_EVENT = "http://jabber.org/protocol/pubsub#event"
NS_ROSTER = "jabber:iq:roster"


class PepClient(Client):
    """A client that also queues every PEP notification it receives (slixmpp's "message"
    event only covers messages with a body)."""

    def __init__(self, jid: str, password: str) -> None:
        super().__init__(jid, password)
        self.events: asyncio.Queue[slixmpp.Message] = asyncio.Queue()
        self.register_handler(
            Callback(
                "test PEP events",
                MatchXPath(f"{{jabber:client}}message/{{{NS_EVENT}}}event"),
                self.events.put_nowait,
            )
        )


async def pep_client(
    server: Server,
    jid: str,
    *,
    plugins: Iterable[str] = (),
    interests: Iterable[str] = (),
    presence: bool = True,
) -> PepClient:
    """Log a client in with `plugins` registered before connecting; its caps (XEP-0115) list
    `<ns>+notify` for each of `interests` before its initial presence goes out."""
    client = PepClient(jid, PASSWORD)
    for plugin in ("xep_0060", "xep_0115", "xep_0163", *plugins):
        client.register_plugin(plugin)
    client.ssl_context = client_context()
    client.enable_direct_tls = False
    client.enable_starttls = True
    started = client.wait_until("session_start", timeout=TIMEOUT)
    client.connect("127.0.0.1", server.ports["c2s"][0])
    await started
    interests = list(interests)
    if interests:
        client.plugin["xep_0163"].add_interest(interests)
    await client.plugin["xep_0115"].update_caps(broadcast=False)
    if presence:
        client.send_presence()
        while True:  # our own presence comes back (RFC 6121 §4.2.2)
            own = await client.next_presence()
            if own["from"] == client.boundjid:
                break
    return client


async def roster_subscription(client: Client, contact: str) -> str:
    """The subscription state of `contact` in `client`'s roster, asked of the server."""
    iq = client.make_iq_get()
    iq.xml.append(slixmpp.ET.Element(f"{{{NS_ROSTER}}}query"))
    result = await iq.send(timeout=TIMEOUT)
    for item in result.xml.findall(f"{{{NS_ROSTER}}}query/{{{NS_ROSTER}}}item"):
        if item.get("jid") == contact:
            return str(item.get("subscription"))
    return "none"


async def make_contacts(a: Client, b: Client) -> None:
    """Mutual presence subscription (slixmpp approves and subscribes back by itself)."""
    for client in (a, b):
        client.roster.auto_authorize = True
        client.roster.auto_subscribe = True
    a_bare, b_bare = a.boundjid.bare, b.boundjid.bare
    pushed = asyncio.Event()  # every step of the handshake ends in a roster push (§3.1)
    for client in (a, b):
        client.add_event_handler("roster_update", lambda _: pushed.set())
    a.send_presence(pto=b_bare, ptype="subscribe")
    while True:
        pushed.clear()
        if (
            await roster_subscription(a, b_bare) == "both"
            and await roster_subscription(b, a_bare) == "both"
        ):
            return
        await asyncio.wait_for(pushed.wait(), TIMEOUT)


def pep_items(message: slixmpp.Message, node: str) -> etree._Element | None:
    """The <items/> of a PEP notification for `node` in `message`, or None."""
    xml = etree.fromstring(slixmpp.xmlstream.tostring(message.xml))
    return xml.find(f"{{{NS_EVENT}}}event/{{{NS_EVENT}}}items[@node='{node}']")


async def next_event(client: PepClient, node: str, timeout: float = TIMEOUT) -> etree._Element:
    """The <items/> of the next PEP notification for `node` (other messages are skipped)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        message = await asyncio.wait_for(client.events.get(), max(left, 0.001))
        items = pep_items(message, node)
        if items is not None:
            return items


def no_event(client: PepClient, node: str) -> bool:
    """Whether no PEP notification for `node` is waiting in the client's queue (drains it)."""
    found = False
    while not client.events.empty():
        found = found or pep_items(client.events.get_nowait(), node) is not None
    return not found
