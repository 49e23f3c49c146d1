"""XEP-0198: Stream Management — acks, resumption and hibernation, with acks that survive a crash.

Theory of operation (the counters and queue live in `queue.SmState`, one per session that sent
<enable/>):

- **Inbound.** The core calls `session.on_handled` once a client stanza is routed. The `h`
  this module reports (<a/>, <resumed/>, <failed/>) is only sent after
  `commit_barrier()`: every storage write issued while routing those stanzas (offline
  storage, the archive) is committed first. So an acknowledged stanza is delivered or on
  disk, even if the process is killed right after the ack leaves.
- **Outbound.** A send filter at `Priority.LOW` (after every filter that holds or drops
  stanzas) counts each stanza and keeps it until the client acknowledges it. The server asks
  for an ack (<r/>) every `ack_interval` stanzas and `ack_delay` seconds after an unacked
  stanza; an <r/> unanswered for `ack_timeout` seconds closes the connection as dead.
- **Hibernation.** When the connection of a resumable session is lost (not closed on
  purpose), SESSION_LOST keeps the session bound without a connection for `resume_timeout`
  seconds; stanzas for it are queued. <resume/> on a new connection re-attaches it, reports
  `h`, and replays exactly the unacknowledged stanzas in order. A <resume/> that arrives while
  the old connection still looks alive takes the session over: the old connection is closed
  once the stanza it is processing is counted.
- **The end.** When a session ends (timeout, clean close, error, replaced), what the client
  never acknowledged is not dropped: messages go to offline storage through MESSAGE_OFFLINE
  (delivered at once to another available resource, or at the next login); what cannot be
  stored is bounced to its sender with an error; IQ requests get service-unavailable.
- `max_unacked`: a client that never acknowledges is closed with <policy-violation/> and its
  queue handled as above, so memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import OrderedDict
from dataclasses import dataclass

from lxml import etree

from xeps.stream_management.queue import MOD, HandledCountTooHighError, SmState, parse_h
from xmppd import ns
from xmppd.errors import StanzaError, StreamError
from xmppd.events import (
    MESSAGE_OFFLINE,
    SESSION_ENDED,
    SESSION_LOST,
    SESSION_RESUMED,
    MessageOffline,
    Priority,
    SessionEnded,
    SessionEvent,
)
from xmppd.jid import JID, JIDError
from xmppd.module_api import Module, hook, nonza_handler
from xmppd.session import Session
from xmppd.stanza import IQ, MESSAGE, STANZA_TAGS, Stanza, error_reply
from xmppd.stream.serializer import serialize

NS_SM = "urn:xmpp:sm:3"
NS_CARBONS = "urn:xmpp:carbons:2"
NS_MAM = "urn:xmpp:mam:2"
_SKIP_ON_END = frozenset(
    {f"{{{NS_CARBONS}}}received", f"{{{NS_CARBONS}}}sent", f"{{{NS_MAM}}}result"}
)
EXPIRED_REMEMBERED = 10_000  # ids of ended sessions whose h is still reported in <failed/>
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def _sm(name: str, **attrs: str) -> etree._Element:
    element = etree.Element(f"{{{NS_SM}}}{name}", nsmap={None: NS_SM})
    for key, value in attrs.items():
        element.set(key, value)
    return element


def _failed(condition: str, h: int | None = None) -> etree._Element:
    failed = _sm("failed") if h is None else _sm("failed", h=str(h))
    etree.SubElement(failed, f"{{{ns.NS_STANZAS}}}{condition}", nsmap={None: ns.NS_STANZAS})
    return failed


class StreamManagement(Module):
    """XEP-0198 for c2s streams."""

    xeps = (198,)

    @dataclass(frozen=True)
    class Options:
        """Module options."""

        resume_timeout: int = 300  # seconds a lost session waits for <resume/>
        ack_interval: int = 5  # stanzas sent between the server's ack requests (0: never)
        ack_delay: float = 5.0  # seconds after an unacked stanza before asking anyway
        ack_timeout: float = 60.0  # seconds an <r/> may go unanswered before the link is dead
        max_unacked: int = 1000  # unacknowledged stanzas a client may hold

    async def load(self) -> None:
        """Register the feature, the counting filter and state."""
        self.ctx.add_stream_feature(self._feature)
        self.ctx.add_send_filter(self._outbound, priority=Priority.LOW)
        self._resumable: dict[str, Session] = {}
        # Ended sessions: id -> (username, h), so a late <resume/> still learns its h (§5).
        self._expired: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()

    async def unload(self) -> None:
        """Cancel the timers."""
        for session in list(self._resumable.values()):
            sm = self._state(session)
            if sm is not None:
                self._cancel_timer(sm)

    # --- helpers -------------------------------------------------------------------------
    @staticmethod
    def _state(session: Session) -> SmState | None:
        ext = session.ext
        if ext is None:
            return None
        state = ext.get(SmState)
        return state if isinstance(state, SmState) else None

    @staticmethod
    def _write(session: Session, element: etree._Element) -> None:
        """A nonza straight to the connection: not a stanza, never counted or held."""
        conn = session.conn
        if conn is not None and not conn.closed:
            conn.send_element(element)

    async def _durable_h(self, sm: SmState) -> int:
        """The inbound count, once the storage writes of the stanzas it covers are committed."""
        received = sm.received
        barrier = self.ctx.services.commit_barrier()
        if barrier is not None:
            await barrier
        return received

    @staticmethod
    def _cancel_timer(sm: SmState) -> None:
        if isinstance(sm.timer, asyncio.TimerHandle):
            sm.timer.cancel()
        sm.timer = None

    def _feature(self, session: Session) -> etree._Element:
        return _sm("sm")

    # --- enable --------------------------------------------------------------------------
    @nonza_handler(NS_SM, "enable")
    async def enable(self, session: Session, element: etree._Element) -> None:
        """§3: start counting; with resume='true', the session can be resumed (§5)."""
        if session.jid is None or self._state(session) is not None:
            # Before binding, or a second <enable/>: unexpected-request (§3).
            self._write(session, _failed("unexpected-request"))
            return
        resume = element.get("resume") in ("true", "1")
        sm = SmState(secrets.token_urlsafe(18), resumable=resume)
        session.set_state(SmState, sm)
        session.on_handled = sm.handled
        enabled = _sm("enabled", id=sm.id)
        if resume:
            timeout = self.options.resume_timeout
            wanted = parse_h(element.get("max"))  # §5: the client's preferred maximum
            if wanted is not None and wanted > 0:
                timeout = min(timeout, wanted)
            sm.expires = float(timeout)
            self._resumable[sm.id] = session
            enabled.set("resume", "true")
            enabled.set("max", str(timeout))
        self._write(session, enabled)

    # --- acks ----------------------------------------------------------------------------
    @nonza_handler(NS_SM, "r")
    async def request(self, session: Session, element: etree._Element) -> None:
        """§4: answer <r/> with the count of handled stanzas, once the storage writes they
        issued are committed. The answer waits; the stanzas after the <r/> do not (they are
        routed meanwhile, and only a later <a/> can count them)."""
        sm = self._state(session)
        if sm is None:
            session.close(StreamError("unsupported-stanza-type", "stream management is not on"))
            return
        received = sm.received
        barrier = self.ctx.services.commit_barrier()
        if barrier is None:
            self._send_a(session, sm, received)
            return
        conn = session.conn
        barrier.add_done_callback(lambda done: self._answer_later(session, conn, received, done))

    def _answer_later(
        self, session: Session, conn: object, h: int, barrier: asyncio.Future[None]
    ) -> None:
        """The writes are committed: acknowledge on the connection that asked. If one of
        them failed, the stanzas are not safe: no ack; the stream is closed so that the
        client sends them again on its next session."""
        sm = self._state(session)
        if session.conn is not conn or sm is None:
            return
        if barrier.cancelled() or barrier.exception() is not None:
            session.log.error("storage failed: the stanzas of this stream are not acknowledged")
            session.close(StreamError("internal-server-error", "storage failed"))
            return
        self._send_a(session, sm, h)

    @staticmethod
    def _send_a(session: Session, sm: SmState, h: int) -> None:
        """<a h/>, unless a later count was already sent (an answer that waited for a commit
        can come after one that did not have to): h never goes backwards. Written as bytes:
        mobile clients ask after every message, so this is on the hot path."""
        if (h - sm.answered) % MOD > MOD // 2:
            return
        sm.answered = h
        conn = session.conn
        if conn is not None and not conn.closed:
            conn.send_bytes(b"<a xmlns='urn:xmpp:sm:3' h='%d'/>" % h)

    @nonza_handler(NS_SM, "a")
    async def answer(self, session: Session, element: etree._Element) -> None:
        """§4: the client acknowledges stanzas; they leave the queue."""
        sm = self._state(session)
        if sm is None:
            session.close(StreamError("unsupported-stanza-type", "stream management is not on"))
            return
        h = parse_h(element.get("h"))
        if h is None:
            session.close(StreamError("bad-format", "h must be an unsigned 32-bit integer"))
            return
        try:
            sm.ack(h)
        except HandledCountTooHighError as exc:
            self._too_high(session, exc)
            return
        sm.requested = False
        self._cancel_timer(sm)
        if sm.unacked:
            sm.timer = self._loop.call_later(self.options.ack_delay, self._ask_later, session)

    def _too_high(self, session: Session, exc: HandledCountTooHighError) -> None:
        """§4: an ack for stanzas never sent ends the stream with undefined-condition."""
        app = _sm("handled-count-too-high", h=str(exc.h), **{"send-count": str(exc.sent)})
        session.close(StreamError("undefined-condition", "h is too high", app=app))

    def _ask(self, session: Session, sm: SmState) -> None:
        """Send <r/>, and treat the link as dead if it goes unanswered."""
        if self._state(session) is not sm or session.conn is None:
            return  # the session ended or lost its connection meanwhile
        self._cancel_timer(sm)
        sm.requested = True
        self._write(session, _sm("r"))
        sm.timer = self._loop.call_later(self.options.ack_timeout, self._ack_timed_out, session)

    def _ask_later(self, session: Session) -> None:
        sm = self._state(session)
        if sm is None:
            return
        sm.timer = None
        if sm.unacked and not sm.requested and session.conn is not None:
            self._ask(session, sm)

    def _ack_timed_out(self, session: Session) -> None:
        sm = self._state(session)
        if sm is None:
            return
        sm.timer = None
        if sm.requested and session.conn is not None:
            session.log.info("no ack for %.0f s: closing the connection", self.options.ack_timeout)
            # connection-timeout keeps the session resumable (hibernated).
            session.close(StreamError("connection-timeout", "no stream management ack"))

    def _outbound(self, session: Session, element: etree._Element) -> etree._Element | None:
        """Send filter: count and keep every stanza for a session with stream management."""
        ext = session.ext
        if ext is None:
            return element
        sm = ext.get(SmState)
        if not isinstance(sm, SmState) or element.tag not in STANZA_TAGS:
            return element
        data = session.wire or serialize(element)  # a fan-out's shared bytes serve as they are
        sm.push(data)
        conn = session.conn
        if len(sm.unacked) > self.options.max_unacked:
            self._overflow(session, sm)
            return None
        if conn is None or conn.closed:
            return None  # kept: replayed on resumption, or handled when the session ends
        conn.send_bytes(data)
        if not sm.requested:
            interval = self.options.ack_interval
            if interval and (sm.sent - sm.acked) % MOD >= interval:
                # At the end of this loop turn: a burst routed in one turn gets one <r/>, in
                # the same write as the stanzas.
                sm.requested = True
                self._loop.call_soon(self._ask, session, sm)
            elif sm.timer is None:
                sm.timer = self._loop.call_later(self.options.ack_delay, self._ask_later, session)
        return None

    def _overflow(self, session: Session, sm: SmState) -> None:
        """More than max_unacked stanzas wait for an ack: memory is bounded, so the session
        ends (its queue goes to offline storage); with a connection, <policy-violation/>."""
        if sm.ending:
            return
        sm.ending = True
        session.log.warning("%d stanzas unacknowledged: ending the session", len(sm.unacked))
        if session.conn is not None and not session.conn.closed:
            session.close(StreamError("policy-violation", "too many unacknowledged stanzas"))
        # Ended now, not when the connection is gone: a client that stops reading could
        # keep its closing connection (and this queue) alive indefinitely.
        self._cancel_timer(sm)
        self._resumable.pop(sm.id, None)
        self._expired[sm.id] = (session.username or "", sm.received)
        self._end_soon(session, "too many unacknowledged stanzas")

    def _end_soon(self, session: Session, reason: str) -> None:
        task = self._loop.create_task(self.ctx.end_session(session, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- hibernation and resumption ------------------------------------------------------
    @hook(SESSION_LOST)
    def hibernate(self, event: SessionEvent) -> bool:
        """§5: keep a resumable session (without connection) for its resumption timeout."""
        session = event.session
        sm = self._state(session)
        if sm is None or not sm.resumable or sm.id not in self._resumable:
            return False
        self._cancel_timer(sm)
        sm.requested = False
        sm.timer = self._loop.call_later(sm.expires, self._expire, session)
        session.log.debug("hibernated for %.0f s", sm.expires)
        return True

    def _expire(self, session: Session) -> None:
        sm = self._state(session)
        if sm is not None:
            sm.timer = None
        if session.conn is None and self.ctx.sessions.get(session.full_jid) is session:
            self._end_soon(session, "resumption timed out")

    @nonza_handler(NS_SM, "resume")
    async def resume(self, session: Session, element: etree._Element) -> None:
        """§5: take a hibernated (or still attached) session over on this connection."""
        if session.jid is not None:
            self._write(session, _failed("unexpected-request"))  # resume replaces binding
            return
        previd = element.get("previd") or ""
        h = parse_h(element.get("h"))
        if h is None or not previd:
            self._write(session, _failed("bad-request"))
            return
        old = self._resumable.get(previd)
        sm = self._state(old) if old is not None else None
        if (
            old is None
            or sm is None
            or old.username != session.username
            or old.host is not session.host
            or not self._alive(old, sm)
        ):
            await self._not_found(session, previd)
            return
        del self._resumable[previd]  # one resumption at a time
        try:
            self._cancel_timer(sm)
            sm.requested = False  # an <r/> unanswered on the old connection is void
            old_conn = old.conn
            if old_conn is not None:
                # §5: the old connection "looks alive" but the client says it is gone; what
                # it is processing is counted before h is reported.
                old.conn = None
                await old_conn.quiesce(StreamError("conflict", "resumed on another connection"))
            try:
                handled = await self._durable_h(sm)
            except Exception:  # storage failed: no h can be promised
                self._write(session, _failed("internal-server-error"))
                if self._alive(old, sm):
                    self._resumable[sm.id] = old
                    self.hibernate(SessionEvent(old))
                return
            if not self._alive(old, sm):  # ended or replaced meanwhile
                await self._not_found(session, previd)
                return
            conn = session.conn
            if conn is None or conn.closed:
                self._resumable[sm.id] = old
                self.hibernate(SessionEvent(old))  # this connection died meanwhile
                return
            try:
                sm.ack(h)
            except HandledCountTooHighError as exc:
                self._write(session, _failed("undefined-condition", handled))
                self._too_high(session, exc)
                self._resumable[sm.id] = old
                self.hibernate(SessionEvent(old))
                return
            conn.adopt(old)
            old.log.info("resumed from %s (%d stanzas to replay)", old.peer, len(sm.unacked))
            sm.answered = handled
            self._write(old, _sm("resumed", h=str(handled), previd=sm.id))
            for data in sm.unacked:  # exactly the unacknowledged ones, in order
                conn.send_bytes(data)
            if sm.unacked:
                self._ask(old, sm)
            await self.ctx.notify(SESSION_RESUMED, SessionEvent(old))
        finally:
            if self._alive(old, sm):
                self._resumable[sm.id] = old

    def _alive(self, session: Session, sm: SmState) -> bool:
        """Still bound, with this state, and not being ended."""
        return (
            not sm.ending
            and self._state(session) is sm
            and session.jid is not None
            and self.ctx.sessions.get(session.jid) is session
        )

    async def _not_found(self, session: Session, previd: str) -> None:
        """<failed><item-not-found/>, with the h of the ended session when still known (once
        the writes it counted are committed)."""
        expired = self._expired.get(previd)
        h_then = expired[1] if expired and expired[0] == session.username else None
        if h_then is not None:
            barrier = self.ctx.services.commit_barrier()
            if barrier is not None:
                with contextlib.suppress(Exception):
                    await barrier
        self._write(session, _failed("item-not-found", h_then))

    # --- the end -------------------------------------------------------------------------
    @hook(SESSION_ENDED, priority=Priority.HIGH)
    async def ended(self, event: SessionEnded) -> None:
        """§5 and the module docstring: nothing the client did not acknowledge is dropped."""
        session = event.session
        sm = self._state(session)
        if sm is None:
            return
        self._cancel_timer(sm)
        if self._resumable.get(sm.id) is session:
            del self._resumable[sm.id]
            self._expired[sm.id] = (session.username or "", sm.received)
            while len(self._expired) > EXPIRED_REMEMBERED:
                self._expired.popitem(last=False)
        session.on_handled = None
        unacked = []
        for data in sm.take_unacked():
            try:
                unacked.append(etree.fromstring(data, _PARSER))
            except etree.XMLSyntaxError:  # pragma: no cover - we serialized it
                self.ctx.log.error("an unacknowledged stanza could not be read back")
        event.unacked.extend(unacked)
        for stanza in unacked:
            await self._rehome(session, stanza)

    async def _rehome(self, session: Session, element: etree._Element) -> None:
        """An unacknowledged stanza of an ended session: store it, or tell its sender."""
        type_ = element.get("type")
        if type_ == "error" or (element.tag == IQ and type_ == "result"):
            return
        if element.tag == MESSAGE:
            if type_ in ("groupchat", "headline") or any(c.tag in _SKIP_ON_END for c in element):
                return  # not for offline storage (room history, carbons, archive results)
            try:
                sender = JID.parse(element.get("from") or "")
                to = JID.parse(element.get("to") or "")
            except JIDError:
                return
            user = session.username or ""
            stanza = Stanza(element, "message", type_, sender, to)
            try:
                if await self.ctx.fire(MESSAGE_OFFLINE, MessageOffline(stanza, user, to)):
                    return
            except StanzaError as err:
                await self._bounce(element, err)
                return
            await self._bounce(element, StanzaError("service-unavailable"))
        elif element.tag == IQ:
            await self._bounce(element, StanzaError("service-unavailable"))
        # Presence is state, not history: the next login gets current presence by probes.

    async def _bounce(self, element: etree._Element, err: StanzaError) -> None:
        if not element.get("from") or element.get("from") == self.ctx.host.domain:
            return
        try:
            await self.ctx.send(error_reply(element, err))
        except Exception:
            self.ctx.log.exception("bouncing an unacknowledged stanza failed")


__all__ = ["NS_SM", "StreamManagement"]
