"""XEP-0115: Entity Capabilities — the server's caps hash as a stream feature.

After authentication the server offers ``<c xmlns='http://jabber.org/protocol/caps'
hash='sha-1' node='…' ver='…'/>`` (§6.3), where ver is the §5 verification string of the host's
disco identities, features and extended-information forms. A disco#info query for
``node#ver`` is answered with that same information (§6.2), with the node echoed; it is
intercepted here because the disco module answers only node-less queries.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from lxml import etree

from xmppd import events as ev
from xmppd.events import Priority, StanzaEvent
from xmppd.features import FeatureRegistry, Identity, Scope
from xmppd.module_api import Module, hook
from xmppd.ns import NS_DATA, NS_DISCO_INFO, XML_LANG
from xmppd.session import Session
from xmppd.stanza import iq_result

NS_CAPS = "http://jabber.org/protocol/caps"
_INFO_QUERY = f"{{{NS_DISCO_INFO}}}query"
_FIELD = f"{{{NS_DATA}}}field"
_VALUE = f"{{{NS_DATA}}}value"


def _form_type(form: etree._Element) -> str:
    for field in form.iter(_FIELD):
        if field.get("var") == "FORM_TYPE":
            return field.findtext(_VALUE) or ""
    return ""


def verification_string(
    identities: list[Identity], features: list[str], forms: list[etree._Element]
) -> str:
    """XEP-0115 §5.1 steps 1-8 (the string before hashing)."""
    out: list[str] = []
    keys = sorted(f"{i.category}/{i.type}/{i.lang or ''}/{i.name or ''}" for i in identities)
    out.extend(f"{key}<" for key in keys)
    out.extend(f"{var}<" for var in sorted(set(features)))
    for form in sorted(forms, key=_form_type):
        out.append(f"{_form_type(form)}<")
        fields = [f for f in form.iter(_FIELD) if f.get("var") not in (None, "FORM_TYPE")]
        for field in sorted(fields, key=lambda f: f.get("var") or ""):
            out.append(f"{field.get('var')}<")
            out.extend(f"{v}<" for v in sorted(v.text or "" for v in field.iter(_VALUE)))
    return "".join(out)


def verification_hash(
    identities: list[Identity], features: list[str], forms: list[etree._Element]
) -> str:
    """§5.1 step 9-10: base64 of the SHA-1 of the verification string."""
    text = verification_string(identities, features, forms)
    digest = hashlib.sha1(text.encode(), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def info_query(registry: FeatureRegistry, node: str | None = None) -> etree._Element:
    """A disco#info <query/> with the host's identities, features and extension forms."""
    query = etree.Element(_INFO_QUERY, nsmap={None: NS_DISCO_INFO})
    if node:
        query.set("node", node)
    for identity in registry.identities(Scope.HOST):
        el = etree.SubElement(
            query, f"{{{NS_DISCO_INFO}}}identity", category=identity.category, type=identity.type
        )
        if identity.name:
            el.set("name", identity.name)
        if identity.lang:
            el.set(XML_LANG, identity.lang)
    for var in registry.features(Scope.HOST):
        etree.SubElement(query, f"{{{NS_DISCO_INFO}}}feature", var=var)
    for form in registry.extensions():
        query.append(_copy(form))
    return query


def _copy(element: etree._Element) -> etree._Element:
    return etree.fromstring(etree.tostring(element))


class Caps(Module):
    """Entity capabilities of the server."""

    xeps = (115,)
    features = (NS_CAPS,)
    depends = ("disco",)
    host_types = ("local",)

    @dataclass(frozen=True)
    class Options:
        """`node`: the URI identifying this server software (XEP-0115 §4)."""

        node: str = "https://xmppd.invalid/caps"

    async def load(self) -> None:
        """Offer the stream feature after authentication."""
        self._cache: tuple[tuple[object, ...], str] | None = None
        self.ctx.add_stream_feature(self._feature)

    def ver(self) -> str:
        """The current verification hash (recomputed only when the disco data changed)."""
        registry = self.ctx.host.features
        identities = registry.identities(Scope.HOST)
        features = registry.features(Scope.HOST)
        forms = registry.extensions()
        key = (tuple(identities), tuple(features), tuple(etree.tostring(f) for f in forms))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, verification_hash(identities, features, forms))
        return self._cache[1]

    def _feature(self, session: Session) -> etree._Element:
        return etree.Element(
            f"{{{NS_CAPS}}}c",
            nsmap={None: NS_CAPS},
            hash="sha-1",
            node=self.options.node,
            ver=self.ver(),
        )

    @hook(ev.IQ_HOST, priority=Priority.HIGH)
    async def node_info(self, event: StanzaEvent) -> bool:
        """§6.2: disco#info for node#ver is the host's own info."""
        stanza = event.stanza
        element = stanza.element
        if stanza.type != "get" or len(element) != 1 or element[0].tag != _INFO_QUERY:
            return False
        node = element[0].get("node")
        if not node or node != f"{self.options.node}#{self.ver()}":
            return False
        reply = iq_result(element, info_query(self.ctx.host.features, node))
        await self.ctx.services.route(reply)
        return True
