"""RFC 6121 §2 roster management and §3 subscription handling (xeps/roster.py), tier 2."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
from lxml import etree

from tests.helpers.harness import ModuleHarness, error_condition, parse_element
from xeps.roster import NS_PREAPPROVAL, NS_ROSTER, NS_ROSTERVER, RosterModule
from xmppd import events as ev
from xmppd.jid import JID
from xmppd.session import Session

Q = f"{{{NS_ROSTER}}}query"
ITEM = f"{{{NS_ROSTER}}}item"


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with ModuleHarness.started(
        tmp_path, accounts=("alice", "bob", "carol"), modules_enabled=["roster", "presence"]
    ) as harness:
        yield harness


def module(h: ModuleHarness) -> RosterModule:
    return cast(RosterModule, h.host().modules["roster"])


async def roster_get(h: ModuleHarness, session: Session, ver: str | None = None) -> etree._Element:
    ver_attr = "" if ver is None else f" ver='{ver}'"
    await h.send(session, f"<iq type='get' id='get1'><query xmlns='{NS_ROSTER}'{ver_attr}/></iq>")
    return h.take_one(session)


async def roster_set(h: ModuleHarness, session: Session, items: str, to: str = "") -> None:
    to_attr = f" to='{to}'" if to else ""
    await h.send(
        session,
        f"<iq type='set' id='set1'{to_attr}><query xmlns='{NS_ROSTER}'>{items}</query></iq>",
    )


def result_of(elements: list[etree._Element], id_: str = "set1") -> etree._Element:
    found = [e for e in elements if e.tag == "{jabber:client}iq" and e.get("id") == id_]
    assert len(found) == 1, [etree.tostring(e) for e in elements]
    return found[0]


def push_items(elements: list[etree._Element]) -> list[etree._Element]:
    return [
        item
        for e in elements
        if e.tag == "{jabber:client}iq" and e.get("type") == "set"
        for item in e.iter(ITEM)
    ]


# --- get / set / remove ------------------------------------------------------------------


async def test_empty_roster_get_has_a_version(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a")
    reply = await roster_get(h, alice)
    assert reply.get("type") == "result"
    query = reply.find(Q)
    assert query is not None
    assert len(query) == 0
    assert query.get("ver")
    assert alice.interested


async def test_set_adds_item_and_pushes_to_every_interested_resource(h: ModuleHarness) -> None:
    a1 = await h.connect("alice@localhost/one")
    a2 = await h.connect("alice@localhost/two")
    quiet = await h.connect("alice@localhost/quiet")  # never asked for the roster
    await roster_get(h, a1)
    await roster_get(h, a2)

    await roster_set(
        h,
        a1,
        "<item jid='Bob@LOCALHOST' name='Bob'><group>Friends</group><group>Work</group></item>",
    )

    got1 = h.take(a1)
    assert result_of(got1).get("type") == "result"
    for got in (got1, h.take(a2)):
        (item,) = push_items(got)
        assert item.get("jid") == "bob@localhost"
        assert item.get("name") == "Bob"
        assert item.get("subscription") == "none"
        assert [g.text for g in item] == ["Friends", "Work"]
    assert h.take(quiet) == []
    query = (await roster_get(h, a1)).find(Q)
    assert query is not None
    assert [i.get("jid") for i in query] == ["bob@localhost"]


async def test_push_is_an_iq_set_from_the_bare_jid_with_version(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a")
    await roster_get(h, alice)
    await roster_set(h, alice, "<item jid='bob@localhost'/>")
    push = next(e for e in h.take(alice) if e.get("type") == "set")
    assert push.get("from") == "alice@localhost"
    assert push.get("to") == "alice@localhost/a"
    query = push.find(Q)
    assert query is not None
    assert query.get("ver")


async def test_update_replaces_name_and_groups(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a")
    await roster_get(h, alice)
    await roster_set(h, alice, "<item jid='bob@localhost' name='B'><group>G</group></item>")
    await roster_set(h, alice, "<item jid='bob@localhost'/>")
    h.take(alice)
    query = (await roster_get(h, alice)).find(Q)
    assert query is not None
    (item,) = list(query)
    assert item.get("name") is None
    assert len(item) == 0


async def test_remove_pushes_removal(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a")
    other = await h.connect("alice@localhost/b")
    await roster_get(h, alice)
    await roster_get(h, other)
    await roster_set(h, alice, "<item jid='bob@localhost'/>")
    h.take(alice)
    h.take(other)

    await roster_set(h, alice, "<item jid='bob@localhost' subscription='remove'/>")

    got = h.take(alice)
    assert result_of(got).get("type") == "result"
    for elements in (got, h.take(other)):
        (item,) = push_items(elements)
        assert item.get("subscription") == "remove"
        assert item.get("jid") == "bob@localhost"
    query = (await roster_get(h, alice)).find(Q)
    assert query is not None
    assert len(query) == 0


async def test_remove_of_missing_item_is_item_not_found(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a")
    await roster_set(h, alice, "<item jid='nobody@localhost' subscription='remove'/>")
    assert error_condition(h.take_one(alice)) == "item-not-found"


async def test_remove_cancels_subscriptions_both_ways(h: ModuleHarness) -> None:
    # §2.5.2: unsubscribe and unsubscribed go to the contact; the contact's roster follows.
    alice = await h.connect("alice@localhost/a", priority=0)
    bob = await h.connect("bob@localhost/b", priority=0)
    await roster_get(h, bob)
    await h.send(alice, "<presence to='bob@localhost' type='subscribe'/>")
    await h.send(bob, "<presence to='alice@localhost' type='subscribed'/>")
    await h.send(bob, "<presence to='alice@localhost' type='subscribe'/>")
    await h.send(alice, "<presence to='bob@localhost' type='subscribed'/>")
    h.take(alice)
    h.take(bob)
    assert (await module(h).get_roster("bob")).items["alice@localhost"].state == "Both"

    await roster_set(h, alice, "<item jid='bob@localhost' subscription='remove'/>")

    got = h.take(bob)
    types = [e.get("type") for e in got if e.tag == "{jabber:client}presence"]
    assert "unsubscribe" in types
    assert "unsubscribed" in types
    assert "unavailable" in types  # alice's presence is no longer bob's business
    # A.3.2 Both -> To (unsubscribe), then A.3.4 To -> None (unsubscribed): one push each.
    assert [i.get("subscription") for i in push_items(got)] == ["to", "none"]
    assert (await module(h).get_roster("bob")).items["alice@localhost"].state == "None"


# --- versioning (§2.6) -------------------------------------------------------------------


async def test_stream_features_announce_versioning_and_pre_approval(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a")
    features = [provider(alice) for provider in h.host().stream_features]
    tags = {f.tag for f in features if f is not None}
    assert f"{{{NS_ROSTERVER}}}ver" in tags
    assert f"{{{NS_PREAPPROVAL}}}sub" in tags


async def test_current_version_gets_an_empty_result_then_pushes(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a")
    await roster_set(h, alice, "<item jid='bob@localhost'/>")
    h.take(alice)
    ver = (await roster_get(h, alice)).find(Q).get("ver")  # type: ignore[union-attr]

    reply = await roster_get(h, alice, ver)
    assert reply.get("type") == "result"
    assert len(reply) == 0

    await roster_set(h, alice, "<item jid='carol@localhost'/>")
    push = next(e for e in h.take(alice) if e.get("type") == "set")
    new_ver = push.find(Q).get("ver")  # type: ignore[union-attr]
    assert new_ver
    assert new_ver != ver


@pytest.mark.parametrize("ver", ["", "stale", "0"])
async def test_other_version_gets_the_full_roster(h: ModuleHarness, ver: str) -> None:
    alice = await h.connect("alice@localhost/a")
    await roster_set(h, alice, "<item jid='bob@localhost'/>")
    h.take(alice)
    query = (await roster_get(h, alice, ver)).find(Q)
    assert query is not None
    assert [i.get("jid") for i in query] == ["bob@localhost"]
    assert query.get("ver") not in (None, ver)


# --- error cases (§2.3.3, §2.5.3) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "condition"),
    [
        ("<item jid='bob@localhost'/><item jid='carol@localhost'/>", "bad-request"),
        ("", "bad-request"),
        ("<item jid='bob@localhost'><group>A</group><group>A</group></item>", "bad-request"),
        ("<item jid='bob@localhost'><group></group></item>", "not-acceptable"),
        (f"<item jid='bob@localhost' name='{'n' * 1025}'/>", "not-acceptable"),
        (f"<item jid='bob@localhost'><group>{'g' * 1025}</group></item>", "not-acceptable"),
        ("<item name='no jid'/>", "bad-request"),
        ("<item jid='@@bad@@'/>", "jid-malformed"),
        ("<item jid='alice@localhost'/>", "not-allowed"),
    ],
)
async def test_bad_roster_set_is_refused(h: ModuleHarness, items: str, condition: str) -> None:
    alice = await h.connect("alice@localhost/a")
    await roster_get(h, alice)
    await roster_set(h, alice, items)
    reply = h.take_one(alice)  # the error only: no push
    assert reply.get("type") == "error"
    assert error_condition(reply) == condition
    assert (await module(h).get_roster("alice")).items == {}


@pytest.mark.parametrize("verb", ["get", "set"])
async def test_another_accounts_roster_is_forbidden(h: ModuleHarness, verb: str) -> None:
    alice = await h.connect("alice@localhost/a")
    payload = "<item jid='carol@localhost'/>" if verb == "set" else ""
    await h.send(
        alice,
        f"<iq type='{verb}' id='x' to='bob@localhost'><query xmlns='{NS_ROSTER}'>{payload}"
        "</query></iq>",
    )
    assert error_condition(h.take_one(alice)) == "forbidden"
    assert (await module(h).get_roster("bob")).items == {}


async def test_subscription_attribute_other_than_remove_is_ignored(h: ModuleHarness) -> None:
    # §2.1.2.5: "the server MUST ignore all values of the 'subscription' attribute other than
    # 'remove'" in a roster set; 'ask' and 'approved' are the server's to set as well.
    alice = await h.connect("alice@localhost/a")
    await roster_set(
        h, alice, "<item jid='bob@localhost' subscription='both' ask='subscribe' approved='true'/>"
    )
    assert h.take_one(alice).get("type") == "result"
    item = (await module(h).get_roster("alice")).items["bob@localhost"]
    assert item.state == "None"
    assert not item.approved


async def test_roster_size_limit(tmp_path: Path) -> None:
    async with ModuleHarness.started(
        tmp_path,
        accounts=("alice", "bob"),
        modules_enabled=["roster", "presence"],
        modules={"roster": {"max_items": 2}},
    ) as h:
        alice = await h.connect("alice@localhost/a")
        await roster_set(h, alice, "<item jid='x1@example.org'/>")
        await roster_set(h, alice, "<item jid='x2@example.org'/>")
        h.take(alice)
        await roster_set(h, alice, "<item jid='x3@example.org'/>")
        assert error_condition(h.take_one(alice)) == "not-allowed"
        await roster_set(h, alice, "<item jid='x2@example.org' name='update is fine'/>")
        assert h.take_one(alice).get("type") == "result"
        # Strangers' waiting requests do not count against the user's own items...
        bob = await h.connect("bob@localhost/b", priority=0)
        await h.server.router.route(
            parse_element("<presence from='bob@localhost' to='alice@localhost' type='subscribe'/>")
        )
        assert h.take(bob) == []
        assert (await module(h).get_roster("alice")).items["bob@localhost"].pending_in
        # ...but the user cannot add a third contact by subscribing either.
        await h.send(alice, "<presence to='carol@example.org' type='subscribe'/>")
        assert error_condition(h.take_one(alice)) == "not-allowed"


async def test_waiting_requests_are_limited_and_kept_small(tmp_path: Path) -> None:
    """F: a flood of requests from strangers can neither fill the roster nor be replayed in
    full at every login: at most max_pending wait, each kept as addresses, status and nick."""
    async with ModuleHarness.started(
        tmp_path,
        accounts=("alice", "bob"),
        modules_enabled=["roster", "presence"],
        modules={"roster": {"max_pending": 2}},
    ) as h:
        bob = await h.connect("bob@localhost/b", priority=0)
        big = "x" * 5000
        for sender in ("s1@example.org", "s2@example.org"):
            await h.server.router.route(
                parse_element(
                    f"<presence from='{sender}' to='alice@localhost' type='subscribe'>"
                    f"<status>{big}</status><nick xmlns='http://jabber.org/protocol/nick'>N</nick>"
                    f"<junk xmlns='urn:example'>{big}</junk></presence>"
                )
            )
        await h.server.router.route(
            parse_element("<presence from='bob@localhost' to='alice@localhost' type='subscribe'/>")
        )
        assert error_condition(h.take_one(bob)) == "resource-constraint"
        alice = await h.connect("alice@localhost/a", priority=0, drain=False)
        requests = [e for e in h.take(alice) if e.get("type") == "subscribe"]
        assert sorted(r.get("from") for r in requests) == ["s1@example.org", "s2@example.org"]
        for request in requests:
            assert len(request.findtext("{jabber:client}status") or "") == 1024
            assert request.findtext("{http://jabber.org/protocol/nick}nick") == "N"
            assert request.find("{urn:example}junk") is None
        # The user's own contacts are not limited by the waiting requests.
        await roster_set(h, alice, "<item jid='friend@example.org'/>")
        assert h.take_one(alice).get("type") == "result"


# --- subscriptions beyond the tables -----------------------------------------------------


async def test_subscribe_to_self_is_not_allowed(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a", priority=0)
    await h.send(alice, "<presence to='alice@localhost' type='subscribe' id='s'/>")
    reply = h.take_one(alice)
    assert reply.get("type") == "error"
    assert error_condition(reply) == "not-allowed"
    assert (await module(h).get_roster("alice")).items == {}


async def test_subscribe_to_missing_account_is_answered_unsubscribed(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a", priority=0)
    await roster_get(h, alice)
    await h.send(alice, "<presence to='nobody@localhost' type='subscribe'/>")
    got = h.take(alice)
    subs = [i.get("subscription") + ("+ask" if i.get("ask") else "") for i in push_items(got)]
    assert subs == ["none+ask", "none"]  # pending out, then cancelled by the "unsubscribed"
    unsubscribed = [e for e in got if e.get("type") == "unsubscribed"]
    assert [e.get("from") for e in unsubscribed] == ["nobody@localhost"]
    assert (await module(h).get_roster("alice")).items["nobody@localhost"].state == "None"


async def test_request_to_offline_user_is_kept_and_redelivered_to_each_new_resource(
    h: ModuleHarness,
) -> None:
    alice = await h.connect("alice@localhost/a", priority=0)
    await h.send(
        alice, "<presence to='bob@localhost' type='subscribe'><status>hi, Bob</status></presence>"
    )
    bob = await h.connect("bob@localhost/one", drain=False)
    assert h.take(bob) == []  # not yet available
    await h.send(bob, "<presence/>")
    got = [e for e in h.take(bob) if e.get("type") == "subscribe"]
    assert len(got) == 1
    assert got[0].get("from") == "alice@localhost"
    assert got[0].findtext("{jabber:client}status") == "hi, Bob"
    # Not in bob's roster while pending (§3.1.3).
    query = (await roster_get(h, bob)).find(Q)
    assert query is not None
    assert len(query) == 0

    two = await h.connect("bob@localhost/two", drain=False)
    await h.send(two, "<presence/>")
    assert len([e for e in h.take(two) if e.get("type") == "subscribe"]) == 1
    await h.send(two, "<presence to='alice@localhost' type='subscribed'/>")
    three = await h.connect("bob@localhost/three", drain=False)
    await h.send(three, "<presence/>")
    assert [e for e in h.take(three) if e.get("type") == "subscribe"] == []
    assert (await module(h).get_roster("bob")).items["alice@localhost"].state == "From"
    assert (await module(h).get_roster("alice")).items["bob@localhost"].state == "To"


async def test_denied_request_from_stranger_leaves_no_item(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a", priority=0)
    bob = await h.connect("bob@localhost/b", priority=0)
    await h.send(alice, "<presence to='bob@localhost' type='subscribe'/>")
    await h.send(bob, "<presence to='alice@localhost' type='unsubscribed'/>")
    assert "alice@localhost" not in (await module(h).get_roster("bob")).items
    assert (await module(h).get_roster("alice")).items["bob@localhost"].state == "None"


async def test_pre_approval_is_used_by_a_later_request(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a", priority=0)
    bob = await h.connect("bob@localhost/b", priority=0)
    await roster_get(h, bob)
    await h.send(bob, "<presence to='alice@localhost' type='subscribed'/>")
    (item,) = push_items(h.take(bob))
    assert item.get("approved") == "true"
    assert h.take(alice) == []  # a pre-approval is not routed

    await h.send(alice, "<presence to='bob@localhost' type='subscribe'/>")

    got = h.take(bob)
    assert [e for e in got if e.get("type") == "subscribe"] == []  # approved on bob's behalf
    (item,) = push_items(got)
    assert item.get("subscription") == "from"
    assert item.get("approved") is None
    assert (await module(h).get_roster("alice")).items["bob@localhost"].state == "To"
    # and bob's presence reached alice at once (§3.1.5)
    assert any(e.get("from") == "bob@localhost/b" and e.get("type") is None for e in h.take(alice))


async def test_unsubscribed_cancels_a_pre_approval(h: ModuleHarness) -> None:
    bob = await h.connect("bob@localhost/b", priority=0)
    await h.send(bob, "<presence to='alice@localhost' type='subscribed'/>")
    await h.send(bob, "<presence to='alice@localhost' type='unsubscribed'/>")
    assert not (await module(h).get_roster("bob")).items["alice@localhost"].approved


async def test_roster_query_event_reports_visible_items(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a", priority=0)
    bob = await h.connect("bob@localhost/b", priority=0)
    await h.send(alice, "<presence to='bob@localhost' type='subscribe'/>")
    await h.send(bob, "<presence to='alice@localhost' type='subscribed'/>")
    await h.send(
        carol := await h.connect("carol@localhost/c"),
        "<presence to='bob@localhost' type='subscribe'/>",
    )
    del carol
    query = ev.RosterQuery(JID.parse("bob@localhost"))
    assert await h.host().bus.chain(ev.ROSTER_QUERY, query)
    assert query.subscriptions == {JID.parse("alice@localhost"): "from"}  # carol's is pending
    one = ev.RosterQuery(JID.parse("alice@localhost"), JID.parse("bob@localhost"))
    assert await h.host().bus.chain(ev.ROSTER_QUERY, one)
    assert one.subscription(JID.parse("bob@localhost")) == "to"
    assert one.subscription(JID.parse("carol@localhost")) == "none"


async def test_roster_of_an_account_is_reread_after_its_last_session_ends(
    h: ModuleHarness,
) -> None:
    # Rosters of online accounts are cached; the cache must not outlive the last session.
    alice = await h.connect("alice@localhost/a")
    second = await h.connect("alice@localhost/b")
    await roster_get(h, alice)
    await h.disconnect(alice)
    store = h.server.keyvalue("localhost", "roster")
    fresh = {"epoch": "x", "counter": 7, "items": [{"jid": "dave@example.org", "sub": "to"}]}
    await store.set("alice", "roster", fresh)
    query = (await roster_get(h, second)).find(Q)
    assert query is not None
    assert len(query) == 0  # still cached while a session is bound
    await h.disconnect(second)

    again = await h.connect("alice@localhost/c")
    query = (await roster_get(h, again)).find(Q)
    assert query is not None
    assert query.get("ver") == "x-7"
    assert [(i.get("jid"), i.get("subscription")) for i in query] == [("dave@example.org", "to")]
