"""XEP-0049 Private XML Storage with real slixmpp clients over sockets."""

from __future__ import annotations

import pytest
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET

from tests.conftest import ClientFactory

pytestmark = pytest.mark.interop


async def test_store_and_retrieve_raw_private_xml(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    iq = alice.make_iq_set()
    query = ET.SubElement(iq.xml, "{jabber:iq:private}query")
    prefs = ET.SubElement(query, "{urn:example:prefs}prefs")
    ET.SubElement(prefs, "{urn:example:prefs}theme").text = "dark"
    await iq.send()

    get = alice.make_iq_get()
    query = ET.SubElement(get.xml, "{jabber:iq:private}query")
    ET.SubElement(query, "{urn:example:prefs}prefs")
    result = await get.send()
    assert result.xml.findtext(".//{urn:example:prefs}theme") == "dark"


async def test_storing_in_jabber_client_is_not_acceptable(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    iq = alice.make_iq_set()
    query = ET.SubElement(iq.xml, "{jabber:iq:private}query")
    ET.SubElement(query, "{jabber:client}message")
    with pytest.raises(IqError) as info:
        await iq.send()
    assert info.value.condition == "not-acceptable"


async def test_reading_another_users_storage_is_forbidden(connect: ClientFactory) -> None:
    bob = await connect("bob@localhost/b")
    iq = bob.make_iq_get(ito="alice@localhost")
    query = ET.SubElement(iq.xml, "{jabber:iq:private}query")
    ET.SubElement(query, "{urn:example:prefs}prefs")
    with pytest.raises(IqError) as info:
        await iq.send()
    assert info.value.condition == "forbidden"
