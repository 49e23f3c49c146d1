"""XEP-0199 server-to-client pings over real sockets, with short interval and timeout.

A raw client that stays silent is pinged and, never answering, gets <connection-timeout/>;
slixmpp (which answers pings) is pinged again and again and stays connected.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import StanzaPath

from tests.conftest import PASSWORD, TIMEOUT, Client, make_config
from tests.helpers.sm import SmClient, condition, sm, sm_login
from tests.helpers.wire import RawClient, client_context
from xmppd.jid import JID
from xmppd.server import Server

pytestmark = pytest.mark.interop

NS_PING = "urn:xmpp:ping"
IQ = "{jabber:client}iq"


@pytest.fixture
async def pinging_server(tmp_path: Path) -> AsyncIterator[Server]:
    """A server that pings clients silent for 0.3 s and waits 1.5 s for the answer."""
    config = make_config(
        tmp_path,
        modules={"ping": {"ping_interval": 0.3, "ping_timeout": 1.5}},
        limits={"idle_sweep": 0.1},
    )
    srv = Server(config)
    await srv.start()
    for user in ("alice", "bob"):
        await srv.accounts.create(JID.parse(f"{user}@localhost"), PASSWORD)
    try:
        yield srv
    finally:
        await srv.stop()


async def test_silent_client_is_pinged_then_gets_connection_timeout(
    pinging_server: Server,
) -> None:
    raw = await RawClient.connect(pinging_server.ports["c2s"][0])
    jid = await raw.login("alice", PASSWORD, resource="silent")
    ping = await raw.expect(IQ)
    assert ping.get("type") == "get"
    assert ping.get("from") == "localhost"
    assert ping.get("to") == jid
    assert ping.find(f"{{{NS_PING}}}ping") is not None
    # no answer: the server gives up on the connection
    assert await raw.stream_error() == "connection-timeout"
    await raw.close()


async def test_client_answering_with_an_error_stays_connected(pinging_server: Server) -> None:
    raw = await RawClient.connect(pinging_server.ports["c2s"][0])
    await raw.login("alice", PASSWORD, resource="grumpy")
    for _ in range(3):
        ping = await raw.expect(IQ)
        assert ping.get("type") == "get"
        # XEP-0199 §4.1: a client without ping support answers service-unavailable
        await raw.send(
            f"<iq type='error' to='localhost' id='{ping.get('id')}'><ping xmlns='{NS_PING}'/>"
            "<error type='cancel'><service-unavailable "
            "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        )
    # three pings answered: each came after the previous answer, none closed the stream
    assert not raw.closed
    await raw.close()


async def test_slixmpp_answers_pings_and_stays_connected(pinging_server: Server) -> None:
    client = Client("bob@localhost/desk", PASSWORD)
    client.ssl_context = client_context()
    pings: asyncio.Queue[str] = asyncio.Queue()
    # runs beside slixmpp's own xep_0199 handler, which answers
    client.register_handler(
        Callback(
            "count pings",
            StanzaPath("iq@type=get/ping"),
            lambda iq: pings.put_nowait(str(iq["from"])),
        )
    )
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    client.add_event_handler("session_start", lambda _: started.done() or started.set_result(None))
    disconnected: list[object] = []
    client.add_event_handler("disconnected", disconnected.append)
    client.connect("127.0.0.1", pinging_server.ports["c2s"][0])
    try:
        await asyncio.wait_for(started, TIMEOUT)
        for _ in range(4):
            assert await asyncio.wait_for(pings.get(), TIMEOUT) == "localhost"
        # the fourth ping came more than a timeout after the first: the answers counted
        assert disconnected == []
        sessions = [s for s in pinging_server.sessions.all_sessions() if s.username == "bob"]
        assert len(sessions) == 1
        assert sessions[0].conn is not None
        assert not sessions[0].conn.closed
    finally:
        client.disconnect(wait=0)
        await asyncio.sleep(0)


async def test_timed_out_connection_leaves_the_session_resumable(pinging_server: Server) -> None:
    port = pinging_server.ports["c2s"][0]
    silent = await sm_login(port, "alice", PASSWORD, "sm")
    again: SmClient | None = None
    try:
        ping = await silent.stanza()
        assert ping.find(f"{{{NS_PING}}}ping") is not None  # never answered
        error = await silent.stream_error()
        assert condition(error) == "connection-timeout"
        # the connection was closed, not the session: stream management resumes it
        again = await SmClient.connect(port)
        await again.authenticate("alice", PASSWORD)
        again.start()
        resumed = await again.resume(silent.state)
        assert resumed.tag == sm("resumed")
        # the resumed stream is pinged in turn, and an answer keeps it
        ping = await again.stanza()
        assert ping.find(f"{{{NS_PING}}}ping") is not None
        await again.send_stanza(f"<iq type='result' to='localhost' id='{ping.get('id')}'/>")
        ping = await again.stanza()  # the next one, after the next silence
        assert ping.find(f"{{{NS_PING}}}ping") is not None
        assert not again.ended.is_set()
    finally:
        await silent.stop()
        if again is not None:
            await again.stop()
