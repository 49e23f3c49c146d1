"""RFC 6120 §8: thin typed views over lxml stanza elements, builders and error replies."""

from __future__ import annotations

import copy
import secrets

from lxml import etree

from xmppd.errors import StanzaError
from xmppd.jid import JID
from xmppd.ns import NS_CLIENT

MESSAGE = f"{{{NS_CLIENT}}}message"
PRESENCE = f"{{{NS_CLIENT}}}presence"
IQ = f"{{{NS_CLIENT}}}iq"
STANZA_TAGS = {MESSAGE: "message", PRESENCE: "presence", IQ: "iq"}
_CLIENT_NSMAP = {None: NS_CLIENT}


class Stanza:
    """A routed stanza: the element plus what the router has already worked out.

    `from_` is always the server-stamped sender; `to` is the prepared recipient or None.
    """

    __slots__ = ("element", "from_", "kind", "to", "type")

    def __init__(
        self, element: etree._Element, kind: str, type_: str | None, from_: JID, to: JID | None
    ) -> None:
        self.element = element
        self.kind = kind  # "message" | "presence" | "iq"
        self.type = type_
        self.from_ = from_
        self.to = to

    @property
    def id(self) -> str | None:
        """The stanza's id attribute."""
        return self.element.get("id")

    def __repr__(self) -> str:
        return f"<Stanza {self.kind} type={self.type} from={self.from_} to={self.to}>"


def new_id() -> str:
    """A fresh random stanza id."""
    return secrets.token_hex(8)


def make(
    kind: str,
    *,
    to: JID | str | None = None,
    from_: JID | str | None = None,
    type_: str | None = None,
    id_: str | None = None,
) -> etree._Element:
    """Build an empty jabber:client stanza element."""
    el = etree.Element(f"{{{NS_CLIENT}}}{kind}", nsmap=_CLIENT_NSMAP)
    if type_ is not None:
        el.set("type", type_)
    if id_ is not None:
        el.set("id", id_)
    if from_ is not None:
        el.set("from", str(from_))
    if to is not None:
        el.set("to", str(to))
    return el


def iq_result(request: etree._Element, payload: etree._Element | None) -> etree._Element:
    """RFC 6120 §8.2.3: the result for an IQ request, addressed back to its sender."""
    reply = make(
        "iq", type_="result", id_=request.get("id"), to=request.get("from"), from_=request.get("to")
    )
    if payload is not None:
        reply.append(payload)
    return reply


def is_error_or_result(element: etree._Element) -> bool:
    """RFC 6120 §8.3.1: never reply with an error to an error, nor to an IQ result."""
    type_ = element.get("type")
    return type_ == "error" or (type_ == "result" and element.tag == IQ)


def error_reply(
    element: etree._Element, error: StanzaError, *, from_: str | None = None
) -> etree._Element:
    """RFC 6120 §8.3.1: the error reply to `element`, including the original payload.

    Addresses are swapped: the reply goes to the original sender, from the original recipient
    (or `from_`, e.g. the server when the recipient was implicit).
    """
    reply = copy.deepcopy(element)
    sender = element.get("from")
    recipient = from_ if from_ is not None else element.get("to")
    for attr in ("to", "from"):
        reply.attrib.pop(attr, None)
    if sender is not None:
        reply.set("to", sender)
    if recipient is not None:
        reply.set("from", recipient)
    reply.set("type", "error")
    # An IQ error carries the request payload at most once; drop any earlier <error/>.
    for old in reply.findall(f"{{{NS_CLIENT}}}error"):
        reply.remove(old)
    reply.append(error.to_element(NS_CLIENT))
    return reply
