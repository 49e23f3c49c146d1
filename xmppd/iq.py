"""RFC 6120 §8.2.3 IQ semantics: dispatch get/set by payload namespace, build the reply.

Handlers return the result payload (or None for an empty result) or raise `StanzaError`; the
dispatcher builds the reply, so id, to and from are always right. Unhandled get/set is answered
`service-unavailable` (RFC 6120 §8.4); results and errors are never answered. Outgoing IQs the
server sends itself are tracked as futures with a timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, cast

from lxml import etree

from xmppd.errors import StanzaError
from xmppd.jid import JID
from xmppd.stanza import Stanza, error_reply, iq_result

if TYPE_CHECKING:
    from xmppd.session import Session

logger = logging.getLogger(__name__)


class Target(Enum):
    """Which address an IQ handler answers for."""

    HOST = "host"  # the server JID itself
    ACCOUNT = "account"  # a local account's bare JID, answered on the account's behalf


@dataclass(slots=True)
class IqRequest:
    """An IQ get/set addressed to a handler."""

    stanza: Stanza
    payload: etree._Element
    origin: Session | None

    @property
    def from_(self) -> JID:
        """The (server-stamped) requester."""
        return self.stanza.from_

    @property
    def to(self) -> JID:
        """The addressed JID (host or account bare JID)."""
        return self.stanza.to or self.stanza.from_.bare

    def own_account(self, what: str = "this") -> str:
        """The username, when an account asks about itself (its roster, block list, private
        data, ...); anyone else gets <forbidden/>.

        Raises:
            StanzaError: forbidden, naming `what`.
        """
        to = self.to
        if self.from_.bare != to.bare or to.local is None:
            raise StanzaError("forbidden", f"only the account itself may access {what}")
        return to.local


IqHandler = Callable[[IqRequest], Awaitable["etree._Element | None"]]


class IqDispatcher:
    """Per-host table (type, payload tag, target) -> handler; plus outgoing request futures."""

    __slots__ = ("_handlers", "_pending")

    def __init__(self) -> None:
        self._handlers: dict[tuple[str, str, Target], IqHandler] = {}
        self._pending: dict[str, asyncio.Future[etree._Element]] = {}

    def add(self, type_: str, tag: str, handler: IqHandler, target: Target) -> None:
        """Register a handler for `type_` ("get"/"set") and payload `tag` (Clark notation)."""
        if type_ not in ("get", "set"):
            raise ValueError(f"IQ handlers are for get/set, not {type_!r}")
        key = (type_, tag, target)
        if key in self._handlers:
            raise ValueError(f"an IQ handler for {key} is already registered")
        self._handlers[key] = handler

    def remove(self, type_: str, tag: str, target: Target) -> None:
        """Unregister (no error if absent)."""
        self._handlers.pop((type_, tag, target), None)

    def handles(self, tag: str, target: Target) -> bool:
        """Whether any handler exists for this payload (used to tell feature-not-implemented)."""
        return any(k[1] == tag and k[2] is target for k in self._handlers)

    async def dispatch(
        self, stanza: Stanza, origin: Session | None, target: Target
    ) -> etree._Element | None:
        """Handle an IQ; return the reply element to route, or None (handled, no reply)."""
        element = stanza.element
        type_ = stanza.type
        if type_ in ("result", "error"):
            future = self._pending.pop(self._pending_key(stanza.from_, element.get("id")), None)
            if future is not None and not future.done():
                future.set_result(element)
            return None
        payload = element[0]  # the router guarantees exactly one child for get/set
        # An IQ with no 'to' is handled on behalf of the sender's account (RFC 6120 §10.3.3);
        # the reply comes from that bare JID so that it can be routed back.
        responder = str(stanza.to) if stanza.to is not None else str(stanza.from_.bare)
        # Parsed elements have str tags (types-lxml's type is broader).
        handler = self._handlers.get((type_ or "", cast(str, payload.tag), target))
        if handler is None:
            return error_reply(element, StanzaError("service-unavailable"), from_=responder)
        try:
            result = await handler(IqRequest(stanza, payload, origin))
        except StanzaError as err:
            return error_reply(element, err, from_=responder)
        except Exception:
            logger.exception("IQ handler for %s failed", payload.tag)
            return error_reply(element, StanzaError("internal-server-error"), from_=responder)
        reply = iq_result(element, result)
        reply.set("from", responder)
        return reply

    def expect(self, to: JID, id_: str) -> asyncio.Future[etree._Element]:
        """Register a pending outgoing request; resolved by the matching result/error."""
        future: asyncio.Future[etree._Element] = asyncio.get_running_loop().create_future()
        self._pending[self._pending_key(to, id_)] = future
        return future

    def forget(self, to: JID, id_: str) -> None:
        """Drop a pending request (timeout)."""
        self._pending.pop(self._pending_key(to, id_), None)

    @staticmethod
    def _pending_key(peer: JID, id_: str | None) -> str:
        return f"{peer}\x00{id_}"
