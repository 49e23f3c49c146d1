"""XEP-0160 offline messages, XEP-0203 stamps and XEP-0359 ids end to end with slixmpp."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from tests.conftest import PASSWORD, TIMEOUT, Client, ClientFactory, make_config
from tests.helpers.wire import client_context
from xmppd.jid import JID
from xmppd.lib.delay import parse_stamp
from xmppd.lib.stanza_id import find_stanza_id
from xmppd.server import Server

pytestmark = pytest.mark.interop

DELAY = "{urn:xmpp:delay}delay"


def stanza_id(msg: slixmpp.Message, by: str) -> str | None:
    return find_stanza_id(msg.xml, by)


async def drain_messages(client: Client, count: int) -> list[slixmpp.Message]:
    return [await client.next_message() for _ in range(count)]


async def test_offline_messages_delivered_in_order_with_delay(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    sent_at = time.time()
    for i in range(5):
        alice.send_message(mto="carol@localhost", mbody=f"offline {i}", mtype="chat")
    # A ping round trip: every message before it has been processed (stored).
    await alice.plugin["xep_0199"].ping("localhost", timeout=10)

    carol = await connect("carol@localhost/c")
    got = await drain_messages(carol, 5)
    assert [m["body"] for m in got] == [f"offline {i}" for i in range(5)]
    ids = []
    for msg in got:
        assert str(msg["from"]) == "alice@localhost/a"
        delay = msg.xml.find(DELAY)
        assert delay is not None
        assert delay.get("from") == "localhost"
        assert abs(parse_stamp(delay.get("stamp")) - sent_at) < 30
        ids.append(stanza_id(msg, "carol@localhost"))
    assert all(ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == 5
    alice.send_message(mto="carol@localhost/c", mbody="live", mtype="chat")
    assert (await carol.next_message())["body"] == "live"  # nothing stored came twice


async def test_flushed_messages_are_gone_from_storage(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    alice.send_message(mto="carol@localhost", mbody="once", mtype="chat")
    await alice.plugin["xep_0199"].ping("localhost", timeout=10)
    first = await connect("carol@localhost/one")
    assert (await first.next_message())["body"] == "once"
    first.disconnect()
    second = await connect("carol@localhost/two")
    alice.send_message(mto="carol@localhost/two", mbody="live", mtype="chat")
    assert (await second.next_message())["body"] == "live"  # not "once" again


async def test_chat_state_only_message_is_not_stored(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    errors: list[slixmpp.Message] = []
    alice.add_event_handler("message_error", errors.append)
    msg = alice.make_message(mto="carol@localhost", mtype="chat")
    msg.xml.append(slixmpp.ET.Element("{http://jabber.org/protocol/chatstates}composing"))
    msg.send()
    alice.send_message(mto="carol@localhost", mbody="real", mtype="chat")
    # The ping is answered after both messages were handled: an error would have come first.
    await alice.plugin["xep_0199"].ping("localhost", timeout=10)
    assert errors == []
    carol = await connect("carol@localhost/c", presence=False)
    everything: list[slixmpp.Message] = []
    carol.register_handler(Callback("all", MatchXPath("{jabber:client}message"), everything.append))
    carol.send_presence()
    assert (await carol.next_message())["body"] == "real"
    alice.send_message(mto="carol@localhost/c", mbody="live", mtype="chat")
    assert (await carol.next_message())["body"] == "live"
    assert [m["body"] for m in everything] == ["real", "live"]  # no chat state among them


async def test_no_store_hint_bounces(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    msg = alice.make_message(mto="carol@localhost", mbody="ephemeral", mtype="chat")
    msg.xml.append(slixmpp.ET.Element("{urn:xmpp:hints}no-store"))
    msg.send()
    err = await alice.next_message()
    assert err["type"] == "error"
    assert err["error"]["condition"] == "service-unavailable"


# --- servers of our own: restart, quota ----------------------------------------------------------


@contextlib.asynccontextmanager
async def running(tmp_path: Path, *, accounts: bool, **overrides: Any) -> AsyncIterator[Server]:
    server = Server(make_config(tmp_path, **overrides))
    await server.start()
    if accounts:
        for user in ("alice", "carol"):
            await server.accounts.create(JID.parse(f"{user}@localhost"), PASSWORD)
    clients: list[Client] = []
    server_clients[server] = clients
    try:
        yield server
    finally:
        for client in clients:
            client.disconnect(wait=0)
        await asyncio.sleep(0)
        await server.stop()


server_clients: dict[Server, list[Client]] = {}


async def login(server: Server, jid: str) -> Client:
    client = Client(jid, PASSWORD)
    client.ssl_context = client_context()
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    client.add_event_handler("session_start", lambda _: started.done() or started.set_result(None))
    server_clients[server].append(client)
    client.connect("127.0.0.1", server.ports["c2s"][0])
    await asyncio.wait_for(started, TIMEOUT)
    client.send_presence()
    await client.next_presence()
    return client


async def test_offline_messages_survive_a_restart(tmp_path: Path) -> None:
    async with running(tmp_path, accounts=True) as server:
        alice = await login(server, "alice@localhost/a")
        for i in range(3):
            alice.send_message(mto="carol@localhost", mbody=f"before restart {i}", mtype="chat")
        await alice.plugin["xep_0199"].ping("localhost", timeout=10)
    async with running(tmp_path, accounts=False) as server:
        carol = await login(server, "carol@localhost/c")
        got = await drain_messages(carol, 3)
        assert [m["body"] for m in got] == [f"before restart {i}" for i in range(3)]
        assert all(m.xml.find(DELAY) is not None for m in got)
        ids = [stanza_id(m, "carol@localhost") for m in got]
        # New ids after the restart sort after the old ones.
        alice = await login(server, "alice@localhost/a")
        alice.send_message(mto="carol@localhost/c", mbody="after", mtype="chat")
        live = await carol.next_message()
        assert live["body"] == "after"
        new_id = stanza_id(live, "carol@localhost")
        assert all(ids)
        assert new_id is not None
        assert all(i < new_id for i in ids)


async def test_quota_overflow_is_service_unavailable(tmp_path: Path) -> None:
    async with running(tmp_path, accounts=True, modules={"offline": {"max_messages": 3}}) as server:
        alice = await login(server, "alice@localhost/a")
        for i in range(4):
            alice.send_message(mto="carol@localhost", mbody=f"q{i}", mtype="chat")
        err = await alice.next_message()
        assert err["type"] == "error"
        assert err["error"]["condition"] == "service-unavailable"
        assert err["body"] == "q3"
        carol = await login(server, "carol@localhost/c")
        got = await drain_messages(carol, 3)
        assert [m["body"] for m in got] == ["q0", "q1", "q2"]
