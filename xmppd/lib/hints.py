"""XEP-0334: Message Processing Hints — read hints and the payload classes they govern.

Also tells XEP-0085 standalone chat-state notifications apart from content messages, since
offline storage, carbons and archiving all need that distinction.
"""

from __future__ import annotations

from lxml import etree

from xmppd.ns import NS_CLIENT

NS_HINTS = "urn:xmpp:hints"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
NS_SID = "urn:xmpp:sid:0"
NS_DELAY = "urn:xmpp:delay"

NO_PERMANENT_STORE = "no-permanent-store"
NO_STORE = "no-store"
NO_COPY = "no-copy"
STORE = "store"
HINTS = frozenset({NO_PERMANENT_STORE, NO_STORE, NO_COPY, STORE})
NO_COPY_TAG = f"{{{NS_HINTS}}}{NO_COPY}"

BODY = f"{{{NS_CLIENT}}}body"
SUBJECT = f"{{{NS_CLIENT}}}subject"
THREAD = f"{{{NS_CLIENT}}}thread"
# Children that carry no message content of their own.
_METADATA_NS = frozenset({NS_HINTS, NS_SID, NS_DELAY, NS_CHATSTATES})


def hints(message: etree._Element) -> frozenset[str]:
    """The XEP-0334 hints present as direct children of `message`."""
    found = set()
    for child in message:
        if isinstance(child.tag, str):
            qname = etree.QName(child)
            if qname.namespace == NS_HINTS and qname.localname in HINTS:
                found.add(qname.localname)
    return frozenset(found)


def has_hint(message: etree._Element, hint: str) -> bool:
    """Whether `message` carries the XEP-0334 hint `hint` (e.g. `NO_COPY`)."""
    return message.find(f"{{{NS_HINTS}}}{hint}") is not None


def has_body(message: etree._Element) -> bool:
    """Whether `message` has a <body/> child (RFC 6121 §5.2.3)."""
    return message.find(BODY) is not None


def is_chat_state_only(message: etree._Element) -> bool:
    """XEP-0085 §5.5: a standalone notification — a chat state and no messaging content.

    A <thread/> may accompany it; hints, stanza ids and delay stamps are not content.
    """
    state = False
    for child in message:
        if not isinstance(child.tag, str):
            continue
        if child.tag == THREAD:
            continue
        namespace = etree.QName(child).namespace
        if namespace == NS_CHATSTATES:
            state = True
        elif namespace not in _METADATA_NS:
            return False
    return state


def has_content(message: etree._Element) -> bool:
    """Whether `message` carries anything besides chat states, threads and metadata."""
    for child in message:
        if not isinstance(child.tag, str) or child.tag == THREAD:
            continue
        if etree.QName(child).namespace not in _METADATA_NS:
            return True
    return False
