"""XEP-0402 bookmarks with its §5.3 private-storage compat, real slixmpp clients over sockets:
a legacy client (XEP-0048 over XEP-0049, slixmpp xep_0048) and a Bookmarks 2 client
(slixmpp xep_0402 over our PEP, +notify in its caps) of the same account see each other's
bookmarks."""

from __future__ import annotations

import pytest
from lxml import etree
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0048 import Bookmarks as LegacyBookmarks
from slixmpp.plugins.xep_0402.stanza import Conference
from slixmpp.xmlstream import ET

from tests.helpers.pep import PepClient as Client
from tests.helpers.pep import make_contacts, next_event, no_event, pep_client
from xmppd.server import Server

pytestmark = pytest.mark.interop

B2 = "urn:xmpp:bookmarks:1"
LEGACY = "storage:bookmarks"
DISCO = "http://jabber.org/protocol/disco#info"


def publish_options(client: Client) -> object:
    """The publish-options XEP-0402 §3.3 asks a Bookmarks 2 client to send."""
    form = client.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(
        var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#publish-options"
    )
    form.add_field(var="pubsub#persist_items", value="true")
    form.add_field(var="pubsub#max_items", value="max")
    form.add_field(var="pubsub#send_last_published_item", value="never")
    form.add_field(var="pubsub#access_model", value="whitelist")
    return form


async def modern(server: Server, resource: str = "modern") -> Client:
    return await pep_client(
        server, f"alice@localhost/{resource}", plugins=("xep_0402", "xep_0004"), interests=[B2]
    )


async def legacy(server: Server, resource: str = "legacy") -> Client:
    return await pep_client(server, f"alice@localhost/{resource}", plugins=("xep_0048",))


async def legacy_conferences(client: Client) -> dict[str, etree._Element]:
    result = await client.plugin["xep_0048"].get_bookmarks(method="xep_0049", timeout=10)
    storage = etree.fromstring(str(result)).find(f".//{{{LEGACY}}}storage")
    assert storage is not None
    return {c.get("jid") or "": c for c in storage.findall(f"{{{LEGACY}}}conference")}


async def test_account_announces_compat(server: Server) -> None:
    client = await modern(server)
    try:
        info = await client.plugin["xep_0030"].get_info(jid="alice@localhost", timeout=10)
        assert f"{B2}#compat" in info["disco_info"]["features"]
    finally:
        client.disconnect(wait=0)


async def test_legacy_writes_reach_bookmarks2_clients_as_notifications(server: Server) -> None:
    new, old = await modern(server), await legacy(server)
    try:
        bookmarks = LegacyBookmarks()
        bookmarks.add_conference(
            "tea@conference.localhost", "al", name="Tea", autojoin=True, password="pw"
        )
        bookmarks.add_url("https://docs.example/", name="Docs")
        await old.plugin["xep_0048"].set_bookmarks(bookmarks, method="xep_0049", timeout=10)

        items = await next_event(new, B2)
        (item,) = items
        assert item.get("id") == "tea@conference.localhost"
        conference = item.find(f"{{{B2}}}conference")
        assert conference is not None
        assert conference.get("name") == "Tea"
        assert conference.get("autojoin") in ("true", "1")
        assert conference.findtext(f"{{{B2}}}nick") == "al"

        # The Bookmarks 2 client reads the same through PEP.
        result = await new.plugin["xep_0060"].get_items("alice@localhost", B2, timeout=10)
        got = {i["id"]: i["conference"] for i in result["pubsub"]["items"]}
        assert list(got) == ["tea@conference.localhost"]
        assert got["tea@conference.localhost"]["password"] == "pw"

        # Removing it over private storage retracts the item (§5.3.2); the URL stays.
        remaining = LegacyBookmarks()
        remaining.add_url("https://docs.example/", name="Docs")
        await old.plugin["xep_0048"].set_bookmarks(remaining, method="xep_0049", timeout=10)
        items = await next_event(new, B2)
        retract = items.find("{http://jabber.org/protocol/pubsub#event}retract")
        assert retract is not None
        assert retract.get("id") == "tea@conference.localhost"
        result = await old.plugin["xep_0048"].get_bookmarks(method="xep_0049", timeout=10)
        urls = [u["url"] for u in result["private"]["bookmarks"]["urls"]]
        assert urls == ["https://docs.example/"]
    finally:
        new.disconnect(wait=0)
        old.disconnect(wait=0)


async def test_bookmarks2_items_are_read_by_legacy_clients(server: Server) -> None:
    new, old = await modern(server), await legacy(server)
    try:
        conference = Conference()
        conference["name"] = "The Orchard"
        conference["autojoin"] = True
        conference["nick"] = "JC"
        ET.SubElement(conference["extensions"].xml, "{urn:example:state}state", minimized="true")
        await new.plugin["xep_0060"].publish(
            "alice@localhost",
            B2,
            id="orchard@conference.localhost",
            payload=conference,
            options=publish_options(new),
            timeout=10,
        )
        got = await legacy_conferences(old)
        orchard = got["orchard@conference.localhost"]
        assert orchard.get("name") == "The Orchard"
        assert orchard.get("autojoin") == "true"
        assert orchard.findtext(f"{{{LEGACY}}}nick") == "JC"
        assert orchard.find("{urn:example:state}state") is not None

        # Unchanged write-back by the legacy client: no notification (§5.3.2), the item keeps
        # its extensions.
        await next_event(new, B2)  # the client's own publish
        result = await old.plugin["xep_0048"].get_bookmarks(method="xep_0049", timeout=10)
        await old.plugin["xep_0048"].set_bookmarks(
            result["private"]["bookmarks"], method="xep_0049", timeout=10
        )
        await new.plugin["xep_0030"].get_info(jid="alice@localhost", timeout=10)  # a round trip
        assert no_event(new, B2)
        items = await new.plugin["xep_0060"].get_items("alice@localhost", B2, timeout=10)
        (item,) = items["pubsub"]["items"]
        assert item.xml.find(f".//{{{B2}}}extensions/{{urn:example:state}}state") is not None
    finally:
        new.disconnect(wait=0)
        old.disconnect(wait=0)


async def test_bad_room_jid_is_refused(server: Server) -> None:
    old = await legacy(server)
    try:
        bookmarks = LegacyBookmarks()
        bookmarks.add_conference("room@conference.localhost/nick", "al")
        with pytest.raises(IqError) as info:
            await old.plugin["xep_0048"].set_bookmarks(bookmarks, method="xep_0049", timeout=10)
        assert info.value.condition == "bad-request"
        assert await legacy_conferences(old) == {}
    finally:
        old.disconnect(wait=0)


async def test_bookmarks_stay_private_from_contacts(server: Server) -> None:
    """The items published for a legacy client use the whitelist access model (XEP-0402
    §3.3, XEP-0411 §5): a contact cannot read them."""
    old = await legacy(server)
    bob = await pep_client(server, "bob@localhost/b")
    try:
        await make_contacts(old, bob)
        bookmarks = LegacyBookmarks()
        bookmarks.add_conference("secret@conference.localhost", "al")
        await old.plugin["xep_0048"].set_bookmarks(bookmarks, method="xep_0049", timeout=10)
        with pytest.raises(IqError) as info:
            await bob.plugin["xep_0060"].get_items("alice@localhost", B2, timeout=10)
        # XEP-0060 §6.5.9.6 (whitelist): not-allowed with <closed-node/>
        assert info.value.condition == "not-allowed"
        assert "secret@conference.localhost" not in str(info.value.iq)
    finally:
        old.disconnect(wait=0)
        bob.disconnect(wait=0)


async def test_xep_0048_pep_clients_are_kept_in_step(server: Server) -> None:
    """#compat-pep: a client that keeps XEP-0048 bookmarks in the PEP node storage:bookmarks
    (slixmpp xep_0048 over xep_0223) and a Bookmarks 2 client see each other's changes as
    PEP notifications, and a private-XML client reads the same list."""
    new = await modern(server)
    old_pep = await pep_client(server, "alice@localhost/oldpep", plugins=("xep_0048",))
    old_private = await legacy(server)
    try:
        conference = Conference()
        conference["name"] = "Tea"
        await new.plugin["xep_0060"].publish(
            "alice@localhost",
            B2,
            id="tea@conference.localhost",
            payload=conference,
            options=publish_options(new),
            timeout=10,
        )
        items = await next_event(old_pep, LEGACY)
        storage = items.find(f"{{*}}item/{{{LEGACY}}}storage")
        assert storage is not None
        assert [c.get("jid") for c in storage] == ["tea@conference.localhost"]

        bookmarks = LegacyBookmarks()
        bookmarks.add_conference("tea@conference.localhost", "al", name="Tea")
        bookmarks.add_conference("coffee@conference.localhost", "al", name="Coffee")
        await old_pep.plugin["xep_0048"].set_bookmarks(bookmarks, method="xep_0223", timeout=10)
        await next_event(new, B2)  # its own publish of tea
        seen: dict[str, str | None] = {}
        while len(seen) < 2:
            for item in await next_event(new, B2):
                conf = item.find(f"{{{B2}}}conference")
                seen[item.get("id") or ""] = None if conf is None else conf.get("name")
        assert seen == {"tea@conference.localhost": "Tea", "coffee@conference.localhost": "Coffee"}
        assert set(await legacy_conferences(old_private)) == set(seen)
    finally:
        for client in (new, old_pep, old_private):
            client.disconnect(wait=0)
