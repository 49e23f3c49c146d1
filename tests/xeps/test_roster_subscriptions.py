"""RFC 6121 Appendix A: every row of the subscription state tables, through the real router.

Tier 2 (ModuleHarness): alice's roster item for bob is put in each defined state (A.1), then a
subscription stanza is sent by alice (outbound, A.2) or arrives for alice (inbound, A.3). Each
case checks the new state, the roster push to alice's interested resource and what is routed to
bob or delivered to alice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
from lxml import etree

from tests.helpers.harness import ModuleHarness, parse_element
from xeps.roster import NS_ROSTER, Item, Roster, RosterModule
from xmppd import events as ev
from xmppd.events import Priority
from xmppd.session import Session

# A.1: the defined states as (to, from, pending out, pending in).
STATES = {
    "None": (False, False, False, False),
    "None + Pending Out": (False, False, True, False),
    "None + Pending In": (False, False, False, True),
    "None + Pending Out+In": (False, False, True, True),
    "To": (True, False, False, False),
    "To + Pending In": (True, False, False, True),
    "From": (False, True, False, False),
    "From + Pending Out": (False, True, True, False),
    "Both": (True, True, False, False),
}
SAME = None  # "no state change"

# A.2.1-A.2.4: outbound (client-generated) stanzas: existing state -> new state.
OUTBOUND: dict[str, dict[str, str | None]] = {
    "subscribe": {
        "None": "None + Pending Out",
        "None + Pending Out": SAME,
        "None + Pending In": "None + Pending Out+In",
        "None + Pending Out+In": SAME,
        "To": SAME,
        "To + Pending In": SAME,
        "From": "From + Pending Out",
        "From + Pending Out": SAME,
        "Both": SAME,
    },
    "unsubscribe": {
        "None": SAME,
        "None + Pending Out": "None",
        "None + Pending In": SAME,
        "None + Pending Out+In": "None + Pending In",
        "To": "None",
        "To + Pending In": "None + Pending In",
        "From": SAME,
        "From + Pending Out": "From",
        "Both": "From",
    },
    "subscribed": {
        "None": SAME,
        "None + Pending Out": SAME,
        "None + Pending In": "From",
        "None + Pending Out+In": "From + Pending Out",
        "To": SAME,
        "To + Pending In": "Both",
        "From": SAME,
        "From + Pending Out": SAME,
        "Both": SAME,
    },
    "unsubscribed": {
        "None": SAME,
        "None + Pending Out": SAME,
        "None + Pending In": "None",
        "None + Pending Out+In": "None + Pending Out",
        "To": SAME,
        "To + Pending In": "To",
        "From": "None",
        "From + Pending Out": "None + Pending Out",
        "Both": "To",
    },
}

# A.3.1-A.3.4: inbound stanzas: existing state -> (deliver?, new state).
INBOUND: dict[str, dict[str, tuple[bool, str | None]]] = {
    "subscribe": {
        "None": (True, "None + Pending In"),
        "None + Pending Out": (True, "None + Pending Out+In"),
        "None + Pending In": (False, SAME),
        "None + Pending Out+In": (False, SAME),
        "To": (True, "To + Pending In"),
        "To + Pending In": (False, SAME),
        "From": (False, SAME),  # auto-replied "subscribed"
        "From + Pending Out": (False, SAME),
        "Both": (False, SAME),
    },
    "unsubscribe": {
        "None": (False, SAME),
        "None + Pending Out": (False, SAME),
        "None + Pending In": (True, "None"),
        "None + Pending Out+In": (True, "None + Pending Out"),
        "To": (False, SAME),
        "To + Pending In": (True, "To"),
        "From": (True, "None"),
        "From + Pending Out": (True, "None + Pending Out"),
        "Both": (True, "To"),
    },
    "subscribed": {
        "None": (False, SAME),
        "None + Pending Out": (True, "To"),
        "None + Pending In": (False, SAME),
        "None + Pending Out+In": (True, "To + Pending In"),
        "To": (False, SAME),
        "To + Pending In": (False, SAME),
        "From": (False, SAME),
        "From + Pending Out": (True, "Both"),
        "Both": (False, SAME),
    },
    "unsubscribed": {
        "None": (False, SAME),
        "None + Pending Out": (True, "None"),
        "None + Pending In": (False, SAME),
        "None + Pending Out+In": (True, "None + Pending In"),
        "To": (True, "None"),
        "To + Pending In": (True, "None + Pending In"),
        "From": (False, SAME),
        "From + Pending Out": (True, "From"),
        "Both": (True, "From"),
    },
}

OUTBOUND_CASES = [(t, s, new) for t, rows in OUTBOUND.items() for s, new in rows.items()]
INBOUND_CASES = [(t, s, d, new) for t, rows in INBOUND.items() for s, (d, new) in rows.items()]
# §3.4: "subscribed" with no pending request and no "from" subscription is a pre-approval.
PRE_APPROVAL_STATES = {"None", "None + Pending Out", "To"}


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with ModuleHarness.started(
        tmp_path, accounts=("alice", "bob"), modules_enabled=["roster", "presence"]
    ) as harness:
        yield harness


def roster_module(h: ModuleHarness) -> RosterModule:
    return cast(RosterModule, h.host().modules["roster"])


async def set_state(h: ModuleHarness, state: str) -> None:
    """Give alice a visible roster item for bob in `state`."""
    to, from_, ask, pending_in = STATES[state]
    item = Item("bob@localhost", name="Bob", groups=["Friends"], to=to, from_=from_, ask=ask)
    item.pending_in = pending_in
    if pending_in:
        item.request = "<presence xmlns='jabber:client' type='subscribe' from='bob@localhost'/>"
    roster = Roster(epoch="e", counter=1, items={item.jid: item})
    await roster_module(h).put_roster("alice", roster)


async def state_of(h: ModuleHarness) -> str | None:
    roster = await roster_module(h).get_roster("alice")
    item = roster.items.get("bob@localhost")
    return None if item is None else item.state


def record_to_bob(h: ModuleHarness) -> list[etree._Element]:
    """Presence stanzas routed to bob's bare JID (seen first, then processed normally)."""
    seen: list[etree._Element] = []

    async def record(event: ev.StanzaEvent) -> bool:
        if event.to.bare.local == "bob":
            seen.append(etree.fromstring(etree.tostring(event.stanza.element)))
        return False

    h.host().bus.add_chain(ev.PRESENCE_BARE, record, Priority.FIRST)
    return seen


async def interested(h: ModuleHarness, jid: str) -> Session:
    session = await h.connect(jid, priority=0)
    await h.send(session, "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
    h.take(session)
    return session


def pushes(elements: list[etree._Element]) -> list[etree._Element]:
    return [
        item
        for el in elements
        if el.tag == "{jabber:client}iq" and el.get("type") == "set"
        for item in el.iter(f"{{{NS_ROSTER}}}item")
    ]


def presences(elements: list[etree._Element], type_: str) -> list[etree._Element]:
    return [e for e in elements if e.tag == "{jabber:client}presence" and e.get("type") == type_]


@pytest.mark.parametrize(("type_", "state", "new"), OUTBOUND_CASES)
async def test_outbound(h: ModuleHarness, type_: str, state: str, new: str | None) -> None:
    alice = await interested(h, "alice@localhost/home")
    await set_state(h, state)  # after login: no probe (bob's roster does not mirror alice's)
    routed = record_to_bob(h)

    await h.send(alice, f"<presence to='bob@localhost/any' type='{type_}'/>")

    expected = state if new is SAME else new
    assert await state_of(h) == expected
    got = h.take(alice)
    pushed = pushes(got)
    pre_approval = type_ == "subscribed" and state in PRE_APPROVAL_STATES
    if new is SAME and not pre_approval:
        assert pushed == []
    else:
        assert len(pushed) == 1
        item = pushed[0]
        assert item.get("jid") == "bob@localhost"
        assert item.get("name") == "Bob"
        assert item.get("subscription") == expected.split(" ")[0].lower()
        assert (item.get("ask") == "subscribe") == ("Pending Out" in expected)
        assert (item.get("approved") == "true") == pre_approval
    # §3.1.2 etc.: subscribe/unsubscribe are always routed, stamped with the bare JID;
    # subscribed/unsubscribed only when they changed the state.
    mine = presences(routed, type_)
    if type_ in ("subscribe", "unsubscribe") or new is not SAME:
        assert len(mine) == 1
        assert mine[0].get("from") == "alice@localhost"
        assert mine[0].get("to") == "bob@localhost"
    else:
        assert mine == []


@pytest.mark.parametrize(("type_", "state", "deliver", "new"), INBOUND_CASES)
async def test_inbound(
    h: ModuleHarness, type_: str, state: str, deliver: bool, new: str | None
) -> None:
    alice = await interested(h, "alice@localhost/home")
    await set_state(h, state)  # after login: no probe (bob's roster does not mirror alice's)
    routed = record_to_bob(h)

    await h.server.router.route(
        parse_element(f"<presence from='bob@localhost/x' to='alice@localhost' type='{type_}'/>")
    )

    expected = state if new is SAME else new
    assert await state_of(h) == expected
    got = h.take(alice)
    pushed = pushes(got)
    if new is SAME:
        assert pushed == []
    else:
        assert len(pushed) == 1
        assert pushed[0].get("subscription") == expected.split(" ")[0].lower()
        assert (pushed[0].get("ask") == "subscribe") == ("Pending Out" in expected)
    delivered = presences(got, type_)
    if deliver:
        assert len(delivered) == 1
        assert delivered[0].get("from") == "bob@localhost"  # the bare JID (§3.1.3)
    else:
        assert delivered == []
    auto = presences(routed, "subscribed")
    if type_ == "subscribe" and STATES[state][1]:  # A.3.1 From/Both: auto-reply
        assert [(p.get("from"), p.get("to")) for p in auto] == [
            ("alice@localhost", "bob@localhost")
        ]
    else:
        assert auto == []


async def test_state_names_cover_every_defined_state() -> None:
    for name, (to, from_, ask, pending_in) in STATES.items():
        item = Item("x@y", to=to, from_=from_, ask=ask, pending_in=pending_in)
        assert item.state == name
