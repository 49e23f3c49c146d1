"""XEP-0163 PEP over real sockets with slixmpp's xep_0060/xep_0163/xep_0115/xep_0084/xep_0172:
publish and notify between contacts, +notify filtering, access models, publish-options,
max_items, the last item on coming online or on approval, and persistence across a restart."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import cast

import pytest
import slixmpp
from slixmpp.exceptions import IqError

from tests.conftest import PASSWORD, TIMEOUT, Client, make_config
from tests.helpers.wire import client_context
from xeps.roster import Item, RosterModule
from xmppd import events as ev
from xmppd.jid import JID
from xmppd.server import Server

pytestmark = pytest.mark.interop

NS_TUNE = "http://jabber.org/protocol/tune"
NS_NICK = "http://jabber.org/protocol/nick"
NS_AVATAR_META = "urn:xmpp:avatar:metadata"
NS_ERRORS = "http://jabber.org/protocol/pubsub#errors"
MIRROR = {"none": "none", "to": "from", "from": "to", "both": "both"}

Connect = Callable[..., Awaitable[Client]]


class PepClient(Client):
    """A client that queues PEP notifications (items and retractions)."""

    def __init__(self, jid: str, password: str) -> None:
        super().__init__(jid, password)
        for plugin in ("xep_0004", "xep_0060", "xep_0115", "xep_0163", "xep_0084", "xep_0172"):
            self.register_plugin(plugin)
        self.events: asyncio.Queue[slixmpp.Message] = asyncio.Queue()
        self.add_event_handler("pubsub_publish", self.events.put_nowait)
        self.add_event_handler("pubsub_retract", self.events.put_nowait)

    async def next_event(self, timeout: float = TIMEOUT) -> slixmpp.Message:
        return await asyncio.wait_for(self.events.get(), timeout)


async def start(tmp_path: Path) -> Server:
    srv = Server(make_config(tmp_path))
    await srv.start()
    for user in ("alice", "bob", "carol"):
        if not await srv.accounts.exists("localhost", user):
            await srv.accounts.create(JID.parse(f"{user}@localhost"), PASSWORD)
    return srv


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[Server]:
    server = await start(tmp_path)
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def pep(srv: Server) -> AsyncIterator[Connect]:
    """Factory: a PepClient with +notify for `interests`, available, caps in its presence."""
    clients: list[Client] = []

    async def factory(
        jid: str, interests: tuple[str, ...] = (), seen_by: tuple[str, ...] = ()
    ) -> Client:
        """`seen_by`: accounts whose PEP must know the client's caps before this returns."""
        client = PepClient(jid, PASSWORD)
        client.ssl_context = client_context()
        clients.append(client)
        started = client.wait_until("session_start", timeout=TIMEOUT)
        client.connect("127.0.0.1", srv.ports["c2s"][0])
        await started
        for ns in interests:
            client.plugin["xep_0030"].add_feature(f"{ns}+notify")
        await client.plugin["xep_0115"].update_caps(broadcast=False)
        known = [caps_known(srv, user, jid) for user in seen_by]
        client.send_presence()
        await client.next_presence()  # our own presence back: available
        await asyncio.wait_for(asyncio.gather(*known), TIMEOUT)
        return client

    yield factory
    for client in clients:
        client.disconnect(wait=0)
    await asyncio.sleep(0)


def caps_known(srv: Server, user: str, entity: str) -> asyncio.Future[None]:
    """Done when the server has resolved `entity`'s caps for account `user` (CAPS_CHANGED)."""
    bus = srv.hosts["localhost"].bus
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    want = (JID.parse(user), JID.parse(entity))

    async def seen(event: ev.CapsChanged) -> None:
        if (event.user, event.entity) == want and event.features and not done.done():
            done.set_result(None)
            bus.remove(ev.CAPS_CHANGED, seen)

    bus.add_notify(ev.CAPS_CHANGED, seen, 0)
    return done


async def link(srv: Server, user: str, contact: str, sub: str) -> None:
    """`user` has `sub` towards `contact` (and the contact the mirror), written directly."""
    module = cast(RosterModule, srv.hosts["localhost"].modules["roster"])
    for owner, other, state in ((user, contact, sub), (contact, user, MIRROR[sub])):
        roster = await module.get_roster(owner)
        item = Item(
            f"{other}@localhost", to=state in ("to", "both"), from_=state in ("from", "both")
        )
        roster.items[item.jid] = item
        roster.counter += 1
        await module.put_roster(owner, roster)


def tune(title: str) -> slixmpp.ET.Element:
    element = slixmpp.ET.Element(f"{{{NS_TUNE}}}tune")
    slixmpp.ET.SubElement(element, f"{{{NS_TUNE}}}title").text = title
    return element


def titles(message: slixmpp.Message) -> list[str | None]:
    return [t.text for t in message.xml.iter(f"{{{NS_TUNE}}}title")]


async def barrier(sender: Client, receiver: Client) -> None:
    """A chat message from sender to receiver: anything routed before it has arrived."""
    sender.send_message(mto=receiver.boundjid.full, mbody="barrier", mtype="chat")
    while True:
        message = await receiver.next_message()
        if message["body"] == "barrier":
            return


async def test_publish_notifies_interested_contacts_only(srv: Server, pep: Connect) -> None:
    await link(srv, "alice", "bob", "both")
    await link(srv, "alice", "carol", "both")
    alice = await pep("alice@localhost/a", (NS_TUNE,), seen_by=("alice@localhost",))
    bob = await pep("bob@localhost/b", (NS_TUNE,), seen_by=("alice@localhost",))
    carol = await pep("carol@localhost/c", (NS_NICK,), seen_by=("alice@localhost",))
    await alice.plugin["xep_0060"].publish(
        "alice@localhost", NS_TUNE, id="t1", payload=tune("Finzi")
    )
    note = await bob.next_event()
    assert str(note["from"]) == "alice@localhost"
    assert note["pubsub_event"]["items"]["node"] == NS_TUNE
    assert titles(note) == ["Finzi"]
    own = await alice.next_event()
    assert titles(own) == ["Finzi"]
    await barrier(alice, carol)
    assert carol.events.empty()


async def test_nick_and_avatar_metadata_reach_contact(srv: Server, pep: Connect) -> None:
    await link(srv, "alice", "bob", "both")
    alice = await pep("alice@localhost/a")
    bob = await pep("bob@localhost/b", (NS_NICK, NS_AVATAR_META), seen_by=("alice@localhost",))
    await alice.plugin["xep_0172"].publish_nick("Ali")
    note = await bob.next_event()
    assert note.xml.find(f".//{{{NS_NICK}}}nick").text == "Ali"
    png = b"\x89PNG fake"
    sha1 = hashlib.sha1(png).hexdigest()
    await alice.plugin["xep_0084"].publish_avatar(png)
    await alice.plugin["xep_0084"].publish_avatar_metadata(
        [{"id": sha1, "type": "image/png", "bytes": len(png)}]
    )
    meta = await bob.next_event()
    assert meta["pubsub_event"]["items"]["node"] == NS_AVATAR_META
    data = await bob.plugin["xep_0084"].retrieve_avatar("alice@localhost", sha1)
    payload = data.xml.find(".//{urn:xmpp:avatar:data}data")
    assert base64.b64decode(payload.text) == png


async def test_access_models(srv: Server, pep: Connect) -> None:
    await link(srv, "alice", "bob", "both")
    alice = await pep("alice@localhost/a")
    bob = await pep("bob@localhost/b")
    carol = await pep("carol@localhost/c")  # no subscription
    xep60 = alice.plugin["xep_0060"]
    await xep60.publish("alice@localhost", NS_TUNE, id="1", payload=tune("p"))
    items = await bob.plugin["xep_0060"].get_items("alice@localhost", NS_TUNE)
    assert [i["id"] for i in items["pubsub"]["items"]] == ["1"]
    with pytest.raises(IqError) as info:
        await carol.plugin["xep_0060"].get_items("alice@localhost", NS_TUNE)
    assert info.value.condition == "not-authorized"
    assert info.value.iq.xml.find(f".//{{{NS_ERRORS}}}presence-subscription-required") is not None

    form = alice.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(
        var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#publish-options"
    )
    form.add_field(var="pubsub#access_model", value="open")
    await xep60.publish(
        "alice@localhost", "urn:example:open", id="o", payload=tune("o"), options=form
    )
    items = await carol.plugin["xep_0060"].get_items("alice@localhost", "urn:example:open")
    assert [i["id"] for i in items["pubsub"]["items"]] == ["o"]

    form = alice.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(
        var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#publish-options"
    )
    form.add_field(var="pubsub#access_model", value="whitelist")
    await xep60.publish(
        "alice@localhost", "urn:example:wl", id="w", payload=tune("w"), options=form
    )
    with pytest.raises(IqError) as info:
        await bob.plugin["xep_0060"].get_items("alice@localhost", "urn:example:wl")
    assert info.value.condition == "not-allowed"
    items = await xep60.get_items("alice@localhost", "urn:example:wl")
    assert [i["id"] for i in items["pubsub"]["items"]] == ["w"]


async def test_publish_options_precondition_and_max_items(srv: Server, pep: Connect) -> None:
    alice = await pep("alice@localhost/a")
    xep60 = alice.plugin["xep_0060"]

    def options(max_items: str) -> slixmpp.plugins.xep_0004.Form:
        form = alice.plugin["xep_0004"].make_form(ftype="submit")
        form.add_field(
            var="FORM_TYPE",
            ftype="hidden",
            value="http://jabber.org/protocol/pubsub#publish-options",
        )
        form.add_field(var="pubsub#max_items", value=max_items)
        return form

    for n in range(5):
        await xep60.publish(
            "alice@localhost",
            "urn:example:list",
            id=str(n),
            payload=tune(str(n)),
            options=options("3"),
        )
    items = await xep60.get_items("alice@localhost", "urn:example:list")
    assert [i["id"] for i in items["pubsub"]["items"]] == ["2", "3", "4"]
    items = await xep60.get_items("alice@localhost", "urn:example:list", max_items=1)
    assert [i["id"] for i in items["pubsub"]["items"]] == ["4"]
    with pytest.raises(IqError) as info:
        await xep60.publish(
            "alice@localhost", "urn:example:list", id="x", payload=tune("x"), options=options("max")
        )
    assert info.value.condition == "conflict"
    assert info.value.iq.xml.find(f".//{{{NS_ERRORS}}}precondition-not-met") is not None


async def test_last_item_on_coming_online_and_on_approval(srv: Server, pep: Connect) -> None:
    await link(srv, "alice", "bob", "both")
    alice = await pep("alice@localhost/a")
    await alice.plugin["xep_0060"].publish("alice@localhost", NS_TUNE, id="1", payload=tune("old"))
    bob = await pep("bob@localhost/b", (NS_TUNE,))
    assert titles(await bob.next_event()) == ["old"]

    # carol subscribes for real; her presence already reaches alice once alice subscribed.
    carol = await pep("carol@localhost/c", (NS_TUNE,))
    alice.send_presence(pto="carol@localhost", ptype="subscribe")  # carol auto-approves
    carol.send_presence(pto="alice@localhost", ptype="subscribe")  # alice auto-approves
    assert titles(await carol.next_event()) == ["old"]


async def test_nodes_survive_restart(tmp_path: Path) -> None:
    server = await start(tmp_path)
    try:
        client = PepClient("alice@localhost/a", PASSWORD)
        client.ssl_context = client_context()
        started = client.wait_until("session_start", timeout=TIMEOUT)
        client.connect("127.0.0.1", server.ports["c2s"][0])
        await started
        await client.plugin["xep_0060"].publish(
            "alice@localhost", NS_TUNE, id="keep", payload=tune("kept")
        )
        client.disconnect(wait=0)
    finally:
        await server.stop()
    server = await start(tmp_path)
    try:
        client = PepClient("alice@localhost/a", PASSWORD)
        client.ssl_context = client_context()
        started = client.wait_until("session_start", timeout=TIMEOUT)
        client.connect("127.0.0.1", server.ports["c2s"][0])
        await started
        items = await client.plugin["xep_0060"].get_items("alice@localhost", NS_TUNE)
        assert [i["id"] for i in items["pubsub"]["items"]] == ["keep"]
        assert titles_of(items) == ["kept"]
        client.disconnect(wait=0)
    finally:
        await server.stop()


def titles_of(stanza: slixmpp.Iq) -> list[str | None]:
    return [t.text for t in stanza.xml.iter(f"{{{NS_TUNE}}}title")]
