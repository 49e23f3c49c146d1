"""XEP-0163 PEP and the XEP-0060 subset behind it (xeps/pep), with XEP-0115 caps (xeps/caps.py)
feeding filtered notifications.

Tier 2: a real Server on memory storage, fake sessions. Subscriptions are written straight into
both rosters (as tests/xeps/test_presence.py does); caps are resolved through the real caps
module: the test answers its disco#info query as the client would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
from lxml import etree

from tests.helpers.harness import ModuleHarness, error_condition
from xeps.caps import Caps, verification_hash
from xeps.pep import Pep
from xeps.roster import Item, RosterModule
from xmppd import events as ev
from xmppd.features import Identity
from xmppd.jid import JID
from xmppd.session import Session

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_OWNER = "http://jabber.org/protocol/pubsub#owner"
NS_EVENT = "http://jabber.org/protocol/pubsub#event"
NS_ERRORS = "http://jabber.org/protocol/pubsub#errors"
NS_CAPS = "http://jabber.org/protocol/caps"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_TUNE = "http://jabber.org/protocol/tune"
NS_NICK = "http://jabber.org/protocol/nick"
MODULES = ["roster", "presence", "disco", "caps", "pep"]
MIRROR = {"none": "none", "to": "from", "from": "to", "both": "both"}
IDENTITY = Identity("client", "pc", "test")


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with ModuleHarness.started(
        tmp_path, accounts=("alice", "bob", "carol"), modules_enabled=MODULES
    ) as harness:
        yield harness


# --- helpers -------------------------------------------------------------------------------


async def link(
    h: ModuleHarness, user: str, contact: str, sub: str, groups: tuple[str, ...] = ()
) -> None:
    """`user` has `sub` towards `contact`; the contact's roster holds the mirror."""
    module = cast(RosterModule, h.host().modules["roster"])
    for owner, other, state in ((user, contact, sub), (contact, user, MIRROR[sub])):
        roster = await module.get_roster(owner)
        item = Item(
            f"{other}@localhost", to=state in ("to", "both"), from_=state in ("from", "both")
        )
        if owner == user:
            item.groups = list(groups)
        roster.items[item.jid] = item
        roster.counter += 1
        await module.put_roster(owner, roster)


def caps_module(h: ModuleHarness) -> Caps:
    return cast(Caps, h.host().modules["caps"])


def pep_module(h: ModuleHarness) -> Pep:
    return cast(Pep, h.host().modules["pep"])


def ver_of(features: list[str]) -> str:
    return verification_hash([IDENTITY], features, [])


def caps_presence(features: list[str], node: str = "urn:test") -> str:
    return (
        f"<presence><c xmlns='{NS_CAPS}' hash='sha-1' node='{node}' ver='{ver_of(features)}'/>"
        "</presence>"
    )


def disco_answer(query_iq: etree._Element, features: list[str]) -> str:
    node = query_iq[0].get("node")
    feats = "".join(f"<feature var='{f}'/>" for f in features)
    return (
        f"<iq type='result' id='{query_iq.get('id')}' to='{query_iq.get('from')}'>"
        f"<query xmlns='{NS_INFO}' node='{node}'><identity category='client' type='pc' "
        f"name='test'/>{feats}</query></iq>"
    )


async def settle(h: ModuleHarness) -> None:
    """Let caps lookups start, and wait for the ones that can finish."""
    for _ in range(5):
        await asyncio.sleep(0)


def disco_queries(session: Session, h: ModuleHarness) -> list[etree._Element]:
    conn = h.conn(session)
    found = [
        e for e in conn.sent if e.get("type") == "get" and e.find(f"{{{NS_INFO}}}query") is not None
    ]
    conn.sent = [e for e in conn.sent if e not in found]
    return found


async def online(
    h: ModuleHarness, jid: str, interests: list[str] = (), answer: bool = True
) -> Session:
    """Bind `jid`, send initial presence with caps for `interests` (+notify), answer the caps
    lookup; return the session with what it got meanwhile still queued."""
    features = [NS_INFO, NS_CAPS, *[f"{ns}+notify" for ns in interests]]
    session = await h.connect(jid)
    await h.send(session, caps_presence(features))
    await settle(h)
    queries = disco_queries(session, h)
    if answer:
        for query in queries:
            await h.send(session, disco_answer(query, features))
        await asyncio.gather(*caps_module(h)._tasks)
    return session


def events(elements: list[etree._Element]) -> list[etree._Element]:
    return [
        e
        for e in elements
        if e.tag == "{jabber:client}message" and e.find(f"{{{NS_EVENT}}}event") is not None
    ]


def app_error(element: etree._Element) -> str | None:
    error = element.find("{jabber:client}error")
    assert error is not None
    for child in error:
        if etree.QName(child).namespace == NS_ERRORS:
            return etree.QName(child).localname
    return None


def tune(title: str) -> str:
    return f"<tune xmlns='{NS_TUNE}'><title>{title}</title></tune>"


def publish_iq(
    node: str,
    payload: str,
    item_id: str | None = "1",
    options: dict[str, str] | None = None,
    to: str = "",
) -> str:
    item = (
        f"<item id='{item_id}'>{payload}</item>"
        if item_id is not None
        else f"<item>{payload}</item>"
    )
    form = ""
    if options is not None:
        fields = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in options.items())
        form = (
            "<publish-options><x xmlns='jabber:x:data' type='submit'>"
            "<field var='FORM_TYPE' type='hidden'>"
            "<value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
            f"{fields}</x></publish-options>"
        )
    to_attr = f" to='{to}'" if to else ""
    return (
        f"<iq type='set' id='p1'{to_attr}><pubsub xmlns='{NS_PUBSUB}'>"
        f"<publish node='{node}'>{item}</publish>{form}</pubsub></iq>"
    )


async def iq(h: ModuleHarness, session: Session, xml: str) -> etree._Element:
    """Send an IQ and return its answer (other stanzas the session got are dropped)."""
    await h.send(session, xml)
    conn = h.conn(session)
    replies = [e for e in conn.sent if e.tag == "{jabber:client}iq"]
    conn.sent = [e for e in conn.sent if e.tag != "{jabber:client}iq"]
    assert len(replies) == 1, [etree.tostring(e) for e in replies]
    return replies[0]


async def items(
    h: ModuleHarness, session: Session, owner: str, node: str, extra: str = "", inner: str = ""
) -> etree._Element:
    return await iq(
        h,
        session,
        f"<iq type='get' id='i1' to='{owner}'><pubsub xmlns='{NS_PUBSUB}'>"
        f"<items node='{node}'{extra}>{inner}</items></pubsub></iq>",
    )


def item_ids(reply: etree._Element) -> list[str]:
    return [i.get("id") or "" for i in reply.iter(f"{{{NS_PUBSUB}}}item")]


def owner_form(node: str, fields: dict[str, str], action: str = "configure") -> str:
    body = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
    return (
        f"<iq type='set' id='c1'><pubsub xmlns='{NS_OWNER}'><{action} node='{node}'>"
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
        "<value>http://jabber.org/protocol/pubsub#node_config</value></field>"
        f"{body}</x></{action}></pubsub></iq>"
    )


# --- publish and retrieve ------------------------------------------------------------------


async def test_publish_auto_creates_and_owner_reads_items(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a")
    reply = await iq(h, alice, publish_iq(NS_TUNE, tune("one"), item_id=None))
    assert reply.get("type") == "result"
    (generated,) = item_ids(reply)
    assert generated
    got = await items(h, alice, "alice@localhost", NS_TUNE)
    assert item_ids(got) == [generated]
    assert got.findtext(f".//{{{NS_TUNE}}}title") == "one"


async def test_max_items_default_one_and_configured(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a")
    for n in ("1", "2"):
        await iq(h, alice, publish_iq("single", tune(n), item_id=n))
    assert item_ids(await items(h, alice, "alice@localhost", "single")) == ["2"]
    options = {"pubsub#max_items": "3"}
    for n in ("1", "2", "3", "4", "2"):
        reply = await iq(h, alice, publish_iq("multi", tune(n), item_id=n, options=options))
        assert reply.get("type") == "result"
    # Republishing "2" makes it the newest; the oldest beyond 3 went.
    assert item_ids(await items(h, alice, "alice@localhost", "multi")) == ["3", "4", "2"]
    last_two = await items(h, alice, "alice@localhost", "multi", " max_items='2'")
    assert item_ids(last_two) == ["4", "2"]
    by_id = await items(h, alice, "alice@localhost", "multi", inner="<item id='3'/><item id='x'/>")
    assert item_ids(by_id) == ["3"]
    bad = await items(h, alice, "alice@localhost", "multi", " max_items='0'")
    assert error_condition(bad) == "bad-request"


async def test_items_of_missing_node_is_item_not_found(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a")
    assert error_condition(await items(h, alice, "alice@localhost", "nope")) == "item-not-found"


# --- publish-options (XEP-0060 §7.1.5) -------------------------------------------------------


async def test_publish_options_configure_new_node_and_check_existing(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a")
    opts = {
        "pubsub#access_model": "open",
        "pubsub#max_items": "max",
        "pubsub#persist_items": "true",
    }
    assert (await iq(h, alice, publish_iq("n", tune("a"), options=opts))).get("type") == "result"
    node = (await pep_module(h).nodes_of("alice"))["n"]
    assert node.config.access_model == "open"
    assert node.config.max_items == 256
    # The same preconditions hold (1 == true, max == 256).
    same = {"pubsub#access_model": "open", "pubsub#max_items": "256", "pubsub#persist_items": "1"}
    assert (await iq(h, alice, publish_iq("n", tune("b"), options=same))).get("type") == "result"
    for bad in (
        {"pubsub#access_model": "presence"},
        {"pubsub#max_items": "5"},
        {"pubsub#max_items": "abc"},
        {"pubsub#unknown_field": "1"},
    ):
        reply = await iq(h, alice, publish_iq("n", tune("c"), options=bad))
        assert error_condition(reply) == "conflict", bad
        assert app_error(reply) == "precondition-not-met"
    # Nothing was published by the failed attempts.
    assert item_ids(await items(h, alice, "alice@localhost", "n")) == ["1"]
    assert node.config.access_model == "open"


async def test_publish_options_unknown_field_refuses_new_node(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a")
    reply = await iq(h, alice, publish_iq("fresh", tune("a"), options={"pubsub#bogus": "1"}))
    assert error_condition(reply) == "conflict"
    assert app_error(reply) == "precondition-not-met"
    assert "fresh" not in await pep_module(h).nodes_of("alice")


async def test_publish_options_wrong_form_type_is_bad_request(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a")
    xml = publish_iq("n", tune("a"), options={"pubsub#max_items": "2"}).replace(
        "pubsub#publish-options</value>", "pubsub#node_config</value>"
    )
    assert error_condition(await iq(h, alice, xml)) == "bad-request"


# --- hostile input ---------------------------------------------------------------------------


async def test_publish_errors(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a")
    too_big = f"<data xmlns='urn:x'>{'x' * 70000}</data>"
    reply = await iq(h, alice, publish_iq("n", too_big))
    assert (error_condition(reply), app_error(reply)) == ("not-acceptable", "payload-too-big")
    reply = await iq(h, alice, publish_iq("n", tune("a") + tune("b")))
    assert (error_condition(reply), app_error(reply)) == ("bad-request", "invalid-payload")
    reply = await iq(h, alice, publish_iq("n", ""))
    assert (error_condition(reply), app_error(reply)) == ("bad-request", "payload-required")
    reply = await iq(
        h,
        alice,
        f"<iq type='set' id='x'><pubsub xmlns='{NS_PUBSUB}'><publish node='n'/></pubsub></iq>",
    )
    assert (error_condition(reply), app_error(reply)) == ("bad-request", "item-required")
    reply = await iq(h, alice, publish_iq("", tune("a")))
    assert (error_condition(reply), app_error(reply)) == ("bad-request", "nodeid-required")
    reply = await iq(h, alice, publish_iq("x" * 300, tune("a")))
    assert error_condition(reply) == "bad-request"
    reply = await iq(h, alice, publish_iq("n", tune("a"), item_id="y" * 300))
    assert error_condition(reply) == "bad-request"
    two_items = f"<iq type='set' id='x'><pubsub xmlns='{NS_PUBSUB}'><publish node='n'><item id='1'>{tune('a')}</item><item id='2'>{tune('b')}</item></publish></pubsub></iq>"
    assert error_condition(await iq(h, alice, two_items)) == "bad-request"
    assert await pep_module(h).nodes_of("alice") == {}


async def test_publishing_to_another_account_is_forbidden(h: ModuleHarness) -> None:
    bob = await h.connect("bob@localhost/b")
    await link(h, "alice", "bob", "both")
    reply = await iq(h, bob, publish_iq("n", tune("a"), to="alice@localhost"))
    assert error_condition(reply) == "forbidden"
    assert await pep_module(h).nodes_of("alice") == {}


async def test_too_many_nodes(tmp_path: Path) -> None:
    async with ModuleHarness.started(
        tmp_path, modules_enabled=MODULES, modules={"pep": {"max_nodes": 2}}
    ) as h:
        alice = await h.connect("alice@localhost/a")
        for node in ("a", "b"):
            assert (await iq(h, alice, publish_iq(node, tune(node)))).get("type") == "result"
        reply = await iq(h, alice, publish_iq("c", tune("c")))
        assert (error_condition(reply), app_error(reply)) == ("not-allowed", "max-nodes-exceeded")
        # Existing nodes still take items.
        assert (await iq(h, alice, publish_iq("a", tune("a2"), item_id="2"))).get(
            "type"
        ) == "result"


async def test_explicit_subscribe_is_not_implemented(h: ModuleHarness) -> None:
    await link(h, "alice", "bob", "both")
    bob = await h.connect("bob@localhost/b")
    reply = await iq(
        h,
        bob,
        f"<iq type='set' id='s' to='alice@localhost'><pubsub xmlns='{NS_PUBSUB}'>"
        f"<subscribe node='{NS_TUNE}' jid='bob@localhost'/></pubsub></iq>",
    )
    assert (error_condition(reply), app_error(reply)) == ("feature-not-implemented", "unsupported")


# --- access models -------------------------------------------------------------------------------


async def test_presence_access_model(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a")
    await iq(h, alice, publish_iq(NS_TUNE, tune("a")))
    await link(h, "alice", "bob", "from")  # bob sees alice's presence
    await link(h, "alice", "carol", "to")  # carol does not
    bob = await h.connect("bob@localhost/b")
    carol = await h.connect("carol@localhost/c")
    assert item_ids(await items(h, bob, "alice@localhost", NS_TUNE)) == ["1"]
    reply = await items(h, carol, "alice@localhost", NS_TUNE)
    assert (error_condition(reply), app_error(reply)) == (
        "not-authorized",
        "presence-subscription-required",
    )


async def test_open_and_whitelist_models(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a")
    await iq(h, alice, publish_iq("open", tune("o"), options={"pubsub#access_model": "open"}))
    await iq(h, alice, publish_iq("wl", tune("w"), options={"pubsub#access_model": "whitelist"}))
    await link(h, "alice", "bob", "both")
    bob = await h.connect("bob@localhost/b")
    carol = await h.connect("carol@localhost/c")
    assert item_ids(await items(h, carol, "alice@localhost", "open")) == ["1"]
    reply = await items(h, bob, "alice@localhost", "wl")
    assert (error_condition(reply), app_error(reply)) == ("not-allowed", "closed-node")
    # A member affiliation opens the whitelist (XEP-0060 §8.9); outcast closes open.
    reply = await iq(
        h,
        alice,
        f"<iq type='set' id='a'><pubsub xmlns='{NS_OWNER}'><affiliations node='wl'>"
        "<affiliation jid='bob@localhost' affiliation='member'/></affiliations></pubsub></iq>",
    )
    assert reply.get("type") == "result"
    assert item_ids(await items(h, bob, "alice@localhost", "wl")) == ["1"]
    await iq(
        h,
        alice,
        f"<iq type='set' id='a'><pubsub xmlns='{NS_OWNER}'><affiliations node='open'>"
        "<affiliation jid='carol@localhost' affiliation='outcast'/></affiliations></pubsub></iq>",
    )
    assert error_condition(await items(h, carol, "alice@localhost", "open")) == "forbidden"
    listed = await iq(
        h,
        alice,
        f"<iq type='get' id='a'><pubsub xmlns='{NS_OWNER}'><affiliations node='wl'/></pubsub></iq>",
    )
    affs = {a.get("jid"): a.get("affiliation") for a in listed.iter(f"{{{NS_OWNER}}}affiliation")}
    assert affs == {"alice@localhost": "owner", "bob@localhost": "member"}
    bad = await iq(
        h,
        alice,
        f"<iq type='set' id='a'><pubsub xmlns='{NS_OWNER}'><affiliations node='wl'>"
        "<affiliation jid='alice@localhost' affiliation='none'/></affiliations></pubsub></iq>",
    )
    assert error_condition(bad) == "not-acceptable"


async def test_roster_model_uses_roster_groups(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a")
    opts = {"pubsub#access_model": "roster"}
    xml = publish_iq("r", tune("r"), options=opts).replace(
        "</x>", "<field var='pubsub#roster_groups_allowed'><value>friends</value></field></x>"
    )
    assert (await iq(h, alice, xml)).get("type") == "result"
    await link(h, "alice", "bob", "both", groups=("friends",))
    await link(h, "alice", "carol", "both", groups=("work",))
    bob = await h.connect("bob@localhost/b")
    carol = await h.connect("carol@localhost/c")
    # The roster module answers ROSTER_GROUPS from alice's roster items.
    assert item_ids(await items(h, bob, "alice@localhost", "r")) == ["1"]
    reply = await items(h, carol, "alice@localhost", "r")
    assert app_error(reply) == "not-in-roster-group"


# --- notifications and caps ---------------------------------------------------------------------


async def test_notifications_follow_notify_interest_and_access(h: ModuleHarness) -> None:
    await link(h, "alice", "bob", "both")
    await link(h, "alice", "carol", "to")  # carol may not see alice's presence-model nodes
    alice = await online(h, "alice@localhost/a", [NS_TUNE])
    alice2 = await online(h, "alice@localhost/quiet", [])
    bob = await online(h, "bob@localhost/b", [NS_TUNE])
    bob2 = await online(h, "bob@localhost/nonotify", [NS_NICK])
    carol = await online(h, "carol@localhost/c", [NS_TUNE])
    # carol's presence reaches alice (alice is subscribed to it), but not the other way.
    assert f"{NS_TUNE}+notify" in (
        caps_module(h).features_of(JID.parse("alice@localhost"), carol.full_jid) or ()
    )
    for s in (alice, alice2, bob, bob2, carol):
        h.take(s)
    await iq(h, alice, publish_iq(NS_TUNE, tune("hello")))
    (own,) = events(h.take(alice)) or [None]
    assert own is not None
    assert own.get("from") == "alice@localhost"
    (to_bob,) = events(h.take(bob))
    assert to_bob.get("from") == "alice@localhost"
    assert to_bob.get("to") == "bob@localhost/b"
    assert to_bob.get("type") == "headline"
    assert to_bob.findtext(f".//{{{NS_TUNE}}}title") == "hello"
    replyto = to_bob.find(
        "{http://jabber.org/protocol/address}addresses/{http://jabber.org/protocol/address}address"
    )
    assert replyto is not None
    assert replyto.get("jid") == "alice@localhost/a"
    assert events(h.take(alice2)) == []
    assert events(h.take(bob2)) == []
    assert events(h.take(carol)) == []


async def test_last_item_sent_when_interest_appears(h: ModuleHarness) -> None:
    await link(h, "alice", "bob", "both")
    alice = await h.connect("alice@localhost/a")
    await iq(h, alice, publish_iq(NS_TUNE, tune("before")))
    await iq(
        h,
        alice,
        publish_iq("never", tune("n"), options={"pubsub#send_last_published_item": "never"}),
    )
    bob = await online(h, "bob@localhost/b", [NS_TUNE, "never"])
    (last,) = events(h.take(bob))
    assert last.findtext(f".//{{{NS_TUNE}}}title") == "before"
    # A presence update with the same caps sends nothing again.
    await h.send(bob, caps_presence([NS_INFO, NS_CAPS, f"{NS_TUNE}+notify", "never+notify"]))
    await settle(h)
    assert events(h.take(bob)) == []


async def test_last_item_sent_when_subscription_approved(h: ModuleHarness) -> None:
    await link(h, "alice", "bob", "to")  # alice gets bob's presence; bob may not see alice's
    alice = await h.connect("alice@localhost/a", priority=0)
    await iq(h, alice, publish_iq(NS_TUNE, tune("hi")))
    bob = await online(h, "bob@localhost/b", [NS_TUNE])
    assert events(h.take(bob)) == []
    # bob asks, alice approves: the roster goes to both, and the last item follows.
    await h.send(bob, "<presence to='alice@localhost' type='subscribe'/>")
    await h.send(alice, "<presence to='bob@localhost' type='subscribed'/>")
    got = events(h.take(bob))
    assert [e.findtext(f".//{{{NS_TUNE}}}title") for e in got] == ["hi"]


async def test_unverifiable_caps_are_ignored(h: ModuleHarness) -> None:
    await link(h, "alice", "bob", "both")
    alice = await h.connect("alice@localhost/a")
    await iq(h, alice, publish_iq(NS_TUNE, tune("x")))
    bob = await h.connect("bob@localhost/b")
    features = [NS_INFO, f"{NS_TUNE}+notify"]
    await h.send(bob, caps_presence(features))
    await settle(h)
    (query,) = disco_queries(bob, h)
    # The answer does not hash to the advertised ver (an extra feature): not believed.
    await h.send(bob, disco_answer(query, [*features, "urn:extra"]))
    await asyncio.gather(*caps_module(h)._tasks)
    assert caps_module(h).features_of(JID.parse("alice@localhost"), bob.full_jid) == frozenset()
    assert events(h.take(bob)) == []
    await iq(h, alice, publish_iq(NS_TUNE, tune("y"), item_id="2"))
    assert events(h.take(bob)) == []


async def test_known_ver_is_not_asked_again_and_unavailable_forgets(h: ModuleHarness) -> None:
    await link(h, "alice", "bob", "both")
    await link(h, "alice", "carol", "both")
    alice = await h.connect("alice@localhost/a")
    bob = await online(h, "bob@localhost/b", [NS_TUNE])
    carol = await h.connect("carol@localhost/c")
    await h.send(carol, caps_presence([NS_INFO, NS_CAPS, f"{NS_TUNE}+notify"]))
    await settle(h)
    assert disco_queries(carol, h) == []  # same ver as bob's: already verified
    owner = JID.parse("alice@localhost")
    assert f"{NS_TUNE}+notify" in (caps_module(h).features_of(owner, carol.full_jid) or ())
    await h.send(carol, "<presence type='unavailable'/>")
    assert caps_module(h).features_of(owner, carol.full_jid) is None
    h.take(bob)
    await iq(h, alice, publish_iq(NS_TUNE, tune("z")))
    assert len(events(h.take(bob))) == 1


async def test_legacy_caps_without_hash_are_not_queried(h: ModuleHarness) -> None:
    await link(h, "alice", "bob", "both")
    await h.connect("alice@localhost/a")
    bob = await h.connect("bob@localhost/b")
    await h.send(
        bob, f"<presence><c xmlns='{NS_CAPS}' node='urn:old' ver='1.0' ext='a b'/></presence>"
    )
    await settle(h)
    assert disco_queries(bob, h) == []


# --- retract, purge, delete, configure --------------------------------------------------------


async def test_retract_with_notify(h: ModuleHarness) -> None:
    await link(h, "alice", "bob", "both")
    alice = await h.connect("alice@localhost/a")
    await iq(h, alice, publish_iq("n", tune("a"), options={"pubsub#max_items": "5"}))
    bob = await online(h, "bob@localhost/b", ["n"])
    h.take(bob)
    retract = f"<iq type='set' id='r'><pubsub xmlns='{NS_PUBSUB}'><retract node='n' notify='true'><item id='{{id}}'/></retract></pubsub></iq>"
    assert error_condition(await iq(h, alice, retract.format(id="nope"))) == "item-not-found"
    assert (await iq(h, alice, retract.format(id="1"))).get("type") == "result"
    (note,) = events(h.take(bob))
    assert note.find(f".//{{{NS_EVENT}}}retract").get("id") == "1"
    assert item_ids(await items(h, alice, "alice@localhost", "n")) == []
    no_item = f"<iq type='set' id='r'><pubsub xmlns='{NS_PUBSUB}'><retract node='n'/></pubsub></iq>"
    reply = await iq(h, alice, no_item)
    assert (error_condition(reply), app_error(reply)) == ("bad-request", "item-required")


async def test_configure_get_set_and_errors(h: ModuleHarness) -> None:
    await link(h, "alice", "bob", "both")
    alice = await h.connect("alice@localhost/a")
    bob = await h.connect("bob@localhost/b")
    for n in ("1", "2", "3"):
        await iq(h, alice, publish_iq("n", tune(n), item_id=n, options={"pubsub#max_items": "3"}))
    get = f"<iq type='get' id='g' to='alice@localhost'><pubsub xmlns='{NS_OWNER}'><configure node='n'/></pubsub></iq>"
    form = await iq(h, alice, get)
    values = {
        f.get("var"): f.findtext("{jabber:x:data}value") for f in form.iter("{jabber:x:data}field")
    }
    assert values["FORM_TYPE"] == "http://jabber.org/protocol/pubsub#node_config"
    assert values["pubsub#access_model"] == "presence"
    assert values["pubsub#max_items"] == "3"
    assert error_condition(await iq(h, bob, get)) == "forbidden"
    missing = get.replace("node='n'", "node='missing'")
    assert error_condition(await iq(h, alice, missing)) == "item-not-found"
    ok = await iq(
        h, alice, owner_form("n", {"pubsub#max_items": "1", "pubsub#access_model": "open"})
    )
    assert ok.get("type") == "result"
    assert item_ids(await items(h, alice, "alice@localhost", "n")) == ["3"]
    assert item_ids(await items(h, bob, "alice@localhost", "n")) == ["3"]
    bad = await iq(h, alice, owner_form("n", {"pubsub#access_model": "authorize"}))
    assert (error_condition(bad), app_error(bad)) == ("not-acceptable", "unsupported-access-model")
    bad = await iq(h, alice, owner_form("n", {"pubsub#max_items": "-3"}))
    assert error_condition(bad) == "not-acceptable"
    bad = await iq(h, alice, owner_form("n", {"pubsub#deliver_payloads": "maybe"}))
    assert error_condition(bad) == "not-acceptable"
    default = await iq(
        h, alice, f"<iq type='get' id='d'><pubsub xmlns='{NS_OWNER}'><default/></pubsub></iq>"
    )
    assert default.find(f".//{{{NS_OWNER}}}default/{{jabber:x:data}}x") is not None


async def test_create_with_config_and_conflict(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a")
    create = (
        f"<iq type='set' id='c'><pubsub xmlns='{NS_PUBSUB}'><create node='made'/><configure>"
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
        "<value>http://jabber.org/protocol/pubsub#node_config</value></field>"
        "<field var='pubsub#access_model'><value>whitelist</value></field></x></configure>"
        "</pubsub></iq>"
    )
    assert (await iq(h, alice, create)).get("type") == "result"
    assert (await pep_module(h).nodes_of("alice"))["made"].config.access_model == "whitelist"
    assert error_condition(await iq(h, alice, create)) == "conflict"
    no_node = f"<iq type='set' id='c'><pubsub xmlns='{NS_PUBSUB}'><create/></pubsub></iq>"
    assert app_error(await iq(h, alice, no_node)) == "nodeid-required"


async def test_purge_and_delete_notify_and_need_owner(h: ModuleHarness) -> None:
    await link(h, "alice", "bob", "both")
    alice = await h.connect("alice@localhost/a")
    await iq(h, alice, publish_iq("n", tune("a")))
    bob = await online(h, "bob@localhost/b", ["n"])
    h.take(bob)
    purge = f"<iq type='set' id='p' to='alice@localhost'><pubsub xmlns='{NS_OWNER}'><purge node='n'/></pubsub></iq>"
    delete = purge.replace("purge", "delete")
    assert error_condition(await iq(h, bob, purge)) == "forbidden"
    assert error_condition(await iq(h, bob, delete)) == "forbidden"
    assert (await iq(h, alice, purge)).get("type") == "result"
    (note,) = events(h.take(bob))
    assert note.find(f".//{{{NS_EVENT}}}purge") is not None
    assert item_ids(await items(h, alice, "alice@localhost", "n")) == []
    assert (await iq(h, alice, delete)).get("type") == "result"
    (note,) = events(h.take(bob))
    assert note.find(f".//{{{NS_EVENT}}}delete").get("node") == "n"
    assert error_condition(await iq(h, alice, delete)) == "item-not-found"
    assert error_condition(await iq(h, alice, purge)) == "item-not-found"


# --- disco ----------------------------------------------------------------------------------------


async def test_disco_identity_features_and_node_items(h: ModuleHarness) -> None:
    await link(h, "alice", "bob", "both")
    alice = await h.connect("alice@localhost/a")
    bob = await h.connect("bob@localhost/b")
    carol = await h.connect("carol@localhost/c")
    await iq(h, alice, publish_iq("pres", tune("p")))
    await iq(h, alice, publish_iq("wl", tune("w"), options={"pubsub#access_model": "whitelist"}))
    await iq(h, alice, publish_iq("open", tune("o"), options={"pubsub#access_model": "open"}))
    info = await iq(
        h, bob, f"<iq type='get' id='d' to='alice@localhost'><query xmlns='{NS_INFO}'/></iq>"
    )
    identities = {(i.get("category"), i.get("type")) for i in info.iter(f"{{{NS_INFO}}}identity")}
    assert ("pubsub", "pep") in identities
    features = {f.get("var") for f in info.iter(f"{{{NS_INFO}}}feature")}
    assert f"{NS_PUBSUB}#publish-options" in features
    assert f"{NS_PUBSUB}#auto-create" in features

    def nodes(reply: etree._Element) -> list[str]:
        return [i.get("node") or "" for i in reply.iter(f"{{{NS_ITEMS}}}item")]

    disco_items = f"<iq type='get' id='d' to='alice@localhost'><query xmlns='{NS_ITEMS}'/></iq>"
    assert nodes(await iq(h, alice, disco_items)) == ["open", "pres", "wl"]
    assert nodes(await iq(h, bob, disco_items)) == ["open", "pres"]
    assert nodes(await iq(h, carol, disco_items)) == ["open"]
    node_info = await iq(
        h,
        bob,
        f"<iq type='get' id='d' to='alice@localhost'><query xmlns='{NS_INFO}' node='pres'/></iq>",
    )
    assert node_info.find(f"{{{NS_INFO}}}query/{{{NS_INFO}}}identity").get("type") == "leaf"


# --- PEP_REQUEST, PEP_CHANGED, persistence, account removal ------------------------------------


async def test_pep_request_and_changed_events(h: ModuleHarness) -> None:
    changes: list[tuple[str, str, str | None]] = []

    async def changed(event: ev.PepChanged) -> None:
        changes.append((event.node, event.action, event.item_id))

    h.host().bus.add_notify(ev.PEP_CHANGED, changed, 0)
    owner = JID.parse("alice@localhost")
    node = "urn:xmpp:bookmarks:1"
    payload = etree.fromstring("<conference xmlns='urn:xmpp:bookmarks:1' name='x'/>")
    opts = {"pubsub#access_model": ["whitelist"], "pubsub#max_items": ["max"]}
    req = ev.PepRequest(owner, node, "publish", "room@muc", payload, opts)
    assert await h.host().bus.chain(ev.PEP_REQUEST, req)
    assert req.error is None
    req = ev.PepRequest(
        owner, node, "publish", "r2@muc", payload, {"pubsub#access_model": ["open"]}
    )
    await h.host().bus.chain(ev.PEP_REQUEST, req)
    assert req.error is not None
    assert req.error.condition == "conflict"
    req = ev.PepRequest(owner, node, "items")
    await h.host().bus.chain(ev.PEP_REQUEST, req)
    assert [i for i, _ in req.items] == ["room@muc"]
    await h.host().bus.chain(ev.PEP_REQUEST, ev.PepRequest(owner, node, "retract", "room@muc"))
    req = ev.PepRequest(owner, node, "retract", "room@muc")
    await h.host().bus.chain(ev.PEP_REQUEST, req)
    assert req.error is not None
    assert req.error.condition == "item-not-found"
    await h.host().bus.chain(ev.PEP_REQUEST, ev.PepRequest(owner, node, "delete"))
    req = ev.PepRequest(owner, "absent", "items")
    await h.host().bus.chain(ev.PEP_REQUEST, req)
    assert req.items == []
    assert req.error is None
    assert changes == [
        (node, "publish", "room@muc"),
        (node, "retract", "room@muc"),
        (node, "delete", None),
    ]


async def test_items_and_config_survive_restart(tmp_path: Path) -> None:
    kwargs = {"modules_enabled": MODULES, "storage": "sqlite"}
    async with ModuleHarness.started(tmp_path, **kwargs) as h:
        alice = await h.connect("alice@localhost/a")
        for n in ("1", "2", "3"):
            await iq(
                h,
                alice,
                publish_iq(
                    "n",
                    tune(n),
                    item_id=n,
                    options={"pubsub#max_items": "2", "pubsub#access_model": "open"},
                ),
            )
    async with ModuleHarness.started(tmp_path, accounts=(), **kwargs) as h:
        alice = await h.connect("alice@localhost/a")
        got = await items(h, alice, "alice@localhost", "n")
        assert item_ids(got) == ["2", "3"]
        assert [t.text for t in got.iter(f"{{{NS_TUNE}}}title")] == ["2", "3"]
        node = (await pep_module(h).nodes_of("alice"))["n"]
        assert (node.config.access_model, node.config.max_items) == ("open", 2)


async def test_account_removal_drops_nodes(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a")
    await iq(h, alice, publish_iq("n", tune("a")))
    await h.server.account_removed(JID.parse("alice@localhost"))
    await h.server.accounts.create(JID.parse("alice@localhost"), "pw")
    assert await pep_module(h).nodes_of("alice") == {}
    assert await pep_module(h).store.keys("alice") == []


async def test_empty_item_id_gets_a_generated_one(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a")
    reply = await iq(h, alice, publish_iq("n", tune("a"), item_id=""))
    (generated,) = item_ids(reply)
    assert len(generated) == 32


async def test_account_storage_quota(tmp_path: Path) -> None:
    async with ModuleHarness.started(
        tmp_path, modules_enabled=MODULES, modules={"pep": {"max_account_size": 3000}}
    ) as h:
        alice = await h.connect("alice@localhost/a")
        big = f"<data xmlns='urn:x'>{'x' * 1200}</data>"
        for node in ("a", "b"):
            assert (await iq(h, alice, publish_iq(node, big))).get("type") == "result"
        reply = await iq(h, alice, publish_iq("c", big))
        assert error_condition(reply) == "not-acceptable"
        # Replacing an item (max_items 1) frees what it replaces: allowed.
        assert (await iq(h, alice, publish_iq("a", big, item_id="2"))).get("type") == "result"
        await iq(
            h,
            alice,
            f"<iq type='set' id='d'><pubsub xmlns='{NS_OWNER}'><delete node='b'/></pubsub></iq>",
        )
        assert (await iq(h, alice, publish_iq("c", big))).get("type") == "result"


async def test_config_change_notifies_when_configured(h: ModuleHarness) -> None:
    await link(h, "alice", "bob", "both")
    alice = await h.connect("alice@localhost/a")
    await iq(h, alice, publish_iq("n", tune("a"), options={"pubsub#notify_config": "1"}))
    bob = await online(h, "bob@localhost/b", ["n"])
    h.take(bob)
    await iq(h, alice, owner_form("n", {"pubsub#title": "Tunes"}))
    (note,) = events(h.take(bob))
    config = note.find(f".//{{{NS_EVENT}}}configuration")
    assert config is not None
    assert config.get("node") == "n"
    values = {
        f.get("var"): f.findtext("{jabber:x:data}value")
        for f in config.iter("{jabber:x:data}field")
    }
    assert values["pubsub#title"] == "Tunes"


async def test_bounced_notification_stops_notifications_to_that_resource(h: ModuleHarness) -> None:
    await link(h, "alice", "bob", "both")
    alice = await h.connect("alice@localhost/a", priority=0)
    bob = await online(h, "bob@localhost/b", [NS_TUNE])
    h.take(bob)
    await iq(h, alice, publish_iq(NS_TUNE, tune("a")))
    (note,) = events(h.take(bob))
    h.take(alice)
    await h.send(
        bob,
        f"<message type='error' id='{note.get('id')}' to='alice@localhost'>"
        "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        "</error></message>",
    )
    assert h.take(alice) == []  # consumed: the owner's clients do not see the bounce
    await iq(h, alice, publish_iq(NS_TUNE, tune("b"), item_id="2"))
    assert events(h.take(bob)) == []


async def test_caps_in_presence_to_a_full_jid_count_only_from_subscriptions(
    h: ModuleHarness,
) -> None:
    await link(h, "alice", "bob", "to")  # alice is subscribed to bob's presence
    alice = await h.connect("alice@localhost/a", priority=0)
    owner = JID.parse("alice@localhost")
    features = [NS_INFO, f"{NS_TUNE}+notify"]
    carol = await h.connect("carol@localhost/c")
    await h.send(
        carol, caps_presence(features).replace("<presence>", "<presence to='alice@localhost/a'>")
    )
    await settle(h)
    assert disco_queries(carol, h) == []
    assert caps_module(h).features_of(owner, carol.full_jid) is None
    bob = await h.connect("bob@localhost/b")
    # A room occupant's presence (XEP-0045) is not a contact's caps, even from a contact.
    muc = caps_presence(features).replace(
        "</presence>", "<x xmlns='http://jabber.org/protocol/muc#user'/></presence>"
    )
    await h.send(bob, muc.replace("<presence>", "<presence to='alice@localhost/a'>"))
    await settle(h)
    assert disco_queries(bob, h) == []
    await h.send(
        bob, caps_presence(features).replace("<presence>", "<presence to='alice@localhost/a'>")
    )
    await settle(h)
    (query,) = disco_queries(bob, h)
    await h.send(bob, disco_answer(query, features))
    await asyncio.gather(*caps_module(h)._tasks)
    assert caps_module(h).features_of(owner, bob.full_jid) == frozenset(features)
    h.take(alice)


async def test_no_notifications_to_a_blocked_contact(tmp_path: Path) -> None:
    async with ModuleHarness.started(
        tmp_path, accounts=("alice", "bob"), modules_enabled=[*MODULES, "blocking"]
    ) as h:
        await link(h, "alice", "bob", "both")
        alice = await online(h, "alice@localhost/a", [NS_TUNE])
        bob = await online(h, "bob@localhost/b", [NS_TUNE])  # his interest is known now
        await iq(h, alice, publish_iq(NS_TUNE, tune("first")))
        assert [e.findtext(f".//{{{NS_TUNE}}}title") for e in events(h.take(bob))] == ["first"]
        block = "<item jid='bob@localhost'/>"
        await iq(
            h,
            alice,
            f"<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'>{block}</block></iq>",
        )

        # XEP-0191 §3.3: nothing in alice's name reaches bob while she blocks him.
        await iq(h, alice, publish_iq(NS_TUNE, tune("second")))
        await settle(h)
        assert events(h.take(bob)) == []
        assert [e.findtext(f".//{{{NS_TUNE}}}title") for e in events(h.take(alice))] == [
            "first",
            "second",
        ]

        await iq(
            h,
            alice,
            f"<iq type='set' id='b2'><unblock xmlns='urn:xmpp:blocking'>{block}</unblock></iq>",
        )
        await iq(h, alice, publish_iq(NS_TUNE, tune("third")))
        titles = [e.findtext(f".//{{{NS_TUNE}}}title") for e in events(h.take(bob))]
        assert titles == ["third"]


async def test_bounced_resource_is_notified_again_after_its_next_presence(
    h: ModuleHarness,
) -> None:
    await link(h, "alice", "bob", "both")
    alice = await h.connect("alice@localhost/a", priority=0)
    features = [NS_INFO, NS_CAPS, f"{NS_TUNE}+notify"]
    bob = await online(h, "bob@localhost/b", [NS_TUNE])
    await iq(h, alice, publish_iq(NS_TUNE, tune("a")))
    (note,) = events(h.take(bob))
    await h.send(
        bob,
        f"<message type='error' id='{note.get('id')}' to='alice@localhost'>"
        "<error type='wait'><resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        "</error></message>",
    )
    await iq(h, alice, publish_iq(NS_TUNE, tune("b"), item_id="2"))
    assert events(h.take(bob)) == []
    # The same caps again (nothing for the caps module to announce): bob's interest is back,
    # with the item he missed, and the next publish reaches him.
    await h.send(bob, caps_presence(features))
    await settle(h)
    assert disco_queries(bob, h) == []
    assert [e.findtext(f".//{{{NS_TUNE}}}title") for e in events(h.take(bob))] == ["b"]
    await iq(h, alice, publish_iq(NS_TUNE, tune("c"), item_id="3"))
    assert [e.findtext(f".//{{{NS_TUNE}}}title") for e in events(h.take(bob))] == ["c"]
    assert pep_module(h)._bounced == {}


async def test_bounce_is_forgotten_when_the_resource_goes_away(h: ModuleHarness) -> None:
    await link(h, "alice", "bob", "both")
    alice = await h.connect("alice@localhost/a", priority=0)
    bob = await online(h, "bob@localhost/b", [NS_TUNE])
    await iq(h, alice, publish_iq(NS_TUNE, tune("a")))
    (note,) = events(h.take(bob))
    # A bounce from an entity that is not interested, or not to a notification, is left alone.
    await h.send(
        bob,
        "<message type='error' id='other' to='alice@localhost'>"
        "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        "</error></message>",
    )
    assert pep_module(h)._bounced == {}
    await h.send(
        bob,
        f"<message type='error' id='{note.get('id')}' to='alice@localhost'>"
        "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        "</error></message>",
    )
    owner = JID.parse("alice@localhost")
    assert pep_module(h)._bounced == {owner: {bob.full_jid: frozenset({NS_TUNE})}}
    await h.send(bob, "<presence type='unavailable'/>")
    assert pep_module(h)._bounced == {}
    assert (
        owner not in pep_module(h)._interest or bob.full_jid not in pep_module(h)._interest[owner]
    )


async def test_node_cache_is_bounded_against_strangers(tmp_path: Path) -> None:
    users = [f"u{i}" for i in range(8)]
    async with ModuleHarness.started(
        tmp_path,
        accounts=("alice", "carol", *users),
        modules_enabled=MODULES,
        modules={"pep": {"cache_accounts": 3}},
    ) as h:
        pep = pep_module(h)
        alice = await h.connect("alice@localhost/a")
        await iq(h, alice, publish_iq("n", tune("alice")))
        for user in users:
            owner = JID.parse(f"{user}@localhost")
            for n in ("1", "2"):
                payload = etree.fromstring(tune(f"{user}-{n}"))
                await pep.publish(
                    owner,
                    "open",
                    n,
                    payload,
                    options={"pubsub#max_items": ["2"], "pubsub#access_model": ["open"]},
                )
            await pep.publish(owner, "secret", "s", etree.fromstring(tune("secret")))
            assert len(pep._nodes) <= 3
        carol = await h.connect("carol@localhost/c")
        for user in users:  # a stranger reads every account's open node
            got = await items(h, carol, f"{user}@localhost", "open")
            assert [t.text for t in got.iter(f"{{{NS_TUNE}}}title")] == [f"{user}-1", f"{user}-2"]
            assert len(pep._nodes) <= 3
        # The account with a session stays loaded; the others were evicted along the way.
        assert "alice" in pep._nodes
        assert "u0" not in pep._nodes
        # Refused requests on an account that is not loaded do not load its payloads.
        reply = await items(h, carol, "u0@localhost", "secret")
        assert error_condition(reply) == "not-authorized"
        disco = await iq(
            h,
            carol,
            f"<iq type='get' id='d' to='u0@localhost'><query xmlns='{NS_ITEMS}'/></iq>",
        )
        assert [i.get("node") for i in disco.iter(f"{{{NS_ITEMS}}}item")] == ["open"]
        info = await iq(
            h,
            carol,
            f"<iq type='get' id='d' to='u0@localhost'><query xmlns='{NS_INFO}' node='secret'/>"
            "</iq>",
        )
        assert info.find(f".//{{{NS_INFO}}}identity[@type='leaf']") is None
        assert "u0" not in pep._nodes
        # Writes after eviction start from storage: order, trimming and the quota hold.
        await pep.publish(JID.parse("u0@localhost"), "open", "3", etree.fromstring(tune("u0-3")))
        got = await items(h, carol, "u0@localhost", "open")
        assert [t.text for t in got.iter(f"{{{NS_TUNE}}}title")] == ["u0-2", "u0-3"]
        assert item_ids(await items(h, alice, "alice@localhost", "n")) == ["1"]
        assert len(pep._nodes) <= 3
        assert pep._locks == {}  # one per account only while in use


async def test_strangers_cannot_crowd_contacts_out_of_caps_tracking(tmp_path: Path) -> None:
    async with ModuleHarness.started(
        tmp_path,
        accounts=("alice", "bob", "carol"),
        modules_enabled=MODULES,
        modules={"caps": {"max_entities": 4}},
    ) as h:
        await link(h, "alice", "bob", "to")  # alice is subscribed to bob's presence
        await h.connect("alice@localhost/a")
        owner = JID.parse("alice@localhost")
        module = caps_module(h)
        for i in range(4):  # directed presence from a stranger's resources
            carol = await h.connect(f"carol@localhost/c{i}")
            await h.send(carol, "<presence to='alice@localhost'/>")
        assert len(module._seen[owner]) == 2  # half of the table at most
        bobs = [await h.connect(f"bob@localhost/b{i}") for i in range(3)]
        for bob in bobs:
            await h.send(bob, "<presence to='alice@localhost'/>")
        assert [module.features_of(owner, b.full_jid) for b in bobs] == [
            frozenset(),
            frozenset(),
            None,  # the table is full now
        ]
        # A stranger that goes away frees its place.
        carol0 = h.server.sessions.get(JID.parse("carol@localhost/c0"))
        assert carol0 is not None
        await h.send(carol0, "<presence to='alice@localhost' type='unavailable'/>")
        assert module._strangers[owner] == {JID.parse("carol@localhost/c1")}
        await h.send(bobs[2], "<presence to='alice@localhost'/>")
        assert module.features_of(owner, bobs[2].full_jid) == frozenset()
