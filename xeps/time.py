"""XEP-0202: Entity Time — the server's UTC time and offset."""

from __future__ import annotations

from datetime import UTC, datetime

from lxml import etree

from xmppd.module_api import IqRequest, Module, iq_handler

NS_TIME = "urn:xmpp:time"


class EntityTime(Module):
    """Answers urn:xmpp:time queries to the server JID."""

    name = "time"
    xeps = (202, 82)

    features = (NS_TIME,)

    @iq_handler("get", NS_TIME, "time")
    async def time(self, request: IqRequest) -> etree._Element:
        """XEP-0202 §3: <tzo/> and <utc/> (XEP-0082 profiles); the server reports UTC."""
        now = datetime.now(UTC)
        el = etree.Element(f"{{{NS_TIME}}}time", nsmap={None: NS_TIME})
        etree.SubElement(el, f"{{{NS_TIME}}}tzo").text = "+00:00"
        etree.SubElement(el, f"{{{NS_TIME}}}utc").text = (
            now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
        )
        return el
