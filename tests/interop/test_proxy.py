"""The fault-injection proxy (tests/helpers/proxy.py): against an echo server, then with xmppd."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, Client
from tests.helpers.proxy import DOWN, UP, Proxy
from tests.helpers.subprocess_server import ServerProcess
from tests.helpers.wire import RawClient, client_context
from xmppd.server import Server

pytestmark = pytest.mark.interop


class Echo:
    """A TCP echo server that counts what it received and can be told to close."""

    def __init__(self) -> None:
        self.received = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.eof = asyncio.Event()
        self.reset = asyncio.Event()
        self.echo = True
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while data := await reader.read(65536):
                self.received += len(data)
                if self.echo:
                    writer.write(data)
                    await writer.drain()
            self.eof.set()
        except ConnectionResetError:
            self.reset.set()
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in self.writers:
            w.transport.abort()


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    server = Echo()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def proxy(echo: Echo) -> AsyncIterator[Proxy]:
    async with Proxy(echo.port) as p:
        yield p


async def test_bytes_pass_both_ways_and_are_counted(echo: Echo, proxy: Proxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    conn = await proxy.accepted()
    payload = bytes(range(256)) * 1000
    writer.write(payload)
    got = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
    assert got == payload
    assert conn.forwarded[UP] == conn.forwarded[DOWN] == len(payload)
    assert echo.received == len(payload)
    writer.close()
    await conn.wait_closed()
    await echo.eof.wait()  # the client's FIN reached the server
    assert proxy.connections == []


async def test_stall_up_holds_client_bytes_until_resume(echo: Echo, proxy: Proxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    conn = await proxy.accepted()
    writer.write(b"hi")
    await asyncio.wait_for(reader.readexactly(2), 10)  # upstream is connected
    conn.stall(UP)
    writer.write(b"held back")
    await conn.wait_buffered(UP, len(b"held back"))
    assert echo.received == 2
    assert conn.forwarded[UP] == 2
    conn.resume(UP)
    assert await asyncio.wait_for(reader.readexactly(9), 10) == b"held back"
    assert conn.buffered(UP) == 0
    writer.close()


async def test_stall_down_is_silence_then_the_backlog_in_order(echo: Echo, proxy: Proxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    conn = await proxy.accepted()
    conn.stall(DOWN)
    for i in range(10):
        writer.write(f"<{i}>".encode())
        await conn.wait_forwarded(UP, 3 * (i + 1))
    await conn.wait_buffered(DOWN, 30)
    assert conn.forwarded[DOWN] == 0
    with pytest.raises(TimeoutError):  # the one place silence must be observed
        await asyncio.wait_for(reader.read(1), 0.2)
    conn.resume(DOWN)
    expected = "".join(f"<{i}>" for i in range(10)).encode()
    assert await asyncio.wait_for(reader.readexactly(30), 10) == expected
    writer.close()


async def test_a_long_stall_pushes_back_on_the_sender(echo: Echo) -> None:
    async with Proxy(echo.port, stall_buffer=16 * 1024) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        conn = await proxy.accepted()
        writer.write(b"x")
        await reader.readexactly(1)
        conn.stall(UP)
        payload = b"y" * (32 * 1024 * 1024)  # more than any loopback socket buffers hold
        writer.write(payload)
        # the proxy stops reading: the kernel buffers fill and the sender cannot drain
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(writer.drain(), 0.5)
        assert 16 * 1024 <= conn.buffered(UP) < 16 * 1024 + 512 * 1024
        assert echo.received == 1
        echoed = asyncio.create_task(reader.readexactly(len(payload)))  # read while writing
        conn.resume(UP)
        await asyncio.wait_for(writer.drain(), 30)
        assert await asyncio.wait_for(echoed, 30) == payload
        assert echo.received == 1 + len(payload)
        writer.close()


async def test_cut_closes_both_sides(echo: Echo, proxy: Proxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    conn = await proxy.accepted()
    writer.write(b"ping")
    await reader.readexactly(4)
    conn.cut()
    assert await asyncio.wait_for(reader.read(10), 10) == b""
    await asyncio.wait_for(echo.eof.wait(), 10)
    await conn.wait_closed()
    assert conn.was_cut
    writer.close()


async def test_cut_with_rst_resets_both_sides(echo: Echo, proxy: Proxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    conn = await proxy.accepted()
    writer.write(b"ping")
    await reader.readexactly(4)
    conn.cut(rst=True)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(10), 10)
    await asyncio.wait_for(echo.reset.wait(), 10)
    await conn.wait_closed()
    writer.close()


async def test_server_close_reaches_the_client(echo: Echo, proxy: Proxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    conn = await proxy.accepted()
    writer.write(b"ping")
    await reader.readexactly(4)
    echo.writers[0].close()
    assert await asyncio.wait_for(reader.read(10), 10) == b""
    writer.close()
    await conn.wait_closed()


async def test_unreachable_upstream_closes_the_client() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # bound, never listening: connection refused
        async with Proxy(dead_port) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            conn = await proxy.accepted()
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(10), 10) == b""
            await conn.wait_closed()
            writer.close()


async def test_connections_are_accepted_in_order(echo: Echo, proxy: Proxy) -> None:
    streams = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(3)]
    conns = [await proxy.accepted() for _ in range(3)]
    for i, (_, w) in enumerate(streams):
        w.write(b"x" * (i + 1))
    for i, (r, _) in enumerate(streams):
        assert await asyncio.wait_for(r.readexactly(i + 1), 10) == b"x" * (i + 1)
    assert [c.forwarded[UP] for c in conns] == [1, 2, 3]
    conns[1].cut()
    assert await asyncio.wait_for(streams[1][0].read(10), 10) == b""
    streams[0][1].write(b"still")
    assert await asyncio.wait_for(streams[0][0].readexactly(5), 10) == b"still"
    for _, w in streams:
        w.close()


# --- with xmppd ----------------------------------------------------------------------------


async def slixmpp_through(port: int, jid: str, *, direct_tls: bool = False) -> Client:
    """A slixmpp client logged in through `port`."""
    client = Client(jid, PASSWORD)
    client.ssl_context = client_context()
    client.enable_direct_tls = direct_tls
    client.enable_starttls = not direct_tls
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    client.add_event_handler("session_start", lambda _: started.done() or started.set_result(None))
    client.connect("127.0.0.1", port)
    await asyncio.wait_for(started, 15)
    return client


async def test_slixmpp_logs_in_through_the_proxy_with_starttls_and_direct_tls(
    server: Server,
) -> None:
    async with (
        Proxy(server.ports["c2s"][0]) as starttls,
        Proxy(server.ports["c2s_direct_tls"][0]) as direct,
    ):
        alice = await slixmpp_through(starttls.port, "alice@localhost/a")
        bob = await slixmpp_through(direct.port, "bob@localhost/b", direct_tls=True)
        try:
            alice_conn, bob_conn = await starttls.accepted(), await direct.accepted()
            alice.send_message(mto="bob@localhost/b", mbody="through the proxy", mtype="chat")
            assert (await bob.next_message())["body"] == "through the proxy"
            for conn in (alice_conn, bob_conn):
                assert conn.forwarded[UP] > 0
                assert conn.forwarded[DOWN] > 0
            # the bytes are TLS records, not XML: the proxy never sees the plaintext body
            disconnected = asyncio.get_running_loop().create_future()
            bob.add_event_handler(
                "disconnected", lambda _: disconnected.done() or disconnected.set_result(None)
            )
            bob_conn.cut(rst=True)
            await asyncio.wait_for(disconnected, 10)
        finally:
            alice.disconnect(wait=0)
            bob.disconnect(wait=0)
            await asyncio.sleep(0)


async def test_stalled_replies_arrive_after_resume(server: Server) -> None:
    async with Proxy(server.ports["c2s"][0]) as proxy:
        raw = await RawClient.connect(proxy.port)
        conn = await proxy.accepted()
        await raw.login("alice", PASSWORD)
        conn.stall(DOWN)
        before = conn.buffered(DOWN)
        await raw.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        await conn.wait_buffered(DOWN, before + 1)  # the server answered; the client sees nothing
        assert not raw.pending
        conn.resume(DOWN)
        reply = await raw.expect("{jabber:client}iq")
        assert (reply.get("id"), reply.get("type")) == ("p1", "result")
        conn.cut()
        await raw.wait_closed()


async def test_subprocess_server_through_the_proxy_survives_sigkill(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, users=("alice",))
    await srv.create_accounts()
    await srv.start()
    try:
        async with Proxy(srv.c2s_port) as proxy:
            raw = await RawClient.connect(proxy.port)
            await raw.login("alice", PASSWORD)
            conn = await proxy.accepted()
            await srv.kill()
            await raw.wait_closed()  # the kernel closed the dead server's socket
            await conn.wait_closed()
            await srv.start()  # same data dir, same ports
            again = await RawClient.connect(proxy.port)
            await again.login("alice", PASSWORD)
            await again.close()
            assert srv.starts == 2
    finally:
        await srv.kill()
