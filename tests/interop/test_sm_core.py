"""XEP-0198 over real sockets with a raw client: enable, acks, resumption, failures, the end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lxml import etree

from tests.conftest import PASSWORD, make_config
from tests.helpers.wire import RawClient
from xmppd.jid import JID
from xmppd.server import Server

SM = "urn:xmpp:sm:3"
BODY = "{jabber:client}body"


@pytest.fixture
async def sm_server(tmp_path: Path) -> AsyncIterator[Server]:
    config = make_config(
        tmp_path,
        modules={"stream_management": {"resume_timeout": 2, "ack_interval": 3, "ack_delay": 30}},
    )
    srv = Server(config)
    await srv.start()
    for user in ("alice", "bob"):
        await srv.accounts.create(JID.parse(f"{user}@localhost"), PASSWORD)
    try:
        yield srv
    finally:
        await srv.stop()


def port(server: Server) -> int:
    return server.ports["c2s"][0]


async def sm_client(server: Server, user: str, resource: str, resume: bool = True) -> RawClient:
    raw = await RawClient.connect(port(server))
    await raw.login(user, PASSWORD, resource)
    flag = " resume='true'" if resume else ""
    await raw.send(f"<enable xmlns='{SM}'{flag}/>")
    enabled = await raw.expect(f"{{{SM}}}enabled")
    raw.sm_id = enabled.get("id")  # type: ignore[attr-defined]
    await raw.send("<presence/>")
    return raw


async def expect_sm(raw: RawClient, name: str) -> etree._Element:
    """The next stream management element `name`, skipping presences and stanzas."""
    while True:
        el = await raw.next()
        if el.tag == f"{{{SM}}}{name}":
            return el
        assert el.tag.startswith("{jabber:client}"), etree.tostring(el)


async def next_stanza(raw: RawClient) -> etree._Element:
    """The next stanza, skipping the server's <r/> requests and presences."""
    while True:
        el = await raw.next()
        if el.tag in (f"{{{SM}}}r", "{jabber:client}presence"):
            continue
        return el


async def test_enable_before_bind_and_twice_fail(sm_server: Server) -> None:
    raw = await RawClient.connect(port(sm_server))
    await raw.login("alice", PASSWORD, bind=False)
    await raw.send(f"<enable xmlns='{SM}'/>")
    failed = await raw.expect(f"{{{SM}}}failed")
    assert failed.find("{urn:ietf:params:xml:ns:xmpp-stanzas}unexpected-request") is not None
    await raw.close()
    raw = await sm_client(sm_server, "alice", "a")
    await raw.send(f"<enable xmlns='{SM}'/>")
    failed = await expect_sm(raw, "failed")
    assert failed.find("{urn:ietf:params:xml:ns:xmpp-stanzas}unexpected-request") is not None
    await raw.close()


async def test_request_is_answered_with_handled_count(sm_server: Server) -> None:
    raw = await sm_client(sm_server, "alice", "a")
    for i in range(4):
        await raw.send(f"<message to='bob@localhost' type='chat'><body>{i}</body></message>")
    await raw.send(f"<r xmlns='{SM}'/>")
    while True:
        el = await raw.next()
        if el.tag == f"{{{SM}}}a":
            break
    assert el.get("h") == "5"  # the presence and four messages
    await raw.close()


async def test_ack_too_high_is_a_stream_error(sm_server: Server) -> None:
    raw = await sm_client(sm_server, "alice", "a")
    await raw.send(f"<a xmlns='{SM}' h='7'/>")
    assert await raw.stream_error() == "undefined-condition"


async def test_resume_replays_exactly_the_unacked_in_order(sm_server: Server) -> None:
    alice = await sm_client(sm_server, "alice", "a")
    bob = await sm_client(sm_server, "bob", "b")
    for i in range(6):
        await alice.send(f"<message to='bob@localhost/b' type='chat'><body>{i}</body></message>")
    got = [(await next_stanza(bob)).findtext(BODY) for _ in range(6)]
    assert got == [str(i) for i in range(6)]
    # bob acknowledges the first two (its presence came before them: h counts it too? no:
    # presence from bob's own broadcast goes back to bob). Count what bob was sent.
    session = sm_server.sessions.get(JID.parse("bob@localhost/b"))
    assert session is not None
    sm_id = bob.sm_id  # type: ignore[attr-defined]
    bob.writer.transport.abort()  # the network drops
    for _ in range(50):
        if session.conn is None:
            break
        await asyncio.sleep(0.02)
    assert session.conn is None
    await alice.send("<message to='bob@localhost/b' type='chat'><body>6</body></message>")
    fresh = await RawClient.connect(port(sm_server))
    await fresh.login("bob", PASSWORD, bind=False)
    sent_before = len(got)  # bob saw these six after enabling, plus the presences it skipped
    await fresh.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")
    resumed = await fresh.expect(f"{{{SM}}}resumed")
    assert resumed.get("previd") == sm_id
    assert resumed.get("h") == "1"  # bob's presence
    replay = []
    while True:
        el = await fresh.next()
        if el.tag == f"{{{SM}}}r":
            break
        if el.tag == "{jabber:client}message":
            replay.append(el.findtext(BODY))
    assert replay == [str(i) for i in range(sent_before + 1)]
    assert sm_server.sessions.get(JID.parse("bob@localhost/b")) is session
    await fresh.close()
    await alice.close()


async def test_resume_unknown_id_fails_item_not_found(sm_server: Server) -> None:
    raw = await RawClient.connect(port(sm_server))
    await raw.login("alice", PASSWORD, bind=False)
    await raw.send(f"<resume xmlns='{SM}' previd='nope' h='0'/>")
    failed = await raw.expect(f"{{{SM}}}failed")
    assert failed.find("{urn:ietf:params:xml:ns:xmpp-stanzas}item-not-found") is not None
    assert failed.get("h") is None
    # the client may still bind normally
    await raw.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    assert (await raw.expect("{jabber:client}iq")).get("type") == "result"
    await raw.close()


async def test_other_users_session_cannot_be_resumed(sm_server: Server) -> None:
    alice = await sm_client(sm_server, "alice", "a")
    sm_id = alice.sm_id  # type: ignore[attr-defined]
    alice.writer.transport.abort()
    bob = await RawClient.connect(port(sm_server))
    await bob.login("bob", PASSWORD, bind=False)
    await bob.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")
    failed = await bob.expect(f"{{{SM}}}failed")
    assert failed.find("{urn:ietf:params:xml:ns:xmpp-stanzas}item-not-found") is not None
    await bob.close()


async def test_timed_out_session_sends_unacked_to_offline_and_failed_has_h(
    sm_server: Server,
) -> None:
    alice = await sm_client(sm_server, "alice", "a")
    bob = await sm_client(sm_server, "bob", "b")
    await alice.send("<message to='bob@localhost' type='chat'><body>keep me</body></message>")
    assert (await next_stanza(bob)).findtext(BODY) == "keep me"
    sm_id = bob.sm_id  # type: ignore[attr-defined]
    bob.writer.transport.abort()
    session = sm_server.sessions.get(JID.parse("bob@localhost/b"))
    for _ in range(200):  # resume_timeout is 2 s
        if sm_server.sessions.get(JID.parse("bob@localhost/b")) is None:
            break
        await asyncio.sleep(0.05)
    assert sm_server.sessions.get(JID.parse("bob@localhost/b")) is None
    assert session is not None
    fresh = await RawClient.connect(port(sm_server))
    await fresh.login("bob", PASSWORD, bind=False)
    await fresh.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")
    failed = await fresh.expect(f"{{{SM}}}failed")
    assert failed.get("h") == "1"
    await fresh.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    assert (await fresh.expect("{jabber:client}iq")).get("type") == "result"
    await fresh.send("<presence/>")
    while True:
        el = await fresh.next()
        if el.tag == "{jabber:client}message":
            break
    assert el.findtext(BODY) == "keep me"
    assert el.find("{urn:xmpp:delay}delay") is not None
    await fresh.close()
    await alice.close()


async def test_clean_close_ends_session_and_unacked_go_offline(sm_server: Server) -> None:
    alice = await sm_client(sm_server, "alice", "a")
    bob = await sm_client(sm_server, "bob", "b")
    await alice.send("<message to='bob@localhost' type='chat'><body>late</body></message>")
    assert (await next_stanza(bob)).findtext(BODY) == "late"
    await bob.close()  # never acked
    for _ in range(100):
        if sm_server.sessions.get(JID.parse("bob@localhost/b")) is None:
            break
        await asyncio.sleep(0.02)
    assert sm_server.sessions.get(JID.parse("bob@localhost/b")) is None
    fresh = await RawClient.connect(port(sm_server))
    await fresh.login("bob", PASSWORD, "c")
    await fresh.send("<presence/>")
    while True:
        el = await fresh.next()
        if el.tag == "{jabber:client}message":
            break
    assert el.findtext(BODY) == "late"
    await fresh.close()
    await alice.close()


async def test_ack_covers_only_committed_archive_writes(
    sm_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The <a/> answering an <r/> leaves only once what the counted stanzas wrote (here: both
    archives of every message) is committed: read the database file from another connection
    the moment the ack arrives. Commits are slowed down so an early ack could not hide."""
    import sqlite3

    storage = sm_server.storage
    slow_run = storage._run  # type: ignore[union-attr]

    async def run(fn):  # type: ignore[no-untyped-def]
        if getattr(fn, "func", None) is not None:  # a batch (functools.partial of _run_batch)
            await asyncio.sleep(0.2)
        return await slow_run(fn)

    monkeypatch.setattr(storage, "_run", run)
    alice = await sm_client(sm_server, "alice", "a")
    bob = await sm_client(sm_server, "bob", "b")
    count = 300
    await alice.send(
        "".join(
            f"<message to='bob@localhost/b' type='chat' id='m{i}'><body>{i}</body></message>"
            for i in range(count)
        )
        + f"<r xmlns='{SM}'/>"
    )
    ack = await expect_sm(alice, "a")
    assert ack.get("h") == str(count + 1)  # the presence and the messages
    with sqlite3.connect(sm_server.config.database_path) as db:
        (rows,) = db.execute("SELECT COUNT(*) FROM archive WHERE store = 'mam'").fetchone()
    assert rows == 2 * count  # alice's and bob's copy of each
    await alice.close()
    await bob.close()


async def test_after_taking_over_a_live_connection_the_server_asks_for_acks_again(
    sm_server: Server,
) -> None:
    """Review finding: an <r/> left unanswered on the old connection used to stop every later
    ack request on the resumed stream (the unacked queue then grew to max_unacked)."""
    alice = await sm_client(sm_server, "alice", "a")
    bob = await sm_client(sm_server, "bob", "b")
    for i in range(3):  # ack_interval is 3: the server asks bob
        await alice.send(f"<message to='bob@localhost/b' type='chat'><body>{i}</body></message>")
    await expect_sm(bob, "r")  # ... and bob never answers on this connection
    sm_id = bob.sm_id  # type: ignore[attr-defined]
    fresh = await RawClient.connect(port(sm_server))
    await fresh.login("bob", PASSWORD, bind=False)
    await fresh.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='4'/>")  # presence + 3 seen
    await fresh.expect(f"{{{SM}}}resumed")
    assert await bob.stream_error() == "conflict"  # the old connection is told why
    for i in range(3, 6):
        await alice.send(f"<message to='bob@localhost/b' type='chat'><body>{i}</body></message>")
    await expect_sm(fresh, "r")  # asked again after ack_interval stanzas
    await fresh.close()
    await alice.close()


async def test_a_deferred_ack_never_reports_a_lower_count_than_one_sent(tmp_path: Path) -> None:
    from tests.helpers.harness import ModuleHarness
    from xeps.stream_management import StreamManagement
    from xeps.stream_management.queue import SmState

    async with ModuleHarness.started(tmp_path, modules_enabled=["stream_management"]) as h:
        session = await h.connect("alice@localhost/a")
        sm = SmState("x", resumable=False)
        StreamManagement._send_a(session, sm, 3)
        StreamManagement._send_a(session, sm, 1)  # a barrier that finished late
        StreamManagement._send_a(session, sm, 3)
        assert [a.get("h") for a in h.take(session)] == ["3", "3"]


async def test_fan_out_bytes_are_counted_and_replayed_with_each_to(sm_server: Server) -> None:
    alice = await sm_client(sm_server, "alice", "a")
    bob = await sm_client(sm_server, "bob", "b")
    message = etree.Element("{jabber:client}message", nsmap={None: "jabber:client"})
    message.set("from", "room@conference.localhost/carol")
    message.set("type", "groupchat")
    etree.SubElement(message, BODY).text = "to all"

    # One serialization, two recipients (as a MUC broadcast): each sees its own 'to'.
    await sm_server.route_many(message, ["alice@localhost/a", "bob@localhost/b"])

    for raw, to in ((alice, "alice@localhost/a"), (bob, "bob@localhost/b")):
        got = await next_stanza(raw)
        assert (got.get("to"), got.findtext(BODY)) == (to, "to all")
    session = sm_server.sessions.get(JID.parse("bob@localhost/b"))
    assert session is not None
    sm_id = bob.sm_id  # type: ignore[attr-defined]
    bob.writer.transport.abort()
    for _ in range(50):
        if session.conn is None:
            break
        await asyncio.sleep(0.02)
    fresh = await RawClient.connect(port(sm_server))
    await fresh.login("bob", PASSWORD, bind=False)
    await fresh.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")
    await fresh.expect(f"{{{SM}}}resumed")
    replayed = await next_stanza(fresh)
    while replayed.tag != "{jabber:client}message":
        replayed = await next_stanza(fresh)
    assert (replayed.get("to"), replayed.findtext(BODY)) == ("bob@localhost/b", "to all")
    await fresh.close()
    await alice.close()
