"""RFC 6120 §7 resource binding and RFC 6121 §8 session lookup.

Conflict policy (RFC 6120 §7.7.2.2): the new session wins; the old one is ended with a
``<conflict/>`` stream error.
"""

from __future__ import annotations

import secrets

from xmppd.errors import StreamError
from xmppd.jid import JID, JIDError
from xmppd.session import Session


class SessionManager:
    """Bound sessions of every local host, by full and bare JID."""

    __slots__ = ("_by_bare", "_by_full")

    def __init__(self) -> None:
        self._by_full: dict[JID, Session] = {}
        self._by_bare: dict[JID, dict[str, Session]] = {}

    def full_jid(self, session: Session, username: str, resource: str | None) -> JID:
        """The full JID `session` would bind: the resource prepared, or generated if absent.

        Raises:
            JIDError: the requested resource does not prepare (the client gets bad-request).
        """
        bare = JID(username, session.host.domain, None)
        if not resource:
            # RFC 6120 §7.6.2.1: server-generated resource, unique among this user's sessions.
            resource = secrets.token_hex(6)
        return bare.with_resource(resource)

    def bind(self, session: Session, username: str, resource: str | None) -> JID:
        """Bind `session` and return its full JID; a session bound to it is replaced (closed
        with <conflict/>); the connection ends such a session properly first (see
        `C2SConnection._bind`), this is the last resort for a race.

        Raises:
            JIDError: the requested resource does not prepare (the client gets bad-request).
        """
        full = self.full_jid(session, username, resource)
        bare = full.bare
        old = self._by_full.get(full)
        if old is not None and old is not session:
            self.unbind(old)
            old.close(StreamError("conflict", "Replaced by new connection"))
        self._by_full[full] = session
        self._by_bare.setdefault(bare, {})[full.resource or ""] = session
        session.jid = full
        session.username = username
        return full

    def unbind(self, session: Session) -> bool:
        """Remove a bound session; False if it was not (or no longer) bound."""
        full = session.jid
        if full is None or self._by_full.get(full) is not session:
            return False
        del self._by_full[full]
        JID.forget(full)
        bare = full.bare
        resources = self._by_bare.get(bare)
        if resources is not None:
            resources.pop(full.resource or "", None)
            if not resources:
                del self._by_bare[bare]
        return True

    def get(self, full: JID) -> Session | None:
        """The session bound to exactly `full`."""
        return self._by_full.get(full)

    def sessions(self, bare: JID) -> list[Session]:
        """All sessions of the account (connected, available or not)."""
        resources = self._by_bare.get(bare)
        return list(resources.values()) if resources else []

    def count(self, bare: JID) -> int:
        """How many sessions the account has bound."""
        resources = self._by_bare.get(bare)
        return len(resources) if resources else 0

    def has_sessions(self, bare: JID) -> bool:
        """Whether the account has any bound session."""
        return bare in self._by_bare

    def available(self, bare: JID) -> list[Session]:
        """Sessions that sent available presence (RFC 6121 §4.2)."""
        resources = self._by_bare.get(bare)
        return [s for s in resources.values() if s.available] if resources else []

    def all_sessions(self) -> list[Session]:
        """Every bound session."""
        return list(self._by_full.values())

    def __len__(self) -> int:
        return len(self._by_full)


__all__ = ["JIDError", "SessionManager"]
