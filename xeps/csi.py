"""XEP-0352: Client State Indication — hold what can wait while the client says it is inactive.

The server offers ``<csi xmlns='urn:xmpp:csi:0'/>`` after authentication (§4.1); a client sends
``<inactive/>`` and ``<active/>`` nonzas (§4.2), with no reply. Every stream starts active
(§5), also a stream resumed with XEP-0198 (§5.2). The optimisations are the server's choice
(§3.2); here:

While a session is inactive, a send filter holds stanzas that can wait:

- presence that only reports availability (no type, ``unavailable``) is coalesced: only the
  latest one per sender full JID is kept, in the position of that latest update (§3.2: "push
  the latest presence from each contact"); presence errors are held as they come;
- messages that need no attention at once: chat states, receipts and markers, PEP/headline
  notifications, MUC status updates, and any other message not listed below.

Urgent stanzas are never held: they flush everything held before them (so order is kept, RFC
6120 §10.1) and go out at once:

- every IQ (an IQ waits for an answer and would time out; the radio is woken anyway);
- subscription requests and answers (presence subscribe, subscribed, unsubscribe,
  unsubscribed), which the user acts on;
- messages of type error (the user's own message failed), and chat, normal and groupchat
  messages with a ``<body/>`` (headlines are announcements and notifications: they wait);
- a groupchat ``<subject/>`` (it completes a MUC join the client waits for);
- calls: XEP-0353 Jingle Message Initiation (propose, retract, accept, proceed, reject);
- invitations (XEP-0249 direct, XEP-0045 mediated);
- encrypted payloads with no body (XEP-0384 OMEMO with a payload, XEP-0373 OpenPGP,
  XEP-0380 explicit encryption): what they hide may be a message;
- carbon copies (XEP-0280) by the rules above applied to the message they carry.

Everything held is flushed, in order, on ``<active/>``, on an urgent stanza, once more than
``max_stanzas`` stanzas or ``max_bytes`` serialized bytes are held (the client then stays
inactive and holding starts again), when the session loses its connection (SESSION_LOST: held
stanzas go into the session, so stream management can keep them for resumption), when it ends
and when the module is unloaded. Held stanzas are re-sent through `Session.send` past this
filter only, so filters after it (stream management counts at Priority.LOW) see them.

Per-session cost: nothing while active (one dict lookup in the send filter, none at all while no
session is inactive); an inactive session holds one small object until it is active again.
CSI nonzas before resource binding are ignored: nothing is ever sent to an unbound session.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass

from lxml import etree

from xmppd.events import (
    SESSION_ENDED,
    SESSION_LOST,
    SESSION_RESUMED,
    Priority,
    SessionEnded,
    SessionEvent,
)
from xmppd.lib.hints import BODY, SUBJECT
from xmppd.module_api import Module, hook, nonza_handler
from xmppd.session import Session, SessionTransport
from xmppd.stanza import IQ, MESSAGE, PRESENCE

NS_CSI = "urn:xmpp:csi:0"
NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"
NS_JINGLE_MESSAGE = "urn:xmpp:jingle-message:0"
NS_CONFERENCE = "jabber:x:conference"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_OMEMO = "eu.siacs.conversations.axolotl"
NS_OPENPGP = "urn:xmpp:openpgp:0"
NS_EME = "urn:xmpp:eme:0"

_CARBON_TAGS = (f"{{{NS_CARBONS}}}received", f"{{{NS_CARBONS}}}sent")
_FORWARDED = f"{{{NS_FORWARD}}}forwarded"
_MUC_INVITE = f"{{{NS_MUC_USER}}}invite"
_OMEMO_PAYLOAD = f"{{{NS_OMEMO}}}payload"
_URGENT_NS = frozenset({NS_JINGLE_MESSAGE, NS_CONFERENCE, NS_OPENPGP, NS_EME})
_BODY_TYPES = frozenset({"chat", "normal", "groupchat"})
_SUBSCRIPTION_TYPES = frozenset({"subscribe", "subscribed", "unsubscribe", "unsubscribed"})


def _urgent_message(message: etree._Element, carbon: bool = True) -> bool:
    """Whether a message must reach an inactive client at once (see the module docstring)."""
    type_ = message.get("type") or "normal"
    if type_ == "error":
        return True
    for child in message:
        tag = child.tag
        if not isinstance(tag, str):
            continue  # comments cannot come from the parser; be safe anyway
        if tag == BODY:
            if type_ in _BODY_TYPES:
                return True
        elif tag == SUBJECT:
            if type_ == "groupchat":
                return True
        elif carbon and tag in _CARBON_TAGS:
            forwarded = child.find(_FORWARDED)
            inner = forwarded.find(MESSAGE) if forwarded is not None else None
            if inner is not None and _urgent_message(inner, carbon=False):
                return True
        else:
            namespace = etree.QName(tag).namespace
            if namespace in _URGENT_NS:
                return True
            if namespace == NS_MUC_USER and child.find(_MUC_INVITE) is not None:
                return True
            if namespace == NS_OMEMO and child.find(f".//{_OMEMO_PAYLOAD}") is not None:
                return True
    return False


class _Held:
    """What an inactive session holds: stanzas in order, and their total serialized size."""

    __slots__ = ("conn", "session", "size", "stanzas")

    def __init__(self, session: Session, conn: SessionTransport | None) -> None:
        self.session = session
        self.conn = conn  # the connection that said <inactive/> (a resumed stream is active)
        # Insertion-ordered: a coalesced presence is keyed by its sender's full JID (str) and
        # moved to the end when replaced; anything else gets a unique int key.
        self.stanzas: dict[str | int, tuple[etree._Element, int]] = {}
        self.size = 0


class ClientStateIndication(Module):
    """Holds and coalesces non-urgent traffic to inactive clients."""

    name = "csi"
    xeps = (352,)

    @dataclass(frozen=True)
    class Options:
        """Module options."""

        max_stanzas: int = 100  # held per inactive session before everything is flushed
        max_bytes: int = 65536  # serialized bytes held per session before everything is flushed

    options: Options

    async def load(self) -> None:
        """Offer the stream feature; install the send filter."""
        self._held: dict[int, _Held] = {}  # session id -> held stanzas (inactive sessions only)
        self._flushing: Session | None = None  # the session whose held stanzas are re-sent
        self._seq = 0
        self.ctx.add_stream_feature(
            lambda _session: etree.Element(f"{{{NS_CSI}}}csi", nsmap={None: NS_CSI})
        )
        # Before stream management (Priority.LOW), which counts what reaches the wire.
        self.ctx.add_send_filter(self._filter, priority=Priority.NORMAL)

    async def unload(self) -> None:
        """Nothing held may be lost: hand everything to its session."""
        for session_id in list(self._held):
            self._release(session_id)

    # --- nonzas --------------------------------------------------------------------------
    @nonza_handler(NS_CSI, "inactive")
    async def inactive(self, session: Session, element: etree._Element) -> None:
        """§4.2: the client is inactive (children and attributes, schema-invalid, are ignored)."""
        if session.jid is None or session.id in self._held:
            return  # not bound yet (nothing is ever sent to it), or inactive already
        self._held[session.id] = _Held(session, session.conn)

    @nonza_handler(NS_CSI, "active")
    async def active(self, session: Session, element: etree._Element) -> None:
        """§4.2, §5.1: active again; what was held goes out before anything the client sends
        after this nonza is processed (the nonza is handled in order, synchronously here)."""
        self._release(session.id)

    # --- session lifecycle ---------------------------------------------------------------
    @hook(SESSION_LOST, priority=Priority.FIRST)
    def lost(self, event: SessionEvent) -> bool:
        """The connection is gone: held stanzas go into the session (stream management may keep
        them for resumption); a resumed stream starts active (§5.2). Not consumed."""
        self._release(event.session.id)
        return False

    @hook(SESSION_RESUMED, priority=Priority.FIRST)
    async def resumed(self, event: SessionEvent) -> None:
        """Taken over by a new stream (XEP-0198), which starts active (§5.2): also when the
        old connection was still up and no SESSION_LOST came."""
        self._release(event.session.id)

    @hook(SESSION_ENDED, priority=Priority.FIRST)
    async def ended(self, event: SessionEnded) -> None:
        """The session is gone: nothing of it stays here."""
        self._release(event.session.id)

    # --- holding -------------------------------------------------------------------------
    def _filter(self, session: Session, element: etree._Element) -> etree._Element | None:
        """Send filter: hold what can wait while `session` is inactive."""
        if not self._held or session is self._flushing:
            return element
        held = self._held.get(session.id)
        if held is None:
            return element
        if session.conn is not held.conn:
            # Re-attached to another stream (XEP-0198 resumption): that stream is active.
            self._release(session.id)
            return element
        tag = element.tag
        key: str | int
        if tag == PRESENCE:
            type_ = element.get("type")
            if type_ in _SUBSCRIPTION_TYPES:
                self._release(session.id, keep=True)
                return element
            if type_ is None or type_ == "unavailable":
                key = element.get("from") or ""
                old = held.stanzas.pop(key, None)
                if old is not None:
                    held.size -= old[1]
            else:
                key = self._next_key()
        elif tag == MESSAGE:
            if _urgent_message(element):
                self._release(session.id, keep=True)
                return element
            key = self._next_key()
        elif tag == IQ:
            self._release(session.id, keep=True)
            return element
        else:
            return element  # not a stanza (e.g. a stream management nonza): not held
        data = session.wire
        if data is not None:
            element = deepcopy(element)  # shared with a fan-out's other recipients
        size = len(data if data is not None else etree.tostring(element, with_tail=False))
        held.stanzas[key] = (element, size)
        held.size += size
        if len(held.stanzas) > self.options.max_stanzas or held.size > self.options.max_bytes:
            self._release(session.id, keep=True)
        return None

    def _next_key(self) -> int:
        self._seq += 1
        return self._seq

    def _release(self, session_id: int, keep: bool = False) -> None:
        """Send everything held for a session, in order, past this filter only; with `keep`
        the session stays inactive, otherwise its state is dropped."""
        held = self._held.get(session_id) if keep else self._held.pop(session_id, None)
        if held is None or not held.stanzas:
            return
        stanzas, held.stanzas, held.size = held.stanzas, {}, 0
        session = held.session
        previous, self._flushing = self._flushing, session
        try:
            for element, _size in stanzas.values():
                session.send(element)
        finally:
            self._flushing = previous
