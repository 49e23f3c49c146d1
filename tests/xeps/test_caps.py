"""XEP-0115 Entity Capabilities of the server (xeps/caps.py) and XEP-0157 contact addresses
(xeps/contact_info.py), which enter the verification string as an extended-info form.

Tier 2: a real Server on memory storage, fake sessions.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lxml import etree

from tests.helpers.harness import ModuleHarness, error_condition
from xeps.caps import Caps, verification_hash, verification_string
from xmppd.features import Identity

NS_CAPS = "http://jabber.org/protocol/caps"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_DATA = "jabber:x:data"
MODULES = ["disco", "caps", "contact_info", "ping"]
CONTACTS = {
    "admin": ["mailto:admin@example.org", "xmpp:admin@example.org"],
    "abuse": ["mailto:abuse@example.org"],
}


def test_verification_string_matches_xep_0115_simple_example() -> None:
    """XEP-0115 §5.2: the Exodus example and its published hash."""
    identities = [Identity("client", "pc", "Exodus 0.9.1")]
    features = [
        "http://jabber.org/protocol/caps",
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/disco#items",
        "http://jabber.org/protocol/muc",
    ]
    assert verification_string(identities, features, []) == (
        "client/pc//Exodus 0.9.1<http://jabber.org/protocol/caps<"
        "http://jabber.org/protocol/disco#info<http://jabber.org/protocol/disco#items<"
        "http://jabber.org/protocol/muc<"
    )
    assert verification_hash(identities, features, []) == "QgayPKawpkPSDYmwT/WM94uAlu0="


def test_verification_string_matches_xep_0115_complex_example() -> None:
    """XEP-0115 §5.3: identities with languages and an extended-info form."""
    identities = [
        Identity("client", "pc", "Psi 0.11", "en"),
        Identity("client", "pc", "Ψ 0.11", "el"),
    ]
    features = [
        "http://jabber.org/protocol/caps",
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/disco#items",
        "http://jabber.org/protocol/muc",
    ]
    form = etree.fromstring(
        f"""<x xmlns='{NS_DATA}' type='result'>
          <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>
          <field var='ip_version' type='text-multi'><value>ipv4</value><value>ipv6</value></field>
          <field var='os'><value>Mac</value></field>
          <field var='os_version'><value>10.5.1</value></field>
          <field var='software'><value>Psi</value></field>
          <field var='software_version'><value>0.11</value></field>
        </x>"""
    )
    assert verification_hash(identities, features, [form]) == "q07IKJEyjvHSyhy//CH0CxmKi8w="


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with ModuleHarness.started(
        tmp_path, modules_enabled=MODULES, modules={"contact_info": CONTACTS}
    ) as harness:
        yield harness


def caps(h: ModuleHarness) -> Caps:
    module = h.host().modules["caps"]
    assert isinstance(module, Caps)
    return module


async def test_stream_feature_carries_node_and_current_ver(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/home")
    features = [p(alice) for p in h.host().stream_features]
    (c,) = [f for f in features if f is not None and f.tag == f"{{{NS_CAPS}}}c"]
    assert c.get("hash") == "sha-1"
    assert c.get("node") == "https://xmppd.invalid/caps"
    assert c.get("ver") == caps(h).ver()


async def test_node_ver_query_returns_info_that_hashes_to_ver(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/home")
    node = f"https://xmppd.invalid/caps#{caps(h).ver()}"
    await h.send(
        alice,
        f"<iq type='get' id='c1' to='localhost'><query xmlns='{NS_INFO}' node='{node}'/></iq>",
    )
    reply = h.take_one(alice)
    assert reply.get("type") == "result"
    query = reply.find(f"{{{NS_INFO}}}query")
    assert query is not None
    assert query.get("node") == node
    identities = [
        Identity(
            i.get("category") or "",
            i.get("type") or "",
            i.get("name"),
            i.get("{http://www.w3.org/XML/1998/namespace}lang"),
        )
        for i in query.iter(f"{{{NS_INFO}}}identity")
    ]
    features = [f.get("var") or "" for f in query.iter(f"{{{NS_INFO}}}feature")]
    forms = list(query.iter(f"{{{NS_DATA}}}x"))
    assert "urn:xmpp:ping" in features
    assert len(forms) == 1
    # What a client does to verify (XEP-0115 §5.4): recompute the hash from the answer.
    assert verification_hash(identities, features, forms) == caps(h).ver()


async def test_ver_changes_when_features_change(h: ModuleHarness) -> None:
    before = caps(h).ver()
    h.host().features.add_feature("urn:example:new")
    assert caps(h).ver() != before
    h.host().features.remove_feature("urn:example:new")
    assert caps(h).ver() == before


async def test_stale_node_is_left_to_disco(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/home")
    await h.send(
        alice,
        f"<iq type='get' id='c2' to='localhost'>"
        f"<query xmlns='{NS_INFO}' node='https://xmppd.invalid/caps#stale'/></iq>",
    )
    assert error_condition(h.take_one(alice)) == "item-not-found"


def test_sha1_base64_helper_is_standard() -> None:
    digest = base64.b64encode(hashlib.sha1(b"").digest()).decode()
    assert verification_hash([], [], []) == digest
