"""XEP-0280: Message Carbons — copy a user's chats to all of their carbons-enabled resources.

A resource opts in with ``<enable xmlns='urn:xmpp:carbons:2'/>`` (and out with <disable/>).
Eligible messages (§6: type chat, or normal with a <body/>; never errors, groupchat, messages
from MUC rooms or MUC private messages, messages with <private/> or the XEP-0334 <no-copy/>
hint) are copied:

- received (§7): a message delivered to some of the user's resources is forwarded, wrapped in
  ``<received><forwarded xmlns='urn:xmpp:forward:0'>``, to every other carbons-enabled
  available resource of the user; the copy carries the same XEP-0359 stanza id;
- sent (§8): a message a resource sends is forwarded, wrapped in <sent/>, to the user's other
  carbons-enabled available resources.

Copies always come from the user's bare JID (§11). They are made here and written straight to
the sessions, never routed, so a carbons wrapper that arrives through routing is forged: a
client sending one gets not-acceptable, and one in a stanza from anywhere else is removed.
"""

from __future__ import annotations

import copy

from lxml import etree

from xmppd.errors import StanzaError
from xmppd.events import MESSAGE_BARE, MESSAGE_FULL, PRE_MESSAGE, Priority, StanzaEvent
from xmppd.jid import JID
from xmppd.lib.hints import BODY, NO_COPY_TAG
from xmppd.module_api import IqRequest, Module, Target, hook, iq_handler
from xmppd.session import Session
from xmppd.stanza import make

NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
PRIVATE = f"{{{NS_CARBONS}}}private"
RECEIVED = f"{{{NS_CARBONS}}}received"
SENT = f"{{{NS_CARBONS}}}sent"

# After XEP-0359 stamping (so copies carry the id), before core delivery.
CARBONS_PRIORITY = Priority.LOW
# Forged wrappers go before anything else acts on the message (stanza ids police at FIRST+100).
POLICE_PRIORITY = Priority.FIRST + 50


_WRAPPERS = (RECEIVED, SENT)
# Children that make a message ineligible (§6, §9, XEP-0334), checked in one pass.
_EXCLUDED = frozenset({PRIVATE, NO_COPY_TAG, RECEIVED, SENT})
_MUC_X = f"{{{NS_MUC_USER}}}x"


def is_carbon(element: etree._Element) -> bool:
    """Whether `element` has a carbons <received/> or <sent/> wrapper child."""
    return any(child.tag in _WRAPPERS for child in element)


def eligible(element: etree._Element, *, inbound: bool) -> bool:
    """§6 eligibility (the XEP's suggested rules), plus §9 <private/> and XEP-0334 <no-copy/>."""
    type_ = element.get("type") or "normal"
    if type_ not in ("chat", "normal"):
        return False
    tags = {child.tag for child in element}  # one pass: messages have a few children
    if type_ == "normal" and BODY not in tags:
        return False
    if not _EXCLUDED.isdisjoint(tags):
        return False
    # §6: not if sent by a MUC room, including MUC private messages (they carry muc#user).
    return not (inbound and _MUC_X in tags)


def wrap(kind: str, original: etree._Element, user: JID, to: JID) -> etree._Element:
    """A carbon copy: <message from=user to=to><kind><forwarded>original</forwarded></kind>."""
    outer = make("message", from_=user, to=to, type_=original.get("type"))
    wrapper = etree.SubElement(outer, f"{{{NS_CARBONS}}}{kind}", nsmap={None: NS_CARBONS})
    forwarded = etree.SubElement(wrapper, f"{{{NS_FORWARD}}}forwarded", nsmap={None: NS_FORWARD})
    forwarded.append(copy.deepcopy(original))
    return outer


class Carbons(Module):
    """Message Carbons."""

    xeps = (280, 297)
    features = (NS_CARBONS,)

    # --- enabling ------------------------------------------------------------------------
    @iq_handler("set", NS_CARBONS, "enable", to=Target.ACCOUNT)
    @iq_handler("set", NS_CARBONS, "enable")
    async def enable(self, request: IqRequest) -> None:
        """§4: enable carbons for the requesting resource (repeating it is no error, §10.1)."""
        self._session_of(request).set_state(Carbons, True)

    @iq_handler("set", NS_CARBONS, "disable", to=Target.ACCOUNT)
    @iq_handler("set", NS_CARBONS, "disable")
    async def disable(self, request: IqRequest) -> None:
        """§5: disable carbons for the requesting resource."""
        self._session_of(request).set_state(Carbons, False)

    def _session_of(self, request: IqRequest) -> Session:
        """The requesting session; only a client of this server for its own account (§4.1)."""
        session = request.origin
        if session is None or session.jid is None or request.to.domain != session.jid.domain:
            raise StanzaError("not-allowed", "carbons are for this server's own clients")
        if request.to.local is not None and request.to.bare != session.jid.bare:
            raise StanzaError("not-allowed", "carbons are enabled by the account's own clients")
        return session

    def _any_enabled(self, user: JID) -> bool:
        """Whether any resource of `user` enabled carbons (most messages stop here)."""
        return any(self.enabled(s) for s in self.ctx.sessions.sessions(user))

    @staticmethod
    def enabled(session: Session) -> bool:
        """Whether `session` has enabled carbons."""
        return session.state(Carbons, False) is True

    def _copies_to(self, user: JID, skip: set[Session]) -> list[Session]:
        return [
            s
            for s in self.ctx.sessions.available(user)
            if s not in skip and self.enabled(s) and s.jid is not None
        ]

    # --- sent ----------------------------------------------------------------------------
    @hook(PRE_MESSAGE, priority=POLICE_PRIORITY)
    def refuse_forged(self, event: StanzaEvent) -> bool:
        """§11: a client never sends a carbon copy; only this server makes them."""
        if is_carbon(event.stanza.element):
            raise StanzaError("not-acceptable", "carbon copies are made by the server")
        return False

    @hook(PRE_MESSAGE, priority=CARBONS_PRIORITY)
    def sent(self, event: StanzaEvent) -> bool:
        """§8: copy what a resource sends to the user's other carbons-enabled resources."""
        session = event.origin
        if session is None or session.jid is None:
            return False
        user = session.jid.bare
        if event.to.bare == user:
            return False  # to the user's own account: the received side copies it
        others = self._copies_to(user, {session})
        element = event.stanza.element
        if not others or not eligible(element, inbound=False):
            return False
        for other in others:
            assert other.jid is not None
            other.send(wrap("sent", element, user, other.jid))
        return False

    # --- received ------------------------------------------------------------------------
    @hook(MESSAGE_BARE, priority=POLICE_PRIORITY)
    @hook(MESSAGE_FULL, priority=POLICE_PRIORITY)
    def strip_forged(self, event: StanzaEvent) -> bool:
        """§11: a carbons wrapper that came through routing was not made here: remove it."""
        element = event.stanza.element
        for wrapper in [child for child in element if child.tag in _WRAPPERS]:
            element.remove(wrapper)
        return False

    @hook(MESSAGE_BARE, priority=CARBONS_PRIORITY)
    @hook(MESSAGE_FULL, priority=CARBONS_PRIORITY)
    def received(self, event: StanzaEvent) -> bool:
        """§7: forward to the carbons-enabled resources that RFC 6121 delivery skips."""
        element = event.stanza.element
        to = event.to
        if to.local is None:
            return False
        private = next(element.iterchildren(PRIVATE), None)
        if self._any_enabled(to.bare) and eligible(element, inbound=True):
            recipients = self._rfc6121_recipients(to, event.stanza.type or "normal")
            if recipients is not None:
                skip = set(recipients)
                if event.origin is not None:
                    skip.add(event.origin)  # §8: never a copy back to the sending resource
                user = to.bare
                for other in self._copies_to(user, skip):
                    assert other.jid is not None
                    other.send(wrap("received", element, user, other.jid))
        if private is not None:
            element.remove(private)  # §9: SHOULD be removed before delivery to the recipient
        return False

    def _rfc6121_recipients(self, to: JID, type_: str) -> list[Session] | None:
        """The sessions core delivery gives the message to (RFC 6121 §8.5.2, §8.5.3).

        None when the message will bounce (no copies then).
        """
        sessions = self.ctx.sessions
        if to.resource is not None:
            session = sessions.get(to)
            if session is not None:
                return [session]
            if type_ != "chat":
                return None  # §8.5.3.2.1: normal messages to a gone resource bounce
        available = [s for s in sessions.available(to.bare) if s.priority >= 0]
        if not available:
            return []  # stored offline (or bounced): every enabled resource may get a copy
        top = max(s.priority for s in available)
        return [s for s in available if s.priority == top]
