"""Shared fixtures: a real Server on 127.0.0.1 ephemeral ports in the test's event loop, with
SQLite in tmp_path, and real slixmpp clients."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import slixmpp

from tests.helpers.wire import client_context
from xmppd import config as config_mod
from xmppd.jid import JID
from xmppd.server import Server

PASSWORD = "correct horse battery staple"
TIMEOUT = 15.0


def make_config(tmp_path: Path, **overrides: Any) -> config_mod.Config:
    """A test config: ephemeral ports, SQLite in tmp_path."""
    data: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "hosts": ["localhost"],
        "listen": {"c2s": ["127.0.0.1:0"], "c2s_direct_tls": ["127.0.0.1:0"]},
    }
    data.update(overrides)
    return config_mod.parse(data, base=tmp_path, origin="test", path=None)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """A started server with accounts alice, bob and carol (password PASSWORD)."""
    srv = Server(make_config(tmp_path))
    await srv.start()
    for user in ("alice", "bob", "carol"):
        await srv.accounts.create(JID.parse(f"{user}@localhost"), PASSWORD)
    try:
        yield srv
    finally:
        await srv.stop()


class Client(slixmpp.ClientXMPP):  # type: ignore[misc]  # slixmpp is untyped
    """A slixmpp client that records received messages and presences."""

    def __init__(self, jid: str, password: str, **kwargs: Any) -> None:
        super().__init__(jid, password, **kwargs)
        self.messages: asyncio.Queue[slixmpp.Message] = asyncio.Queue()
        self.presences: asyncio.Queue[slixmpp.Presence] = asyncio.Queue()
        self.add_event_handler("message", self.messages.put_nowait)
        self.add_event_handler("presence", self.presences.put_nowait)
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0199")

    async def next_message(self, timeout: float = TIMEOUT) -> slixmpp.Message:
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def next_presence(self, timeout: float = TIMEOUT) -> slixmpp.Presence:
        return await asyncio.wait_for(self.presences.get(), timeout)


ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
async def connect(server: Server) -> AsyncIterator[ClientFactory]:
    """Factory: log a slixmpp client in (STARTTLS by default) and wait for session_start."""
    clients: list[Client] = []

    async def factory(
        jid: str,
        password: str = PASSWORD,
        *,
        direct_tls: bool = False,
        mech: str | None = None,
        max_tls12: bool = False,
        presence: bool = True,
        expect_failure: bool = False,
    ) -> Client:
        client = Client(jid, password, sasl_mech=mech)
        client.ssl_context = client_context(max_tls12)
        client.enable_direct_tls = direct_tls
        client.enable_starttls = not direct_tls
        started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        client.add_event_handler(
            "session_start", lambda _: started.done() or started.set_result("ok")
        )
        client.add_event_handler(
            "failed_auth", lambda _: started.done() or started.set_result("failed_auth")
        )
        clients.append(client)
        port = server.ports["c2s_direct_tls" if direct_tls else "c2s"][0]
        client.connect("127.0.0.1", port)
        result = await asyncio.wait_for(started, TIMEOUT)
        if expect_failure:
            assert result == "failed_auth"
            return client
        assert result == "ok", result
        if presence:
            client.send_presence()
            # our own presence comes back (RFC 6121 §4.2.2): the session is now available
            await client.next_presence()
        return client

    yield factory
    for client in clients:
        client.disconnect(wait=0)
    await asyncio.sleep(0)


@pytest.fixture(autouse=True)
def _quiet_slixmpp() -> None:
    logging.getLogger("slixmpp").setLevel(logging.ERROR)
