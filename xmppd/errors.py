"""RFC 6120 §4.9 stream errors and §8.3 stanza errors as exceptions.

Handlers raise `StanzaError`; the router or IQ dispatcher turns it into an error reply
(never in answer to an error or an IQ result, RFC 6120 §8.3.1). `StreamError` belongs to the
stream layer: the connection sends ``<stream:error/>`` and closes.
"""

from __future__ import annotations

from typing import Literal

from lxml import etree

from xmppd.ns import NS_CLIENT, NS_STANZAS, NS_STREAM_ERRORS, NS_STREAMS, XML_LANG

ErrorType = Literal["auth", "cancel", "continue", "modify", "wait"]

# RFC 6120 §8.3.3: each defined condition with the error type the RFC lists for it.
STANZA_CONDITIONS: dict[str, ErrorType] = {
    "bad-request": "modify",
    "conflict": "cancel",
    "feature-not-implemented": "cancel",
    "forbidden": "auth",
    "gone": "cancel",
    "internal-server-error": "cancel",
    "item-not-found": "cancel",
    "jid-malformed": "modify",
    "not-acceptable": "modify",
    "not-allowed": "cancel",
    "not-authorized": "auth",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "redirect": "modify",
    "registration-required": "auth",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "subscription-required": "auth",
    "undefined-condition": "cancel",
    "unexpected-request": "wait",
}

# RFC 6120 §4.9.3
STREAM_CONDITIONS = frozenset(
    {
        "bad-format",
        "bad-namespace-prefix",
        "conflict",
        "connection-timeout",
        "host-gone",
        "host-unknown",
        "improper-addressing",
        "internal-server-error",
        "invalid-from",
        "invalid-namespace",
        "invalid-xml",
        "not-authorized",
        "not-well-formed",
        "policy-violation",
        "remote-connection-failed",
        "reset",
        "resource-constraint",
        "restricted-xml",
        "see-other-host",
        "system-shutdown",
        "undefined-condition",
        "unsupported-encoding",
        "unsupported-feature",
        "unsupported-stanza-type",
        "unsupported-version",
    }
)


class StanzaError(Exception):
    """A stanza-level error (RFC 6120 §8.3), turned into an error reply by the router."""

    def __init__(
        self,
        condition: str,
        text: str | None = None,
        *,
        type: ErrorType | None = None,
        by: str | None = None,
        app: etree._Element | None = None,
    ) -> None:
        if condition not in STANZA_CONDITIONS:
            raise ValueError(f"unknown stanza error condition {condition!r}")
        super().__init__(condition if text is None else f"{condition}: {text}")
        self.condition = condition
        self.text = text
        self.type: ErrorType = type or STANZA_CONDITIONS[condition]
        self.by = by
        self.app = app

    def to_element(self, ns: str = NS_CLIENT) -> etree._Element:
        """Build the ``<error/>`` child in the enclosing stanza's namespace `ns`."""
        err = etree.Element(f"{{{ns}}}error", type=self.type, nsmap={None: ns})
        if self.by:
            err.set("by", self.by)
        etree.SubElement(err, f"{{{NS_STANZAS}}}{self.condition}", nsmap={None: NS_STANZAS})
        if self.text:
            text = etree.SubElement(err, f"{{{NS_STANZAS}}}text", nsmap={None: NS_STANZAS})
            text.set(XML_LANG, "en")
            text.text = self.text
        if self.app is not None:
            err.append(self.app)
        return err


class StreamError(Exception):
    """A stream-level error (RFC 6120 §4.9): the stream is closed after sending it."""

    def __init__(
        self, condition: str, text: str | None = None, *, app: etree._Element | None = None
    ) -> None:
        if condition not in STREAM_CONDITIONS:
            raise ValueError(f"unknown stream error condition {condition!r}")
        super().__init__(condition if text is None else f"{condition}: {text}")
        self.condition = condition
        self.text = text
        self.app = app  # RFC 6120 §4.9.4: an application-specific condition element

    def to_element(self) -> etree._Element:
        """Build ``<stream:error/>``."""
        err = etree.Element(f"{{{NS_STREAMS}}}error", nsmap={"stream": NS_STREAMS})
        etree.SubElement(
            err, f"{{{NS_STREAM_ERRORS}}}{self.condition}", nsmap={None: NS_STREAM_ERRORS}
        )
        if self.text:
            text = etree.SubElement(
                err, f"{{{NS_STREAM_ERRORS}}}text", nsmap={None: NS_STREAM_ERRORS}
            )
            text.set(XML_LANG, "en")
            text.text = self.text
        if self.app is not None:
            err.append(self.app)
        return err

    def to_bytes(self) -> bytes:
        """Serialise as it goes on the wire inside an open stream (prefix ``stream:``)."""
        return etree.tostring(self.to_element())
