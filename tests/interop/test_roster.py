"""RFC 6121 §2 rosters end to end: slixmpp clients against a real server over sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import slixmpp
from slixmpp.exceptions import IqError

from tests.conftest import TIMEOUT, Client, ClientFactory
from xeps.roster import RosterModule
from xmppd.server import Server

pytestmark = pytest.mark.interop

NS = "jabber:iq:roster"


def pushes(client: Client) -> asyncio.Queue[slixmpp.Iq]:
    """Roster pushes the client receives (answered by slixmpp itself)."""
    queue: asyncio.Queue[slixmpp.Iq] = asyncio.Queue()
    client.add_event_handler("roster_update", queue.put_nowait)
    return queue


async def next_push(queue: asyncio.Queue[slixmpp.Iq]) -> Any:
    iq = await asyncio.wait_for(queue.get(), TIMEOUT)
    items = iq.xml.findall(f"{{{NS}}}query/{{{NS}}}item")
    assert len(items) == 1
    return items[0]


def roster_iq(client: Client, type_: str, item_xml: str = "", ver: str | None = None) -> Any:
    iq = client.make_iq_get() if type_ == "get" else client.make_iq_set()
    query = slixmpp.ET.fromstring(f"<query xmlns='{NS}'>{item_xml}</query>")
    if ver is not None:
        query.set("ver", ver)
    iq.xml.append(query)
    return iq


async def test_get_set_remove_with_pushes_to_two_resources(connect: ClientFactory) -> None:
    one = await connect("alice@localhost/one")
    two = await connect("alice@localhost/two")
    await one.get_roster()
    await two.get_roster()
    q1, q2 = pushes(one), pushes(two)

    await roster_iq(
        one, "set", "<item jid='bob@localhost' name='Bob'><group>Friends</group></item>"
    ).send(timeout=10)

    for queue in (q1, q2):
        item = await next_push(queue)
        assert item.get("jid") == "bob@localhost"
        assert item.get("name") == "Bob"
        assert item.get("subscription") == "none"
        assert item.findtext(f"{{{NS}}}group") == "Friends"
    result = await roster_iq(two, "get").send(timeout=10)
    items = result.xml.findall(f"{{{NS}}}query/{{{NS}}}item")
    assert [i.get("jid") for i in items] == ["bob@localhost"]

    await roster_iq(one, "set", "<item jid='bob@localhost' subscription='remove'/>").send(
        timeout=10
    )

    for queue in (q1, q2):
        item = await next_push(queue)
        assert item.get("subscription") == "remove"
    result = await roster_iq(one, "get").send(timeout=10)
    assert result.xml.findall(f"{{{NS}}}query/{{{NS}}}item") == []


async def test_roster_versioning(connect: ClientFactory) -> None:
    one = await connect("alice@localhost/one")
    two = await connect("alice@localhost/two")
    assert "rosterver" in one.features
    assert "preapproval" in one.features
    await roster_iq(one, "set", "<item jid='bob@localhost'/>").send(timeout=10)
    full = await roster_iq(one, "get", ver="").send(timeout=10)
    ver = full.xml.find(f"{{{NS}}}query").get("ver")
    assert ver

    # §2.6.3: the client's version is current: an empty result, then pushes.
    current = await roster_iq(two, "get", ver=ver).send(timeout=10)
    assert current.xml.find(f"{{{NS}}}query") is None
    queue = pushes(two)
    await roster_iq(one, "set", "<item jid='carol@localhost'/>").send(timeout=10)
    push = await asyncio.wait_for(queue.get(), TIMEOUT)
    new_ver = push.xml.find(f"{{{NS}}}query").get("ver")
    assert new_ver
    assert new_ver != ver

    stale = await roster_iq(two, "get", ver=ver).send(timeout=10)
    query = stale.xml.find(f"{{{NS}}}query")
    assert query.get("ver") == new_ver
    assert sorted(i.get("jid") for i in query) == ["bob@localhost", "carol@localhost"]


async def error_of(iq: Any) -> str:
    with pytest.raises(IqError) as info:
        await iq.send(timeout=10)
    return str(info.value.iq["error"]["condition"])


async def test_hostile_roster_sets(connect: ClientFactory, server: Server) -> None:
    alice = await connect("alice@localhost/a")
    bob = await connect("bob@localhost/b")
    await bob.get_roster()
    bob_pushes = pushes(bob)

    foreign = roster_iq(alice, "set", "<item jid='carol@localhost'/>")
    foreign["to"] = "bob@localhost"
    assert await error_of(foreign) == "forbidden"
    foreign_get = roster_iq(alice, "get")
    foreign_get["to"] = "bob@localhost"
    assert await error_of(foreign_get) == "forbidden"

    bad = {
        "<item jid='x@localhost'/><item jid='y@localhost'/>": "bad-request",
        "<item jid='x@localhost'><group>g</group><group>g</group></item>": "bad-request",
        "<item jid='x@localhost'><group/></item>": "not-acceptable",
        "<item/>": "bad-request",
        "<item jid='a@b@c'/>": "jid-malformed",
        "<item jid='alice@localhost'/>": "not-allowed",
        "<item jid='nobody@localhost' subscription='remove'/>": "item-not-found",
    }
    for items, condition in bad.items():
        assert await error_of(roster_iq(alice, "set", items)) == condition, items

    # Over the size limit (made small for the test): not-allowed, nothing stored.
    module = server.hosts["localhost"].modules["roster"]
    assert isinstance(module, RosterModule)
    module.options = RosterModule.Options(max_items=1)
    await roster_iq(alice, "set", "<item jid='x@localhost'/>").send(timeout=10)
    assert await error_of(roster_iq(alice, "set", "<item jid='y@localhost'/>")) == "not-allowed"
    result = await roster_iq(alice, "get").send(timeout=10)
    assert [i.get("jid") for i in result.xml.find(f"{{{NS}}}query")] == ["x@localhost"]
    assert bob_pushes.empty()
