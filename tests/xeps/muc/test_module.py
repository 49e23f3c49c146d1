"""XEP-0045 Multi-User Chat (xeps/muc): the module on a real server, fake sessions, no sockets.

Each test drives the service with raw stanzas from bound sessions and checks exactly what
each session receives: entering, history and subject, groupchat and private messages,
configuration, affiliations and roles, invitations, destruction, persistence over a restart,
occupant ids, self-ping, IQ forwarding and the archive (when xeps/muc/archive.py is present).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lxml import etree

from tests.helpers.harness import ModuleHarness, error_condition
from xeps.muc import Muc
from xeps.muc.room import NS_MUC, NS_OCCUPANT_ID, NS_USER, Room
from xmppd.ns import NS_DATA, NS_DISCO_INFO, NS_DISCO_ITEMS
from xmppd.session import Session

MODULES = ("muc", "presence", "disco", "roster")
SERVICE = "conference.localhost"
ROOM = f"room@{SERVICE}"
X = f"<x xmlns='{NS_MUC}'/>"
USER_X = f"{{{NS_USER}}}x"
STATUS = f"{{{NS_USER}}}status"
ITEM = f"{{{NS_USER}}}item"
OCC_ID = f"{{{NS_OCCUPANT_ID}}}occupant-id"
BODY = "{jabber:client}body"
SUBJECT = "{jabber:client}subject"


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with ModuleHarness.started(
        tmp_path, accounts=("alice", "bob", "carol", "dave"), modules_enabled=MODULES
    ) as harness:
        yield harness


def muc(h: ModuleHarness) -> Muc:
    module = h.host().modules["muc"]
    assert isinstance(module, Muc)
    return module


def room_of(h: ModuleHarness, name: str = "room") -> Room:
    room = muc(h).room(name)
    assert room is not None
    return room


def codes(element: etree._Element) -> set[int]:
    x = element.find(USER_X)
    return set() if x is None else {int(s.get("code") or 0) for s in x.findall(STATUS)}


def item(element: etree._Element) -> etree._Element:
    x = element.find(USER_X)
    assert x is not None, etree.tostring(element)
    found = x.find(ITEM)
    assert found is not None
    return found


async def create(h: ModuleHarness, owner: Session, nick: str = "Alice", room: str = ROOM) -> None:
    """Create an instant room (§10.1.2) owned by `owner`."""
    await h.send(owner, f"<presence to='{room}/{nick}'>{X}</presence>")
    got = h.take(owner)
    assert codes(got[-2]) >= {110, 201}, [etree.tostring(e) for e in got]
    assert got[-1].find(SUBJECT) is not None
    await h.send(
        owner,
        f"<iq type='set' id='inst' to='{room}'><query xmlns='{NS_MUC}#owner'>"
        f"<x xmlns='{NS_DATA}' type='submit'/></query></iq>",
    )
    assert h.take_one(owner).get("type") == "result"


async def join(
    h: ModuleHarness, who: Session, nick: str, room: str = ROOM, x: str = X
) -> list[etree._Element]:
    await h.send(who, f"<presence to='{room}/{nick}'>{x}</presence>")
    return h.take(who)


async def configure(h: ModuleHarness, owner: Session, fields: dict[str, str]) -> etree._Element:
    body = "".join(
        f"<field var='{var}'><value>{value}</value></field>" for var, value in fields.items()
    )
    await h.send(
        owner,
        f"<iq type='set' id='cfg' to='{ROOM}'><query xmlns='{NS_MUC}#owner'>"
        f"<x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE'>"
        f"<value>{NS_MUC}#roomconfig</value></field>{body}</x></query></iq>",
    )
    (reply,) = [e for e in h.take(owner) if e.get("id") == "cfg"]
    return reply


async def admin(h: ModuleHarness, who: Session, items: str, type_: str = "set") -> etree._Element:
    await h.send(
        who,
        f"<iq type='{type_}' id='adm' to='{ROOM}'><query xmlns='{NS_MUC}#admin'>{items}</query></iq>",
    )
    replies = [e for e in h.take(who) if e.tag == "{jabber:client}iq"]
    assert len(replies) == 1
    return replies[0]


# --- entering and leaving ---------------------------------------------------------------------
async def test_create_instant_room_and_join(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await h.send(alice, f"<presence to='{ROOM}/Alice'>{X}</presence>")
    own, subject = h.take(alice)
    assert subject.find(SUBJECT) is not None  # §7.2.15, also in a new room
    assert own.get("from") == f"{ROOM}/Alice"
    assert codes(own) == {110, 201} | ({170} if muc(h).archive else set())
    assert item(own).get("affiliation") == "owner"
    assert item(own).get("role") == "moderator"
    # §10.1.1: a locked room refuses everybody else
    got = await join(h, bob, "Bob")
    assert error_condition(got[0]) == "item-not-found"
    await h.send(
        alice,
        f"<iq type='set' id='i' to='{ROOM}'><query xmlns='{NS_MUC}#owner'>"
        f"<x xmlns='{NS_DATA}' type='submit'/></query></iq>",
    )
    assert h.take_one(alice).get("type") == "result"
    got = await join(h, bob, "Bob")
    # §7.2.3: existing occupants, then self-presence with 110, then (no history) the subject
    assert [e.get("from") for e in got] == [f"{ROOM}/Alice", f"{ROOM}/Bob", ROOM]
    assert item(got[0]).get("jid") is None  # semi-anonymous: no real JIDs for participants
    assert 110 in codes(got[1])
    assert item(got[1]).get("role") == "participant"
    subject = got[2].find(SUBJECT)
    assert subject is not None
    assert not subject.text
    assert got[2].find(BODY) is None
    (notice,) = h.take(alice)
    assert notice.get("from") == f"{ROOM}/Bob"
    assert item(notice).get("jid") == "bob@localhost/pc"  # moderators see real JIDs
    assert 110 not in codes(notice)


async def test_presence_without_muc_x_creates_unlocked_room(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await join(h, alice, "Alice", x="")
    got = await join(h, bob, "Bob", x="")
    assert got[-2].get("from") == f"{ROOM}/Bob"
    assert 110 in codes(got[-2])


async def test_enter_needs_a_nickname(h: ModuleHarness, alice: Session) -> None:
    await h.send(alice, f"<presence to='{ROOM}'>{X}</presence>")
    assert error_condition(h.take_one(alice)) == "jid-malformed"


async def test_nickname_conflict(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await create(h, alice)
    got = await join(h, bob, "Alice")
    assert len(got) == 1
    assert error_condition(got[0]) == "conflict"
    assert got[0].get("from") == f"{ROOM}/Alice"
    assert h.take(alice) == []


async def test_leave_and_temporary_room_vanishes(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await create(h, alice)
    await join(h, bob, "Bob")
    h.take(alice)
    await h.send(
        bob, f"<presence to='{ROOM}/Bob' type='unavailable'><status>bye</status></presence>"
    )
    (own,) = h.take(bob)
    assert own.get("type") == "unavailable"
    assert codes(own) == {110}
    assert own.findtext("{jabber:client}status") == "bye"
    (seen,) = h.take(alice)
    assert seen.get("type") == "unavailable"
    assert item(seen).get("role") == "none"
    await h.send(alice, f"<presence to='{ROOM}/Alice' type='unavailable'/>")
    assert muc(h).room("room") is None


async def test_disconnect_leaves_room(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await create(h, alice)
    await join(h, bob, "Bob")
    h.take(alice)
    await h.disconnect(bob)
    (seen,) = h.take(alice)
    assert seen.get("from") == f"{ROOM}/Bob"
    assert seen.get("type") == "unavailable"
    assert "Bob" not in room_of(h).occupants


async def test_nick_change(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await create(h, alice)
    await join(h, bob, "Bob")
    h.take(alice)
    await h.send(bob, f"<presence to='{ROOM}/Robert'/>")
    own = h.take(bob)
    assert [e.get("type") for e in own] == ["unavailable", None]
    assert codes(own[0]) == {110, 303}
    assert item(own[0]).get("nick") == "Robert"
    assert own[1].get("from") == f"{ROOM}/Robert"
    assert 110 in codes(own[1])
    seen = h.take(alice)
    assert codes(seen[0]) == {303}
    assert seen[1].get("from") == f"{ROOM}/Robert"
    # to a nick in use: conflict, nothing changes
    await h.send(bob, f"<presence to='{ROOM}/Alice'/>")
    assert error_condition(h.take_one(bob)) == "conflict"
    assert set(room_of(h).occupants) == {"Alice", "Robert"}


async def test_presence_update_is_broadcast(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await create(h, alice)
    await join(h, bob, "Bob")
    h.take(alice)
    await h.send(bob, f"<presence to='{ROOM}/Bob'><show>away</show></presence>")
    assert h.take_one(alice).findtext("{jabber:client}show") == "away"
    assert 110 in codes(h.take_one(bob))


async def test_password_protected(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await create(h, alice)
    reply = await configure(
        h,
        alice,
        {"muc#roomconfig_passwordprotectedroom": "1", "muc#roomconfig_roomsecret": "s3cret"},
    )
    assert reply.get("type") == "result"
    got = await join(h, bob, "Bob")
    assert error_condition(got[0]) == "not-authorized"
    got = await join(h, bob, "Bob", x=f"<x xmlns='{NS_MUC}'><password>wrong</password></x>")
    assert error_condition(got[0]) == "not-authorized"
    got = await join(h, bob, "Bob", x=f"<x xmlns='{NS_MUC}'><password>s3cret</password></x>")
    assert 110 in codes(got[-2])


async def test_members_only(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await create(h, alice)
    await configure(h, alice, {"muc#roomconfig_membersonly": "1"})
    got = await join(h, bob, "Bob")
    assert error_condition(got[0]) == "registration-required"
    reply = await admin(h, alice, "<item affiliation='member' jid='bob@localhost'/>")
    assert reply.get("type") == "result"
    got = await join(h, bob, "Bob")
    assert item(got[-2]).get("affiliation") == "member"


async def test_max_occupants(
    h: ModuleHarness, alice: Session, bob: Session, carol: Session
) -> None:
    await create(h, alice)
    await configure(h, alice, {"muc#roomconfig_maxusers": "2"})
    await join(h, bob, "Bob")
    got = await join(h, carol, "Carol")
    assert error_condition(got[0]) == "service-unavailable"


async def test_banned_cannot_enter(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await create(h, alice)
    await admin(h, alice, "<item affiliation='outcast' jid='bob@localhost'/>")
    got = await join(h, bob, "Bob")
    assert error_condition(got[0]) == "forbidden"


async def test_create_rooms_policy_local(h: ModuleHarness) -> None:
    """A remote user may not create rooms (create_rooms = "local"); checked on the module."""
    assert muc(h).options.create_rooms == "local"
    from xmppd.jid import JID

    assert not await muc(h)._may_create(JID.parse("eve@elsewhere.example/x"))
    assert await muc(h)._may_create(JID.parse("alice@localhost/x"))


# --- messages -----------------------------------------------------------------------------------
async def test_groupchat_broadcast_and_history(
    h: ModuleHarness, alice: Session, bob: Session, carol: Session
) -> None:
    await create(h, alice)
    await join(h, bob, "Bob")
    h.take(alice)
    await h.send(
        bob,
        f"<message type='groupchat' id='m1' to='{ROOM}'><body>hello</body>"
        f"<occupant-id xmlns='{NS_OCCUPANT_ID}' id='forged'/>"
        f"<stanza-id xmlns='urn:xmpp:sid:0' by='{ROOM}' id='forged'/></message>",
    )
    for session in (alice, bob):
        msg = h.take_one(session)
        assert msg.get("from") == f"{ROOM}/Bob"
        assert msg.get("type") == "groupchat"
        assert msg.get("id") == "m1"
        assert msg.findtext(BODY) == "hello"
        ids = msg.findall(OCC_ID)
        assert len(ids) == 1
        assert ids[0].get("id") == room_of(h).occupants["Bob"].occupant_id
        sids = [s for s in msg.findall("{urn:xmpp:sid:0}stanza-id") if s.get("id") == "forged"]
        assert sids == []
    got = await join(h, carol, "Carol")
    history = [e for e in got if e.find(BODY) is not None]
    assert len(history) == 1
    delay = history[0].find("{urn:xmpp:delay}delay")
    assert delay is not None
    assert delay.get("from") == ROOM
    assert got[-1].find(SUBJECT) is not None  # subject after history


async def test_history_limits(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await create(h, alice)
    for n in range(5):
        await h.send(alice, f"<message type='groupchat' to='{ROOM}'><body>m{n}</body></message>")
    h.take(alice)

    async def history(x: str) -> list[str]:
        got = await join(h, bob, "Bob", x=x)
        await h.send(bob, f"<presence to='{ROOM}/Bob' type='unavailable'/>")
        h.take(bob)
        h.take(alice)
        return [e.findtext(BODY) or "" for e in got if e.find(BODY) is not None]

    assert await history(X) == ["m0", "m1", "m2", "m3", "m4"]
    assert await history(f"<x xmlns='{NS_MUC}'><history maxstanzas='2'/></x>") == ["m3", "m4"]
    assert await history(f"<x xmlns='{NS_MUC}'><history maxstanzas='0'/></x>") == []
    assert await history(f"<x xmlns='{NS_MUC}'><history maxchars='0'/></x>") == []
    assert await history(f"<x xmlns='{NS_MUC}'><history seconds='3600'/></x>") == [
        "m0",
        "m1",
        "m2",
        "m3",
        "m4",
    ]
    assert await history(f"<x xmlns='{NS_MUC}'><history since='2999-01-01T00:00:00Z'/></x>") == []
    assert await history(f"<x xmlns='{NS_MUC}'><history maxstanzas='bogus'/></x>") != []
    await configure(h, alice, {"muc#maxhistoryfetch": "1"})
    h.take(alice)
    assert await history(X) == ["m4"]


async def test_non_occupant_message_refused(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await create(h, alice)
    await h.send(bob, f"<message type='groupchat' to='{ROOM}'><body>x</body></message>")
    assert error_condition(h.take_one(bob)) == "not-acceptable"
    assert h.take(alice) == []
    await h.send(bob, f"<message type='groupchat' to='nope@{SERVICE}'><body>x</body></message>")
    assert error_condition(h.take_one(bob)) == "item-not-found"


async def test_subject_change_rules(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await create(h, alice)
    await join(h, bob, "Bob")
    h.take(alice)
    await h.send(bob, f"<message type='groupchat' to='{ROOM}'><subject>mine</subject></message>")
    assert error_condition(h.take_one(bob)) == "forbidden"
    await h.send(alice, f"<message type='groupchat' to='{ROOM}'><subject>Topic</subject></message>")
    for session in (alice, bob):
        assert h.take_one(session).findtext(SUBJECT) == "Topic"
    await configure(h, alice, {"muc#roomconfig_changesubject": "1"})
    h.take(alice)
    h.take(bob)
    await h.send(bob, f"<message type='groupchat' to='{ROOM}'><subject>Bob's</subject></message>")
    assert h.take_one(alice).findtext(SUBJECT) == "Bob's"
    h.take(bob)
    await h.send(bob, f"<presence to='{ROOM}/Bob' type='unavailable'/>")
    h.take(bob)
    got = await join(h, bob, "Bob")
    assert got[-1].findtext(SUBJECT) == "Bob's"
    assert got[-1].get("from") == f"{ROOM}/Bob"


async def test_moderated_room_visitor_cannot_speak(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await create(h, alice)
    await configure(h, alice, {"muc#roomconfig_moderatedroom": "1"})
    got = await join(h, bob, "Bob")
    assert item(got[-2]).get("role") == "visitor"
    await h.send(bob, f"<message type='groupchat' to='{ROOM}'><body>x</body></message>")
    assert error_condition(h.take_one(bob)) == "forbidden"
    h.take(alice)
    # grant voice (§8.3)
    reply = await admin(h, alice, "<item nick='Bob' role='participant'/>")
    assert reply.get("type") == "result"
    assert item(h.take_one(bob)).get("role") == "participant"
    await h.send(bob, f"<message type='groupchat' to='{ROOM}'><body>now</body></message>")
    assert h.take_one(alice).findtext(BODY) == "now"


async def test_private_messages(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await create(h, alice)
    await join(h, bob, "Bob")
    h.take(alice)
    await h.send(bob, f"<message type='chat' id='p' to='{ROOM}/Alice'><body>psst</body></message>")
    pm = h.take_one(alice)
    assert pm.get("from") == f"{ROOM}/Bob"
    assert pm.get("to") == "alice@localhost/phone"
    assert pm.find(USER_X) is not None
    assert pm.findtext(BODY) == "psst"
    assert pm.find(OCC_ID) is not None
    await h.send(bob, f"<message type='chat' to='{ROOM}/Nobody'><body>x</body></message>")
    assert error_condition(h.take_one(bob)) == "item-not-found"
    await h.send(bob, f"<message type='groupchat' to='{ROOM}/Alice'><body>x</body></message>")
    assert error_condition(h.take_one(bob)) == "bad-request"
    await configure(h, alice, {"muc#roomconfig_allowpm": "moderators"})
    h.take(alice)
    h.take(bob)
    await h.send(bob, f"<message type='chat' to='{ROOM}/Alice'><body>x</body></message>")
    assert error_condition(h.take_one(bob)) == "forbidden"
    await h.send(alice, f"<message type='chat' to='{ROOM}/Bob'><body>ok</body></message>")
    assert h.take_one(bob).findtext(BODY) == "ok"


async def test_private_message_from_non_occupant(
    h: ModuleHarness, alice: Session, carol: Session
) -> None:
    await create(h, alice)
    await h.send(carol, f"<message type='chat' to='{ROOM}/Alice'><body>x</body></message>")
    assert error_condition(h.take_one(carol)) == "not-acceptable"
    assert h.take(alice) == []


async def test_error_bounce_removes_occupant(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await create(h, alice)
    await join(h, bob, "Bob")
    h.take(alice)
    await h.send(alice, f"<message type='groupchat' id='g1' to='{ROOM}'><body>x</body></message>")
    h.take(alice)
    assert h.take_one(bob).get("id") == "g1"
    # Bob's client bounces the groupchat message the room sent it (from room/Alice)
    await h.send(
        bob,
        f"<message type='error' id='g1' to='{ROOM}/Alice'><error type='cancel'>"
        "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
    )
    (seen,) = h.take(alice)
    assert seen.get("type") == "unavailable"
    assert codes(seen) == {333}
    assert "Bob" not in room_of(h).occupants
    assert codes(h.take_one(bob)) == {110, 333}  # told, in case the client still listens
    # an error presence to the room does the same
    await join(h, bob, "Bob")
    h.take(alice)
    await h.send(bob, f"<presence type='error' to='{ROOM}/Bob'/>")
    assert codes(h.take_one(alice)) == {333}


# --- invitations --------------------------------------------------------------------------------
async def test_mediated_invitation_and_decline(
    h: ModuleHarness, alice: Session, carol: Session
) -> None:
    await create(h, alice)
    await configure(
        h,
        alice,
        {
            "muc#roomconfig_membersonly": "1",
            "muc#roomconfig_passwordprotectedroom": "1",
            "muc#roomconfig_roomsecret": "pw",
        },
    )
    await h.send(
        alice,
        f"<message to='{ROOM}'><x xmlns='{NS_USER}'><invite to='carol@localhost'>"
        "<reason>join us</reason></invite></x></message>",
    )
    invite = h.take_one(carol)
    assert invite.get("from") == ROOM
    x = invite.find(USER_X)
    assert x is not None
    inv = x.find(f"{{{NS_USER}}}invite")
    assert inv is not None
    assert inv.get("from") == "alice@localhost/phone"
    assert inv.findtext(f"{{{NS_USER}}}reason") == "join us"
    assert x.findtext(f"{{{NS_USER}}}password") == "pw"
    assert room_of(h).affiliation(room_of(h).jid.with_resource("x").bare) == "none"
    from xmppd.jid import JID

    assert room_of(h).affiliation(JID.parse("carol@localhost")) == "member"
    await h.send(
        carol,
        f"<message to='{ROOM}'><x xmlns='{NS_USER}'><decline to='alice@localhost/phone'>"
        "<reason>busy</reason></decline></x></message>",
    )
    decline = h.take_one(alice).find(USER_X)
    assert decline is not None
    d = decline.find(f"{{{NS_USER}}}decline")
    assert d is not None
    assert d.get("from") == "carol@localhost"


async def test_invitation_errors(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await create(h, alice)
    await h.send(
        bob, f"<message to='{ROOM}'><x xmlns='{NS_USER}'><invite to='c@localhost'/></x></message>"
    )
    assert error_condition(h.take_one(bob)) == "not-acceptable"
    await h.send(alice, f"<message to='{ROOM}'><x xmlns='{NS_USER}'><invite/></x></message>")
    assert error_condition(h.take_one(alice)) == "bad-request"
    await h.send(
        alice, f"<message to='{ROOM}'><x xmlns='{NS_USER}'><invite to='@@'/></x></message>"
    )
    assert error_condition(h.take_one(alice)) == "jid-malformed"
    many = "".join("<invite to='carol@localhost'/>" for _ in range(11))
    await h.send(alice, f"<message to='{ROOM}'><x xmlns='{NS_USER}'>{many}</x></message>")
    assert error_condition(h.take_one(alice)) == "policy-violation"


async def test_direct_invitation_passes(h: ModuleHarness, alice: Session, bob: Session) -> None:
    """XEP-0249: client to client, untouched."""
    await h.send(
        alice,
        f"<message to='bob@localhost'><x xmlns='jabber:x:conference' jid='{ROOM}'/></message>",
    )
    assert h.take_one(bob).find("{jabber:x:conference}x") is not None


# --- roles and affiliations ---------------------------------------------------------------------
async def test_kick(h: ModuleHarness, alice: Session, bob: Session, carol: Session) -> None:
    await create(h, alice)
    await join(h, bob, "Bob")
    await join(h, carol, "Carol")
    h.take(alice)
    h.take(bob)
    # a participant may not kick
    reply = await admin(h, carol, "<item nick='Bob' role='none'/>")
    assert error_condition(reply) == "forbidden"
    reply = await admin(h, alice, "<item nick='Bob' role='none'><reason>spam</reason></item>")
    assert reply.get("type") == "result"
    own = h.take_one(bob)
    assert own.get("type") == "unavailable"
    assert codes(own) == {110, 307}
    assert item(own).findtext(f"{{{NS_USER}}}reason") == "spam"
    actor = item(own).find(f"{{{NS_USER}}}actor")
    assert actor is not None
    assert actor.get("nick") == "Alice"
    assert codes(h.take_one(carol)) == {307}
    # nobody kicks the owner; nobody kicks an unknown nick
    await admin(h, alice, "<item nick='Carol' role='moderator'/>")
    h.take(carol)
    reply = await admin(h, carol, "<item nick='Alice' role='none'/>")
    assert error_condition(reply) == "not-allowed"
    reply = await admin(h, alice, "<item nick='Ghost' role='none'/>")
    assert error_condition(reply) == "item-not-found"
    reply = await admin(h, alice, "<item nick='Alice' role='none'/>")
    assert error_condition(reply) == "conflict"


async def test_ban_and_lists(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await create(h, alice)
    await join(h, bob, "Bob")
    h.take(alice)
    reply = await admin(
        h, alice, "<item affiliation='outcast' jid='bob@localhost'><reason>bye</reason></item>"
    )
    assert reply.get("type") == "result"
    own = h.take_one(bob)
    assert codes(own) == {110, 301}
    assert item(own).get("affiliation") == "outcast"
    reply = await admin(h, alice, "<item affiliation='outcast'/>", "get")
    query = reply[0]
    assert [(i.get("jid"), i.get("affiliation")) for i in query] == [("bob@localhost", "outcast")]
    reply = await admin(h, alice, "<item affiliation='owner'/>", "get")
    assert [i.get("jid") for i in reply[0]] == ["alice@localhost"]
    reply = await admin(h, alice, "<item role='moderator'/>", "get")
    assert [i.get("nick") for i in reply[0]] == ["Alice"]
    reply = await admin(h, alice, "<item affiliation='bogus'/>", "get")
    assert error_condition(reply) == "bad-request"


async def test_affiliation_permissions(
    h: ModuleHarness, alice: Session, bob: Session, carol: Session
) -> None:
    await create(h, alice)
    await join(h, bob, "Bob")
    h.take(alice)
    # a participant: forbidden
    reply = await admin(h, bob, "<item affiliation='member' jid='carol@localhost'/>")
    assert error_condition(reply) == "forbidden"
    reply = await admin(h, bob, "<item affiliation='member'/>", "get")
    assert error_condition(reply) == "forbidden"
    # make Bob admin: becomes moderator
    await admin(h, alice, "<item affiliation='admin' jid='bob@localhost'/>")
    own = h.take_one(bob)
    assert item(own).get("affiliation") == "admin"
    assert item(own).get("role") == "moderator"
    h.take(alice)
    # an admin may not grant admin, nor touch the owner
    reply = await admin(h, bob, "<item affiliation='admin' jid='carol@localhost'/>")
    assert error_condition(reply) == "forbidden"
    reply = await admin(h, bob, "<item affiliation='outcast' jid='alice@localhost'/>")
    assert error_condition(reply) == "not-allowed"
    reply = await admin(h, bob, "<item affiliation='owner'/>", "get")
    assert error_condition(reply) == "forbidden"
    # the only owner may not step down
    reply = await admin(h, alice, "<item affiliation='admin' jid='alice@localhost'/>")
    assert error_condition(reply) == "conflict"
    # all or nothing: one bad item, no change
    reply = await admin(
        h,
        alice,
        "<item affiliation='member' jid='carol@localhost'/><item affiliation='x' jid='d@x'/>",
    )
    assert error_condition(reply) == "bad-request"
    from xmppd.jid import JID

    assert room_of(h).affiliation(JID.parse("carol@localhost")) == "none"
    reply = await admin(h, alice, "<item affiliation='member' jid='not a jid@@'/>")
    assert error_condition(reply) == "jid-malformed"
    reply = await admin(h, alice, "<item/>")
    assert error_condition(reply) == "bad-request"


async def test_revoke_membership_in_members_only_room(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await create(h, alice)
    await admin(h, alice, "<item affiliation='member' jid='bob@localhost'/>")
    await configure(h, alice, {"muc#roomconfig_membersonly": "1"})
    await join(h, bob, "Bob")
    h.take(alice)
    await admin(h, alice, "<item affiliation='none' jid='bob@localhost'/>")
    assert codes(h.take_one(bob)) == {110, 321}


async def test_members_only_switch_removes_non_members(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await create(h, alice)
    await join(h, bob, "Bob")
    h.take(alice)
    await configure(h, alice, {"muc#roomconfig_membersonly": "1"})
    got = h.take(bob)
    assert 104 in codes(got[0])
    assert codes(got[1]) == {110, 322}


# --- configuration ------------------------------------------------------------------------------
async def test_config_form_and_changes(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await h.send(alice, f"<presence to='{ROOM}/Alice'>{X}</presence>")
    h.take(alice)
    # §10.1.3 reserved room: get the form first
    await h.send(alice, f"<iq type='get' id='f' to='{ROOM}'><query xmlns='{NS_MUC}#owner'/></iq>")
    form = h.take_one(alice)[0][0]
    vars_ = {f.get("var") for f in form}
    assert {
        "muc#roomconfig_persistentroom",
        "muc#roomconfig_whois",
        "muc#roomconfig_allowpm",
        "muc#roomconfig_enablearchiving",
        "muc#maxhistoryfetch",
    } <= vars_
    reply = await configure(
        h, alice, {"muc#roomconfig_roomname": "Lounge", "muc#roomconfig_whois": "anyone"}
    )
    assert reply.get("type") == "result"
    assert not room_of(h).locked
    got = await join(h, bob, "Bob")
    assert 100 in codes(got[-2])
    assert item(got[0]).get("jid") == "alice@localhost/phone"
    # bad values: not-acceptable, nothing changes
    reply = await configure(h, alice, {"muc#roomconfig_whois": "everyone"})
    assert error_condition(reply) == "not-acceptable"
    reply = await configure(h, alice, {"muc#roomconfig_maxusers": "-1"})
    assert error_condition(reply) == "not-acceptable"
    reply = await configure(h, alice, {"muc#roomconfig_passwordprotectedroom": "1"})
    assert error_condition(reply) == "not-acceptable"
    # a participant may not configure
    await h.send(bob, f"<iq type='get' id='f' to='{ROOM}'><query xmlns='{NS_MUC}#owner'/></iq>")
    assert error_condition(h.take_one(bob)) == "forbidden"
    h.take(alice)
    # privacy change: 104 and 173
    await configure(h, alice, {"muc#roomconfig_whois": "moderators"})
    (notice,) = h.take(bob)
    assert notice.get("from") == ROOM
    assert codes(notice) == {104, 173}


async def test_cancel_initial_config_destroys(h: ModuleHarness, alice: Session) -> None:
    await h.send(alice, f"<presence to='{ROOM}/Alice'>{X}</presence>")
    h.take(alice)
    await h.send(
        alice,
        f"<iq type='set' id='c' to='{ROOM}'><query xmlns='{NS_MUC}#owner'>"
        f"<x xmlns='{NS_DATA}' type='cancel'/></query></iq>",
    )
    got = h.take(alice)
    assert got[0].get("type") == "result"
    assert got[1].get("type") == "unavailable"
    assert muc(h).room("room") is None


async def test_destroy(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await create(h, alice)
    await configure(h, alice, {"muc#roomconfig_persistentroom": "1"})
    await join(h, bob, "Bob")
    h.take(alice)
    await h.send(
        bob,
        f"<iq type='set' id='d' to='{ROOM}'><query xmlns='{NS_MUC}#owner'><destroy/></query></iq>",
    )
    assert error_condition(h.take_one(bob)) == "forbidden"
    await h.send(
        alice,
        f"<iq type='set' id='d' to='{ROOM}'><query xmlns='{NS_MUC}#owner'>"
        f"<destroy jid='other@{SERVICE}'><reason>moving</reason></destroy></query></iq>",
    )
    got = h.take(alice)
    assert got[0].get("type") == "result"
    gone = h.take_one(bob)
    assert gone.get("type") == "unavailable"
    x = gone.find(USER_X)
    assert x is not None
    destroy = x.find(f"{{{NS_USER}}}destroy")
    assert destroy is not None
    assert destroy.get("jid") == f"other@{SERVICE}"
    assert destroy.findtext(f"{{{NS_USER}}}reason") == "moving"
    assert muc(h).room("room") is None
    assert await muc(h).store.get("", "room/room") is None


async def test_persistent_room_survives_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    overrides = {"storage": "sqlite", "data_dir": str(data)}
    async with ModuleHarness.started(
        tmp_path, accounts=("alice", "bob"), modules_enabled=MODULES, **overrides
    ) as h:
        alice = await h.connect("alice@localhost/phone", priority=0)
        await create(h, alice)
        await configure(
            h, alice, {"muc#roomconfig_persistentroom": "1", "muc#roomconfig_roomname": "Keep"}
        )
        await admin(h, alice, "<item affiliation='member' jid='bob@localhost'/>")
        await h.send(alice, f"<message type='groupchat' to='{ROOM}'><subject>S</subject></message>")
        await h.send(alice, f"<message type='groupchat' to='{ROOM}'><body>old</body></message>")
        occupant_id = room_of(h).occupants["Alice"].occupant_id
        await h.send(alice, f"<presence to='{ROOM}/Alice' type='unavailable'/>")
        assert muc(h).room("room") is not None  # persistent rooms outlive their occupants
    async with ModuleHarness.started(
        tmp_path, accounts=(), modules_enabled=MODULES, **overrides
    ) as h:
        room = room_of(h)
        assert room.config.name == "Keep"
        assert room.subject == "S"
        from xmppd.jid import JID

        assert room.affiliation(JID.parse("bob@localhost")) == "member"
        bob = await h.connect("bob@localhost/pc", priority=0)
        got = await join(h, bob, "Bob")
        if muc(h).archive is not None:
            assert [e.findtext(BODY) for e in got if e.find(BODY) is not None] == ["old"]
        alice = await h.connect("alice@localhost/phone", priority=0)
        got = await join(h, alice, "Alice")
        assert room.occupants["Alice"].occupant_id == occupant_id  # XEP-0421: stable


# --- disco --------------------------------------------------------------------------------------
async def test_disco(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await h.send(
        alice, f"<iq type='get' id='i' to='{SERVICE}'><query xmlns='{NS_DISCO_INFO}'/></iq>"
    )
    info = h.take_one(alice)[0]
    identity = info.find(f"{{{NS_DISCO_INFO}}}identity")
    assert identity is not None
    assert identity.get("category") == "conference"
    features = {f.get("var") for f in info.findall(f"{{{NS_DISCO_INFO}}}feature")}
    assert NS_MUC in features
    # the local host lists the service
    await h.send(
        alice, f"<iq type='get' id='i' to='localhost'><query xmlns='{NS_DISCO_ITEMS}'/></iq>"
    )
    assert SERVICE in {i.get("jid") for i in h.take_one(alice)[0]}
    await create(h, alice)
    await configure(h, alice, {"muc#roomconfig_roomname": "Lounge"})
    await h.send(alice, f"<presence to='hidden@{SERVICE}/A'>{X}</presence>")
    h.take(alice)
    await h.send(
        alice, f"<iq type='get' id='i' to='{SERVICE}'><query xmlns='{NS_DISCO_ITEMS}'/></iq>"
    )
    items = h.take_one(alice)[0]
    assert [(i.get("jid"), i.get("name")) for i in items] == [(ROOM, "Lounge")]  # locked: unlisted
    await configure(h, alice, {"muc#roomconfig_publicroom": "0"})
    await h.send(
        alice, f"<iq type='get' id='i' to='{SERVICE}'><query xmlns='{NS_DISCO_ITEMS}'/></iq>"
    )
    assert len(h.take_one(alice)[0]) == 0
    await h.send(bob, f"<iq type='get' id='r' to='{ROOM}'><query xmlns='{NS_DISCO_INFO}'/></iq>")
    info = h.take_one(bob)[0]
    features = {f.get("var") for f in info.findall(f"{{{NS_DISCO_INFO}}}feature")}
    assert {
        NS_MUC,
        "muc_hidden",
        "muc_temporary",
        "muc_open",
        "muc_semianonymous",
        "muc_unsecured",
        "muc_unmoderated",
        NS_OCCUPANT_ID,
        f"{NS_MUC}#self-ping-optimization",
    } <= features
    form = info.find(f"{{{NS_DATA}}}x")
    assert form is not None
    values = {f.get("var"): f.findtext(f"{{{NS_DATA}}}value") for f in form}
    assert values["FORM_TYPE"] == f"{NS_MUC}#roominfo"
    assert values["muc#roominfo_occupants"] == "1"
    await h.send(
        bob, f"<iq type='get' id='r' to='none@{SERVICE}'><query xmlns='{NS_DISCO_INFO}'/></iq>"
    )
    assert error_condition(h.take_one(bob)) == "item-not-found"
    await h.send(
        bob, f"<iq type='get' id='u' to='{SERVICE}'><unique xmlns='{NS_MUC}#unique'/></iq>"
    )
    unique = h.take_one(bob)[0]
    assert unique.text
    assert muc(h).room(unique.text) is None


# --- self-ping, IQ forwarding -------------------------------------------------------------------
async def test_self_ping(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await create(h, alice)
    ping = "<ping xmlns='urn:xmpp:ping'/>"
    await h.send(alice, f"<iq type='get' id='p1' to='{ROOM}/Alice'>{ping}</iq>")
    reply = h.take_one(alice)
    assert reply.get("type") == "result"
    assert reply.get("from") == f"{ROOM}/Alice"
    await h.send(bob, f"<iq type='get' id='p2' to='{ROOM}/Alice'>{ping}</iq>")
    assert error_condition(h.take_one(bob)) == "not-acceptable"
    await h.send(bob, f"<iq type='get' id='p3' to='{ROOM}/Bob'>{ping}</iq>")
    assert error_condition(h.take_one(bob)) == "not-acceptable"


async def test_iq_forwarded_to_occupant(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await create(h, alice)
    await join(h, bob, "Bob")
    h.take(alice)
    await h.send(
        bob, f"<iq type='get' id='v1' to='{ROOM}/Alice'><query xmlns='jabber:iq:version'/></iq>"
    )
    forwarded = h.take_one(alice)
    assert forwarded.get("from") == f"{ROOM}/Bob"
    assert forwarded.get("id") != "v1"
    await h.send(
        alice,
        f"<iq type='result' id='{forwarded.get('id')}' to='{ROOM}/Bob'>"
        "<query xmlns='jabber:iq:version'><name>x</name></query></iq>",
    )
    answer = h.take_one(bob)
    assert answer.get("id") == "v1"
    assert answer.get("from") == f"{ROOM}/Alice"
    assert answer.get("type") == "result"
    # a forged answer from someone else is ignored
    await h.send(
        bob, f"<iq type='get' id='v2' to='{ROOM}/Alice'><query xmlns='jabber:iq:version'/></iq>"
    )
    forwarded = h.take_one(alice)
    await h.send(bob, f"<iq type='result' id='{forwarded.get('id')}' to='{ROOM}/Bob'/>")
    assert h.take(bob) == []


# --- archive ------------------------------------------------------------------------------------
async def test_archive_stanza_id_and_mam_access(
    h: ModuleHarness, alice: Session, bob: Session, carol: Session
) -> None:
    if muc(h).archive is None:
        pytest.skip("xeps/muc/archive.py is not present")
    await create(h, alice)
    await join(h, bob, "Bob")
    h.take(alice)
    await h.send(bob, f"<message type='groupchat' id='a1' to='{ROOM}'><body>kept</body></message>")
    msg = h.take_one(alice)
    sid = msg.find("{urn:xmpp:sid:0}stanza-id")
    assert sid is not None
    assert sid.get("by") == ROOM
    h.take(bob)
    query = f"<iq type='set' id='q' to='{ROOM}'><query xmlns='urn:xmpp:mam:2' queryid='x'/></iq>"
    await h.send(bob, query)
    got = h.take(bob)
    assert got[-1].get("type") == "result"
    assert len(got) == 2
    await h.send(carol, query)  # not an occupant of this open room
    assert error_condition(h.take_one(carol)) == "forbidden"
    await configure(h, alice, {"muc#roomconfig_enablearchiving": "0"})
    h.take(alice)
    h.take(bob)
    await h.send(bob, query)
    assert error_condition(h.take_one(bob)) == "service-unavailable"


# --- XEP-0425 moderation ------------------------------------------------------------------------
async def test_moderation_retracts_message(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await create(h, alice)
    await join(h, bob, "Bob")
    h.take(alice)
    await h.send(bob, f"<message type='groupchat' to='{ROOM}'><body>spam</body></message>")
    msg = h.take_one(alice)
    h.take(bob)
    sid = msg.find("{urn:xmpp:sid:0}stanza-id")
    if sid is None:
        pytest.skip("no archive: messages carry no stanza id")
    target = sid.get("id")
    request = (
        f"<iq type='set' id='mod' to='{ROOM}'><moderate id='{target}' "
        "xmlns='urn:xmpp:message-moderate:1'><retract xmlns='urn:xmpp:message-retract:1'/>"
        "<reason>spam</reason></moderate></iq>"
    )
    await h.send(bob, request)  # not a moderator
    assert error_condition(h.take_one(bob)) == "forbidden"
    await h.send(alice, request)
    got = h.take(alice)
    assert got[0].get("type") == "result"
    retract = got[1].find("{urn:xmpp:message-retract:1}retract")
    assert retract is not None
    assert retract.get("id") == target
    moderated = retract.find("{urn:xmpp:message-moderate:1}moderated")
    assert moderated is not None
    assert moderated.get("by") == f"{ROOM}/Alice"
    assert got[1].get("from") == ROOM
    assert h.take(bob)[0].find("{urn:xmpp:message-retract:1}retract") is not None
    assert room_of(h).history_message(target or "") is None
    # the archive serves the tombstone, not the text
    await h.send(alice, f"<iq type='set' id='q' to='{ROOM}'><query xmlns='urn:xmpp:mam:2'/></iq>")
    archived = b"".join(etree.tostring(e) for e in h.take(alice))
    assert b"spam</body>" not in archived
    assert b"retracted" in archived
    # unknown message; no retract child
    await h.send(alice, request.replace(target or "", "nope"))
    assert error_condition(h.take_one(alice)) == "item-not-found"
    await h.send(
        alice,
        f"<iq type='set' id='m' to='{ROOM}'><moderate id='{target}' "
        "xmlns='urn:xmpp:message-moderate:1'/></iq>",
    )
    assert error_condition(h.take_one(alice)) == "feature-not-implemented"


async def test_moderation_legacy_form(h: ModuleHarness, alice: Session) -> None:
    await create(h, alice)
    await h.send(alice, f"<message type='groupchat' to='{ROOM}'><body>oops</body></message>")
    msg = h.take_one(alice)
    sid = msg.find("{urn:xmpp:sid:0}stanza-id")
    if sid is None:
        pytest.skip("no archive: messages carry no stanza id")
    await h.send(
        alice,
        f"<iq type='set' id='mod' to='{ROOM}'><apply-to xmlns='urn:xmpp:fasten:0' "
        f"id='{sid.get('id')}'><moderate xmlns='urn:xmpp:message-moderate:0'>"
        "<retract xmlns='urn:xmpp:message-retract:0'/></moderate></apply-to></iq>",
    )
    result, notice = h.take(alice)
    assert result.get("type") == "result"
    apply_to = notice.find("{urn:xmpp:fasten:0}apply-to")
    assert apply_to is not None
    assert apply_to.find("{urn:xmpp:message-moderate:0}moderated") is not None


async def test_rejoin_resends_state(h: ModuleHarness, alice: Session, bob: Session) -> None:
    """A joined client sending its join presence again gets occupants, history, subject."""
    await create(h, alice)
    await join(h, bob, "Bob")
    await h.send(alice, f"<message type='groupchat' to='{ROOM}'><body>before</body></message>")
    h.take(alice)
    h.take(bob)
    got = await join(h, bob, "Bob")
    assert [e.get("from") for e in got] == [f"{ROOM}/Alice", f"{ROOM}/Bob", f"{ROOM}/Alice", ROOM]
    assert 110 in codes(got[1])
    assert got[2].findtext(BODY) == "before"
    assert got[3].find(SUBJECT) is not None
    assert len(h.take(alice)) == 1  # a presence update of Bob
    assert len(room_of(h).occupants) == 2


async def test_service_shutdown_status_332(h: ModuleHarness, alice: Session) -> None:
    from xmppd.events import Shutdown

    await create(h, alice)
    await muc(h)._shutdown(Shutdown())
    gone = h.take_one(alice)
    assert gone.get("type") == "unavailable"
    assert codes(gone) == {110, 332}


async def test_blank_nickname_refused(h: ModuleHarness, alice: Session) -> None:
    """§17.1: no empty or invisible nicknames."""
    for nick in ("%20%20", "\u200b"):
        await h.send(alice, f"<presence to='{ROOM}/{nick.replace('%20', ' ')}'>{X}</presence>")
        assert error_condition(h.take_one(alice)) == "jid-malformed"
    assert muc(h).room("room") is None


async def test_role_and_affiliation_together_is_bad_request(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await create(h, alice)
    await join(h, bob, "Bob")
    h.take(alice)
    reply = await admin(
        h, alice, "<item nick='Bob' jid='bob@localhost' role='none' affiliation='outcast'/>"
    )
    assert error_condition(reply) == "bad-request"
    assert h.take(bob) == []


async def test_disco_to_occupant_from_non_occupant(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    """§6.7: a non-occupant's disco request to an occupant JID is bad-request."""
    await create(h, alice)
    await h.send(
        bob, f"<iq type='get' id='d' to='{ROOM}/Alice'><query xmlns='{NS_DISCO_INFO}'/></iq>"
    )
    assert error_condition(h.take_one(bob)) == "bad-request"
    assert h.take(alice) == []


async def test_subject_on_entry_is_stamped(h: ModuleHarness, alice: Session, bob: Session) -> None:
    await create(h, alice)
    await h.send(alice, f"<message type='groupchat' to='{ROOM}'><subject>T</subject></message>")
    h.take(alice)
    got = await join(h, bob, "Bob")
    delay = got[-1].find("{urn:xmpp:delay}delay")
    assert delay is not None
    assert delay.get("from") == ROOM


async def test_groupchat_fan_out_is_one_send_many(
    h: ModuleHarness, alice: Session, bob: Session, carol: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every occupant gets the message through a single send_many call (one element)."""
    await create(h, alice)
    await join(h, bob, "Bob")
    await join(h, carol, "Carol")
    calls: list[tuple[etree._Element, list[str]]] = []
    service = muc(h).service
    original = service.send_many

    async def spy(element: etree._Element, recipients: list[str]) -> None:
        calls.append((element, list(recipients)))
        await original(element, recipients)

    monkeypatch.setattr(service, "send_many", spy)
    await h.send(bob, f"<message type='groupchat' to='{ROOM}'><body>x</body></message>")
    assert len(calls) == 1
    assert sorted(calls[0][1]) == [
        "alice@localhost/phone",
        "bob@localhost/pc",
        "carol@localhost/tab",
    ]


async def test_one_user_two_resources_one_nick(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    """§7.2.9: the same bare JID enters with the same nick from another resource."""
    await create(h, alice)
    await join(h, bob, "Bob")
    h.take(alice)
    bob2 = await h.connect("bob@localhost/second", priority=0)
    got = await join(h, bob2, "Bob")
    assert [e.get("from") for e in got] == [f"{ROOM}/Alice", f"{ROOM}/Bob", ROOM]
    assert 110 in codes(got[1])
    assert h.take(alice) == []  # nothing new for the others
    assert h.take(bob) == []
    await h.send(alice, f"<message type='groupchat' to='{ROOM}'><body>both</body></message>")
    for session in (alice, bob, bob2):
        assert h.take_one(session).findtext(BODY) == "both"
    await h.send(alice, f"<message type='chat' to='{ROOM}/Bob'><body>pm</body></message>")
    assert h.take_one(bob).findtext(BODY) == "pm"
    assert h.take_one(bob2).findtext(BODY) == "pm"
    # one resource leaves: only it hears; the nick stays
    await h.send(bob2, f"<presence to='{ROOM}/Bob' type='unavailable'/>")
    assert codes(h.take_one(bob2)) == {110}
    assert h.take(alice) == []
    assert "Bob" in room_of(h).occupants
    # a different user may still not take the nick
    carol = await h.connect("carol@localhost/x", priority=0)
    got = await join(h, carol, "Bob")
    assert error_condition(got[0]) == "conflict"
    # the last one leaves: everyone sees it
    await h.send(bob, f"<presence to='{ROOM}/Bob' type='unavailable'/>")
    assert h.take_one(alice).get("type") == "unavailable"


async def test_invitation_to_unknown_local_account(h: ModuleHarness, alice: Session) -> None:
    """§7.8.2: a JID that does not exist: item-not-found (SHOULD)."""
    await create(h, alice)
    await h.send(
        alice,
        f"<message to='{ROOM}' id='i'><x xmlns='{NS_USER}'><invite to='nobody@localhost'/></x>"
        "</message>",
    )
    assert error_condition(h.take_one(alice)) == "item-not-found"


async def test_voice_request(h: ModuleHarness, alice: Session, bob: Session) -> None:
    """§8.6: a visitor asks for voice; moderators get the form; approving grants voice."""
    await create(h, alice)
    await configure(h, alice, {"muc#roomconfig_moderatedroom": "1"})
    await join(h, bob, "Bob")
    h.take(alice)
    request = (
        f"<message to='{ROOM}'><x xmlns='{NS_DATA}' type='submit'>"
        f"<field var='FORM_TYPE'><value>{NS_MUC}#request</value></field>"
        "<field var='muc#role'><value>participant</value></field></x></message>"
    )
    await h.send(bob, request)
    approval = h.take_one(alice)
    form = approval.find(f"{{{NS_DATA}}}x")
    assert form is not None
    values = {
        f.get("var"): f.findtext(f"{{{NS_DATA}}}value") for f in form.iter(f"{{{NS_DATA}}}field")
    }
    assert values["muc#roomnick"] == "Bob"
    assert values["muc#jid"] == "bob@localhost/pc"
    # a visitor cannot approve itself
    answer = (
        f"<message to='{ROOM}'><x xmlns='{NS_DATA}' type='submit'>"
        f"<field var='FORM_TYPE'><value>{NS_MUC}#request</value></field>"
        "<field var='muc#roomnick'><value>Bob</value></field>"
        "<field var='muc#request_allow'><value>true</value></field></x></message>"
    )
    await h.send(bob, answer)
    assert error_condition(h.take_one(bob)) == "forbidden"
    await h.send(alice, answer)
    assert item(h.take_one(bob)).get("role") == "participant"
    assert item(h.take_one(alice)).get("role") == "participant"
