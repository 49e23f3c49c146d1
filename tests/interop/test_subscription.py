"""RFC 6121 §3 subscriptions end to end: handshakes, offline requests, restarts, hostile input."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import slixmpp

from tests.conftest import PASSWORD, TIMEOUT, Client, ClientFactory, make_config
from tests.helpers.wire import client_context
from xmppd.jid import JID
from xmppd.server import Server

pytestmark = pytest.mark.interop

NS = "jabber:iq:roster"


def manual(client: Client) -> Client:
    """Answer nothing automatically: the test sends every subscription stanza itself.

    (slixmpp: True accepts, False refuses, None leaves requests to the application.)
    """
    client.roster.auto_authorize = None
    client.roster.auto_subscribe = False
    return client


async def wait_presence(
    client: Client, check: Callable[[slixmpp.Presence], bool], timeout: float = TIMEOUT
) -> slixmpp.Presence:
    """The next presence satisfying `check` (others are skipped)."""
    while True:
        presence = await client.next_presence(timeout)
        if check(presence):
            return presence


SHOWS = frozenset({"available", "away", "chat", "dnd", "xa"})  # slixmpp's p["type"] for available


def of(type_: str, sender: str) -> Callable[[slixmpp.Presence], bool]:
    types = SHOWS if type_ == "available" else {type_}
    return lambda p: p["type"] in types and str(p["from"]) == sender


async def roster_items(client: Client) -> dict[str, tuple[str, str | None]]:
    iq = client.make_iq_get()
    iq.xml.append(slixmpp.ET.Element(f"{{{NS}}}query"))
    result = await iq.send(timeout=10)
    return {
        i.get("jid"): (i.get("subscription"), i.get("ask"))
        for i in result.xml.findall(f"{{{NS}}}query/{{{NS}}}item")
    }


async def test_mutual_subscription_then_broadcast_and_probe(connect: ClientFactory) -> None:
    alice = manual(await connect("alice@localhost/a"))
    bob = manual(await connect("bob@localhost/b"))

    alice.send_presence(pto="bob@localhost", ptype="subscribe")
    request = await wait_presence(bob, lambda p: p["type"] == "subscribe")
    assert str(request["from"]) == "alice@localhost"  # stamped with the bare JID (§3.1.2)
    bob.send_presence(pto="alice@localhost", ptype="subscribed")
    await wait_presence(alice, of("subscribed", "bob@localhost"))
    # §3.1.5: on approval bob's current presence reaches alice at once.
    await wait_presence(alice, of("available", "bob@localhost/b"))

    bob.send_presence(pto="alice@localhost", ptype="subscribe")
    await wait_presence(alice, of("subscribe", "bob@localhost"))
    alice.send_presence(pto="bob@localhost", ptype="subscribed")
    await wait_presence(bob, of("available", "alice@localhost/a"))
    assert (await roster_items(alice))["bob@localhost"] == ("both", None)
    assert (await roster_items(bob))["alice@localhost"] == ("both", None)

    # Broadcast: a presence change reaches the contact.
    alice.send_presence(pshow="away", pstatus="lunch")
    update = await wait_presence(bob, of("available", "alice@localhost/a"))
    assert update["status"] == "lunch"

    # Probe at login: a new resource of bob learns alice's presence; alice sees the new one.
    bob2 = await connect("bob@localhost/b2", presence=False)
    bob2.send_presence()
    probed = await wait_presence(bob2, of("available", "alice@localhost/a"))
    assert probed["status"] == "lunch"
    await wait_presence(alice, of("available", "bob@localhost/b2"))


async def test_offline_request_is_redelivered_at_login(connect: ClientFactory) -> None:
    alice = manual(await connect("alice@localhost/a"))
    alice.send_presence(pto="bob@localhost", ptype="subscribe", pstatus="it's Alice")
    # The pending-out item is pushed back to alice (ask='subscribe').
    assert (await roster_items(alice))["bob@localhost"] == ("none", "subscribe")

    bob = manual(await connect("bob@localhost/one", presence=False))
    bob.send_presence()
    request = await wait_presence(bob, lambda p: p["type"] == "subscribe")
    assert str(request["from"]) == "alice@localhost"
    assert request["status"] == "it's Alice"
    # §3.1.3: not in bob's roster while pending; re-sent to every new resource.
    assert "alice@localhost" not in await roster_items(bob)
    other = manual(await connect("bob@localhost/two", presence=False))
    other.send_presence()
    await wait_presence(other, lambda p: p["type"] == "subscribe")

    other.send_presence(pto="alice@localhost", ptype="subscribed")
    await wait_presence(alice, of("subscribed", "bob@localhost"))
    assert (await roster_items(alice))["bob@localhost"] == ("to", None)
    third = await connect("bob@localhost/three", presence=False)
    third.send_presence()
    with pytest.raises(asyncio.TimeoutError):
        await wait_presence(third, lambda p: p["type"] == "subscribe", timeout=0.5)


async def test_hostile_subscriptions(connect: ClientFactory) -> None:
    alice = manual(await connect("alice@localhost/a"))

    alice.send_presence(pto="alice@localhost", ptype="subscribe")
    error = await wait_presence(alice, lambda p: p["type"] == "error")
    assert error["error"]["condition"] == "not-allowed"

    # A missing account answers "unsubscribed" (§3.1.3); the pending state is cleared.
    alice.send_presence(pto="nobody@localhost", ptype="subscribe")
    await wait_presence(alice, of("unsubscribed", "nobody@localhost"))
    assert (await roster_items(alice))["nobody@localhost"] == ("none", None)

    # A subscribed nobody asked for is not routed and changes nothing (A.2.3) but
    # pre-approves (§3.4); a bare subscription type without 'to' is bad-request.
    alice.send_presence(pto="bob@localhost", ptype="subscribed")
    bob = manual(await connect("bob@localhost/b"))
    alice.send_presence(ptype="subscribe")
    error = await wait_presence(alice, lambda p: p["type"] == "error")
    assert error["error"]["condition"] == "bad-request"

    bob.send_presence(pto="alice@localhost", ptype="subscribe")
    # pre-approved: bob gets "subscribed" without alice seeing the request
    await wait_presence(bob, of("subscribed", "alice@localhost"))
    with pytest.raises(asyncio.TimeoutError):
        await wait_presence(alice, lambda p: p["type"] == "subscribe", timeout=0.5)


async def _login(server: Server, jid: str, *, presence: bool = True) -> Client:
    client = Client(jid, PASSWORD)
    client.ssl_context = client_context()
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    client.add_event_handler("session_start", lambda _: started.done() or started.set_result(None))
    client.connect("127.0.0.1", server.ports["c2s"][0])
    await asyncio.wait_for(started, TIMEOUT)
    manual(client)
    if presence:
        client.send_presence()
    return client


async def test_roster_and_pending_requests_survive_a_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    server = Server(config)
    await server.start()
    clients: list[Client] = []
    try:
        for user in ("alice", "bob", "carol"):
            await server.accounts.create(JID.parse(f"{user}@localhost"), PASSWORD)
        alice = await _login(server, "alice@localhost/a")
        clients.append(alice)
        bob = await _login(server, "bob@localhost/b")
        clients.append(bob)
        alice.send_presence(pto="bob@localhost", ptype="subscribe")
        await wait_presence(bob, lambda p: p["type"] == "subscribe")
        bob.send_presence(pto="alice@localhost", ptype="subscribed")
        await wait_presence(alice, of("subscribed", "bob@localhost"))
        alice.send_presence(pto="carol@localhost", ptype="subscribe", pstatus="remember me")
        assert (await roster_items(alice))["carol@localhost"] == ("none", "subscribe")
    finally:
        for client in clients:
            client.disconnect(wait=0)
        await server.stop()

    server = Server(make_config(tmp_path))  # same data_dir, same SQLite file
    await server.start()
    clients = []
    try:
        alice = await _login(server, "alice@localhost/a")
        clients.append(alice)
        items = await roster_items(alice)
        assert items["bob@localhost"] == ("to", None)
        assert items["carol@localhost"] == ("none", "subscribe")
        carol = await _login(server, "carol@localhost/c")
        clients.append(carol)
        request = await wait_presence(carol, lambda p: p["type"] == "subscribe")
        assert str(request["from"]) == "alice@localhost"
        assert request["status"] == "remember me"
        bob = await _login(server, "bob@localhost/b", presence=False)
        clients.append(bob)
        assert (await roster_items(bob))["alice@localhost"] == ("from", None)
    finally:
        for client in clients:
            client.disconnect(wait=0)
        await server.stop()
