"""What a host offers before authentication: stream features and IQ handlers (XEP-0077).

The c2s state machine knows nothing of registration: when a connection wires it up, it asks for
the pre-authentication features of the stream's domain (offered over TLS only) and hands IQ
get/set received before SASL to `PreAuthRegistry.dispatch`, which returns the reply to write.
Each `Host` owns one `PreAuthRegistry` (`host.pre_auth`); modules register through
`ModuleContext.add_pre_auth_feature` / `add_pre_auth_iq_handler`, which undo it on unload.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from lxml import etree

from xmppd.errors import StanzaError
from xmppd.ns import NS_CLIENT

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PreAuthRequest:
    """An IQ get/set from an unauthenticated (TLS-protected) stream."""

    element: etree._Element  # the <iq/>, exactly one payload child
    payload: etree._Element
    domain: str  # the stream's domain
    peer: str  # the client's IP address


# Returns the result payload (None: empty result) or raises StanzaError.
PreAuthHandler = Callable[[PreAuthRequest], Awaitable["etree._Element | None"]]
# Returns the stream feature to offer before authentication, or None.
PreAuthFeature = Callable[[], "etree._Element | None"]


class PreAuthRegistry:
    """Pre-authentication features and IQ handlers of one host."""

    __slots__ = ("features", "handlers")

    def __init__(self) -> None:
        self.features: list[PreAuthFeature] = []
        self.handlers: dict[tuple[str, str], PreAuthHandler] = {}  # (type, payload tag)

    def add_feature(self, provider: PreAuthFeature) -> None:
        """Offer the feature `provider` returns before authentication."""
        self.features.append(provider)

    def remove_feature(self, provider: PreAuthFeature) -> None:
        """Withdraw a feature provider (no error if it is not registered)."""
        if provider in self.features:
            self.features.remove(provider)

    def add_handler(self, type_: str, tag: str, handler: PreAuthHandler) -> None:
        """Answer pre-authentication IQs of `type_` whose payload is `tag` (Clark notation)."""
        if type_ not in ("get", "set"):
            raise ValueError(f"pre-auth IQ handlers are for get/set, not {type_!r}")
        if (type_, tag) in self.handlers:
            raise ValueError(f"pre-auth IQ {type_} {tag} already handled")
        self.handlers[(type_, tag)] = handler

    def remove_handler(self, type_: str, tag: str, handler: PreAuthHandler) -> None:
        """Withdraw `handler` (only if it is still the one registered for `type_`, `tag`)."""
        if self.handlers.get((type_, tag)) == handler:
            del self.handlers[(type_, tag)]

    def stream_features(self) -> list[etree._Element]:
        """The features to add to <stream:features/> before authentication."""
        out = []
        for provider in self.features:
            feature = provider()
            if feature is not None:
                out.append(feature)
        return out

    async def dispatch(self, element: etree._Element, domain: str, peer: str) -> etree._Element:
        """Answer one pre-authentication IQ get/set (service-unavailable when unhandled)."""
        payload = element[0]
        handler = self.handlers.get((element.get("type") or "", cast(str, payload.tag)))
        try:
            if handler is None:
                raise StanzaError("service-unavailable")
            result = await handler(PreAuthRequest(element, payload, domain, peer))
        except StanzaError as err:
            return _reply(element, "error", err.to_element(NS_CLIENT), payload)
        except Exception:
            logger.exception("pre-authentication handler for %s failed", payload.tag)
            internal = StanzaError("internal-server-error")
            return _reply(element, "error", internal.to_element(NS_CLIENT), payload)
        return _reply(element, "result", result)


def _reply(
    request: etree._Element,
    type_: str,
    child: etree._Element | None,
    echo: etree._Element | None = None,
) -> etree._Element:
    # No addresses: the client has no JID yet (XEP-0077 §3.1 examples).
    reply = etree.Element(f"{{{NS_CLIENT}}}iq", type=type_, nsmap={None: NS_CLIENT})
    if request.get("id") is not None:
        reply.set("id", request.get("id") or "")
    if echo is not None:
        reply.append(etree.fromstring(etree.tostring(echo)))
    if child is not None:
        reply.append(child)
    return reply
