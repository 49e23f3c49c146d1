"""A served domain: a local host (accounts live here), a service subdomain of one, or the
domain of an external component (XEP-0114), whose stanzas its connection carries.

Each host has its own event bus, IQ table, disco registry, stream features, nonza handlers and
pre-authentication registry (features and IQ handlers offered before login, e.g. XEP-0077);
modules register on exactly one host through their context.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from lxml import etree

from xmppd.events import EventBus
from xmppd.features import FeatureRegistry
from xmppd.iq import IqDispatcher
from xmppd.jid import JID
from xmppd.preauth import PreAuthRegistry

if TYPE_CHECKING:
    from xmppd.session import SendFilter, Session

# A stream feature provider returns the feature element to advertise to a session (after
# authentication), or None to advertise nothing for it.
StreamFeatureProvider = Callable[["Session"], "etree._Element | None"]
# A nonza handler gets top-level non-stanza elements of its tag (e.g. XEP-0198 <r/>).
NonzaHandler = Callable[["Session", etree._Element], Awaitable[None]]


class Host:
    """One served domain."""

    def __init__(self, domain: str, *, parent: Host | None = None, external: bool = False) -> None:
        self.domain = domain
        self.jid = JID(None, domain, None)
        self.parent = parent  # set for service subdomains such as conference.<host>
        self.external = external  # an external component's domain (XEP-0114): no modules
        self.bus = EventBus()
        self.iq = IqDispatcher()
        self.features = FeatureRegistry()
        self.stream_features: list[StreamFeatureProvider] = []
        self.nonza_handlers: dict[str, NonzaHandler] = {}
        self.pre_auth = PreAuthRegistry()
        self.send_filters: list[SendFilter] = []  # in priority order (see add_send_filter)
        self._send_filter_priority: dict[SendFilter, int] = {}
        self.modules: dict[str, object] = {}

    def add_send_filter(self, send_filter: SendFilter, priority: int) -> None:
        """Add a send filter; higher priority runs first, equal ones in the order added."""
        self._send_filter_priority[send_filter] = priority
        # Rebuilt, not changed in place: a send in progress keeps the list it started with.
        self.send_filters = sorted(
            [*self.send_filters, send_filter], key=lambda f: -self._send_filter_priority[f]
        )

    def remove_send_filter(self, send_filter: SendFilter) -> None:
        """Remove a send filter (no error if absent)."""
        self._send_filter_priority.pop(send_filter, None)
        self.send_filters = [f for f in self.send_filters if f != send_filter]

    @property
    def is_local(self) -> bool:
        """Whether accounts live on this host (not a service subdomain nor a component)."""
        return self.parent is None and not self.external

    def __repr__(self) -> str:
        return f"<Host {self.domain}>"
