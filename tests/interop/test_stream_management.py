"""XEP-0198 Stream Management end to end: raw clients for exact h arithmetic, slixmpp's
xep_0198 for interop, and the fault-injection proxy for cuts and stalls."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from tests.conftest import PASSWORD, Client, make_config
from tests.helpers.proxy import DOWN, UP, Proxy
from tests.helpers.sm import NS_SM, NS_STANZAS, SmClient, condition, sm, sm_login
from tests.helpers.wire import NS_STREAMS, RawClient, client_context
from xmppd.jid import JID
from xmppd.server import Server

pytestmark = pytest.mark.interop

RESUME_TIMEOUT = 30
ACK_INTERVAL = 5


async def start_server(tmp_path: Path, **sm_options: Any) -> Server:
    options = {"resume_timeout": RESUME_TIMEOUT, "ack_interval": ACK_INTERVAL, **sm_options}
    srv = Server(make_config(tmp_path, modules={"stream_management": options}))
    await srv.start()
    for user in ("alice", "bob", "carol"):
        await srv.accounts.create(JID.parse(f"{user}@localhost"), PASSWORD)
    return srv


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = await start_server(tmp_path)
    yield srv
    await srv.stop()


@pytest.fixture
async def proxy(server: Server) -> AsyncIterator[Proxy]:
    async with Proxy(server.ports["c2s"][0]) as p:
        yield p


@pytest.fixture
async def clients() -> AsyncIterator[list[SmClient]]:
    """Raw SM clients to stop at teardown."""
    made: list[SmClient] = []
    yield made
    for c in made:
        await c.stop()


def port(server: Server) -> int:
    return server.ports["c2s"][0]


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll server-side state (no event exists for it) until `predicate()` holds."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110  # server state, no event to wait on
            await asyncio.sleep(0.02)


def message(to: str, body: str, id_: str | None = None) -> str:
    return f"<message to='{to}' type='chat' id='{id_ or body}'><body>{body}</body></message>"


def bodies(stanzas: list[etree._Element]) -> list[str]:
    return [s.findtext("{jabber:client}body") or "" for s in stanzas]


async def collect(client: SmClient, n: int, timeout: float = 10.0) -> list[etree._Element]:
    return [await client.stanza(timeout) for _ in range(n)]


async def no_more(client: SmClient, wait: float = 0.3) -> None:
    """Nothing else arrives (a short bounded wait: absence has no event)."""
    try:
        extra = await client.stanza(wait)
    except TimeoutError:
        return
    pytest.fail(f"unexpected stanza {etree.tostring(extra)!r}")


# --- negotiation ---------------------------------------------------------------------------


async def test_feature_offered_only_after_authentication_and_enable_with_resume(
    server: Server, clients: list[SmClient]
) -> None:
    c = await SmClient.connect(port(server))
    clients.append(c)
    pre_tls = await c.open_stream()
    assert pre_tls.find(sm("sm")) is None
    await c.starttls()
    pre_auth = await c.open_stream()
    assert pre_auth.find(sm("sm")) is None  # §2: not before authentication
    c2 = await SmClient.connect(port(server))
    clients.append(c2)
    features = await c2.authenticate("alice", PASSWORD)
    assert features.find(sm("sm")) is not None
    await c2.bind("a")
    c2.start()
    enabled = await c2.enable(resume=True)
    assert enabled.tag == sm("enabled")
    assert enabled.get("resume") in ("true", "1")
    assert enabled.get("id")  # §5: an id is required with resume
    if enabled.get("max") is not None:
        assert 0 < int(enabled.get("max", "0")) <= RESUME_TIMEOUT


async def test_enable_without_resume_gives_no_resumable_id(
    server: Server, clients: list[SmClient]
) -> None:
    c = await sm_login(port(server), "alice", PASSWORD, enable=False)
    clients.append(c)
    enabled = await c.enable(resume=False)
    assert enabled.tag == sm("enabled")
    assert enabled.get("resume") not in ("true", "1")
    # such a stream is not resumable: a cut ends the session
    await c.abort()
    r = await SmClient.connect(port(server))
    clients.append(r)
    await r.authenticate("alice", PASSWORD)
    r.start()
    if enabled.get("id"):
        failed = await r.resume(c.state)
        assert failed.tag == sm("failed")
        assert condition(failed) == "item-not-found"


# --- acks ----------------------------------------------------------------------------------


async def test_r_is_answered_with_the_count_of_handled_stanzas(
    server: Server, clients: list[SmClient]
) -> None:
    alice = await sm_login(port(server), "alice", PASSWORD, "a")
    bob = await sm_login(port(server), "bob", PASSWORD, "b")
    clients += [alice, bob]
    await alice.request_ack()
    await alice.wait_until(lambda: len(alice.state.acks) == 1)
    assert alice.state.acks == [0]
    for i in range(3):
        await alice.send_stanza(message("bob@localhost/b", f"m{i}"))
    await alice.send_stanza(
        "<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    )
    await alice.request_ack()
    await alice.wait_acked(4)
    assert alice.state.acks[-1] == 4
    assert alice.state.unacked == []
    # nonzas are not counted: another <r/> gives the same h
    await alice.request_ack()
    await alice.wait_until(lambda: len(alice.state.acks) >= 3)
    assert alice.state.acks[-1] == 4
    assert bodies(await collect(bob, 3)) == ["m0", "m1", "m2"]


async def test_server_requests_acks_every_ack_interval_stanzas(
    server: Server, clients: list[SmClient]
) -> None:
    alice = await sm_login(port(server), "alice", PASSWORD, "a")
    bob = await sm_login(port(server), "bob", PASSWORD, "b")
    clients += [alice, bob]
    bob.auto_ack = False
    for i in range(ACK_INTERVAL):
        await alice.send_stanza(message("bob@localhost/b", f"m{i}"))
    await collect(bob, ACK_INTERVAL)
    await bob.wait_until(lambda: bob.r_received >= 1)
    await bob.ack()  # h = 5
    assert bob.state.handled == ACK_INTERVAL


async def test_unanswered_r_does_not_stop_delivery(server: Server, clients: list[SmClient]) -> None:
    alice = await sm_login(port(server), "alice", PASSWORD, "a")
    bob = await sm_login(port(server), "bob", PASSWORD, "b")
    clients += [alice, bob]
    bob.auto_ack = False  # the server's <r/> go unanswered: its queue grows, it keeps sending
    n = 4 * ACK_INTERVAL
    for i in range(n):
        await alice.send_stanza(message("bob@localhost/b", f"m{i}"))
    assert bodies(await collect(bob, n)) == [f"m{i}" for i in range(n)]
    assert bob.r_received >= 1


async def test_server_asks_for_an_ack_after_ack_delay_below_the_interval(
    tmp_path: Path, clients: list[SmClient]
) -> None:
    srv = await start_server(tmp_path, ack_interval=100, ack_delay=0.2)
    try:
        alice = await sm_login(port(srv), "alice", PASSWORD, "a")
        bob = await sm_login(port(srv), "bob", PASSWORD, "b")
        clients += [alice, bob]
        bob.auto_ack = False
        await alice.send_stanza(message("bob@localhost/b", "one"))
        await collect(bob, 1)
        await bob.wait_until(lambda: bob.r_received == 1, timeout=5)
    finally:
        await srv.stop()


async def test_a_cut_without_resumption_sends_the_unacknowledged_to_offline_storage(
    server: Server, proxy: Proxy, clients: list[SmClient]
) -> None:
    alice = await sm_login(port(server), "alice", PASSWORD, "a")
    bob = await sm_login(proxy.port, "bob", PASSWORD, "b", resume=False, presence=True)
    clients += [alice, bob]
    await bob.stanza()  # own presence
    bob.auto_ack = False
    await bob.ack()
    for i in range(3):
        await alice.send_stanza(message("bob@localhost/b", f"m{i}"))
    await collect(bob, 3)  # received, never acknowledged
    (await proxy.accepted()).cut(rst=True)
    await asyncio.wait_for(bob.ended.wait(), 10)
    await until(lambda: server.sessions.get(JID.parse("bob@localhost/b")) is None)
    again = await sm_login(port(server), "bob", PASSWORD, "b2", presence=True)
    clients.append(again)
    got = [await again.stanza() for _ in range(4)]
    assert bodies([s for s in got if s.tag == "{jabber:client}message"]) == ["m0", "m1", "m2"]
    await no_more(again)


# --- resumption ----------------------------------------------------------------------------


async def test_cut_then_resume_replays_exactly_the_unacknowledged_in_order(
    server: Server, proxy: Proxy, clients: list[SmClient]
) -> None:
    alice = await sm_login(port(server), "alice", PASSWORD, "a")
    bob = await sm_login(proxy.port, "bob", PASSWORD, "b")
    clients += [alice, bob]
    conn = await proxy.accepted()
    bob.auto_ack = False
    for i in range(10):
        await alice.send_stanza(message("bob@localhost/b", f"m{i}"))
    assert bodies(await collect(bob, 10)) == [f"m{i}" for i in range(10)]
    await bob.ack(4)  # bob vouches for the first 4 only
    await bob.send_stanza("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    await bob.stanza()  # the ping's result: the <a h='4'/> before it was processed
    conn.cut(rst=True)
    await bob.ended.wait()
    for i in range(10, 15):  # to the detached session
        await alice.send_stanza(message("bob@localhost/b", f"m{i}"))
    await alice.request_ack()
    await alice.wait_acked(15)

    previous = bob.state
    previous.handled = 4  # what bob handled, as it told the server
    again = await SmClient.connect(port(server))
    clients.append(again)
    await again.authenticate("bob", PASSWORD)
    again.start()
    resumed = await again.resume(previous)
    assert resumed.tag == sm("resumed"), etree.tostring(resumed)
    assert resumed.get("previd") == previous.id
    assert int(resumed.get("h", "-1")) == 1  # the ping
    # m4..m9 and the ping result (sent, not acknowledged), then m10..m14 (queued while
    # detached): each once, in the order first sent
    replay = await collect(again, 12)
    got = [s.findtext("{jabber:client}body") or s.get("id") for s in replay]
    assert got == [f"m{i}" for i in range(4, 10)] + ["p"] + [f"m{i}" for i in range(10, 15)]
    await no_more(again)
    # the resumed session carries on: counters continue, new messages arrive live
    await alice.send_stanza(message("bob@localhost/b", "after"))
    assert bodies(await collect(again, 1)) == ["after"]
    await again.request_ack()
    await again.wait_until(lambda: again.state.acks[-1] == 1)


async def test_resume_after_the_timeout_fails_with_h_and_the_unacked_go_offline(
    tmp_path: Path, clients: list[SmClient]
) -> None:
    srv = await start_server(tmp_path, resume_timeout=1)
    try:
        async with Proxy(port(srv)) as proxy:
            alice = await sm_login(port(srv), "alice", PASSWORD, "a")
            bob = await sm_login(proxy.port, "bob", PASSWORD, "b", presence=True)
            clients += [alice, bob]
            conn = await proxy.accepted()
            await bob.stanza()  # own presence
            await bob.request_ack()
            await bob.wait_acked(1)
            conn.stall(DOWN)  # bob's phone sleeps: the server's stanzas and <r/> go unanswered
            for i in range(3):
                await alice.send_stanza(message("bob@localhost/b", f"m{i}"))
            await alice.request_ack()
            await alice.wait_acked(3)
            await conn.wait_buffered(DOWN, 1)
            conn.cut(rst=True)  # ... and then its connection dies
            bob_jid = JID.parse("bob@localhost/b")
            await until(lambda: srv.sessions.get(bob_jid) is None, timeout=15)

            again = await SmClient.connect(port(srv))
            clients.append(again)
            await again.authenticate("bob", PASSWORD)
            again.start()
            failed = await again.resume(bob.state)
            assert failed.tag == sm("failed"), etree.tostring(failed)
            assert condition(failed) == "item-not-found"
            if failed.get("h") is not None:  # MAY: what the server handled before the timeout
                assert failed.get("h") == "1"
            # §5: the client may bind at once, without a new authentication
            jid = await again.bind_started("b2")
            assert jid == "bob@localhost/b2"
            await again.send_stanza("<presence/>")
            got = [await again.stanza() for _ in range(4)]
            msgs = [s for s in got if s.tag == "{jabber:client}message"]
            assert bodies(msgs) == ["m0", "m1", "m2"]  # from offline storage, once, in order
            assert all(m.find("{urn:xmpp:delay}delay") is not None for m in msgs)
            await no_more(again)
    finally:
        await srv.stop()


async def test_unanswered_acks_end_the_link_and_the_session_resumes(
    tmp_path: Path, clients: list[SmClient]
) -> None:
    srv = await start_server(tmp_path, ack_interval=1, ack_timeout=0.5)
    try:
        async with Proxy(port(srv)) as proxy:
            alice = await sm_login(port(srv), "alice", PASSWORD, "a")
            bob = await sm_login(proxy.port, "bob", PASSWORD, "b")
            clients += [alice, bob]
            conn = await proxy.accepted()
            conn.stall(DOWN)  # the server's stanzas and <r/> reach nobody; no <a/> comes back
            for i in range(3):
                await alice.send_stanza(message("bob@localhost/b", f"m{i}"))
            await alice.request_ack()
            await alice.wait_acked(3)
            # ack_timeout later the server gives up on the link (its side closes) ...
            await asyncio.wait_for(conn.finished[DOWN].wait(), 10)
            # ... but keeps the session for resumption: nothing is lost
            conn.cut()
            again = await SmClient.connect(port(srv))
            clients.append(again)
            await again.authenticate("bob", PASSWORD)
            again.start()
            resumed = await again.resume(bob.state)
            assert resumed.tag == sm("resumed"), etree.tostring(resumed)
            assert bodies(await collect(again, 3)) == ["m0", "m1", "m2"]
            await no_more(again)
    finally:
        await srv.stop()


async def test_unacked_requests_of_an_expired_session_are_answered_with_errors(
    tmp_path: Path, clients: list[SmClient]
) -> None:
    srv = await start_server(tmp_path, resume_timeout=1)
    try:
        async with Proxy(port(srv)) as proxy:
            alice = await sm_login(port(srv), "alice", PASSWORD, "a")
            bob = await sm_login(proxy.port, "bob", PASSWORD, "b")
            clients += [alice, bob]
            conn = await proxy.accepted()
            conn.stall(DOWN)
            await alice.send_stanza(
                "<iq type='get' id='v1' to='bob@localhost/b'>"
                "<query xmlns='jabber:iq:version'/></iq>"
            )
            await conn.wait_buffered(DOWN, 1)
            conn.cut(rst=True)
            # the session expires; the request bob never acknowledged is not left unanswered
            reply = await alice.stanza(timeout=15)
            assert (reply.get("id"), reply.get("type")) == ("v1", "error"), etree.tostring(reply)
            assert (
                reply.find(f"{{jabber:client}}error/{{{NS_STANZAS}}}service-unavailable")
                is not None
            )
    finally:
        await srv.stop()


async def test_enable_max_lowers_the_resumption_timeout(
    server: Server, clients: list[SmClient]
) -> None:
    c = await sm_login(port(server), "alice", PASSWORD, "a", enable=False)
    clients.append(c)
    enabled = await c.enable(resume=True, max="7")
    assert enabled.get("max") == "7"
    d = await sm_login(port(server), "bob", PASSWORD, "b", enable=False)
    clients.append(d)
    enabled = await d.enable(resume=True, max=str(RESUME_TIMEOUT * 10))
    assert int(enabled.get("max", "0")) <= RESUME_TIMEOUT  # the server's limit holds


async def test_two_concurrent_resumptions_leave_one_connection_with_the_replay(
    server: Server, proxy: Proxy, clients: list[SmClient]
) -> None:
    alice = await sm_login(port(server), "alice", PASSWORD, "a")
    bob = await sm_login(proxy.port, "bob", PASSWORD, "b")
    clients += [alice, bob]
    (await proxy.accepted()).cut()
    await bob.ended.wait()
    await alice.send_stanza(message("bob@localhost/b", "queued"))
    await alice.request_ack()
    await alice.wait_acked(1)
    contenders = []
    for _ in range(2):
        c = await SmClient.connect(port(server))
        clients.append(c)
        await c.authenticate("bob", PASSWORD)
        c.start()
        contenders.append(c)
    line = f"<resume xmlns='{NS_SM}' h='{bob.state.handled}' previd='{bob.state.id}'/>"
    await asyncio.gather(*(c.send(line) for c in contenders))
    replies = await asyncio.gather(*(c.nonza() for c in contenders))
    tags = sorted(etree.QName(r).localname for r in replies)
    if tags == ["resumed", "resumed"]:
        # serialised: the second took the session over from the first (§5 allows it), whose
        # connection must then be closed; the survivor gets the unacknowledged replay
        ended = [asyncio.ensure_future(c.ended.wait()) for c in contenders]
        await asyncio.wait(ended, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        for fut in ended:
            fut.cancel()
        alive = [c for c in contenders if not c.ended.is_set()]
        assert len(alive) == 1, "both resumed connections stayed open"
        winner = alive[0]
    else:
        assert tags == ["failed", "resumed"], tags
        winner = next(c for c, r in zip(contenders, replies, strict=True) if r.tag == sm("resumed"))
    got = await collect(winner, 1)
    assert bodies(got) == ["queued"]


async def test_resume_while_the_old_connection_looks_alive_the_new_one_wins(
    server: Server, proxy: Proxy, clients: list[SmClient]
) -> None:
    alice = await sm_login(port(server), "alice", PASSWORD, "a")
    bob = await sm_login(proxy.port, "bob", PASSWORD, "b")
    clients += [alice, bob]
    conn = await proxy.accepted()
    bob.auto_ack = False
    await alice.send_stanza(message("bob@localhost/b", "m0"))
    assert bodies(await collect(bob, 1)) == ["m0"]
    await bob.ack()
    conn.stall(UP)
    conn.stall(DOWN)  # not cut: the server still sees an open, silent connection
    for i in range(1, 4):
        await alice.send_stanza(message("bob@localhost/b", f"m{i}"))
    await alice.request_ack()
    await alice.wait_acked(4)
    await conn.wait_buffered(DOWN, 1)

    again = await SmClient.connect(port(server))
    clients.append(again)
    await again.authenticate("bob", PASSWORD)
    again.start()
    resumed = await again.resume(bob.state)
    assert resumed.tag == sm("resumed"), etree.tostring(resumed)
    assert bodies(await collect(again, 3)) == ["m1", "m2", "m3"]
    await alice.send_stanza(message("bob@localhost/b", "m4"))
    assert bodies(await collect(again, 1)) == ["m4"]
    await no_more(again)
    # the server closed the old stream (with <conflict/>, §5 SHOULD) once the new one won
    # the server closed the old connection once the new one won
    await asyncio.wait_for(conn.finished[DOWN].wait(), 10)


async def test_the_replaced_connection_gets_a_conflict_stream_error(
    server: Server, proxy: Proxy, clients: list[SmClient]
) -> None:
    bob = await sm_login(proxy.port, "bob", PASSWORD, "b")
    clients.append(bob)
    conn = await proxy.accepted()
    conn.stall(UP)  # the server still sees an open connection
    again = await SmClient.connect(port(server))
    clients.append(again)
    await again.authenticate("bob", PASSWORD)
    again.start()
    assert (await again.resume(bob.state)).tag == sm("resumed")
    error = await bob.next_stream_error()
    assert condition(error) == "conflict"


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_repeated_cuts_and_resumptions_under_load_lose_and_repeat_nothing(
    server: Server, proxy: Proxy, clients: list[SmClient], seed: int
) -> None:
    """alice streams 1,500 messages to bob while bob's link is cut (RST or FIN) or goes
    silent (stalled) at random moments, and bob resumes each time: bob sees every message
    exactly once, in order, across all his connections."""
    rng = random.Random(seed)
    total = 1500
    alice = await sm_login(port(server), "alice", PASSWORD, "a")
    bob = await sm_login(proxy.port, "bob", PASSWORD, "b")
    clients += [alice, bob]
    conn = await proxy.accepted()
    got: list[int] = []

    async def send() -> None:
        for i in range(total):
            if len(alice.state.unacked) >= 100:
                await alice.wait_until(lambda: len(alice.state.unacked) < 50, timeout=30)
            await alice.send_stanza(message("bob@localhost/b", str(i)))
            if i % 10 == 9:
                await alice.request_ack()
        await alice.request_ack()

    sender = asyncio.create_task(send())
    resumptions = 0
    while len(got) < total:
        cut_after = len(got) + rng.randrange(1, 300)
        while len(got) < min(cut_after, total):
            st = await bob.stanza(timeout=15)
            got.append(int(st.findtext("{jabber:client}body") or "-1"))
        if len(got) >= total:
            break
        how = rng.choice(["rst", "fin", "stall"])
        if how == "stall":
            conn.stall(UP)
            conn.stall(DOWN)
            bob.stop_reading()  # bytes already past the proxy stay unread, unhandled
        else:
            conn.cut(rst=how == "rst")
            await asyncio.wait_for(bob.ended.wait(), 10)
        state = bob.state
        # stanzas that reached bob's queue are handled; what was in flight is not
        while not bob.stanzas.empty():
            got.append(int(bob.stanzas.get_nowait().findtext("{jabber:client}body") or "-1"))
        bob = await SmClient.connect(proxy.port)
        clients.append(bob)
        conn = await proxy.accepted()
        await bob.authenticate("bob", PASSWORD)
        bob.start()
        resumed = await bob.resume(state)
        assert resumed.tag == sm("resumed"), etree.tostring(resumed)
        resumptions += 1
    await asyncio.wait_for(sender, 30)
    assert not alice.violations, alice.violations[:5]
    assert got == list(range(total)), (
        f"seed {seed}, {resumptions} resumptions: "
        f"missing {sorted(set(range(total)) - set(got))[:10]}, "
        f"repeated {sorted(i for i in set(got) if got.count(i) > 1)[:10]}"
    )
    assert resumptions >= 3
    await no_more(bob, 0.2)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_a_cut_mid_upload_then_resume_delivers_each_message_once(
    server: Server, proxy: Proxy, clients: list[SmClient], seed: int
) -> None:
    """alice's link dies at a random byte while she is sending; after resuming she resends
    what <resumed h/> says the server did not handle: bob gets each message exactly once."""
    rng = random.Random(seed)
    bob = await sm_login(port(server), "bob", PASSWORD, "b")
    alice = await sm_login(proxy.port, "alice", PASSWORD, "a")
    clients += [alice, bob]
    conn = await proxy.accepted()
    start = conn.forwarded[UP]
    cut_at = start + rng.randrange(100, 4000)  # 60 messages make ~6 KB of TLS records
    total = 60

    async def cut_when_reached() -> None:
        await conn.wait_forwarded(UP, cut_at)
        conn.cut(rst=rng.random() < 0.5)

    cutter = asyncio.create_task(cut_when_reached())
    for i in range(total):
        # once the link is gone a stanza still joins the unacknowledged queue (send_stanza
        # queues before writing): it is sent after resumption
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            await alice.send_stanza(message("bob@localhost/b", f"m{i}"))
        if i % 5 == 4 and not alice.ended.is_set():  # paced, so the server keeps up
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                await alice.request_ack()
                await alice.wait_acked(alice.state.sent)
    if not cutter.done():  # everything went through before the cut point: cut now
        cutter.cancel()
        conn.cut()
    await asyncio.wait_for(alice.ended.wait(), 10)
    again = await SmClient.connect(port(server))
    clients.append(again)
    await again.authenticate("alice", PASSWORD)
    again.start()
    resumed = await again.resume(alice.state)  # resends the unacknowledged
    assert resumed.tag == sm("resumed"), etree.tostring(resumed)
    assert 0 <= int(resumed.get("h", "-1")) <= total
    assert bodies(await collect(bob, total)) == [f"m{i}" for i in range(total)]
    await no_more(bob)


async def test_stanzas_held_by_csi_survive_a_cut_and_resumption(
    server: Server, proxy: Proxy, clients: list[SmClient]
) -> None:
    """XEP-0352 holds non-urgent stanzas of an inactive client; when its link dies they must
    join the stream management queue, not vanish, and arrive once after resumption."""
    alice = await sm_login(port(server), "alice", PASSWORD, "a")
    bob = await sm_login(proxy.port, "bob", PASSWORD, "b")
    clients += [alice, bob]
    await bob.send("<inactive xmlns='urn:xmpp:csi:0'/>")
    for i in range(3):
        await alice.send_stanza(
            f"<message to='bob@localhost/b' type='headline' id='h{i}'><body>h{i}</body></message>"
        )
    await alice.request_ack()
    await alice.wait_acked(3)
    await no_more(bob)  # held while bob is inactive
    (await proxy.accepted()).cut(rst=True)
    await asyncio.wait_for(bob.ended.wait(), 10)
    again = await SmClient.connect(port(server))
    clients.append(again)
    await again.authenticate("bob", PASSWORD)
    again.start()
    assert (await again.resume(bob.state)).tag == sm("resumed")
    assert bodies(await collect(again, 3)) == ["h0", "h1", "h2"]
    await no_more(again)


async def test_resume_with_unknown_or_foreign_previd_fails_item_not_found(
    server: Server, clients: list[SmClient]
) -> None:
    alice = await sm_login(port(server), "alice", PASSWORD, "a", presence=True)
    clients.append(alice)
    await alice.stanza()
    alice_id = alice.state.id
    assert alice_id
    for previd in ("no-such-id", alice_id, "x" * 5000, "&lt;&amp;'\""):
        carol = await SmClient.connect(port(server))
        clients.append(carol)
        await carol.authenticate("carol", PASSWORD)
        carol.start()
        await carol.send(
            f"<resume xmlns='{NS_SM}' h='0' previd='{previd.replace(chr(39), '&apos;')}'/>"
        )
        failed = await carol.nonza()
        assert failed.tag == sm("failed"), etree.tostring(failed)
        assert condition(failed) == "item-not-found"
        # §5: after a failed resumption the client can bind a new session right away
        assert await carol.bind_started("c") == "carol@localhost/c"
        await carol.stop()
    # alice's session is untouched by carol's attempt on its id
    bob = await sm_login(port(server), "bob", PASSWORD, "b")
    clients.append(bob)
    await bob.send_stanza(message("alice@localhost/a", "still yours"))
    assert bodies(await collect(alice, 1)) == ["still yours"]


@pytest.mark.parametrize(
    "attrs", ["h='zz' previd='x'", "previd='x'", "h='0'", "h='-1' previd='x'", "h='0' previd=''"]
)
async def test_malformed_resume_fails_and_bind_still_works(
    server: Server, clients: list[SmClient], attrs: str
) -> None:
    c = await SmClient.connect(port(server))
    clients.append(c)
    await c.authenticate("alice", PASSWORD)
    c.start()
    await c.send(f"<resume xmlns='{NS_SM}' {attrs}/>")
    failed = await c.nonza()
    assert failed.tag == sm("failed"), etree.tostring(failed)
    assert condition(failed) is not None  # §6: SHOULD carry a stanza error condition
    assert await c.bind_started("a") == "alice@localhost/a"


async def test_resume_on_a_stream_that_already_has_a_session_fails(
    server: Server, proxy: Proxy, clients: list[SmClient]
) -> None:
    old = await sm_login(proxy.port, "alice", PASSWORD, "a")
    clients.append(old)
    (await proxy.accepted()).cut()
    await old.ended.wait()
    other = await sm_login(port(server), "alice", PASSWORD, "b")  # bound and enabled
    clients.append(other)
    await other.send(f"<resume xmlns='{NS_SM}' h='0' previd='{old.state.id}'/>")
    failed = await other.nonza()
    assert failed.tag == sm("failed"), etree.tostring(failed)
    assert condition(failed) == "unexpected-request"
    # the hibernated session was not consumed by the refused attempt
    again = await SmClient.connect(port(server))
    clients.append(again)
    await again.authenticate("alice", PASSWORD)
    again.start()
    assert (await again.resume(old.state)).tag == sm("resumed")


async def test_a_new_login_on_the_same_resource_takes_over_a_hibernated_session(
    server: Server, proxy: Proxy, clients: list[SmClient]
) -> None:
    """bob's link died and, instead of resuming, he logs in afresh on the same resource: the
    hibernated session gives way, and what it held for him is not lost."""
    alice = await sm_login(port(server), "alice", PASSWORD, "a")
    bob = await sm_login(proxy.port, "bob", PASSWORD, "b", presence=True)
    clients += [alice, bob]
    await bob.stanza()  # own presence
    await bob.ack()
    (await proxy.accepted()).cut(rst=True)
    await bob.ended.wait()
    for i in range(3):
        await alice.send_stanza(message("bob@localhost/b", f"m{i}"))
    await alice.request_ack()
    await alice.wait_acked(3)
    fresh = await sm_login(port(server), "bob", PASSWORD, "b", presence=True)
    clients.append(fresh)
    assert fresh.jid.startswith("bob@localhost/")
    got: list[str] = []
    while len(got) < 3:
        st = await fresh.stanza()
        if st.tag == "{jabber:client}message":
            got.append(st.findtext("{jabber:client}body") or "")
    assert got == ["m0", "m1", "m2"]
    await no_more(fresh)
    if fresh.jid == "bob@localhost/b":  # the new session took the resource: the old is gone
        again = await SmClient.connect(port(server))
        clients.append(again)
        await again.authenticate("bob", PASSWORD)
        again.start()
        failed = await again.resume(bob.state)
        assert failed.tag == sm("failed"), etree.tostring(failed)
        assert condition(failed) == "item-not-found"


async def test_a_cleanly_closed_stream_cannot_be_resumed(
    server: Server, clients: list[SmClient]
) -> None:
    alice = await sm_login(port(server), "alice", PASSWORD, "a")
    clients.append(alice)
    await alice.send("</stream:stream>")
    await alice.ended.wait()
    again = await SmClient.connect(port(server))
    clients.append(again)
    await again.authenticate("alice", PASSWORD)
    again.start()
    failed = await again.resume(alice.state)
    assert failed.tag == sm("failed")
    assert condition(failed) == "item-not-found"


async def test_resuming_twice_from_the_same_state(
    server: Server, proxy: Proxy, clients: list[SmClient]
) -> None:
    """A client that resumes, loses that connection too, and resumes again."""
    alice = await sm_login(port(server), "alice", PASSWORD, "a")
    bob = await sm_login(proxy.port, "bob", PASSWORD, "b")
    clients += [alice, bob]
    for round_ in range(3):
        conn = await proxy.accepted()
        await alice.send_stanza(message("bob@localhost/b", f"live{round_}"))
        assert bodies(await collect(bob, 1)) == [f"live{round_}"]
        conn.cut()
        await bob.ended.wait()
        await alice.send_stanza(message("bob@localhost/b", f"queued{round_}"))
        await alice.request_ack()
        await alice.wait_acked(alice.state.sent)
        state = bob.state
        bob = await SmClient.connect(proxy.port)
        clients.append(bob)
        await bob.authenticate("bob", PASSWORD)
        bob.start()
        resumed = await bob.resume(state)
        assert resumed.tag == sm("resumed"), etree.tostring(resumed)
        assert bodies(await collect(bob, 1)) == [f"queued{round_}"]
        await no_more(bob, 0.1)


# --- hostile input -------------------------------------------------------------------------


async def test_ack_of_more_than_was_sent_is_a_stream_error(
    server: Server, clients: list[SmClient]
) -> None:
    alice = await sm_login(port(server), "alice", PASSWORD, "a")
    bob = await sm_login(port(server), "bob", PASSWORD, "b")
    clients += [alice, bob]
    await alice.send_stanza(message("bob@localhost/b", "one"))
    await collect(bob, 1)
    await bob.ack(5)  # only 1 was sent
    error = await bob.next_stream_error()
    assert condition(error) == "undefined-condition"
    too_high = error.find(sm("handled-count-too-high"))
    assert too_high is not None, etree.tostring(error)
    assert (too_high.get("h"), too_high.get("send-count")) == ("5", "1")
    await bob.ended.wait()


async def test_resume_with_h_higher_than_was_sent_is_refused(
    server: Server, proxy: Proxy, clients: list[SmClient]
) -> None:
    bob = await sm_login(proxy.port, "bob", PASSWORD, "b")
    clients.append(bob)
    (await proxy.accepted()).cut()
    await bob.ended.wait()
    state = bob.state
    state.handled = 7  # nothing was ever sent to bob
    again = await SmClient.connect(port(server))
    clients.append(again)
    await again.authenticate("bob", PASSWORD)
    again.start()
    await again.send(f"<resume xmlns='{NS_SM}' h='7' previd='{state.id}'/>")
    # §6: a <failed/> for the <resume/> may come first; then the stream error of §6:
    # undefined-condition with <handled-count-too-high h='7' send-count='0'/>
    error = await again.next_stream_error()
    assert condition(error) == "undefined-condition"
    too_high = error.find(sm("handled-count-too-high"))
    assert too_high is not None, etree.tostring(error)
    assert (too_high.get("h"), too_high.get("send-count")) == ("7", "0")


async def test_enable_twice_is_refused(server: Server, clients: list[SmClient]) -> None:
    alice = await sm_login(port(server), "alice", PASSWORD, "a")
    clients.append(alice)
    await alice.send(f"<enable xmlns='{NS_SM}' resume='true'/>")
    el = await alice.nonza()
    # §3: <failed><unexpected-request/></failed> (the SHOULD: then a stream error)
    if el.tag == sm("failed"):
        assert condition(el) == "unexpected-request"
    else:
        assert el.tag == f"{{{NS_STREAMS}}}error", etree.tostring(el)


async def test_enable_before_bind_fails_and_bind_still_works(
    server: Server, clients: list[SmClient]
) -> None:
    c = await SmClient.connect(port(server))
    clients.append(c)
    await c.authenticate("alice", PASSWORD)
    c.start()
    await c.send(f"<enable xmlns='{NS_SM}' resume='true'/>")
    failed = await c.nonza()
    assert failed.tag == sm("failed"), etree.tostring(failed)
    assert condition(failed) == "unexpected-request"
    assert await c.bind_started("a") == "alice@localhost/a"
    enabled = await c.enable()
    assert enabled.tag == sm("enabled")


@pytest.mark.parametrize(
    "nonza",
    [
        f"<enable xmlns='{NS_SM}'/>",
        f"<resume xmlns='{NS_SM}' h='0' previd='x'/>",
        f"<r xmlns='{NS_SM}'/>",
        f"<a xmlns='{NS_SM}' h='0'/>",
    ],
)
async def test_sm_before_authentication_is_not_honoured(server: Server, nonza: str) -> None:
    c = await RawClient.connect(port(server))
    await c.open_stream()
    await c.starttls()
    await c.open_stream()
    await c.send(nonza)
    el = await c.next()
    assert el.tag in (sm("failed"), f"{{{NS_STREAMS}}}error"), etree.tostring(el)
    await c.close()


@pytest.mark.parametrize(
    "nonza",
    [
        f"<a xmlns='{NS_SM}'/>",
        f"<a xmlns='{NS_SM}' h='-1'/>",
        f"<a xmlns='{NS_SM}' h='4294967296'/>",
        f"<a xmlns='{NS_SM}' h='1e3'/>",
        f"<a xmlns='{NS_SM}' h='{'9' * 5000}'/>",
        f"<resume xmlns='{NS_SM}' h='zz' previd='x'/>",
        f"<resume xmlns='{NS_SM}'/>",
    ],
)
async def test_malformed_counters_get_an_error_not_a_crash(
    server: Server, clients: list[SmClient], nonza: str
) -> None:
    alice = await sm_login(port(server), "alice", PASSWORD, "a")
    clients.append(alice)
    await alice.send(nonza)
    el = await alice.nonza()
    assert el.tag in (sm("failed"), f"{{{NS_STREAMS}}}error"), etree.tostring(el)
    # the server itself is fine
    other = await sm_login(port(server), "bob", PASSWORD, "b")
    clients.append(other)


async def test_r_before_enable_gets_no_ack(server: Server, clients: list[SmClient]) -> None:
    alice = await sm_login(port(server), "alice", PASSWORD, "a", enable=False)
    clients.append(alice)
    await alice.send(f"<r xmlns='{NS_SM}'/>")
    await alice.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    # either ignored or refused with a stream error, but never an <a/> (nothing is counted)
    try:
        el = await alice.stanza()
        assert el.get("id") == "p"
    except ConnectionError:
        assert (await alice.next_stream_error()).tag == f"{{{NS_STREAMS}}}error"
    assert alice.state.acks == []


async def test_too_many_unacked_stanzas_do_not_grow_without_bound(
    tmp_path: Path, clients: list[SmClient]
) -> None:
    srv = await start_server(tmp_path, max_unacked=20)
    try:
        alice = await sm_login(port(srv), "alice", PASSWORD, "a")
        bob = await sm_login(port(srv), "bob", PASSWORD, "b")
        clients += [alice, bob]
        bob.auto_ack = False
        for i in range(100):
            await alice.send_stanza(message("bob@localhost/b", f"m{i}"))
        # bob never acknowledges: past max_unacked the server ends bob's stream
        error = await bob.next_stream_error()
        assert condition(error) in ("resource-constraint", "policy-violation")
    finally:
        await srv.stop()


async def flood_hibernated(srv: Server, proxy: Proxy, clients: list[SmClient]) -> SmClient:
    """bob's link dies (his session hibernates), then alice sends him 100 messages; returns
    bob's old client (its state resumes the session)."""
    alice = await sm_login(port(srv), "alice", PASSWORD, "a")
    bob = await sm_login(proxy.port, "bob", PASSWORD, "b")
    clients += [alice, bob]
    (await proxy.accepted()).cut(rst=True)
    await asyncio.wait_for(bob.ended.wait(), 10)
    for i in range(100):
        await alice.send_stanza(message("bob@localhost/b", f"m{i}"))
    await alice.request_ack()
    await alice.wait_acked(100)
    return bob


async def test_a_flood_to_a_hibernated_session_loses_nothing(
    tmp_path: Path, clients: list[SmClient]
) -> None:
    """More than max_unacked for a hibernated session: every one reaches bob once, in order
    (replayed on resumption, or from offline storage if the server gave the session up)."""
    srv = await start_server(tmp_path, max_unacked=20)
    try:
        async with Proxy(port(srv)) as proxy:
            bob = await flood_hibernated(srv, proxy, clients)
            again = await SmClient.connect(port(srv))
            clients.append(again)
            await again.authenticate("bob", PASSWORD)
            again.start()
            reply = await again.resume(bob.state)
            got: list[str] = []
            if reply.tag == sm("failed"):
                await again.bind_started("b2")
                await again.send_stanza("<presence/>")
            while len(got) < 100:
                st = await again.stanza()
                if st.tag == "{jabber:client}message":
                    got.append(st.findtext("{jabber:client}body") or "")
            assert got == [f"m{i}" for i in range(100)]
            await no_more(again)
    finally:
        await srv.stop()


async def test_a_flood_to_a_hibernated_session_is_not_held_in_memory(
    tmp_path: Path, clients: list[SmClient]
) -> None:
    srv = await start_server(tmp_path, max_unacked=20)
    try:
        async with Proxy(port(srv)) as proxy:
            await flood_hibernated(srv, proxy, clients)
            session = srv.sessions.get(JID.parse("bob@localhost/b"))
            ext = session.ext if session is not None else None  # ended: holds nothing
            held = sum(len(getattr(v, "unacked", ())) for v in (ext or {}).values())
            assert held <= 20, f"a hibernated session holds {held} stanzas (max_unacked 20)"
    finally:
        await srv.stop()


async def test_unacknowledged_stanzas_of_a_cleanly_closed_stream_are_not_lost(
    server: Server, clients: list[SmClient]
) -> None:
    alice = await sm_login(port(server), "alice", PASSWORD, "a")
    bob = await sm_login(port(server), "bob", PASSWORD, "b", presence=True)
    clients += [alice, bob]
    await bob.stanza()  # own presence
    bob.auto_ack = False
    for i in range(3):
        await alice.send_stanza(message("bob@localhost/b", f"m{i}"))
    await collect(bob, 3)
    await bob.ack(2)  # the presence and m0; m1 and m2 stay unacknowledged
    await bob.send("</stream:stream>")
    await asyncio.wait_for(bob.ended.wait(), 10)
    # §4: unacknowledged stanzas are treated as if sent to an unavailable resource: offline
    again = await sm_login(port(server), "bob", PASSWORD, "b2", presence=True)
    clients.append(again)
    got = [await again.stanza() for _ in range(3)]
    assert bodies([s for s in got if s.tag == "{jabber:client}message"]) == ["m1", "m2"]
    await no_more(again)


# --- slixmpp's xep_0198 ---------------------------------------------------------------------


class SmSlix(Client):
    """The conftest client with slixmpp's stream management plugin (resume on)."""

    def __init__(self, jid: str) -> None:
        super().__init__(jid, PASSWORD)
        self.register_plugin("xep_0198")
        self.plugin["xep_0198"].allow_resume = True
        self.ssl_context = client_context()
        self.enable_direct_tls = False
        self.enable_starttls = True
        self.events: dict[str, asyncio.Queue[Any]] = {}
        for name in ("session_start", "sm_enabled", "session_resumed", "sm_failed", "disconnected"):
            q: asyncio.Queue[Any] = asyncio.Queue()
            self.events[name] = q
            self.add_event_handler(name, q.put_nowait)

    async def wait(self, event: str, timeout: float = 15.0) -> Any:
        return await asyncio.wait_for(self.events[event].get(), timeout)


@pytest.fixture
async def slix() -> AsyncIterator[list[SmSlix]]:
    made: list[SmSlix] = []
    yield made
    for c in made:
        c.abort()
    await asyncio.sleep(0)


async def test_slixmpp_enables_acks_and_resumes_after_a_cut(
    server: Server, proxy: Proxy, slix: list[SmSlix], clients: list[SmClient]
) -> None:
    bob = SmSlix("bob@localhost/b")
    slix.append(bob)
    bob.connect("127.0.0.1", proxy.port)
    await bob.wait("session_start")
    enabled = await bob.wait("sm_enabled")
    assert enabled["resume"] in (True, "true", "1")
    sm_plugin = bob.plugin["xep_0198"]
    alice = await sm_login(port(server), "alice", PASSWORD, "a")
    clients.append(alice)
    for i in range(7):
        await alice.send_stanza(message("bob@localhost/b", f"m{i}"))
    assert [(await bob.next_message())["body"] for _ in range(7)] == [f"m{i}" for i in range(7)]
    # bob sends some messages; slixmpp requests acks every `window` stanzas
    for i in range(10):
        bob.send_message(mto="alice@localhost/a", mbody=f"b{i}", mtype="chat")
    assert bodies(await collect(alice, 10)) == [f"b{i}" for i in range(10)]
    # slixmpp writes its <r/> from an outgoing filter, ahead of the stanza that completes its
    # window: the server's answer covers 9, so ask once more for the 10th
    sm_plugin.request_ack()
    await until(lambda: sm_plugin.last_ack == sm_plugin.seq == 10)
    assert not sm_plugin.unacked_queue

    conn = await proxy.accepted()
    conn.cut(rst=True)
    await bob.wait("disconnected")
    for i in range(7, 12):
        await alice.send_stanza(message("bob@localhost/b", f"m{i}"))
    await alice.request_ack()
    await alice.wait_acked(alice.state.sent)
    bob.connect("127.0.0.1", proxy.port)
    await bob.wait("session_resumed")
    assert [(await bob.next_message())["body"] for _ in range(5)] == [f"m{i}" for i in range(7, 12)]
    with pytest.raises(TimeoutError):
        await bob.next_message(timeout=0.3)
    assert bob.events["session_start"].empty()  # resumed, not a new session


async def test_slixmpp_resends_what_the_server_never_got(
    server: Server, proxy: Proxy, slix: list[SmSlix], clients: list[SmClient]
) -> None:
    alice = await sm_login(port(server), "alice", PASSWORD, "a")
    clients.append(alice)
    bob = SmSlix("bob@localhost/b")
    slix.append(bob)
    bob.plugin["xep_0198"].window = 1000  # no automatic <r/> from slixmpp in this test
    bob.connect("127.0.0.1", proxy.port)
    await bob.wait("session_start")
    await bob.wait("sm_enabled")
    conn = await proxy.accepted()
    bob.send_message(mto="alice@localhost/a", mbody="before", mtype="chat")
    assert bodies(await collect(alice, 1)) == ["before"]
    conn.stall(UP)  # bob's next messages never reach the server
    for i in range(5):
        bob.send_message(mto="alice@localhost/a", mbody=f"lost{i}", mtype="chat")
    await conn.wait_buffered(UP, 5 * 50)
    conn.cut(rst=True)
    await bob.wait("disconnected")
    bob.connect("127.0.0.1", proxy.port)
    resumed = await bob.wait("session_resumed")
    assert int(resumed["h"]) == 1  # the server handled "before" only
    # slixmpp resends the 5 it still holds; each arrives once, "before" is not repeated
    assert bodies(await collect(alice, 5)) == [f"lost{i}" for i in range(5)]
    await no_more(alice)
