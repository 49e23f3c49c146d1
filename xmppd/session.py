"""One client session: its bound JID, availability and the connection it writes to.

A session can be detached from its connection and re-attached later (stream management
resumption): while detached, `send()` hands stanzas to the host's send filters, which may keep
them; the session object itself stays small (slots only, no per-session handler tables).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from lxml import etree

from xmppd.errors import StreamError
from xmppd.jid import JID

if TYPE_CHECKING:
    from xmppd.hosts import Host

logger = logging.getLogger(__name__)
_ids = itertools.count(1)


class SessionTransport(Protocol):
    """What a session needs from the connection carrying it."""

    def send_element(self, element: etree._Element) -> None:
        """Queue one top-level element for writing."""

    def send_bytes(self, data: bytes) -> None:
        """Queue one top-level element already serialized (e.g. kept for a replay)."""

    def close(self, error: StreamError | None = None) -> None:
        """Close the stream, with a stream error if given."""

    @property
    def closed(self) -> bool:
        """The stream is closed or closing: nothing sent now reaches the client."""

    def buffered(self) -> int:
        """Output bytes held for the client, not yet taken by the kernel."""

    def idle_time(self) -> float:
        """Seconds since the client last sent anything (to within a second or so)."""

    def adopt(self, session: Session) -> None:
        """Carry `session` from now on (stream management resumption on a new connection)."""

    async def quiesce(self, error: StreamError | None = None) -> None:
        """Stop reading, let the stanza being processed finish, then close the stream."""


class SessionLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes log lines with the session id and JID (Prosody-style per-session logger)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        session = cast(Session, self.extra["session"])  # type: ignore[index]  # set in __init__
        return f"[c2s{session.id} {session.jid or session.username or '-'}] {msg}", kwargs


# A send filter sees every stanza sent to a session and may return None to consume it.
SendFilter = Callable[["Session", etree._Element], "etree._Element | None"]


class Session:
    """A c2s session; `jid` is set once bound."""

    __slots__ = (
        "available",
        "conn",
        "ext",
        "host",
        "id",
        "interested",
        "jid",
        "on_handled",
        "peer",
        "presence",
        "priority",
        "username",
        "wire",
    )

    def __init__(self, host: Host, conn: SessionTransport | None) -> None:
        self.id = next(_ids)
        self.host = host
        self.conn = conn
        self.username: str | None = None
        self.jid: JID | None = None
        self.available = False  # RFC 6121 §4.2: sent initial presence and not yet unavailable
        self.interested = False  # RFC 6121 §2.2: requested the roster
        self.priority = 0
        self.presence: etree._Element | None = None  # last broadcast presence
        self.on_handled: Callable[[], None] | None = None  # stream management counts here
        self.peer = ""  # the client's address, for logs
        self.ext: dict[type, object] | None = None  # per-module state, keyed by module class
        self.wire: bytes | None = None  # see send(): the bytes of the element being filtered

    @property
    def log(self) -> SessionLog:
        """A logger that prefixes the session id and JID (made on use: no per-session cost)."""
        return SessionLog(logger, {"session": self})

    @property
    def full_jid(self) -> JID:
        """The bound JID; only valid after binding."""
        if self.jid is None:
            raise RuntimeError("session is not bound")
        return self.jid

    def send(self, element: etree._Element, data: bytes | None = None) -> None:
        """Send a top-level element to the client, through the host's send filters.

        `data`, when given, is `element` already serialized (a fan-out serializes once for
        every recipient): the filters see it as `self.wire`, and `element` is then shared
        with other recipients, so a filter that keeps it must keep a copy.
        """
        filters = self.host.send_filters
        if filters:
            self.wire = data
            try:
                for send_filter in filters:
                    filtered = send_filter(self, element)
                    if filtered is None:
                        return
                    if filtered is not element:
                        element = filtered
                        self.wire = None  # another element: the bytes no longer match
                data = self.wire  # None if a nested send (a filter's flush) used the slot
            finally:
                self.wire = None
        if self.conn is not None:
            if data is None:
                self.conn.send_element(element)
            else:
                self.conn.send_bytes(data)

    def attach(self, conn: SessionTransport) -> None:
        """Carry this session on another connection (stream management resumption)."""
        self.conn = conn

    @property
    def detached(self) -> bool:
        """Bound but without a connection (kept by a SESSION_LOST handler)."""
        return self.conn is None

    def close(self, error: StreamError | None = None) -> None:
        """End the session's stream (with a stream error if given)."""
        if self.conn is not None:
            self.conn.close(error)

    def state(self, key: type, default: object = None) -> object:
        """Per-module state stored on the session."""
        return default if self.ext is None else self.ext.get(key, default)

    def set_state(self, key: type, value: object) -> None:
        """Store per-module state on the session."""
        if self.ext is None:
            self.ext = {}
        self.ext[key] = value

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.jid}>"
