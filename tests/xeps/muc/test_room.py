"""XEP-0045 room state machine (xeps/muc/room.py, config.py): pure, synchronous, no server.

Stanzas go in as parsed elements with the sender's JID; what comes out (`Result`) is checked
directly: recipients of each broadcast, status codes, save/gone flags.
"""

from __future__ import annotations

import pytest
from lxml import etree

from tests.helpers.harness import parse_element
from xeps.muc.config import RoomConfig, apply_form
from xeps.muc.room import (
    MAX_PENDING_IQS,
    NS_MUC,
    NS_USER,
    Limits,
    Out,
    Result,
    Room,
    occupant_id,
)
from xmppd.errors import StanzaError
from xmppd.jid import JID
from xmppd.lib.forms import SubmittedForm

ROOM = JID.parse("room@conference.localhost")
SECRET = b"k" * 32
ALICE = JID.parse("alice@localhost/a")
BOB = JID.parse("bob@localhost/b")
CAROL = JID.parse("carol@localhost/c")


def make_room(**config: object) -> Room:
    room = Room(ROOM, RoomConfig(**config), SECRET, limits=Limits())  # type: ignore[arg-type]
    room.affiliations[ALICE.bare] = "owner"
    return room


def enter(room: Room, who: JID, nick: str, x: str = f"<x xmlns='{NS_MUC}'/>") -> Result:
    return room.presence(parse_element(f"<presence>{x}</presence>"), who, nick, 1000.0)


def codes(element: etree._Element) -> set[int]:
    x = element.find(f"{{{NS_USER}}}x")
    return set() if x is None else {int(s.get("code") or 0) for s in x.iter(f"{{{NS_USER}}}status")}


def groupchat(room: Room, who: JID, body: str, now: float = 1000.0) -> Result:
    xml = f"<message type='groupchat'><body>{body}</body></message>"
    return room.message(parse_element(xml), who, now)


def test_occupant_id_is_stable_and_opaque() -> None:
    one = occupant_id(SECRET, ROOM, ALICE)
    assert one == occupant_id(SECRET, ROOM, ALICE.bare.with_resource("other"))
    assert one != occupant_id(SECRET, ROOM, BOB)
    assert one != occupant_id(SECRET, JID.parse("x@conference.localhost"), ALICE)
    assert one != occupant_id(b"z" * 32, ROOM, ALICE)
    assert "alice" not in one


def test_groupchat_is_one_broadcast_to_everyone() -> None:
    room = make_room()
    enter(room, ALICE, "Alice")
    enter(room, BOB, "Bob")
    enter(room, CAROL, "Carol")
    result = groupchat(room, BOB, "hi")
    (out,) = result.out
    assert out.recipients == [str(ALICE), str(BOB), str(CAROL)]
    assert out.element.get("to") is None
    assert out.element.get("from") == f"{ROOM}/Bob"
    assert out.archive is False  # no archive attached
    room.archiving_available = True
    assert groupchat(room, BOB, "again").out[0].archive is True
    room.with_config(archiving=False)
    assert groupchat(room, BOB, "off").out[0].archive is False


def test_semi_anonymous_presence_reveals_jids_to_moderators_only() -> None:
    room = make_room()
    enter(room, ALICE, "Alice")  # owner: moderator
    enter(room, BOB, "Bob")
    result = enter(room, CAROL, "Carol")
    broadcasts = [o for o in result.out if o.recipients is not None]
    with_jid = {
        tuple(o.recipients or ())
        for o in broadcasts
        if "jid=" in etree.tostring(o.element).decode()
    }
    assert with_jid == {(str(ALICE),)}
    room.with_config(whois="anyone")
    result = enter(room, JID.parse("dave@localhost/d"), "Dave")
    broadcasts = [o for o in result.out if o.recipients is not None]
    assert len(broadcasts) == 1
    assert len(broadcasts[0].recipients or ()) == 3


def test_history_is_bounded_and_filtered() -> None:
    room = make_room(history_length=3)
    enter(room, ALICE, "Alice")
    for n in range(5):
        groupchat(room, ALICE, f"m{n}", now=1000.0 + n)
    assert [e.element.findtext("{jabber:client}body") for e in room.history] == ["m2", "m3", "m4"]
    req = parse_element(f"<x xmlns='{NS_MUC}'><history seconds='1'/></x>").find(
        f"{{{NS_MUC}}}history"
    )
    assert [e.when for e in room._history_for(req, 1004.0)] == [1003.0, 1004.0]
    one = len(etree.tostring(room.history[-1].element))
    req = parse_element(f"<x xmlns='{NS_MUC}'><history maxchars='{one}'/></x>").find(
        f"{{{NS_MUC}}}history"
    )
    assert len(room._history_for(req, 1004.0)) == 1


def test_subject_is_not_history() -> None:
    room = make_room()
    enter(room, ALICE, "Alice")
    xml = "<message type='groupchat'><subject>T</subject></message>"
    result = room.message(parse_element(xml), ALICE, 0.0)
    assert result.save
    assert room.subject == "T"
    assert not room.history


def test_last_owner_cannot_leave_ownership_but_two_can() -> None:
    room = make_room()
    enter(room, ALICE, "Alice")
    iq = "<iq type='set' id='1'><query xmlns='{0}#admin'><item affiliation='{1}' jid='{2}'/></query></iq>"
    with pytest.raises(StanzaError) as err:
        room.admin_set(parse_element(iq.format(NS_MUC, "member", "alice@localhost")), ALICE)
    assert err.value.condition == "conflict"
    room.admin_set(parse_element(iq.format(NS_MUC, "owner", "bob@localhost")), ALICE)
    result = room.admin_set(parse_element(iq.format(NS_MUC, "member", "alice@localhost")), ALICE)
    assert result.save
    assert room.affiliation(ALICE) == "member"
    # Alice, now a member, lost moderation
    assert room.occupants["Alice"].role == "participant"


def test_temporary_room_gone_when_empty_persistent_stays() -> None:
    room = make_room()
    enter(room, ALICE, "Alice")
    result = room.presence(parse_element("<presence type='unavailable'/>"), ALICE, "Alice", 0.0)
    assert result.gone
    room = make_room(persistent=True)
    enter(room, ALICE, "Alice")
    result = room.presence(parse_element("<presence type='unavailable'/>"), ALICE, "Alice", 0.0)
    assert not result.gone


def test_locked_room_owner_leaving_destroys() -> None:
    room = Room(ROOM, RoomConfig(persistent=True), SECRET, locked=True)
    room.affiliations[ALICE.bare] = "owner"
    assert 201 in codes(enter(room, ALICE, "Alice").out[0].element)
    result = room.presence(parse_element("<presence type='unavailable'/>"), ALICE, "Alice", 0.0)
    assert result.gone


def test_state_round_trip_skips_garbage() -> None:
    room = make_room(name="N", persistent=True)
    room.affiliations[BOB.bare] = "outcast"
    room.subject, room.subject_by = "S", "Alice"
    state = room.state()
    state["affiliations"] = {**state["affiliations"], "@@bad": "member", "x@y": "king"}  # type: ignore[dict-item]
    copy = Room(ROOM, RoomConfig(), SECRET)
    copy.restore(state)
    assert copy.config == room.config
    assert copy.subject == "S"
    assert copy.subject_by == "Alice"
    assert copy.affiliations == room.affiliations


def test_config_from_dict_ignores_wrong_types() -> None:
    config = RoomConfig.from_dict({"name": 5, "persistent": "yes", "max_users": True, "x": 1})
    assert config == RoomConfig()
    assert RoomConfig.from_dict(RoomConfig(name="a", max_users=7).to_dict()).max_users == 7


def test_apply_form_validation() -> None:
    def form(**values: str) -> SubmittedForm:
        return SubmittedForm(None, {k.replace("__", "#"): [v] for k, v in values.items()})

    base = RoomConfig()
    with pytest.raises(StanzaError):
        apply_form(base, SubmittedForm("urn:other", {}), max_history=10, max_users=10)
    with pytest.raises(StanzaError):
        apply_form(base, form(muc__roomconfig_maxusers="11"), max_history=10, max_users=10)
    with pytest.raises(StanzaError):
        apply_form(base, form(muc__maxhistoryfetch="x"), max_history=10, max_users=10)
    with pytest.raises(StanzaError):
        apply_form(base, form(muc__roomconfig_publicroom="maybe"), max_history=10, max_users=10)
    new = apply_form(
        base, form(muc__roomconfig_roomsecret="pw", mam="0"), max_history=10, max_users=10
    )
    assert new.password_protected
    assert new.password == "pw"
    assert not new.archiving
    assert (
        apply_form(
            base, form(muc__roomconfig_maxusers="none"), max_history=1, max_users=9
        ).max_users
        == 9
    )


def test_forwarded_iqs_are_bounded() -> None:
    room = make_room()
    enter(room, ALICE, "Alice")
    enter(room, BOB, "Bob")
    for n in range(MAX_PENDING_IQS + 10):
        xml = f"<iq type='get' id='q{n}'><query xmlns='jabber:iq:version'/></iq>"
        room.occupant_iq(parse_element(xml), BOB, "Alice")
    assert len(room._pending_iqs) == MAX_PENDING_IQS


def test_kick_removes_and_marks_307() -> None:
    room = make_room()
    enter(room, ALICE, "Alice")
    enter(room, BOB, "Bob")
    xml = f"<iq type='set' id='k'><query xmlns='{NS_MUC}#admin'><item nick='Bob' role='none'/></query></iq>"
    result = room.admin_set(parse_element(xml), ALICE)
    kinds = [(o.element.get("type"), codes(o.element)) for o in result.out[1:]]
    assert ("unavailable", {110, 307}) in kinds
    assert ("unavailable", {307}) in kinds
    assert "Bob" not in room.occupants
    assert BOB not in room.by_jid


def test_out_without_recipients_carries_its_to() -> None:
    room = make_room()
    result = enter(room, ALICE, "Alice")
    singles = [o for o in result.out if o.recipients is None]
    assert all(isinstance(o, Out) and o.element.get("to") == str(ALICE) for o in singles)
