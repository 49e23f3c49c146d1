"""RFC 6120 §4.7 and §11: stream headers and top-level elements as wire bytes.

`serialize` is `etree.tostring` with the options the wire needs (UTF-8 per §11.6, no XML
declaration, no tail text). Elements keep their own namespace declarations, so a stanza
``{jabber:client}message`` goes out as ``<message xmlns="jabber:client" ...>``: redundant
inside a jabber:client stream but harmless, and it keeps the bytes self-contained, so they
can also be stored and parsed again outside any stream. Elements from `StreamParser` carry
no stray declarations (such as ``xmlns:stream``); elements built in code should declare their
namespace as the default (``nsmap={None: ns}``), or lxml invents an ``ns0:`` prefix.
"""

from __future__ import annotations

import secrets

from lxml import etree

from xmppd.ns import NS_CLIENT, NS_STREAMS

STREAM_CLOSE: bytes = b"</stream:stream>"


def _attr(value: str) -> str:
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("'", "&apos;")
        .replace('"', "&quot;")
    )


def stream_header(
    *,
    from_: str | None,
    to: str | None,
    id_: str | None,
    version: str = "1.0",
    lang: str = "en",
    content_ns: str = NS_CLIENT,
) -> bytes:
    """Build the opening stream header (RFC 6120 §4.7), XML declaration included.

    Args:
        from_: the ``from`` attribute (the server's domain in a response header), or None.
        to: the ``to`` attribute, or None.
        id_: the stream id (RFC 6120 §4.7.3), or None.
        version: the ``version`` attribute.
        lang: the ``xml:lang`` attribute.
        content_ns: the content namespace, declared as the default namespace.

    Returns:
        ``<?xml version='1.0'?><stream:stream ...>`` with attribute values escaped.
    """
    parts = [
        "<?xml version='1.0'?><stream:stream xmlns='",
        _attr(content_ns),
        f"' xmlns:stream='{NS_STREAMS}'",
    ]
    for name, value in (("from", from_), ("to", to), ("id", id_)):
        if value is not None:
            parts.append(f" {name}='{_attr(value)}'")
    parts.append(f" version='{_attr(version)}' xml:lang='{_attr(lang)}'>")
    return "".join(parts).encode()


def serialize(element: etree._Element) -> bytes:
    """Serialize one top-level element (stanza or nonza) for the wire.

    Args:
        element: the element; its tail text, if any, is not written.

    Returns:
        UTF-8 bytes without an XML declaration, e.g. ``<message xmlns="jabber:client" ...>``.
    """
    return etree.tostring(element, encoding="utf-8", with_tail=False)


# Stands for the 'to' value while a shared stanza is serialized: private-use characters around
# a random nonce made per process, which no sender can guess (checked anyway: exactly once).
_TO_MARK = f"\ue000{secrets.token_hex(8)}\ue001"
_TO_MARK_BYTES = _TO_MARK.encode()
_ATTR_SPECIAL = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "\t": "&#9;",
        "\n": "&#10;",
        "\r": "&#13;",
    }
)


class SharedBytes:
    """One stanza serialized once for many recipients (e.g. a MUC broadcast): each copy's
    bytes are the shared bytes with that recipient's 'to' spliced in."""

    __slots__ = ("_head", "_tail")

    def __init__(self, head: bytes, tail: bytes) -> None:
        self._head = head
        self._tail = tail

    @classmethod
    def of(cls, element: etree._Element) -> SharedBytes | None:
        """Serialize `element` with a placeholder 'to' (its 'to' is left changed); None when
        the placeholder cannot be found exactly once (then serialize per recipient)."""
        element.set("to", _TO_MARK)
        data = serialize(element)
        if data.count(_TO_MARK_BYTES) != 1:
            return None
        head, _, tail = data.partition(_TO_MARK_BYTES)
        return cls(head, tail)

    def to(self, to: str) -> bytes:
        """The stanza's bytes addressed to `to` (escaped as an attribute value)."""
        return b"".join((self._head, to.translate(_ATTR_SPECIAL).encode(), self._tail))
