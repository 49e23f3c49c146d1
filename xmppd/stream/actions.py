"""Typed outputs of the c2s state machine, executed by the connection (the only I/O code)."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from xmppd.errors import StreamError


@dataclass(frozen=True, slots=True)
class Send:
    """Write these bytes (already serialised)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class StartTls:
    """`<proceed/>` was queued: flush it in plaintext, then start the TLS handshake."""


@dataclass(frozen=True, slots=True)
class ResetParser:
    """The stream restarts (RFC 6120 §6.4.6): a new header is expected."""


@dataclass(frozen=True, slots=True)
class LookupCredentials:
    """Look up SCRAM credentials of `username` (raw; the connection preps it)."""

    username: str
    expensive: bool  # run the follow-up in a thread (PLAIN: PBKDF2)


@dataclass(frozen=True, slots=True)
class AuthFailed:
    """Record a failed authentication (throttling)."""

    username: str | None


@dataclass(frozen=True, slots=True)
class Authenticated:
    """SASL succeeded for the (prepared) `username`."""

    username: str


@dataclass(frozen=True, slots=True)
class BindResource:
    """Bind a resource (None: server-generated) and answer the bind IQ `request`."""

    resource: str | None
    request: etree._Element


@dataclass(frozen=True, slots=True)
class Deliver:
    """Route this stanza."""

    element: etree._Element


@dataclass(frozen=True, slots=True)
class Nonza:
    """A top-level non-stanza element for the host's nonza handlers (e.g. XEP-0198)."""

    element: etree._Element


@dataclass(frozen=True, slots=True)
class PreAuthIq:
    """An IQ get/set received over TLS before authentication, for the host's pre-auth registry
    to answer (e.g. XEP-0077 registration); never routed."""

    element: etree._Element


@dataclass(frozen=True, slots=True)
class Close:
    """Close the stream, after sending `error` if given."""

    error: StreamError | None = None


Action = (
    Send
    | StartTls
    | ResetParser
    | LookupCredentials
    | AuthFailed
    | Authenticated
    | (BindResource | Deliver | Nonza | PreAuthIq | Close)
)
