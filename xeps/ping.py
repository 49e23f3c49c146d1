"""XEP-0199: XMPP Ping — answers pings, and pings clients whose streams have gone silent.

The server answers pings to itself and, on the account's behalf, to its accounts' bare JIDs
(§4.2 client-to-server). It also pings its clients (§4.1 server-to-client), as Prosody's
mod_ping/mod_smacks keepalives and ejabberd's mod_ping do: a session whose client has sent
nothing for ``ping_interval`` seconds gets ``<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>``
from the host; any answer (a result, or an error such as service-unavailable from a client
without ping support, §4.1) proves the stream alive. With no answer within ``ping_timeout`` the
connection is closed with the stream error ``<connection-timeout/>`` (RFC 6120 §4.9.3.4): the
connection, not the session, so stream management can keep the session for resumption.

Cost: no task per session. A timer scans the host's bound sessions every few seconds; a
session has at most one ping outstanding, tracked by one future (resolved by the IQ dispatcher
when the answer is routed) and checked for its deadline by the next scans. Each scan sends at
most about twice the share of one interval (sessions * scan period / interval, at least
`MIN_BATCH`), so thousands of streams that fell silent together are pinged spread over about
half an interval, not at one instant. Sessions without a connection (hibernated by stream
management) are not pinged.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from lxml import etree

from xmppd.config import ConfigError
from xmppd.errors import StreamError
from xmppd.events import SESSION_ENDED, SessionEnded
from xmppd.jid import JID
from xmppd.module_api import IqRequest, Module, Target, hook, iq_handler
from xmppd.session import Session, SessionTransport
from xmppd.stanza import make, new_id

NS_PING = "urn:xmpp:ping"
MIN_SCAN_PERIOD = 0.05  # seconds between scans, at least (short settings in tests)
MAX_SCAN_PERIOD = 5.0  # ... and at most: a ping goes out at most this late
MIN_BATCH = 50  # pings a scan may send, at least


@dataclass(slots=True)
class _Ping:
    """One outstanding server-to-client ping."""

    session: Session
    conn: SessionTransport  # the connection pinged (a resumed session has another one)
    to: JID
    id: str
    future: asyncio.Future[etree._Element]
    deadline: float


class Ping(Module):
    """Answers <ping/> with an empty result; pings silent clients."""

    xeps = (199,)
    features = (NS_PING,)
    account_features = (NS_PING,)
    host_types = ("local", "component")

    @dataclass(frozen=True)
    class Options:
        """Module options."""

        ping_interval: float = 300.0  # seconds of client silence before a ping; 0 disables
        ping_timeout: float = 60.0  # seconds to wait for an answer before closing the stream

    options: Options

    async def load(self) -> None:
        """Start the scan of silent sessions (local hosts only: sessions live there)."""
        self._pending: dict[int, _Ping] = {}  # session id -> its outstanding ping
        interval, timeout = self.options.ping_interval, self.options.ping_timeout
        if interval < 0 or timeout <= 0:
            raise ConfigError(
                f"modules.{self.ctx.name}: ping_interval must be >= 0 and ping_timeout > 0"
            )
        self.period = min(MAX_SCAN_PERIOD, max(MIN_SCAN_PERIOD, min(interval, timeout) / 4))
        if interval > 0 and self.ctx.host.is_local:
            self.ctx.every(self.period, self.scan)

    async def unload(self) -> None:
        """Forget every outstanding ping."""
        for session_id in list(self._pending):
            self._drop(session_id)

    # --- answering -----------------------------------------------------------------------
    @iq_handler("get", NS_PING, "ping")
    async def ping(self, request: IqRequest) -> None:
        """XEP-0199 §4.2: client-to-server ping."""
        return None

    @iq_handler("get", NS_PING, "ping", to=Target.ACCOUNT)
    async def ping_account(self, request: IqRequest) -> None:
        """A ping to a bare JID is answered by the server on the account's behalf."""
        return None

    # --- pinging silent clients ----------------------------------------------------------
    async def scan(self, now: float | None = None) -> None:
        """Close the connections whose ping went unanswered; ping newly silent sessions.

        Args:
            now: the monotonic time to judge deadlines by (tests pass a later one).
        """
        interval = self.options.ping_interval
        if interval <= 0:
            return
        now = time.monotonic() if now is None else now
        for session_id, ping in list(self._pending.items()):
            session = ping.session
            if ping.future.done():
                del self._pending[session_id]  # answered (its callback may not have run yet)
            elif session.conn is not ping.conn:
                self._drop(session_id)  # hibernated, or resumed on another stream: moot
            elif now >= ping.deadline:
                self._drop(session_id)
                session.log.info(
                    "no answer to a ping within %.0f s: closing the connection",
                    self.options.ping_timeout,
                )
                # A connection-timeout close keeps the session resumable (stream management).
                session.close(StreamError("connection-timeout", "no answer to a ping"))
        host = self.ctx.host
        sessions = self.ctx.sessions.all_sessions()
        budget = max(MIN_BATCH, 2 * math.ceil(len(sessions) * self.period / interval))
        for session in sessions:
            if budget <= 0:
                break  # the rest are pinged by the next scans
            if session.host is not host or session.id in self._pending:
                continue
            conn = session.conn
            if conn is None or conn.closed or session.jid is None:
                continue
            if conn.idle_time() >= interval:
                self._ping(session, conn, session.jid, now)
                budget -= 1

    def _ping(self, session: Session, conn: SessionTransport, to: JID, now: float) -> None:
        host = self.ctx.host
        id_ = new_id()
        iq = make("iq", to=to, from_=host.domain, type_="get", id_=id_)
        etree.SubElement(iq, f"{{{NS_PING}}}ping", nsmap={None: NS_PING})
        # Resolved by the IQ dispatcher when the client's result or error is routed to us.
        future = host.iq.expect(to, id_)
        ping = _Ping(session, conn, to, id_, future, now + self.options.ping_timeout)
        self._pending[session.id] = ping
        future.add_done_callback(lambda _future: self._answered(ping))
        session.send(iq)

    def _answered(self, ping: _Ping) -> None:
        """Any answer, result or error, proves the client alive (§4.1)."""
        if self._pending.get(ping.session.id) is ping:
            del self._pending[ping.session.id]

    def _drop(self, session_id: int) -> None:
        ping = self._pending.pop(session_id, None)
        if ping is not None:
            self.ctx.host.iq.forget(ping.to, ping.id)
            ping.future.cancel()  # runs its callback (a no-op now) and lets go of it

    @hook(SESSION_ENDED)
    async def ended(self, event: SessionEnded) -> None:
        """Nothing of an ended session stays here."""
        self._drop(event.session.id)
