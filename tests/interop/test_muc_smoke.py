"""XEP-0045 over real sockets with slixmpp's xep_0045 plugin: create, configure, join, talk.

A smoke test of the whole path (c2s streams, routing to conference.localhost, broadcast with
send_many); the room logic itself is tested in tests/xeps/muc.
"""

from __future__ import annotations

import asyncio

from slixmpp import JID

from tests.conftest import TIMEOUT, ClientFactory

ROOM = JID("smoke@conference.localhost")


async def test_slixmpp_create_join_talk_leave(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    bob = await connect("bob@localhost/b")
    for client in (alice, bob):
        client.register_plugin("xep_0045")
        client.register_plugin("xep_0004")
    muc_a = alice.plugin["xep_0045"]
    muc_b = bob.plugin["xep_0045"]

    # creation: 201, then the instant-room configuration (§10.1.2) unlocks it
    own, _subject, occupants, history = await muc_a.join_muc_wait(
        ROOM, "Alice", maxstanzas=10, timeout=TIMEOUT
    )
    codes = {int(s) for s in own["muc"]["status_codes"]}
    assert {110, 201} <= codes
    assert history == []
    assert [p["from"].resource for p in occupants] == ["Alice"]  # slixmpp counts itself
    form = alice.plugin["xep_0004"].make_form(ftype="submit")
    await muc_a.set_room_config(ROOM, form, timeout=TIMEOUT)

    own, _subject, occupants, _history = await muc_b.join_muc_wait(
        ROOM, "Bob", maxstanzas=10, timeout=TIMEOUT
    )
    assert 110 in {int(s) for s in own["muc"]["status_codes"]}
    assert [p["from"].resource for p in occupants] == ["Alice", "Bob"]
    assert set(muc_b.get_roster(ROOM)) == {"Alice", "Bob"}

    got: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_groupchat(msg: object) -> None:
        if not got.done():
            got.set_result(f"{msg['from'].resource}: {msg['body']}")  # type: ignore[index]

    alice.add_event_handler("groupchat_message", on_groupchat)
    bob.send_message(mto=ROOM, mbody="hello room", mtype="groupchat")
    assert await asyncio.wait_for(got, TIMEOUT) == "Bob: hello room"

    # leaving: Alice sees Bob go
    left: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    alice.add_event_handler(
        f"muc::{ROOM}::got_offline",
        lambda p: left.done() or left.set_result(p["from"].resource),
    )
    muc_b.leave_muc(ROOM, "Bob")
    assert await asyncio.wait_for(left, TIMEOUT) == "Bob"
