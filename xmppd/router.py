"""RFC 6120 §8, §10 stanza routing: validate, stamp 'from', prep 'to', fire the routing events.

Path of a stanza from a session: validation (§8.1, §8.2.3) → 'from' stamped with the session's
full JID (§8.1.2.1: a forged 'from' never survives) → PRE_* on the sender's host (carbons,
blocking) → the recipient host's event for the address form: *_HOST, *_BARE or *_FULL. Core
defaults (delivery.py) run last, at Priority.DEFAULT. Errors become replies (never to errors,
never to IQ results); an unexpected exception is logged and answered internal-server-error for
IQ get/set, and the session survives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, cast

from lxml import etree

from xmppd import events as ev
from xmppd.errors import StanzaError
from xmppd.jid import JID, JIDError
from xmppd.stanza import STANZA_TAGS, Stanza, error_reply, is_error_or_result

if TYPE_CHECKING:
    from xmppd.hosts import Host
    from xmppd.session import Session

logger = logging.getLogger(__name__)

IQ_TYPES = frozenset({"get", "set", "result", "error"})
PRESENCE_TYPES = frozenset(
    {
        None,
        "unavailable",
        "subscribe",
        "subscribed",
        "unsubscribe",
        "unsubscribed",
        "probe",
        "error",
    }
)
MESSAGE_TYPES = frozenset({None, "normal", "chat", "groupchat", "headline", "error"})

_PRE = {"message": ev.PRE_MESSAGE, "presence": ev.PRE_PRESENCE, "iq": ev.PRE_IQ}
# (kind, address form) -> routing event; forms: 0 host, 1 bare, 2 full
_ROUTE = {
    "message": (ev.MESSAGE_HOST, ev.MESSAGE_BARE, ev.MESSAGE_FULL),
    "presence": (ev.PRESENCE_HOST, ev.PRESENCE_BARE, ev.PRESENCE_FULL),
    "iq": (ev.IQ_HOST, ev.IQ_BARE, ev.IQ_FULL),
}


class Router:
    """Routes stanzas between sessions, hosts and (later) remote servers."""

    def __init__(self, hosts: Mapping[str, Host]) -> None:
        self.hosts = hosts
        # Set by the s2s layer when it exists; until then remote domains are unreachable.
        self.remote: Callable[[Stanza], None] | None = None

    async def from_session(self, session: Session, element: etree._Element) -> None:
        """Process one stanza received from a bound session, in order."""
        # The stream layer only hands over known stanza tags (str; types-lxml is broader).
        kind = STANZA_TAGS[cast(str, element.tag)]
        sender = session.full_jid
        element.set("from", str(sender))
        try:
            to = self._check(element, kind, element.get("type"))
        except StanzaError as err:
            await self._reply_error(element, err, session.host.domain)
            return
        type_ = element.get("type")  # read after _check, which normalises unknown message types
        stanza = Stanza(element, kind, type_, sender, to)
        try:
            event = ev.StanzaEvent(stanza, session, to or sender.bare)
            if await session.host.bus.chain(_PRE[kind], event):
                return
            if to is None and kind == "presence":
                # RFC 6121 §4.2, §4.4, §4.5: presence broadcast is the sender host's business.
                if not await session.host.bus.chain(ev.PRESENCE_BROADCAST, event):
                    logger.debug("unhandled presence broadcast from %s", sender)
                return
            # RFC 6120 §10.3: no 'to' means the sender's bare JID (the account) for message/iq.
            await self._dispatch(event)
        except StanzaError as err:
            await self._reply_error(element, err, str(to or sender.domain))
        except Exception:
            session.log.exception("failed routing %s", kind)
            await self._reply_error(
                element, StanzaError("internal-server-error"), str(to or sender.domain)
            )

    async def route(self, element: etree._Element) -> None:
        """Route a server-generated stanza; its 'from' must be set."""
        kind = STANZA_TAGS.get(cast(str, element.tag))  # element tags are str
        if kind is None:
            raise ValueError(f"not a stanza: {element.tag!r}")
        try:
            from_ = JID.parse(element.get("from") or "")
            to = JID.parse(element.get("to") or "")
        except JIDError:
            logger.warning("dropping server stanza with bad addresses: %s", etree.tostring(element))
            return
        await self._dispatch_unsent(Stanza(element, kind, element.get("type"), from_, to), to)

    async def from_component(self, element: etree._Element, from_: JID, to: JID) -> None:
        """Route a stanza from an authenticated external component (XEP-0114), in order.

        The component connection has already checked that 'from' is in its domain and that
        'to' is present and well-formed (RFC 6120 §4.9.3.7, §4.9.3.9): the rest is validated
        like a client's stanza (§8.1-8.2), then routed like a server-generated one (no PRE_*
        events: those belong to local senders).
        """
        kind = STANZA_TAGS[cast(str, element.tag)]  # the connection only passes stanza tags
        try:
            self._check(element, kind, element.get("type"))
        except StanzaError as err:
            await self._reply_error(element, err, str(to))
            return
        stanza = Stanza(element, kind, element.get("type"), from_, to)
        await self._dispatch_unsent(stanza, to, reply_on_crash=True)

    async def _dispatch_unsent(
        self, stanza: Stanza, to: JID, *, reply_on_crash: bool = False
    ) -> None:
        """Route a stanza no local session sent (server-generated, or from a component):
        stanza errors go back to its sender; an unexpected failure is logged, and answered
        internal-server-error when `reply_on_crash` (a component expects an answer)."""
        element = stanza.element
        try:
            await self._dispatch(ev.StanzaEvent(stanza, None, to))
        except StanzaError as err:
            await self._reply_error(element, err, str(to))
        except Exception:
            logger.exception("failed routing %s from %s", stanza.kind, stanza.from_)
            if reply_on_crash:
                await self._reply_error(element, StanzaError("internal-server-error"), str(to))

    async def _dispatch(self, event: ev.StanzaEvent) -> None:
        stanza = event.stanza
        to = event.to
        host = self.hosts.get(to.domain)
        if host is None:
            if self.remote is not None:
                self.remote(stanza)
                return
            raise StanzaError("remote-server-not-found")
        form = 0 if to.local is None else (2 if to.resource is not None else 1)
        if not await host.bus.chain(_ROUTE[stanza.kind][form], event):
            raise StanzaError("service-unavailable")

    @staticmethod
    def _check(element: etree._Element, kind: str, type_: str | None) -> JID | None:
        """RFC 6120 §8.1-8.2 validation; returns the prepared 'to' (None if absent)."""
        to_text = element.get("to")
        to = None
        if to_text is not None:
            try:
                to = JID.parse(to_text)
            except JIDError as exc:
                raise StanzaError("jid-malformed", str(exc)) from None
        if kind == "iq":
            if type_ not in IQ_TYPES or not element.get("id"):
                raise StanzaError("bad-request", "IQ needs an id and a valid type")
            # RFC 6120 §8.2.3: get/set carry exactly one payload child.
            if type_ in ("get", "set") and len(element) != 1:
                raise StanzaError("bad-request", "IQ get/set must have exactly one child")
        elif kind == "presence":
            if type_ not in PRESENCE_TYPES:
                raise StanzaError("bad-request", "unknown presence type")
        elif type_ not in MESSAGE_TYPES:
            # RFC 6121 §5.2.2: an unknown message type is treated as "normal".
            element.set("type", "normal")
        return to

    async def _reply_error(self, element: etree._Element, err: StanzaError, from_: str) -> None:
        """Send `err` back to the stanza's sender, unless the stanza was an error or a result.

        `from_` is the addressed entity (prepared), or the server when there was none or it
        was malformed.
        """
        if is_error_or_result(element):
            return
        await self.route(error_reply(element, err, from_=from_))
