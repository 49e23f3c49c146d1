"""XEP-0157: Contact Addresses for XMPP Services — admin, abuse, support… addresses in disco.

The configured addresses (URIs such as ``mailto:`` or ``xmpp:``) are published as an XEP-0128
extended-information form of FORM_TYPE ``http://jabber.org/network/serverinfo`` in the
server's disco#info. Only non-empty fields are sent; with no address configured nothing is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from xmppd.module_api import Module
from xmppd.ns import NS_DATA

FORM_TYPE = "http://jabber.org/network/serverinfo"
FIELDS = ("abuse", "admin", "feedback", "sales", "security", "status", "support")


def serverinfo_form(addresses: dict[str, list[str]]) -> etree._Element:
    """The XEP-0157 §3 data form for `addresses` (field name without "-addresses" → URIs)."""
    form = etree.Element(f"{{{NS_DATA}}}x", nsmap={None: NS_DATA}, type="result")
    hidden = etree.SubElement(form, f"{{{NS_DATA}}}field", var="FORM_TYPE", type="hidden")
    etree.SubElement(hidden, f"{{{NS_DATA}}}value").text = FORM_TYPE
    for name in FIELDS:
        uris = addresses.get(name) or []
        if not uris:
            continue
        el = etree.SubElement(form, f"{{{NS_DATA}}}field", var=f"{name}-addresses")
        el.set("type", "list-multi")
        for uri in uris:
            etree.SubElement(el, f"{{{NS_DATA}}}value").text = uri
    return form


class ContactInfo(Module):
    """Publishes the service's contact addresses."""

    name = "contact_info"
    xeps = (157,)
    depends = ("disco",)
    host_types = ("local",)

    @dataclass(frozen=True)
    class Options:
        """Lists of URIs per role, e.g. ``admin = ["mailto:admin@example.org"]``."""

        abuse: list[str] = field(default_factory=list)
        admin: list[str] = field(default_factory=list)
        feedback: list[str] = field(default_factory=list)
        sales: list[str] = field(default_factory=list)
        security: list[str] = field(default_factory=list)
        status: list[str] = field(default_factory=list)
        support: list[str] = field(default_factory=list)

    async def load(self) -> None:
        """Add the form to the host's disco#info extensions (if any address is set)."""
        addresses = {name: list(getattr(self.options, name)) for name in FIELDS}
        self._form: etree._Element | None = None
        if any(addresses.values()):
            self._form = serverinfo_form(addresses)
            self.ctx.host.features.add_extension(self._form)

    async def unload(self) -> None:
        """Withdraw the form."""
        if self._form is not None:
            self.ctx.host.features.remove_extension(self._form)
