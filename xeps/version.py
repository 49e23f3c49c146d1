"""XEP-0092: Software Version — name and version of the server (the OS only if configured)."""

from __future__ import annotations

import platform
from dataclasses import dataclass

from lxml import etree

from xmppd.module_api import IqRequest, Module, iq_handler

NS_VERSION = "jabber:iq:version"


class Version(Module):
    """Answers jabber:iq:version queries to the server JID."""

    xeps = (92,)
    features = (NS_VERSION,)

    @dataclass(frozen=True)
    class Options:
        """`[modules.version]`."""

        name: str = "xmppd"
        show_os: bool = False  # XEP-0092 §4: revealing the OS helps attackers; off by default

    options: Options

    @iq_handler("get", NS_VERSION, "query")
    async def version(self, request: IqRequest) -> etree._Element:
        """XEP-0092 §3."""
        query = etree.Element(f"{{{NS_VERSION}}}query", nsmap={None: NS_VERSION})
        etree.SubElement(query, f"{{{NS_VERSION}}}name").text = self.options.name
        etree.SubElement(
            query, f"{{{NS_VERSION}}}version"
        ).text = self.ctx.services.server_version()
        if self.options.show_os:
            etree.SubElement(
                query, f"{{{NS_VERSION}}}os"
            ).text = f"{platform.system()} {platform.release()}"
        return query
