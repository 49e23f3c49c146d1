"""XEP-0115 Entity Capabilities of the server (xeps/caps.py) and XEP-0157 contact addresses
(xeps/contact_info.py), which enter the verification string as an extended-info form.

Tier 2: a real Server on memory storage, fake sessions.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lxml import etree

from tests.helpers.harness import ModuleHarness, error_condition
from xeps.caps import Caps, parse_info, verification_hash, verification_string
from xmppd import events as ev
from xmppd.features import Identity
from xmppd.jid import JID

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


# --- client side: caps of the entities an account hears from (XEP-0115 §6.2, §5.4) --------


def test_parse_info_refuses_what_section_5_4_forbids() -> None:
    def query(body: str) -> etree._Element:
        return etree.fromstring(f"<query xmlns='{NS_INFO}'>{body}</query>")

    ok = query("<identity category='client' type='pc'/><feature var='a'/>")
    assert parse_info(ok) is not None
    assert parse_info(query("<feature var='a'/><feature var='a'/>")) is None
    assert (
        parse_info(query("<identity category='c' type='t'/><identity category='c' type='t'/>"))
        is None
    )
    form = (
        f"<x xmlns='{NS_DATA}' type='result'><field var='FORM_TYPE'{{t}}><value>urn:f</value>"
        "</field></x>"
    )
    assert parse_info(query(form.format(t=" type='hidden'"))) is not None
    assert parse_info(query(form.format(t=""))) is None
    assert parse_info(query(form.format(t=" type='hidden'") * 2)) is None


def test_verification_hash_other_algorithms() -> None:
    identities = [Identity("client", "pc")]
    text = verification_string(identities, ["a"], [])
    digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
    assert verification_hash(identities, ["a"], [], algorithm="sha-256") == digest


async def client_caps(
    h: ModuleHarness, jid: str, features: list[str], hash_: str = "sha-1"
) -> tuple[str, list[ev.CapsChanged]]:
    """Bind `jid`, send presence with caps; return the ver and a live list of CAPS_CHANGED."""
    seen: list[ev.CapsChanged] = []

    async def record(event: ev.CapsChanged) -> None:
        seen.append(event)

    h.host().bus.add_notify(ev.CAPS_CHANGED, record, 0)
    ver = verification_hash([Identity("client", "pc")], features, [], algorithm=hash_)
    session = await h.connect(jid)
    await h.send(
        session,
        f"<presence><c xmlns='{NS_CAPS}' hash='{hash_}' node='urn:n' ver='{ver}'/></presence>",
    )
    return ver, seen


async def answer(h: ModuleHarness, jid: str, features: list[str]) -> None:
    """Answer the caps module's pending disco#info query sent to `jid` (as its client)."""
    session = h.server.sessions.get(JID.parse(jid))
    assert session is not None
    for _ in range(5):
        await asyncio.sleep(0)
    (query,) = [e for e in h.take(session) if e.get("type") == "get"]
    node = query[0].get("node")
    body = "".join(f"<feature var='{f}'/>" for f in features)
    await h.send(
        session,
        f"<iq type='result' id='{query.get('id')}' to='{query.get('from')}'>"
        f"<query xmlns='{NS_INFO}' node='{node}'><identity category='client' type='pc'/>"
        f"{body}</query></iq>",
    )
    await asyncio.gather(*caps(h)._tasks)


async def test_own_resource_caps_resolved_once_and_forgotten(h: ModuleHarness) -> None:
    features = [NS_INFO, "urn:x+notify"]
    _ver, seen = await client_caps(h, "alice@localhost/a", features, "sha-256")
    await answer(h, "alice@localhost/a", features)
    alice = JID.parse("alice@localhost")
    assert [(e.user, str(e.entity), e.features) for e in seen] == [
        (alice, "alice@localhost/a", frozenset(features))
    ]
    # A second resource with the same ver is not asked again.
    second = await h.connect("alice@localhost/b")
    await h.send(
        second,
        f"<presence><c xmlns='{NS_CAPS}' hash='sha-256' node='urn:n' ver='{_ver}'/></presence>",
    )
    assert [e for e in h.take(second) if e.get("type") == "get"] == []
    assert seen[-1].entity == JID.parse("alice@localhost/b")
    assert seen[-1].features == frozenset(features)
    await h.send(second, "<presence type='unavailable'/>")
    assert seen[-1].entity == JID.parse("alice@localhost/b")
    assert seen[-1].features is None
    assert caps(h).features_of(alice, JID.parse("alice@localhost/b")) is None


async def test_wrong_answer_is_not_believed(h: ModuleHarness) -> None:
    _ver, seen = await client_caps(h, "alice@localhost/a", [NS_INFO])
    await answer(h, "alice@localhost/a", [NS_INFO, "urn:smuggled"])
    assert seen == []
    assert (
        caps(h).features_of(JID.parse("alice@localhost"), JID.parse("alice@localhost/a"))
        == frozenset()
    )


async def test_unknown_hash_function_is_ignored(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a")
    await h.send(
        alice, f"<presence><c xmlns='{NS_CAPS}' hash='md5' node='urn:n' ver='abc'/></presence>"
    )
    for _ in range(5):
        await asyncio.sleep(0)
    assert [e for e in h.take(alice) if e.get("type") == "get"] == []


async def test_a_bad_answer_makes_the_next_advertiser_be_asked(h: ModuleHarness) -> None:
    features = [NS_INFO, "urn:y+notify"]
    ver, seen = await client_caps(h, "alice@localhost/a", features)
    second = await h.connect("alice@localhost/b")
    await h.send(
        second, f"<presence><c xmlns='{NS_CAPS}' hash='sha-1' node='urn:n' ver='{ver}'/></presence>"
    )
    first = h.server.sessions.get(JID.parse("alice@localhost/a"))
    assert first is not None
    for _ in range(5):
        await asyncio.sleep(0)
    (query,) = [e for e in h.take(first) if e.get("type") == "get"]
    await h.send(
        first,
        f"<iq type='result' id='{query.get('id')}' to='localhost'>"
        f"<query xmlns='{NS_INFO}' node='{query[0].get('node')}'><feature var='urn:lie'/>"
        "</query></iq>",
    )
    await answer(h, "alice@localhost/b", features)
    assert sorted(str(e.entity) for e in seen) == ["alice@localhost/a", "alice@localhost/b"]
    assert all(e.features == frozenset(features) for e in seen)


def caps_presence(features: list[str]) -> str:
    ver = verification_hash([Identity("client", "pc")], features, [])
    return f"<presence><c xmlns='{NS_CAPS}' hash='sha-1' node='urn:n' ver='{ver}'/></presence>"


def queries(h: ModuleHarness, jid: str) -> list[etree._Element]:
    session = h.server.sessions.get(JID.parse(jid))
    assert session is not None
    return [e for e in h.take(session) if e.get("type") == "get"]


async def test_a_bad_answer_does_not_spoil_the_ver_for_later_advertisers(
    h: ModuleHarness,
) -> None:
    features = [NS_INFO, "urn:z+notify"]
    _ver, seen = await client_caps(h, "alice@localhost/liar", features)
    await answer(h, "alice@localhost/liar", [NS_INFO, "urn:lie"])
    assert seen == []
    # The liar is not asked again for that ver, even after advertising something else.
    liar = h.server.sessions.get(JID.parse("alice@localhost/liar"))
    assert liar is not None
    await h.send(liar, "<presence/>")
    await h.send(liar, caps_presence(features))
    for _ in range(5):
        await asyncio.sleep(0)
    assert queries(h, "alice@localhost/liar") == []
    # Another entity advertising the same ver after the failure is still asked (XEP-0115
    # §5.4: an answer that does not verify is not cached for everyone).
    honest = await h.connect("alice@localhost/honest")
    await h.send(honest, caps_presence(features))
    await answer(h, "alice@localhost/honest", features)
    assert [(str(e.entity), e.features) for e in seen if e.features] == [
        ("alice@localhost/honest", frozenset(features))
    ]


async def test_a_lookup_abandoned_before_asking_marks_nothing(h: ModuleHarness) -> None:
    features = [NS_INFO, "urn:w+notify"]
    _ver, seen = await client_caps(h, "alice@localhost/a", features)
    first = h.server.sessions.get(JID.parse("alice@localhost/a"))
    assert first is not None
    await h.send(first, "<presence/>")  # no caps any more, before the lookup ran
    for _ in range(5):
        await asyncio.sleep(0)
    assert queries(h, "alice@localhost/a") == []
    second = await h.connect("alice@localhost/b")
    await h.send(second, caps_presence(features))
    await answer(h, "alice@localhost/b", features)
    assert [str(e.entity) for e in seen if e.features] == ["alice@localhost/b"]


async def test_concurrent_lookups_are_bounded(tmp_path: Path) -> None:
    async with ModuleHarness.started(
        tmp_path, modules_enabled=MODULES, modules={"caps": {"max_lookups": 2}}
    ) as h:
        module = caps(h)
        sessions = [await h.connect(f"alice@localhost/r{i}") for i in range(3)]
        for i, session in enumerate(sessions):
            await h.send(session, caps_presence([NS_INFO, f"urn:r{i}"]))
        assert len(module._waiting) == 2
        for _ in range(5):
            await asyncio.sleep(0)
        assert queries(h, "alice@localhost/r2") == []
        alice = JID.parse("alice@localhost")
        assert module.features_of(alice, sessions[2].full_jid) == frozenset()
        for i in range(2):  # the two lookups under way end
            (query,) = queries(h, f"alice@localhost/r{i}")
            node = query[0].get("node")
            await h.send(
                sessions[i],
                f"<iq type='result' id='{query.get('id')}' to='localhost'><query "
                f"xmlns='{NS_INFO}' node='{node}'><identity category='client' type='pc'/>"
                f"<feature var='{NS_INFO}'/><feature var='urn:r{i}'/></query></iq>",
            )
        await asyncio.gather(*module._tasks)
        assert module.features_of(alice, sessions[0].full_jid) == frozenset({NS_INFO, "urn:r0"})
        # Its next presence (same caps) is looked up now.
        await h.send(sessions[2], caps_presence([NS_INFO, "urn:r2"]))
        await answer(h, "alice@localhost/r2", [NS_INFO, "urn:r2"])
        assert module.features_of(alice, sessions[2].full_jid) == frozenset({NS_INFO, "urn:r2"})
