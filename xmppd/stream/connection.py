"""The asyncio glue of a c2s connection: bytes → parser → C2SStream → actions, and back.

The only file (with listener.py) that touches sockets. TLS runs on `ssl.MemoryBIO` +
`ssl.SSLObject` driven from a plain protocol: CPython's asyncio TLS transport allocates a
256 KiB read buffer per connection, this costs a few KiB. Output is coalesced: everything sent
to a connection during one loop turn becomes one TLS record batch and one socket write.

Ordering (DESIGN §2.1 principle 7): the stanzas and nonzas of a connection are processed one at
a time, in order. When nothing is pending, an element is processed inline in `data_received`
by driving its coroutine directly; only when a handler really suspends (storage, a thread) does
a task take over the rest of the queue, and reading is paused when the backlog grows too large.
Handlers on this path therefore must not rely on `asyncio.current_task()` (no `asyncio.timeout`
on Python ≥ 3.12); `asyncio.wait_for` and plain awaits are fine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any, Protocol, cast

from lxml import etree

from xmppd.errors import StreamError
from xmppd.jid import JIDError, prep_localpart
from xmppd.sasl import ChannelBindings, StoredCredentials
from xmppd.session import Session
from xmppd.stanza import STANZA_TAGS
from xmppd.stream import actions as act
from xmppd.stream.actions import PreAuthIq
from xmppd.stream.c2s import C2SStream, State, is_session_iq
from xmppd.stream.parser import ElementReceived, ParseEvent, StreamParser, parser_limits
from xmppd.stream.serializer import STREAM_CLOSE, serialize

if TYPE_CHECKING:
    from xmppd.accounts import AccountStore
    from xmppd.config import Config
    from xmppd.hosts import Host
    from xmppd.router import Router
    from xmppd.session_manager import SessionManager
    from xmppd.throttle import AuthThrottle

logger = logging.getLogger(__name__)

_READ_SIZE = 262144
# TCP keepalive: the kernel probes a silent peer after KEEPIDLE s, every KEEPINTVL s, and
# drops the connection after KEEPCNT unanswered probes (a phone that vanished, a NAT that
# forgot the mapping), so the session is detached within minutes even with nothing to send.
_KEEPIDLE, _KEEPINTVL, _KEEPCNT = 120, 30, 4
_QUIESCE_TIMEOUT = 5.0  # seconds a resumed-away connection may take to finish its stanza
_CLOSE_GRACE = 10.0  # seconds a closed stream may take to drain its output before an abort


class ConnectionServices(Protocol):
    """What a connection needs from the server (the composition root implements it)."""

    config: Config
    hosts: dict[str, Host]
    local_domains: frozenset[str]
    router: Router
    sessions: SessionManager
    throttle: AuthThrottle
    connections: set[C2SConnection]
    # The last connection found over its output high-water mark while a stanza was routed;
    # the sender of that stanza takes it and pauses (back-pressure).
    congested: C2SConnection | None

    @property
    def accounts(self) -> AccountStore:
        """The account store."""

    def tls_context(self) -> ssl.SSLContext | None:
        """The server TLS context (SNI-aware), None when TLS is unavailable."""

    def end_point_binding(self, context: ssl.SSLContext) -> bytes | None:
        """RFC 5929 tls-server-end-point channel-binding data of `context`'s certificate."""

    async def session_bound(self, session: Session) -> None:
        """A session was bound (fires SESSION_BOUND)."""

    async def connection_lost(self, session: Session, reason: str, *, resumable: bool) -> None:
        """The connection of a bound session closed (SESSION_LOST, then maybe the end)."""

    async def session_ended(self, session: Session, reason: str) -> None:
        """End a bound session for good (unbind, unavailable, SESSION_ENDED)."""

    def connection_closed(self) -> None:
        """A connection is gone (memory bookkeeping after disconnect storms)."""


class _Resume:
    """Continue driving a coroutine that suspended while being driven inline."""

    def __init__(self, coro: Coroutine[Any, Any, None], yielded: object) -> None:
        self.coro = coro
        self.yielded = yielded

    def __await__(self) -> Generator[Any, None, None]:
        coro, yielded = self.coro, self.yielded
        while True:
            # Hand the awaited future to the running task exactly as the coroutine would have,
            # and pass whatever the task throws in (cancellation) on to the coroutine.
            try:
                yield yielded
            except BaseException as exc:
                try:
                    yielded = coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                yielded = coro.send(None)
            except StopIteration:
                return


class C2SConnection(asyncio.Protocol):
    """One client connection (plain with STARTTLS, or direct TLS per XEP-0368).

    Memory per idle connection is a product figure: slots only, the event queue exists only
    while events are pending, and an idle stream's parser hibernates (see `sweep`). No
    reference cycles survive `connection_lost`, so a closed connection is freed at once,
    without waiting for the cyclic GC.
    """

    __slots__ = (
        "_blocked",
        "_blocked_senders",
        "_busy",
        "_closed",
        "_congested",
        "_flush_scheduled",
        "_handshaking",
        "_in_bio",
        "_loop",
        "_out",
        "_out_bio",
        "_out_size",
        "_paused",
        "_queue",
        "_resumable",
        "_slow_timer",
        "_ssl",
        "_task",
        "_timer",
        "active",
        "active_at",
        "config",
        "direct_tls",
        "parser",
        "peer",
        "services",
        "session",
        "stream",
        "transport",
    )

    def __init__(self, services: ConnectionServices, *, direct_tls: bool) -> None:
        self.services = services
        self.config = services.config
        self.direct_tls = direct_tls
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.parser = StreamParser(parser_limits(self.config.limits, pre_auth=True))
        context = services.tls_context()
        self.stream = C2SStream(
            domains=services.local_domains,
            tls_available=context is not None,
            secure=False,
            require_encryption=self.config.require_encryption,
            allow_plain=self.config.auth.allow_plain,
            post_auth_features=self._post_auth_features,
            pre_auth_features=self._pre_auth_features,
        )
        self.session: Session | None = None
        self._ssl: ssl.SSLObject | None = None
        self._in_bio: ssl.MemoryBIO | None = None
        self._out_bio: ssl.MemoryBIO | None = None
        self._handshaking = False
        self._out: list[bytes] = []
        self._out_size = 0  # bytes in _out (written out once per loop turn)
        self._flush_scheduled = False
        self._queue: deque[ParseEvent] | None = None  # only while events are pending
        self.active = True  # saw input since the last idle sweep
        self.active_at = time.monotonic()  # the last sweep that found input (see idle_time)
        self._busy = False
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        self._closed = False
        # False once the stream was closed on purpose (by the client, or by us with a stream
        # error): its session then ends instead of being kept for resumption.
        self._resumable = True
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        # Back-pressure: _congested while our transport is over its high-water mark; senders
        # paused on our account wait in _blocked_senders; _blocked while we wait on another.
        self._congested = False
        self._blocked = False
        self._blocked_senders: list[C2SConnection] | None = None
        self._slow_timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        high = self.config.limits.output_high_water
        self.transport.set_write_buffer_limits(high=high, low=high // 4)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):  # Linux names below
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, _KEEPIDLE)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, _KEEPINTVL)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, _KEEPCNT)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else "?"
        self.services.connections.add(self)
        # Unauthenticated connections (TLS handshake included) are closed after a while.
        self._timer = self._loop.call_later(self.config.limits.auth_timeout, self._auth_timeout)
        if self.direct_tls:
            self._start_tls()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self.active = True
        if self._in_bio is not None:
            self._tls_received(data)
        else:
            self._feed(data)

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.services.connections.discard(self)
        self.services.connection_closed()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._out.clear()
        self._queue = None
        self.parser.release()
        self._release_senders()
        if self._slow_timer is not None:
            self._slow_timer.cancel()
            self._slow_timer = None
        self.transport = None  # the transport refers to us: break the cycle
        self.stream.post_auth_features = list  # a bound method of ours: break the cycle
        self.stream.pre_auth_features = None
        session = self.session
        if session is not None and session.conn is self:
            session.conn = None
            if session.jid is not None:
                reason = str(exc) if exc else "connection closed"
                self._loop.create_task(
                    self.services.connection_lost(session, reason, resumable=self._resumable)
                )

    # --- TLS ----------------------------------------------------------------------------
    def _start_tls(self) -> None:
        context = self.services.tls_context()
        if context is None:  # pragma: no cover - STARTTLS is only offered with a context
            self.close(StreamError("internal-server-error"))
            return
        self._in_bio = ssl.MemoryBIO()
        self._out_bio = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in_bio, self._out_bio, server_side=True)
        self._handshaking = True
        self.parser.reset()
        self._handshake()

    def _handshake(self) -> bool:
        """Advance the handshake; True once it is complete."""
        assert self._ssl is not None
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._schedule_flush()
            return False
        except (ssl.SSLError, OSError) as exc:
            logger.info("TLS handshake with %s failed: %s", self.peer, exc)
            self._abort()
            return False
        self._handshaking = False
        self.stream.tls_established(self._bindings())
        self._schedule_flush()  # handshake output, tickets and anything held back
        return True

    def _bindings(self) -> ChannelBindings:
        assert self._ssl is not None
        data: dict[str, bytes] = {}
        end_point = self.services.end_point_binding(self._ssl.context)
        if end_point is not None:
            data["tls-server-end-point"] = end_point
        if self._ssl.version() == "TLSv1.2":
            # RFC 9266: tls-unique is only sound before TLS 1.3.
            unique = self._ssl.get_channel_binding("tls-unique")
            if unique:
                data["tls-unique"] = unique
        return ChannelBindings(data, plus_offered=bool(data))

    def _tls_received(self, data: bytes) -> None:
        assert self._in_bio is not None
        assert self._ssl is not None
        self._in_bio.write(data)
        if self._handshaking and not self._handshake():
            return
        chunks = []
        try:
            while True:
                chunk = self._ssl.read(_READ_SIZE)
                if not chunk:
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self._abort()
        except (ssl.SSLError, OSError) as exc:
            logger.info("TLS error from %s: %s", self.peer, exc)
            self._abort()
        if self._out_bio is not None and self._out_bio.pending:
            self._schedule_flush()  # e.g. a TLS 1.3 key update answer
        if chunks:
            self._feed(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def _write_tls_output(self) -> None:
        if self._out_bio is not None and self._out_bio.pending and self.transport is not None:
            self.transport.write(self._out_bio.read())

    # --- input --------------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        try:
            events = self.parser.feed(data)
        except StreamError as err:
            logger.warning("closing stream from %s: %s", self.peer, err)
            self._queue = None
            self.close(err)
            return
        if not events:
            return
        if self._queue is None:
            self._queue = deque(events)
        else:
            self._queue.extend(events)
        if not self._busy:
            self._drain()
        elif len(self._queue) > self.config.limits.max_backlog and not self._paused:
            # A handler is suspended and input keeps coming: stop reading (back-pressure).
            self._pause()

    def _drain(self) -> None:
        """Process queued events inline until one suspends; then a task takes over."""
        queue = self._queue
        while queue and not self._closed and not self._blocked:
            coro = self._process(queue.popleft())
            try:
                yielded = coro.send(None)
            except StopIteration:
                continue
            self._busy = True
            # Held so the task cannot be garbage-collected while it waits.
            self._task = self._loop.create_task(self._continue(coro, yielded))
            if len(queue) > self.config.limits.max_backlog and not self._paused:
                self._pause()
            return
        if not queue:
            self._queue = None

    async def _continue(self, coro: Coroutine[Any, Any, None], yielded: object) -> None:
        try:
            await _Resume(coro, yielded)
            queue = self._queue
            while queue and not self._closed and not self._blocked:
                await self._process(queue.popleft())
                if self._paused and len(queue) < self.config.limits.max_backlog // 2:
                    self._resume()
            if self._queue is queue and not queue:
                self._queue = None
        finally:
            self._busy = False
            self._task = None
            if self._paused:
                self._resume()
            if self._queue and not self._closed:
                self._drain()

    def _pause(self) -> None:
        if self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        self._paused = False
        if self.transport is not None and not self._closed and not self._blocked:
            self.transport.resume_reading()

    async def _process(self, event: ParseEvent) -> None:
        try:
            session = self.session
            if (
                session is not None
                and self.stream.state is State.ESTABLISHED
                and isinstance(event, ElementReceived)
            ):
                tag = event.element.tag
                if tag not in STANZA_TAGS:
                    # the parser yields elements only: their tags are str
                    handler = session.host.nonza_handlers.get(cast(str, tag))
                    if handler is not None:  # e.g. XEP-0198 <r/>: no detour through c2s
                        await handler(session, event.element)
                        return
                    await self._run(self.stream.receive(event))
                    return
                # Hot path: an established session's stanza goes straight to the router.
                if is_session_iq(event.element):
                    await self._run(self.stream.receive(event))  # answered by the stream
                else:
                    self.services.congested = None
                    await self.services.router.from_session(session, event.element)
                    self._take_congestion()
                # XEP-0198: counted once routed (the handler waits for storage commits
                # before acknowledging it).
                if session.on_handled is not None:
                    session.on_handled()
                return
            await self._run(self.stream.receive(event))
        except Exception:
            logger.exception("unexpected error on connection from %s", self.peer)
            self.close(StreamError("internal-server-error"))

    def _take_congestion(self) -> None:
        recipient, self.services.congested = self.services.congested, None
        if recipient is not None and recipient is not self:
            self._block_on(recipient)

    async def _run(self, actions: list[act.Action]) -> None:
        for action in actions:
            if self._closed:
                return
            if isinstance(action, act.Send):
                self._write(action.data)
            elif isinstance(action, act.Deliver):  # pragma: no cover - _process routes these
                session = self.session
                if session is not None:
                    await self.services.router.from_session(session, action.element)
            elif isinstance(action, PreAuthIq):
                await self._pre_auth_iq(action.element)
            elif isinstance(action, act.Nonza):
                await self._nonza(action.element)
            elif isinstance(action, act.StartTls):
                self._flush()
                self._start_tls()
            elif isinstance(action, act.ResetParser):
                self.parser.reset()
            elif isinstance(action, act.LookupCredentials):
                await self._run(await self._lookup(action))
            elif isinstance(action, act.AuthFailed):
                self.services.throttle.failed(self.peer, self._account(action.username))
            elif isinstance(action, act.Authenticated):
                self._authenticated(action.username)
            elif isinstance(action, act.BindResource):
                await self._bind(action)
            elif isinstance(action, act.Close):
                self.close(action.error)

    async def _lookup(self, action: act.LookupCredentials) -> list[act.Action]:
        throttle = self.services.throttle
        username: str | None
        try:
            username = prep_localpart(action.username)
        except JIDError:
            username = None
        delay = throttle.delay(self.peer, self._account(username))
        if delay:
            await asyncio.sleep(delay)
        creds: StoredCredentials | None = None
        if username is not None and self.stream.domain is not None:
            creds = await self.services.accounts.credentials(self.stream.domain, username)
        if action.expensive:
            return await asyncio.to_thread(self.stream.credentials, username, creds)
        return self.stream.credentials(username, creds)

    def _account(self, username: str | None) -> str | None:
        return f"{username}@{self.stream.domain}" if username else None

    def _authenticated(self, username: str) -> None:
        domain = self.stream.domain or ""
        self.session = Session(self.services.hosts[domain], self)
        self.session.username = username
        self.parser.limits = parser_limits(self.config.limits, pre_auth=False)
        self.stream.pre_auth_features = None  # nothing more is offered before authentication
        logger.debug("%s authenticated as %s@%s", self.peer, username, domain)

    async def _bind(self, action: act.BindResource) -> None:
        session = self.session
        if session is None or session.username is None:  # pragma: no cover - c2s order
            self.close(StreamError("not-authorized"))
            return
        sessions = self.services.sessions
        try:
            wanted = sessions.full_jid(session, session.username, action.resource)
        except JIDError:
            await self._run(self.stream.bind_failed(action.request, "bad-request", "modify"))
            return
        old = sessions.get(wanted)
        if old is not None and old is not session:
            # RFC 6120 §7.7.2.2: the new session replaces the old one, which ends first like
            # any other (its unavailable presence, its SESSION_ENDED), so that nothing of
            # its end can arrive after the new session's presence.
            old.close(StreamError("conflict", "Replaced by new connection"))
            await self.services.session_ended(old, "replaced by a new connection")
        jid = sessions.bind(session, session.username, wanted.resource)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # One info line per session (at its end, with the peer) keeps logging off the login
        # path's budget; the bind itself is debug.
        session.log.debug("bound from %s", self.peer)
        session.peer = self.peer
        await self._run(self.stream.bound(action.request, str(jid)))
        await self.services.session_bound(session)

    async def _nonza(self, element: etree._Element) -> None:
        session = self.session
        # The parser only yields elements, whose tags are str (types-lxml is broader).
        tag = cast(str, element.tag)
        handler = session.host.nonza_handlers.get(tag) if session else None
        if session is None or handler is None:
            self.close(StreamError("unsupported-stanza-type"))
            return
        await handler(session, element)

    def _pre_auth_features(self, domain: str) -> list[etree._Element]:
        host = self.services.hosts.get(domain)
        return host.pre_auth.stream_features() if host is not None else []

    async def _pre_auth_iq(self, element: etree._Element) -> None:
        """An IQ before authentication (XEP-0077): the host's pre-auth registry answers."""
        host = self.services.hosts.get(self.stream.domain or "")
        if host is None:  # pragma: no cover - the stream header named a served domain
            self.close(StreamError("host-unknown"))
            return
        reply = await host.pre_auth.dispatch(element, host.domain, self.peer)
        self._write(serialize(reply))

    def _post_auth_features(self) -> list[etree._Element]:
        session = self.session
        if session is None:
            return []
        out = []
        for provider in session.host.stream_features:
            feature = provider(session)
            if feature is not None:
                out.append(feature)
        return out

    def adopt(self, session: Session) -> None:
        """Carry `session` from now on (XEP-0198 resumption): it was bound on another
        connection, whose temporary authenticated session this one drops."""
        if self.session is not None and self.session is not session:
            self.session.conn = None
        self.session = session
        session.attach(self)
        session.peer = self.peer
        self.stream.state = State.ESTABLISHED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def quiesce(self, error: StreamError | None = None) -> None:
        """Stop reading and processing, wait (briefly) for the stanza being processed to
        finish, so a session resumed elsewhere counts it before it reports its `h`; then close
        (with `error`, e.g. <conflict/>)."""
        self._closed = True  # nothing more is read or processed
        self._queue = None
        task = self._task
        if task is not None and task is not asyncio.current_task():
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), _QUIESCE_TIMEOUT)
        self._closed = False  # so that close() still writes the stream end
        self._resumable = False
        self.close(error)

    def hibernate(self) -> bool:
        """Drop the parser of an idle established stream (re-made on the next byte)."""
        if self._busy or self._queue or self._closed or self.stream.state is not State.ESTABLISHED:
            return False
        return self.parser.hibernate()

    def _auth_timeout(self) -> None:
        self._timer = None
        if not self._closed and (self.session is None or self.session.jid is None):
            logger.info("closing unauthenticated connection from %s (timeout)", self.peer)
            if self._handshaking:
                self._abort()
            else:
                self.close(StreamError("connection-timeout", "authentication took too long"))

    # --- output -------------------------------------------------------------------------
    # --- back-pressure ------------------------------------------------------------------
    def pause_writing(self) -> None:
        """The transport's buffer passed the high-water mark: the client reads too slowly."""
        self._congested = True
        if self._slow_timer is None:
            self._slow_timer = self._loop.call_later(
                self.config.limits.slow_reader_timeout, self._slow_reader
            )

    def resume_writing(self) -> None:
        """The buffer drained below the low-water mark: let paused senders go on."""
        self._congested = False
        if self._slow_timer is not None:
            self._slow_timer.cancel()
            self._slow_timer = None
        self._release_senders()

    @property
    def blocked(self) -> bool:
        """Paused because a client it sends to reads too slowly."""
        return self._blocked

    @property
    def closed(self) -> bool:
        """Closed or closing: nothing sent now reaches the client."""
        return self._closed

    def idle_time(self) -> float:
        """Seconds without input from the client, to within one idle sweep."""
        return 0.0 if self.active else time.monotonic() - self.active_at

    def buffered(self) -> int:
        """Output bytes held for this client (not yet taken by the kernel)."""
        size = self._out_size
        if self._out_bio is not None:
            size += self._out_bio.pending
        if self.transport is not None:
            size += self.transport.get_write_buffer_size()
        return size

    def _slow_reader(self) -> None:
        self._slow_timer = None
        if self._congested and not self._closed:
            self._resumable = False
            logger.warning(
                "closing %s: it has not read its output for %.0f s (%d bytes waiting)",
                self.session.jid if self.session else self.peer,
                self.config.limits.slow_reader_timeout,
                self.buffered(),
            )
            self.close(StreamError("policy-violation", "not reading fast enough"))
            self._drop()  # its buffer will not drain: free it now

    def _block_on(self, recipient: C2SConnection) -> None:
        """Stop reading and processing until `recipient` drains (we flooded it)."""
        if self._blocked or recipient is self or recipient._closed:
            return
        self._blocked = True
        if self.transport is not None:
            self.transport.pause_reading()
        if recipient._blocked_senders is None:
            recipient._blocked_senders = []
        recipient._blocked_senders.append(self)

    def _unblock(self) -> None:
        if not self._blocked:
            return
        self._blocked = False
        if self._closed:
            return
        if self.transport is not None and not self._paused:
            self.transport.resume_reading()
        if self._queue and not self._busy:
            self._drain()

    def _release_senders(self) -> None:
        senders, self._blocked_senders = self._blocked_senders, None
        for sender in senders or ():
            sender._unblock()

    def send_element(self, element: etree._Element) -> None:
        """Queue one top-level element (SessionTransport)."""
        if not self._closed:
            self.send_bytes(serialize(element))

    def send_bytes(self, data: bytes) -> None:
        """Queue one serialized top-level element (SessionTransport)."""
        if self._closed:
            return
        self._write(data)
        # Congested: the transport paused us, or this loop turn alone already queued more than
        # the high-water mark (one turn can carry many reads from a fast sender).
        if self._congested or self._out_size > self.config.limits.output_high_water:
            if self.buffered() > self.config.limits.output_max:
                # Memory first: a client this far behind is dropped at once.
                logger.warning("closing %s: %d bytes of output waiting", self.peer, self.buffered())
                self._resumable = False
                self._drop()
                return
            self.services.congested = self

    def _write(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write everything queued this loop turn: one TLS write, one socket write."""
        self._flush_scheduled = False
        if self.transport is None:
            return
        if self._out and not self._handshaking:  # output waits until TLS is in place
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out.clear()
            self._out_size = 0
            if self._ssl is None:
                self.transport.write(data)
            else:
                try:
                    self._ssl.write(data)
                except (ssl.SSLError, OSError) as exc:
                    logger.info("TLS write to %s failed: %s", self.peer, exc)
                    self._abort()
                    return
        self._write_tls_output()
        if self._blocked_senders and not self._congested:
            # Senders paused because this turn's output was large: the transport took it.
            self._release_senders()

    def close(self, error: StreamError | None = None) -> None:
        """Close the stream: stream error (if any), closing tag, then the transport."""
        if self._closed or self.transport is None:
            return
        if error is None or error.condition != "connection-timeout":
            self._resumable = False  # closed on purpose: the session ends with the stream
        if error is not None:
            if not self.stream.header_sent and not self._handshaking:
                # RFC 6120 §4.9.1.1: an error during stream setup still follows our header.
                self._write(self.stream.header())
            self._write(error.to_bytes())
        self._write(STREAM_CLOSE)
        self._flush()
        self._closed = True
        if self._ssl is not None and not self._handshaking:
            with contextlib.suppress(ssl.SSLError, OSError):
                self._ssl.unwrap()
            self._write_tls_output()
        self.transport.close()
        # The transport closes once its buffer drained; a client that stops reading would
        # keep it (and its session) open for ever: abort after a grace period. The timer
        # takes the auth timer's slot; connection_lost cancels it, so a connection that
        # closes normally is freed at once (storms of closes must not linger 10 s).
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(_CLOSE_GRACE, self._abort_closing, self.transport)

    def _drop(self) -> None:
        """Abort and make the kernel discard what it still holds for this client (RST)."""
        if self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._abort()

    def _abort_closing(self, transport: asyncio.Transport) -> None:
        self._timer = None
        if self.transport is transport:  # connection_lost not seen yet
            logger.info("closing %s: its output did not drain, aborting", self.peer)
            transport.abort()

    def _abort(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.abort()
