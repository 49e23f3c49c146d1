"""A closed connection is freed at once: nothing (timer, task) keeps it for later.

Regression: the grace timer that aborts a closing stream whose output never drains held every
closed connection for 10 s, so after a storm of closes the memory came back too late for the
idle sweep's collection and trim (bench afterload: RSS reclaim 1.09 -> 1.28).
"""

from __future__ import annotations

import asyncio
import gc

from tests.conftest import PASSWORD
from tests.helpers.wire import RawClient
from xmppd.server import Server
from xmppd.stream.connection import C2SConnection


def _connections() -> int:
    gc.collect()
    return sum(isinstance(o, C2SConnection) for o in gc.get_objects())


async def _wait_gone(server: Server) -> None:
    for _ in range(100):
        if not server.connections:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the server kept the connections")


async def test_connections_closed_by_the_client_are_freed_at_once(server: Server) -> None:
    before = _connections()
    clients = []
    for i in range(5):
        raw = await RawClient.connect(server.ports["c2s"][0])
        await raw.login("alice", PASSWORD, f"r{i}")
        clients.append(raw)
    for raw in clients:
        await raw.close()  # </stream:stream>: the server answers and closes its side
    await _wait_gone(server)
    await asyncio.sleep(0.1)  # session-ending tasks
    assert _connections() == before


async def test_connections_closed_by_the_server_are_freed_at_once(server: Server) -> None:
    before = _connections()
    raw = await RawClient.connect(server.ports["c2s"][0])
    await raw.send("<not-a-stream/>")  # the server closes with a stream error
    await raw.wait_closed()
    await _wait_gone(server)
    await asyncio.sleep(0.1)
    assert _connections() == before
