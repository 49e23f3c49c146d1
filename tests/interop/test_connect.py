"""STARTTLS / direct TLS + every SASL mechanism + bind, with real slixmpp clients."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import PASSWORD, ClientFactory
from xmppd.jid import JID
from xmppd.server import Server

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("mech", ["SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN"])
async def test_login_over_starttls_with_each_mechanism(
    connect: ClientFactory, server: Server, mech: str
) -> None:
    client = await connect("alice@localhost/phone", mech=mech)
    assert str(client.boundjid) == "alice@localhost/phone"
    assert server.sessions.get(JID.parse("alice@localhost/phone")) is not None


@pytest.mark.parametrize("mech", ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS"])
async def test_login_with_channel_binding_plus(connect: ClientFactory, mech: str) -> None:
    # Python's ssl offers only tls-unique to clients, which exists on TLS 1.2 only (RFC 9266).
    client = await connect("alice@localhost/plus", mech=mech, max_tls12=True)
    assert str(client.boundjid) == "alice@localhost/plus"


async def test_login_over_direct_tls(connect: ClientFactory) -> None:
    client = await connect("bob@localhost/direct", direct_tls=True)
    assert str(client.boundjid) == "bob@localhost/direct"


async def test_wrong_password_is_refused(connect: ClientFactory) -> None:
    await connect("alice@localhost/x", "wrong password", expect_failure=True)


async def test_unknown_account_is_refused_like_a_wrong_password(connect: ClientFactory) -> None:
    await connect("nobody@localhost/x", PASSWORD, expect_failure=True)


async def test_server_generates_resource_when_none_is_asked(connect: ClientFactory) -> None:
    client = await connect("carol@localhost")
    assert client.boundjid.bare == "carol@localhost"
    assert client.boundjid.resource


async def test_ping_and_disco_of_the_server(connect: ClientFactory) -> None:
    client = await connect("alice@localhost/p")
    await client.plugin["xep_0199"].ping("localhost", timeout=10)
    info = await client.plugin["xep_0030"].get_info(jid="localhost", timeout=10)
    features = info["disco_info"]["features"]
    assert "urn:xmpp:ping" in features
    assert "jabber:iq:version" in features
    assert "urn:xmpp:time" in features
    identities = info["disco_info"]["identities"]
    assert ("server", "im", None, "xmppd") in identities


async def test_resource_conflict_replaces_the_old_session(connect: ClientFactory) -> None:
    first = await connect("alice@localhost/same")
    closed = asyncio.get_running_loop().create_future()
    first.add_event_handler("disconnected", lambda _: closed.done() or closed.set_result(True))
    errors: list[str] = []
    first.add_event_handler("stream_error", lambda e: errors.append(e["condition"]))
    second = await connect("alice@localhost/same")
    await asyncio.wait_for(closed, 10)
    assert errors == ["conflict"]
    await second.plugin["xep_0199"].ping("localhost", timeout=10)


async def test_a_replaced_session_ends_before_the_new_one_is_bound(connect: ClientFactory) -> None:
    """RFC 6120 §7.7.2.2 / RFC 6121 §4.5: the old session's unavailable reaches the user's
    other resources (and its directed-presence recipients) before the new session's
    presence, never after it."""
    watcher = await connect("alice@localhost/watcher")
    bob = await connect("bob@localhost/desk")
    first = await connect("alice@localhost/same")
    first.send_presence(pto="bob@localhost/desk", pstatus="directed")
    seen_by_bob = await bob.next_presence()
    assert (seen_by_bob["from"].full, seen_by_bob["type"]) == ("alice@localhost/same", "available")
    while (await watcher.next_presence())["from"].full != "alice@localhost/same":
        pass  # the first session's initial presence
    await connect("alice@localhost/same")
    got = await watcher.next_presence()
    assert (got["from"].full, got["type"]) == ("alice@localhost/same", "unavailable")
    got = await watcher.next_presence()
    assert (got["from"].full, got["type"]) == ("alice@localhost/same", "available")
    got = await bob.next_presence()  # directed-presence cleanup of the old session (§4.6.3)
    assert (got["from"].full, got["type"]) == ("alice@localhost/same", "unavailable")
