"""XEP-0045 at some scale over real sockets: 50 slixmpp clients (xep_0045 plugin) enter one
room concurrently; every one of them gets every message of one sender, in the order sent, and
sees the full room roster (§7.2.2: all other occupants' presence before its own)."""

from __future__ import annotations

import asyncio

import pytest
import slixmpp

from tests.conftest import PASSWORD, Client, ClientFactory
from tests.helpers.muc import room_jid
from xmppd.jid import JID
from xmppd.server import Server

pytestmark = pytest.mark.interop

OCCUPANTS = 50
MESSAGES = 5
ROOM = room_jid("crowd")


async def _client(connect: ClientFactory, user: str) -> Client:
    client = await connect(f"{user}@localhost/r")
    client.register_plugin("xep_0045")
    return client


async def test_fifty_occupants_get_every_message_in_order(
    connect: ClientFactory, server: Server
) -> None:
    users = [f"user{i:02d}" for i in range(OCCUPANTS)]
    await asyncio.gather(
        *(server.accounts.create(JID.parse(f"{u}@localhost"), PASSWORD) for u in users)
    )
    clients = await asyncio.gather(*(_client(connect, u) for u in users))
    owner = clients[0]
    muc = owner.plugin["xep_0045"]
    # The first occupant creates an instant room (§10.1.2).
    await muc.join_muc_wait(slixmpp.JID(ROOM), users[0], maxstanzas=0, timeout=15)
    form = owner.plugin["xep_0004"].make_form(ftype="submit")  # type: ignore[no-untyped-call]
    await muc.set_room_config(slixmpp.JID(ROOM), form)
    results = await asyncio.gather(
        *(
            c.plugin["xep_0045"].join_muc_wait(slixmpp.JID(ROOM), u, maxstanzas=0, timeout=30)
            for c, u in zip(clients[1:], users[1:], strict=True)
        )
    )
    for (self_presence, _subject, occupants, _history), user in zip(
        results, users[1:], strict=True
    ):
        assert self_presence["from"].resource == user
        assert "110" in {str(c) for c in self_presence["muc"]["status_codes"]}
        # Everyone who was in before this one's self-presence was announced first.
        assert all(p["from"].bare == ROOM for p in occupants)
    # Wait until the last to enter is seen by everyone: the roster is complete everywhere.
    last = users[-1]

    async def sees_everyone(client: Client) -> None:
        while len(client.plugin["xep_0045"].get_roster(slixmpp.JID(ROOM))) < OCCUPANTS:
            await client.next_presence(timeout=15)

    await asyncio.wait_for(asyncio.gather(*(sees_everyone(c) for c in clients)), 30)
    for client in clients:
        assert last in client.plugin["xep_0045"].get_roster(slixmpp.JID(ROOM))
    sender = clients[7]
    bodies = [f"message {i}" for i in range(MESSAGES)]
    for body in bodies:
        sender.send_message(mto=slixmpp.JID(ROOM), mbody=body, mtype="groupchat")

    async def receive(client: Client) -> list[str]:
        got: list[str] = []
        while len(got) < MESSAGES:
            message = await client.next_message(timeout=20)
            if message["type"] == "groupchat" and message["from"].resource == users[7]:
                got.append(message["body"])
        return got

    received = await asyncio.wait_for(asyncio.gather(*(receive(c) for c in clients)), 60)
    assert all(got == bodies for got in received), [g for g in received if g != bodies][:3]
