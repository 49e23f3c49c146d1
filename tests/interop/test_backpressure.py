"""Back-pressure: a client that stops reading cannot grow the server's memory; whoever floods
it is paused (reading stopped) instead of buffered; the slow reader is disconnected after a
configurable time; everyone else keeps a short round trip throughout."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, make_config
from tests.helpers.wire import RawClient
from xmppd.jid import JID
from xmppd.server import Server

pytestmark = pytest.mark.interop
HIGH_WATER = 65536
OUTPUT_MAX = 1048576


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = Server(
        make_config(
            tmp_path,
            limits={
                "output_high_water": HIGH_WATER,
                "output_max": OUTPUT_MAX,
                "slow_reader_timeout": 2.0,
            },
        )
    )
    await srv.start()
    for user in ("reader", "flooder", "pinger"):
        await srv.accounts.create(JID.parse(f"{user}@localhost"), PASSWORD)
    yield srv
    await srv.stop()


def connection_of(server: Server, jid: str):
    session = server.sessions.get(JID.parse(jid))
    assert session is not None
    return session.conn


async def test_flood_to_a_slow_reader_pauses_the_sender_and_drops_the_reader(
    server: Server,
) -> None:
    port = server.ports["c2s"][0]
    reader = await RawClient.connect(port)
    await reader.login("reader", PASSWORD, resource="slow")
    # From here on the reader never reads its socket again.
    flooder = await RawClient.connect(port)
    await flooder.login("flooder", PASSWORD, resource="f")
    pinger = await RawClient.connect(port)
    await pinger.login("pinger", PASSWORD, resource="p")
    reader_conn = connection_of(server, "reader@localhost/slow")
    flooder_conn = connection_of(server, "flooder@localhost/f")

    body = "x" * 1000
    stanza = (
        f"<message to='reader@localhost/slow' type='chat'><body>{body}</body></message>".encode()
    )
    max_buffered = 0
    paused_seen = False
    rtts: list[float] = []

    async def flood() -> None:
        # The flooder's own socket buffer fills once the server stops reading it; drain()
        # then blocks, which is exactly the pause we want to see.
        for _ in range(20_000):
            flooder.writer.write(stanza)
            await flooder.writer.drain()

    async def drain_flooder_input() -> None:
        while True:  # the flooder reads whatever comes back (errors after the reader is gone)
            await flooder.reader.read(65536)

    flood_task = asyncio.create_task(flood())
    reader_task = asyncio.create_task(drain_flooder_input())
    deadline = time.monotonic() + 4.0
    i = 0
    while time.monotonic() < deadline:
        i += 1
        started = time.monotonic()
        await pinger.send(
            f"<iq type='get' id='p{i}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
        )
        reply = await pinger.expect("{jabber:client}iq", timeout=5)
        assert reply.get("id") == f"p{i}"
        rtts.append(time.monotonic() - started)
        if not reader_conn._closed:
            max_buffered = max(max_buffered, reader_conn.buffered())
        paused_seen = paused_seen or flooder_conn._blocked
        await asyncio.sleep(0.01)
    flood_task.cancel()
    reader_task.cancel()

    assert paused_seen, "the flooder was never paused"
    # Bounded: the high-water mark plus what was in flight when the sender was paused.
    assert max_buffered < OUTPUT_MAX
    # The slow reader was disconnected after slow_reader_timeout (2 s here).
    assert server.sessions.get(JID.parse("reader@localhost/slow")) is None
    # The flooder is released once the reader is gone.
    assert not flooder_conn._blocked
    # Everyone else was served on throughout (issue: round trip under 50 ms).
    assert statistics.quantiles(rtts, n=10)[-1] < 0.05, sorted(rtts)[-5:]
    reader.writer.transport.abort()  # it never read; nothing to close politely
    flooder.writer.transport.abort()
    await pinger.close()
