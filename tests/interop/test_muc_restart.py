"""XEP-0045 persistence across a server restart (a real `xmppd serve` process on SQLite): a
persistent room keeps its configuration, subject, affiliations and archived history (XEP-0313
and the discussion history on entry); a temporary room is gone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lxml import etree

from tests.conftest import TIMEOUT, Client
from tests.helpers.muc import (
    NS_FORWARD,
    NS_MAM,
    NS_OWNER,
    Tap,
    admin_item,
    codes,
    create,
    disco_info,
    is_message,
    is_presence,
    item,
    join,
    join_error,
    room_jid,
    say,
    stanza_id,
)
from tests.helpers.subprocess_server import PASSWORD, ServerProcess
from tests.helpers.wire import client_context

pytestmark = pytest.mark.interop

KEPT = room_jid("kept")
FLEETING = room_jid("fleeting")


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    process = ServerProcess(tmp_path, users=("alice", "bob", "carol", "dave"))
    await process.create_accounts()
    await process.start()
    try:
        yield process
    finally:
        await process.kill()


def _done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _describe(message: etree._Element | None) -> str:
    assert message is not None
    body = message.findtext("{jabber:client}body")
    return body if body is not None else f"subject: {message.findtext('{jabber:client}subject')}"


class Clients:
    """slixmpp clients logged in to the subprocess server, disconnected at the end."""

    def __init__(self, srv: ServerProcess) -> None:
        self.srv = srv
        self.all: list[Client] = []

    async def tap(self, user: str) -> Tap:
        client = Client(f"{user}@localhost/r", PASSWORD)
        client.ssl_context = client_context()
        client.enable_direct_tls, client.enable_starttls = False, True
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        client.add_event_handler("session_start", lambda _: _done(started))
        self.all.append(client)
        client.connect("127.0.0.1", self.srv.c2s_port)
        await asyncio.wait_for(started, TIMEOUT)
        client.send_presence()
        await client.next_presence()
        return Tap(client, user)

    def close(self) -> None:
        for client in self.all:
            with contextlib.suppress(Exception):
                client.disconnect(wait=0)
        self.all.clear()


async def test_a_persistent_room_survives_a_restart_a_temporary_one_does_not(
    srv: ServerProcess,
) -> None:
    clients = Clients(srv)
    try:
        alice = await clients.tap("alice")
        await create(
            alice,
            KEPT,
            "Alice",
            {
                "muc#roomconfig_persistentroom": "1",
                "muc#roomconfig_roomname": "Kept room",
                "muc#roomconfig_roomdesc": "It stays",
                "muc#roomconfig_moderatedroom": "1",
                "muc#roomconfig_publicroom": "0",
            },
        )
        await alice.iq_ok("set", KEPT, admin_item(jid="bob@localhost", affiliation="member"))
        await alice.iq_ok("set", KEPT, admin_item(jid="dave@localhost", affiliation="admin"))
        await alice.iq_ok("set", KEPT, admin_item(jid="carol@localhost", affiliation="outcast"))
        alice.send(
            f"<message to='{KEPT}' type='groupchat'><subject>Kept subject</subject></message>"
        )
        await alice.expect(
            lambda e: e.findtext("{jabber:client}subject") == "Kept subject", what="subject"
        )
        ids = []
        for body in ("one", "two", "three"):
            say(alice, KEPT, body)
            got = await alice.expect(is_message(f"{KEPT}/Alice", body=body), what=body)
            ids.append(stanza_id(got, KEPT))
        # The archive has them (a query waits for their commit).
        await alice.iq_ok("set", KEPT, f"<query xmlns='{NS_MAM}' queryid='before'/>")
        await create(alice, FLEETING, "Alice", {"muc#roomconfig_persistentroom": "0"})
        clients.close()
        assert await srv.stop() == 0, srv.log_tail()
        await srv.start()

        bob = await clients.tap("bob")
        features, identities, _ = await disco_info(bob, KEPT)
        assert {"category": "conference", "type": "text", "name": "Kept room"} in identities
        assert {"muc_persistent", "muc_moderated", "muc_hidden"} <= features
        entered = await join(bob, KEPT, "Bob")
        assert 201 not in codes(entered.self_presence)
        assert item(entered.self_presence)["affiliation"] == "member"
        assert item(entered.self_presence)["role"] == "participant"  # members get voice (§5.1.2)
        # §7.1 / §7.2.13 / §7.2.15: the history (subject changes are not part of it), then the
        # subject, once.
        await bob.settle()
        later = bob.take(is_message(KEPT, type_="groupchat"))
        sequence = [
            _describe(m) for m in [*entered.history, entered.subject, *later] if m is not None
        ]
        assert sequence == ["one", "two", "three", "subject: Kept subject"]
        await bob.iq_ok("set", KEPT, f"<query xmlns='{NS_MAM}' queryid='after'/>")
        results = bob.take(lambda e: e.find(f"{{{NS_MAM}}}result") is not None)
        archived = [
            (r.get("id"), _describe(r.find(f"{{{NS_FORWARD}}}forwarded/{{jabber:client}}message")))
            for r in (e.find(f"{{{NS_MAM}}}result") for e in results)
            if r is not None
        ]
        # XEP-0313 §"MUC archives": the subject change is archived too, then the messages.
        assert [d for _, d in archived] == ["subject: Kept subject", "one", "two", "three"]
        assert [i for i, _ in archived[1:]] == ids
        carol = await clients.tap("carol")
        assert await join_error(carol, KEPT, "Carol") == "forbidden"
        dave = await clients.tap("dave")
        entered = await join(dave, KEPT, "Dave")
        assert item(entered.self_presence)["affiliation"] == "admin"
        assert item(entered.self_presence)["role"] == "moderator"
        # The owner is still the owner: the configuration form is hers to read.
        alice = await clients.tap("alice")
        fields_reply = await alice.iq_ok("get", KEPT, f"<query xmlns='{NS_OWNER}'/>")
        values = {
            f.get("var"): f.findtext("{jabber:x:data}value")
            for f in fields_reply.iter("{jabber:x:data}field")
        }
        assert values["muc#roomconfig_roomdesc"] == "It stays"
        assert values["muc#roomconfig_persistentroom"] in ("1", "true")
        # The temporary room is gone.
        assert (
            await bob.iq_error(
                "get", FLEETING, "<query xmlns='http://jabber.org/protocol/disco#info'/>"
            )
            == "item-not-found"
        )
    finally:
        clients.close()


async def test_a_shutdown_tells_the_occupants_with_332(srv: ServerProcess) -> None:
    """§12.2: "When a MUC service shuts down, it SHOULD inform its participant by sending
    presences containing the 332 status code" (with 110 to each occupant)."""
    clients = Clients(srv)
    try:
        alice = await clients.tap("alice")
        bob = await clients.tap("bob")
        await create(alice, KEPT, "Alice", {"muc#roomconfig_persistentroom": "1"})
        await join(bob, KEPT, "Bob")
        assert await srv.stop() == 0, srv.log_tail()
        for tap, nick in ((alice, "Alice"), (bob, "Bob")):
            gone = await tap.expect(
                is_presence(f"{KEPT}/{nick}", type_="unavailable"),
                timeout=2,
                what="the shutdown presence",
            )
            assert {110, 332} <= codes(gone)
    finally:
        clients.close()
