"""Proxy: a TCP proxy between test clients and a server port, controllable per connection.

It forwards bytes and nothing else, so STARTTLS and direct TLS pass through it untouched. Each
accepted connection is a `ProxyConnection` the test can drive:

- ``cut()`` closes both sides at once (FIN), ``cut(rst=True)`` resets both (RST, SO_LINGER 0):
  a network drop as each peer sees it;
- ``stall(direction)`` stops forwarding one way: what arrives is buffered (up to `stall_buffer`
  bytes, then reading from that side pauses, so TCP back-pressure reaches the sender), and the
  peer sees silence, like a sleeping phone; ``resume(direction)`` forwards the backlog and
  carries on;
- ``finished[direction]`` is set once the sender of that direction closed its socket (even
  while a stall hides it from the peer);
- ``forwarded[direction]`` and ``buffered(direction)`` count bytes, and ``wait_forwarded`` /
  ``wait_buffered`` / ``wait_closed`` let a test await progress instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
from collections.abc import Callable


class Direction(enum.Enum):
    """Which way bytes flow through the proxy."""

    UP = "client->server"
    DOWN = "server->client"


UP = Direction.UP
DOWN = Direction.DOWN
STALL_BUFFER = 64 * 1024


class _Side(asyncio.Protocol):
    """One socket of a proxied connection (the client's or the server's)."""

    def __init__(self, conn: ProxyConnection, direction: Direction) -> None:
        self.conn = conn
        self.direction = direction  # the direction of the bytes this side *receives*
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.conn._received(self.direction, data)

    def eof_received(self) -> bool | None:
        self.conn.finished[self.direction].set()
        self.conn._eof(self.direction)
        return True  # keep the other half open until the peer's FIN is forwarded

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.finished[self.direction].set()
        self.conn._lost(self.direction)

    def pause_writing(self) -> None:
        # this side's socket is written with the other direction's bytes
        self.conn._pause_source(opposite(self.direction))

    def resume_writing(self) -> None:
        self.conn._resume_source(opposite(self.direction))


def opposite(direction: Direction) -> Direction:
    """The other direction."""
    return DOWN if direction is UP else UP


class ProxyConnection:
    """One client connection and its upstream connection to the server."""

    def __init__(self, proxy: Proxy, stall_buffer: int) -> None:
        self.proxy = proxy
        self.stall_buffer = stall_buffer
        self.client = _Side(self, UP)  # receives client->server bytes
        self.server = _Side(self, DOWN)  # receives server->client bytes
        self.forwarded = {UP: 0, DOWN: 0}
        self._stalled = {UP: False, DOWN: False}
        self._backlog: dict[Direction, list[bytes]] = {UP: [], DOWN: []}
        self._eof_pending = {UP: False, DOWN: False}
        self._lost_pending = {UP: False, DOWN: False}
        self._eof_done = {UP: False, DOWN: False}
        # Reading from a side pauses for two independent reasons: the destination's write
        # buffer is full, or the direction is stalled with a full backlog.
        self._pause_reasons: dict[Direction, set[str]] = {UP: set(), DOWN: set()}
        self._changed = asyncio.Event()
        self.closed = asyncio.Event()
        # finished[d]: the sender of direction d closed (FIN) or lost its socket, whether or
        # not a stall keeps that from its peer
        self.finished = {UP: asyncio.Event(), DOWN: asyncio.Event()}
        self.was_cut = False

    # --- controls -------------------------------------------------------------------------

    def stall(self, direction: Direction) -> None:
        """Stop forwarding `direction`; what arrives is buffered, the peer sees silence."""
        self._stalled[direction] = True

    def resume(self, direction: Direction) -> None:
        """Forward the backlog of `direction` and keep forwarding."""
        self._stalled[direction] = False
        backlog, self._backlog[direction] = self._backlog[direction], []
        for chunk in backlog:
            self._forward(direction, chunk)
        self._unpause(direction, "stall")
        if self._eof_pending[direction]:
            self._eof(direction)
        if self._lost_pending[direction]:
            self._lost(direction)
        self._notify()

    def stalled(self, direction: Direction) -> bool:
        """Whether `direction` is stalled."""
        return self._stalled[direction]

    def cut(self, rst: bool = False) -> None:
        """Drop both sides at once: FIN to each (or RST with `rst`), discarding any backlog."""
        self.was_cut = True
        self._backlog = {UP: [], DOWN: []}
        for side in (self.client, self.server):
            if side.transport is None or side.transport.is_closing():
                if side.transport is not None and rst:
                    side.transport.abort()
                continue
            if rst:
                sock = side.transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
            side.transport.abort()
        self._notify()

    def buffered(self, direction: Direction) -> int:
        """Bytes of `direction` held back by a stall."""
        return sum(len(chunk) for chunk in self._backlog[direction])

    # --- waiting --------------------------------------------------------------------------

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until `predicate()` holds; it is checked after every change of this connection."""

        async def loop() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), timeout)

    async def wait_forwarded(
        self, direction: Direction, at_least: int, timeout: float = 10.0
    ) -> None:
        """Wait until at least `at_least` bytes went `direction` in total."""
        await self.wait_until(lambda: self.forwarded[direction] >= at_least, timeout)

    async def wait_buffered(
        self, direction: Direction, at_least: int = 1, timeout: float = 10.0
    ) -> None:
        """Wait until a stall of `direction` holds at least `at_least` bytes."""
        await self.wait_until(lambda: self.buffered(direction) >= at_least, timeout)

    async def wait_closed(self, timeout: float = 10.0) -> None:
        """Wait until both sides are closed."""
        await asyncio.wait_for(self.closed.wait(), timeout)

    # --- plumbing -------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()

    def _source(self, direction: Direction) -> _Side:
        return self.client if direction is UP else self.server

    def _dest(self, direction: Direction) -> _Side:
        return self.server if direction is UP else self.client

    def _received(self, direction: Direction, data: bytes) -> None:
        if self._stalled[direction] or self._dest(direction).transport is None:
            self._backlog[direction].append(data)
            if self.buffered(direction) >= self.stall_buffer:
                self._pause(direction, "stall")
        else:
            self._forward(direction, data)
        self._notify()

    def _forward(self, direction: Direction, data: bytes) -> None:
        dest = self._dest(direction).transport
        if dest is None or dest.is_closing():
            return
        dest.write(data)
        self.forwarded[direction] += len(data)

    def _eof(self, direction: Direction) -> None:
        if self._stalled[direction]:
            self._eof_pending[direction] = True
            return
        self._eof_pending[direction] = False
        self._eof_done[direction] = True
        dest = self._dest(direction).transport
        if dest is not None and not dest.is_closing():
            if dest.can_write_eof():
                dest.write_eof()
            else:
                dest.close()
        if self._eof_done[UP] and self._eof_done[DOWN]:
            # both halves are finished: nothing more will flow, close both sockets
            for side in (self.client, self.server):
                if side.transport is not None and not side.transport.is_closing():
                    side.transport.close()
        self._notify()

    def _lost(self, direction: Direction) -> None:
        # One socket is gone: the other one goes too, after what it has to write; while the
        # direction from the lost socket is stalled, its peer learns nothing (silence).
        if self._stalled[direction]:
            self._lost_pending[direction] = True
            self._maybe_closed()
            return
        self._lost_pending[direction] = False
        other = self._dest(direction).transport
        if other is not None and not other.is_closing():
            other.close()
        self._maybe_closed()

    def _maybe_closed(self) -> None:
        sides = (self.client, self.server)
        if all(s.transport is None or s.transport.is_closing() for s in sides):
            self.closed.set()
            self.proxy._forget(self)
        self._notify()

    def _pause(self, direction: Direction, reason: str) -> None:
        reasons = self._pause_reasons[direction]
        transport = self._source(direction).transport
        if not reasons and transport is not None and not transport.is_closing():
            transport.pause_reading()
        reasons.add(reason)

    def _unpause(self, direction: Direction, reason: str) -> None:
        reasons = self._pause_reasons[direction]
        if reason not in reasons:
            return
        reasons.discard(reason)
        transport = self._source(direction).transport
        if not reasons and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _pause_source(self, direction: Direction) -> None:
        self._pause(direction, "write")

    def _resume_source(self, direction: Direction) -> None:
        self._unpause(direction, "write")

    def _upstream_ready(self) -> None:
        """The server side is connected: forward what the client sent meanwhile."""
        if not self._stalled[UP]:
            backlog, self._backlog[UP] = self._backlog[UP], []
            for chunk in backlog:
                self._forward(UP, chunk)
            self._unpause(UP, "stall")
            if self._eof_pending[UP]:
                self._eof(UP)


class Proxy:
    """Listens on 127.0.0.1:<ephemeral> and proxies each connection to (host, port).

    Use as ``async with Proxy(port) as proxy``; ``proxy.port`` is where clients connect, and
    ``await proxy.accepted()`` returns the next `ProxyConnection` in the order they came.
    """

    def __init__(
        self, target_port: int, target_host: str = "127.0.0.1", stall_buffer: int = STALL_BUFFER
    ) -> None:
        self.target = (target_host, target_port)
        self.stall_buffer = stall_buffer
        self.connections: list[ProxyConnection] = []  # open ones, in accept order
        self.port = 0
        self._accepted: asyncio.Queue[ProxyConnection] = asyncio.Queue()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start listening."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._make_client_side, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and cut every open connection."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.cut()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def __aenter__(self) -> Proxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def accepted(self, timeout: float = 10.0) -> ProxyConnection:
        """The next accepted connection (in accept order)."""
        return await asyncio.wait_for(self._accepted.get(), timeout)

    def cut_all(self, rst: bool = False) -> None:
        """Cut every open connection."""
        for conn in list(self.connections):
            conn.cut(rst)

    def _make_client_side(self) -> _Side:
        conn = ProxyConnection(self, self.stall_buffer)
        self.connections.append(conn)
        self._accepted.put_nowait(conn)
        task = asyncio.get_running_loop().create_task(self._connect_upstream(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return conn.client

    async def _connect_upstream(self, conn: ProxyConnection) -> None:
        loop = asyncio.get_running_loop()
        # Until the server side is up, client bytes wait in the UP backlog.
        try:
            await loop.create_connection(lambda: conn.server, *self.target)
        except OSError:
            # Server unreachable (e.g. killed): the client sees its connection reset.
            if conn.client.transport is not None:
                conn.client.transport.abort()
            conn.server.transport = None
            conn.closed.set()
            self._forget(conn)
            return
        if conn.client.transport is None or conn.client.transport.is_closing():
            assert conn.server.transport is not None
            conn.server.transport.close()
            return
        conn._upstream_ready()

    def _forget(self, conn: ProxyConnection) -> None:
        with contextlib.suppress(ValueError):
            self.connections.remove(conn)
