"""RFC 6121 §4 presence (xeps/presence.py): broadcast, probes, directed presence, filtering.

Tier 2: subscriptions are written straight into both rosters (mirrored, as two servers in sync
would hold them); the stanzas then go through the real router.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
from lxml import etree

from tests.helpers.harness import ModuleHarness, error_condition
from xeps.roster import Item, RosterModule
from xmppd.session import Session

MIRROR = {"none": "none", "to": "from", "from": "to", "both": "both"}


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with ModuleHarness.started(
        tmp_path, accounts=("alice", "bob", "carol"), modules_enabled=["roster", "presence"]
    ) as harness:
        yield harness


async def link(h: ModuleHarness, user: str, contact: str, sub: str) -> None:
    """`user` has `sub` towards `contact`; the contact's roster holds the mirror."""
    module = cast(RosterModule, h.host().modules["roster"])
    for owner, other, state in ((user, contact, sub), (contact, user, MIRROR[sub])):
        roster = await module.get_roster(owner)
        item = Item(
            f"{other}@localhost", to=state in ("to", "both"), from_=state in ("from", "both")
        )
        roster.items[item.jid] = item
        roster.counter += 1
        await module.put_roster(owner, roster)


def presences(elements: list[etree._Element], type_: str | None = None) -> list[etree._Element]:
    return [e for e in elements if e.tag == "{jabber:client}presence" and e.get("type") == type_]


def senders(elements: list[etree._Element], type_: str | None = None) -> list[str]:
    return sorted(e.get("from") or "" for e in presences(elements, type_))


# --- initial presence and probes (§4.2, §4.3) --------------------------------------------


async def test_initial_presence_goes_to_subscribers_only(h: ModuleHarness) -> None:
    await link(h, "alice", "bob", "from")  # bob receives alice's presence
    await link(h, "alice", "carol", "to")  # carol does not
    bob = await h.connect("bob@localhost/b", priority=0)
    carol = await h.connect("carol@localhost/c", priority=0)

    await h.connect("alice@localhost/a", priority=3)

    (got,) = presences(h.take(bob))
    assert got.get("from") == "alice@localhost/a"
    assert got.get("to") == "bob@localhost"
    assert got.findtext("{jabber:client}priority") == "3"
    assert senders(h.take(carol)) == []


async def test_login_probes_contacts_and_gets_each_available_resource(h: ModuleHarness) -> None:
    await link(h, "alice", "bob", "both")
    await link(h, "alice", "carol", "from")  # no subscription to carol: no probe
    b1 = await h.connect("bob@localhost/one", priority=1)
    b2 = await h.connect("bob@localhost/two", priority=2)
    await h.send(b2, "<presence><show>away</show><priority>2</priority></presence>")
    await h.connect("carol@localhost/c", priority=0)
    del b1

    alice = await h.connect("alice@localhost/a", drain=False)
    await h.send(alice, "<presence/>")

    got = h.take(alice)
    assert senders(got) == ["alice@localhost/a", "bob@localhost/one", "bob@localhost/two"]
    two = next(p for p in presences(got) if p.get("from") == "bob@localhost/two")
    assert two.findtext("{jabber:client}show") == "away"  # the last presence, as sent
    assert two.get("to") == "alice@localhost/a"


async def test_probe_of_offline_contact_is_answered_unavailable(h: ModuleHarness) -> None:
    await link(h, "alice", "bob", "to")
    alice = await h.connect("alice@localhost/a", drain=False)
    await h.send(alice, "<presence/>")
    (got,) = presences(h.take(alice), "unavailable")
    assert got.get("from") == "bob@localhost"


async def test_probe_without_subscription_is_answered_unsubscribed(h: ModuleHarness) -> None:
    # alice believes she is subscribed; bob's roster says otherwise: resynchronised (§4.3.2).
    module = cast(RosterModule, h.host().modules["roster"])
    roster = await module.get_roster("alice")
    roster.items["bob@localhost"] = Item("bob@localhost", to=True)
    await module.put_roster("alice", roster)
    await h.connect("bob@localhost/b", priority=0)

    alice = await h.connect("alice@localhost/a", drain=False)
    await h.send(alice, "<presence/>")

    got = h.take(alice)
    assert senders(got, "unsubscribed") == ["bob@localhost"]
    assert "bob@localhost/b" not in senders(got)
    assert (await module.get_roster("alice")).items["bob@localhost"].state == "None"


async def test_probe_from_client_to_stranger_reveals_nothing(h: ModuleHarness) -> None:
    bob = await h.connect("bob@localhost/b", priority=0)
    alice = await h.connect("alice@localhost/a", priority=0)
    await h.send(alice, "<presence to='bob@localhost' type='probe'/>")
    await h.send(alice, "<presence to='nobody@localhost' type='probe'/>")
    # Answered "unsubscribed" (§4.3.2), which alice's server then processes as inbound
    # "unsubscribed" for a JID not in her roster: no state, nothing delivered (A.3.4).
    assert h.take(alice) == []
    assert h.take(bob) == []
    module = cast(RosterModule, h.host().modules["roster"])
    assert (await module.get_roster("alice")).items == {}


# --- updates and unavailable (§4.4, §4.5) ------------------------------------------------


async def test_presence_update_goes_to_subscribers(h: ModuleHarness) -> None:
    await link(h, "alice", "bob", "both")
    alice = await h.connect("alice@localhost/a", priority=0)
    bob = await h.connect("bob@localhost/b", priority=0)
    h.take(alice)

    await h.send(alice, "<presence><show>dnd</show></presence>")

    (got,) = presences(h.take(bob))
    assert got.findtext("{jabber:client}show") == "dnd"


async def test_unavailable_with_status_goes_to_subscribers(h: ModuleHarness) -> None:
    await link(h, "alice", "bob", "from")
    alice = await h.connect("alice@localhost/a", priority=0)
    bob = await h.connect("bob@localhost/b", priority=0)

    await h.send(alice, "<presence type='unavailable'><status>gone fishing</status></presence>")

    (got,) = presences(h.take(bob), "unavailable")
    assert got.get("from") == "alice@localhost/a"
    assert got.findtext("{jabber:client}status") == "gone fishing"


async def test_connection_loss_broadcasts_unavailable_to_subscribers(h: ModuleHarness) -> None:
    await link(h, "alice", "bob", "both")
    alice = await h.connect("alice@localhost/a", priority=0)
    bob = await h.connect("bob@localhost/b", priority=0)
    h.take(bob)

    await h.disconnect(alice)

    assert senders(h.take(bob), "unavailable") == ["alice@localhost/a"]


# --- directed presence (§4.6) -------------------------------------------------------------


async def test_directed_presence_recipient_gets_unavailable_at_logout(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a", priority=0)
    carol = await h.connect("carol@localhost/c", priority=0)
    await h.send(alice, "<presence to='carol@localhost/c'><show>chat</show></presence>")
    assert senders(h.take(carol)) == ["alice@localhost/a"]  # no subscription needed

    await h.disconnect(alice)

    (got,) = presences(h.take(carol), "unavailable")
    assert got.get("from") == "alice@localhost/a"
    assert got.get("to") == "carol@localhost/c"


async def test_directed_unavailable_ends_tracking(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/a", priority=0)
    carol = await h.connect("carol@localhost/c", priority=0)
    await h.send(alice, "<presence to='carol@localhost/c'/>")
    await h.send(alice, "<presence to='carol@localhost/c' type='unavailable'/>")
    assert len(h.take(carol)) == 2

    await h.disconnect(alice)

    assert h.take(carol) == []


async def test_directed_presence_from_unavailable_session_is_cleaned_at_session_end(
    h: ModuleHarness,
) -> None:
    alice = await h.connect("alice@localhost/a")  # never sends initial presence
    carol = await h.connect("carol@localhost/c", priority=0)
    await h.send(alice, "<presence to='carol@localhost/c'/>")
    h.take(carol)

    await h.disconnect(alice)

    assert senders(h.take(carol), "unavailable") == ["alice@localhost/a"]


@pytest.mark.parametrize("to", ["bob@localhost", "bob@localhost/b"])
async def test_subscriber_gets_one_unavailable_even_after_directed_presence(
    h: ModuleHarness, to: str
) -> None:
    await link(h, "alice", "bob", "from")
    alice = await h.connect("alice@localhost/a", priority=0)
    bob = await h.connect("bob@localhost/b", priority=0)
    await h.send(alice, f"<presence to='{to}'/>")
    h.take(bob)

    await h.disconnect(alice)

    assert len(presences(h.take(bob), "unavailable")) == 1


# --- inbound filtering ---------------------------------------------------------------------


async def test_directed_presence_from_a_stranger_to_a_bare_jid_reaches_every_resource(
    h: ModuleHarness,
) -> None:
    """RFC 6121 §4.6 (directed presence to any entity) and §8.5.2.1.2 (available presence to a
    bare JID goes to all available resources), subscription or not."""
    alice = await h.connect("alice@localhost/a", priority=0)
    bob = await h.connect("bob@localhost/b", priority=0)
    bob2 = await h.connect("bob@localhost/c", priority=-1)
    await h.send(alice, "<presence to='bob@localhost'><status>hello</status></presence>")
    assert senders(h.take(bob)) == ["alice@localhost/a"]
    assert senders(h.take(bob2)) == ["alice@localhost/a"]
    await h.send(alice, "<presence to='bob@localhost/b'/>")  # full JID: that resource only
    assert senders(h.take(bob)) == ["alice@localhost/a"]
    assert h.take(bob2) == []


async def test_directed_presence_is_limited_per_session(tmp_path: Path) -> None:
    async with ModuleHarness.started(
        tmp_path,
        accounts=("alice", "bob"),
        modules_enabled=["roster", "presence"],
        modules={"presence": {"max_directed": 2}},
    ) as h:
        alice = await h.connect("alice@localhost/a", priority=0)
        for target in ("bob@localhost/r1", "bob@localhost/r2"):
            await h.send(alice, f"<presence to='{target}'/>")
        h.take(alice)
        await h.send(alice, "<presence to='bob@localhost/r3' id='p3'/>")
        assert error_condition(h.take_one(alice)) == "policy-violation"
        await h.send(alice, "<presence to='bob@localhost/r1' type='unavailable'/>")
        await h.send(alice, "<presence to='bob@localhost/r3' id='p4'/>")  # room again
        assert [e for e in h.take(alice) if e.get("type") == "error"] == []


async def test_available_presence_from_contact_we_subscribe_to_is_delivered(
    h: ModuleHarness,
) -> None:
    await link(h, "bob", "alice", "to")
    alice = await h.connect("alice@localhost/a", priority=0)
    bob = await h.connect("bob@localhost/b", priority=0)
    h.take(bob)
    await h.send(alice, "<presence to='bob@localhost'/>")
    assert senders(h.take(bob)) == ["alice@localhost/a"]


async def test_presence_to_own_bare_jid_is_delivered(h: ModuleHarness) -> None:
    one = await h.connect("alice@localhost/one", priority=0)
    two = await h.connect("alice@localhost/two", priority=0)
    await h.send(one, "<presence to='alice@localhost'/>")
    assert senders(h.take(two)) == ["alice@localhost/one"]


async def test_bad_priority_is_bad_request_and_broadcasts_nothing(h: ModuleHarness) -> None:
    await link(h, "alice", "bob", "from")
    bob = await h.connect("bob@localhost/b", priority=0)
    alice = await h.connect("alice@localhost/a")
    await h.send(alice, "<presence id='p'><priority>soon</priority></presence>")
    reply = h.take_one(alice)
    assert reply.get("type") == "error"
    assert h.take(bob) == []


# --- bare-JID message delivery option (§8.5.2.1.1) ------------------------------------------


async def deliver_to(h: ModuleHarness, sessions: list[Session]) -> list[int]:
    alice = await h.connect("alice@localhost/a", priority=0)
    await h.send(alice, "<message to='bob@localhost' type='chat'><body>hi</body></message>")
    return [len([e for e in h.take(s) if e.tag == "{jabber:client}message"]) for s in sessions]


async def test_bare_message_goes_to_highest_priority_by_default(h: ModuleHarness) -> None:
    high = await h.connect("bob@localhost/high", priority=5)
    low = await h.connect("bob@localhost/low", priority=1)
    neg = await h.connect("bob@localhost/neg", priority=-1)
    assert await deliver_to(h, [high, low, neg]) == [1, 0, 0]


async def test_option_delivers_bare_message_to_all_non_negative_resources(tmp_path: Path) -> None:
    async with ModuleHarness.started(
        tmp_path,
        accounts=("alice", "bob"),
        modules_enabled=["roster", "presence"],
        modules={"presence": {"deliver_to_all_resources": True}},
    ) as h:
        high = await h.connect("bob@localhost/high", priority=5)
        low = await h.connect("bob@localhost/low", priority=0)
        neg = await h.connect("bob@localhost/neg", priority=-1)
        assert await deliver_to(h, [high, low, neg]) == [1, 1, 0]


async def test_presence_handled_after_its_session_ended_changes_nothing(
    h: ModuleHarness,
) -> None:
    """A presence still in a handler when the connection went away must not make the ended
    session available again (nothing would ever send its unavailable)."""
    gone = await h.connect("alice@localhost/gone")
    sibling = await h.connect("alice@localhost/stays", priority=0)
    await h.server.session_ended(gone, "connection lost")
    h.take(sibling)
    await h.send(gone, "<presence><status>late</status></presence>")
    await h.send(gone, "<presence to='bob@localhost/x'/>")
    assert gone.available is False
    assert h.take(sibling) == []
    assert h.server.sessions.get(gone.full_jid) is None


async def test_a_removed_account_cancels_its_subscriptions(h: ModuleHarness) -> None:
    """Deleting alice (in-band or `xmppd deluser`) cancels both ways of her subscriptions, as
    removing each roster item would (RFC 6121 §2.5.2): a new account of the same name
    inherits no one's presence, and bob's roster no longer shares presence with the name."""
    await link(h, "alice", "bob", "both")
    alice = await h.connect("alice@localhost/a", priority=0)
    bob = await h.connect("bob@localhost/b", priority=0)
    h.take(bob)
    await h.server.accounts.delete(alice.full_jid.bare)
    assert await h.server.account_removed(alice.full_jid.bare) == 1
    got = h.take(bob)
    assert {p.get("type") for p in got if p.get("from", "").startswith("alice@")} >= {
        "unavailable",
        "unsubscribe",
        "unsubscribed",
    }
    item = (await cast(RosterModule, h.host().modules["roster"]).get_roster("bob")).items
    assert not item["alice@localhost"].to
    assert not item["alice@localhost"].from_
    assert await cast(RosterModule, h.host().modules["roster"]).get_roster("alice") is not None
    assert (await cast(RosterModule, h.host().modules["roster"]).get_roster("alice")).items == {}
