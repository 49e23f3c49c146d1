"""XEP-0030: Service Discovery — disco#info and disco#items on the server and account JIDs.

Answers from what the loaded modules declared (the host's FeatureRegistry). Disco on a local
user's bare JID is answered by the server on the account's behalf (XEP-0030 §3 / XEP-0163):
to the account itself and to contacts with a from/both subscription (asked of the roster
module through ROSTER_QUERY).
"""

from __future__ import annotations

import copy

from lxml import etree

from xmppd import events as ev
from xmppd.errors import StanzaError
from xmppd.features import Identity, Scope
from xmppd.module_api import IqRequest, Module, Target, iq_handler
from xmppd.ns import NS_DISCO_INFO, NS_DISCO_ITEMS, XML_LANG


class Disco(Module):
    """Service discovery."""

    xeps = (30,)
    features = (NS_DISCO_INFO, NS_DISCO_ITEMS)
    account_features = (NS_DISCO_INFO, NS_DISCO_ITEMS)
    identities = (Identity("server", "im", "xmppd"),)
    host_types = ("local", "component")

    async def load(self) -> None:
        """Accounts are identified as registered accounts (XEP-0030 registry)."""
        self.ctx.add_identity(Identity("account", "registered"), Scope.ACCOUNT)

    @iq_handler("get", NS_DISCO_INFO, "query")
    async def host_info(self, request: IqRequest) -> etree._Element:
        """Identities and features of the server."""
        return self._info(request, Scope.HOST)

    @iq_handler("get", NS_DISCO_ITEMS, "query")
    async def host_items(self, request: IqRequest) -> etree._Element:
        """Items of the server: its service subdomains and what modules add."""
        if request.payload.get("node"):
            raise StanzaError("item-not-found")
        query = etree.Element(f"{{{NS_DISCO_ITEMS}}}query", nsmap={None: NS_DISCO_ITEMS})
        for item in self.ctx.host.features.items:
            el = etree.SubElement(query, f"{{{NS_DISCO_ITEMS}}}item", jid=item.jid)
            if item.name:
                el.set("name", item.name)
            if item.node:
                el.set("node", item.node)
        return query

    @iq_handler("get", NS_DISCO_INFO, "query", to=Target.ACCOUNT)
    async def account_info(self, request: IqRequest) -> etree._Element:
        """Identities and features of an account, answered by the server."""
        await self._check_account_access(request)
        return self._info(request, Scope.ACCOUNT)

    @iq_handler("get", NS_DISCO_ITEMS, "query", to=Target.ACCOUNT)
    async def account_items(self, request: IqRequest) -> etree._Element:
        """Items of an account (none until PEP nodes exist)."""
        await self._check_account_access(request)
        if request.payload.get("node"):
            raise StanzaError("item-not-found")
        return etree.Element(f"{{{NS_DISCO_ITEMS}}}query", nsmap={None: NS_DISCO_ITEMS})

    async def _check_account_access(self, request: IqRequest) -> None:
        """The account itself and contacts with a presence subscription to it may ask
        (XEP-0030 §3 with XEP-0163 §4); strangers learn nothing (RFC 6121 §8.5.1 spirit)."""
        if request.from_.bare == request.to.bare:
            return
        query = ev.RosterQuery(request.to.bare, request.from_.bare)
        await self.ctx.fire(ev.ROSTER_QUERY, query)
        if query.subscription(request.from_.bare) not in ("from", "both"):
            raise StanzaError("service-unavailable")

    def _info(self, request: IqRequest, scope: Scope) -> etree._Element:
        node = request.payload.get("node")
        if node:
            raise StanzaError("item-not-found")
        registry = self.ctx.host.features
        query = etree.Element(f"{{{NS_DISCO_INFO}}}query", nsmap={None: NS_DISCO_INFO})
        for identity in registry.identities(scope):
            el = etree.SubElement(
                query,
                f"{{{NS_DISCO_INFO}}}identity",
                category=identity.category,
                type=identity.type,
            )
            if identity.name:
                el.set("name", identity.name)
            if identity.lang:
                el.set(XML_LANG, identity.lang)
        for var in registry.features(scope):
            etree.SubElement(query, f"{{{NS_DISCO_INFO}}}feature", var=var)
        if scope is Scope.HOST:
            # XEP-0128 extended information (e.g. XEP-0157 contact addresses).
            query.extend(copy.deepcopy(form) for form in registry.extensions())
        return query
